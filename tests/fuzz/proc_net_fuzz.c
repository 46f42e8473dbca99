/* libFuzzer target: mt_proc_net_parse_fib_trie and mt_proc_net_parse_if_inet6
 * on arbitrary bytes.
 *
 * Input: the first byte picks the parser ('I': if_inet6, anything else:
 * fib_trie); the rest is the file's text.
 *
 * Oracles, besides "never crashes" (ASan/UBSan):
 *  - a refusal has a non-empty printable-ASCII reason naming the file;
 *  - an accepted set holds at most MT_NETNS_MAX_ADDRESSES addresses, each
 *    AF_INET or AF_INET6 with port 0, no two alike, none of those proc_net.h
 *    says never count (loopback, link-local, unspecified, multicast);
 *  - every accepted address is in the input: an IPv4 one as a "|-- <ip>"
 *    leaf line, an IPv6 one as its 32 hex digits;
 *  - parsing is deterministic, and appending to a set that already holds the
 *    result adds nothing;
 *  - an accepted input cut after any of its first lines is accepted too
 *    (every line is judged with what came before it only), with a subset of
 *    the addresses;
 *  - mt_netns_addresses_format stays within buffers of any size. */
#include <arpa/inet.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent/proc_net.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                         \
  do {                                                                                      \
    if (!(cond)) {                                                                          \
      fprintf(stderr, "proc_net_fuzz: invariant failed at %s:%d: %s\n", __FILE__, __LINE__, \
              #cond);                                                                       \
      abort();                                                                              \
    }                                                                                       \
  } while (0)

/* Cuts tried per input: enough to reach past the first table header. */
#define PREFIX_CUTS 8

typedef int (*parser)(const char *, size_t, mt_netns_addresses *, char *, size_t);

static void check_reason(const char *why, const char *file) {
  CHECK(why[0] != '\0');
  CHECK(strncmp(why, file, strlen(file)) == 0);
  for (const char *p = why; *p != '\0'; p++) CHECK(*p >= ' ' && *p < 0x7f);
}

static int never_counts(const mt_net_address *a) {
  if (a->sa.sa_family == AF_INET) {
    uint32_t h = ntohl(a->in4.sin_addr.s_addr);
    uint8_t first = (uint8_t)(h >> 24);
    return first == 0 || first == 127 || first >= 224 || (h >> 16) == 0xA9FE;
  }
  const uint8_t *b = a->in6.sin6_addr.s6_addr;
  static const uint8_t zero[16], loopback[16] = {[15] = 1};
  return memcmp(b, zero, 16) == 0 || memcmp(b, loopback, 16) == 0 ||
         (b[0] == 0xfe && (b[1] & 0xc0) == 0x80) || b[0] == 0xff;
}

static int in_input(const mt_net_address *a, const char *text, size_t len) {
  char needle[64];
  if (a->sa.sa_family == AF_INET) {
    char ip[INET_ADDRSTRLEN];
    CHECK(inet_ntop(AF_INET, &a->in4.sin_addr, ip, sizeof(ip)) != NULL);
    snprintf(needle, sizeof(needle), "|-- %s\n", ip);
  } else {
    for (int i = 0; i < 16; i++) snprintf(needle + 2 * i, 3, "%02x", a->in6.sin6_addr.s6_addr[i]);
  }
  return memmem(text, len, needle, strlen(needle)) != NULL;
}

static void check_set(const mt_netns_addresses *set, const char *text, size_t len) {
  CHECK(set->count <= MT_NETNS_MAX_ADDRESSES);
  for (size_t i = 0; i < set->count; i++) {
    const mt_net_address *a = &set->address[i];
    CHECK(a->sa.sa_family == AF_INET || a->sa.sa_family == AF_INET6);
    CHECK(a->sa.sa_family == AF_INET ? a->in4.sin_port == 0 : a->in6.sin6_port == 0);
    CHECK(!never_counts(a));
    CHECK(in_input(a, text, len));
    CHECK(mt_netns_addresses_contain(set, &a->sa));
    for (size_t j = 0; j < i; j++) {
      mt_netns_addresses one = {.count = 1, .address = {set->address[j]}};
      CHECK(!mt_netns_addresses_contain(&one, &a->sa));
    }
  }
}

static void check_format(const mt_netns_addresses *set) {
  char buf[128];
  for (size_t len = 0; len <= sizeof(buf); len += 7) {
    memset(buf, 'x', sizeof(buf));
    mt_netns_addresses_format(set, buf, len);
    if (len > 0) CHECK(memchr(buf, '\0', len) != NULL);
    for (size_t i = len; i < sizeof(buf); i++) CHECK(buf[i] == 'x');
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size == 0) return 0;
  int inet6 = data[0] == 'I';
  parser parse = inet6 ? mt_proc_net_parse_if_inet6 : mt_proc_net_parse_fib_trie;
  const char *file = inet6 ? "if_inet6" : "fib_trie";
  /* A copy of exactly the text, so ASan sees any read past its end. */
  size_t len = size - 1;
  char *text = malloc(len > 0 ? len : 1);
  if (text == NULL) return 0;
  if (len > 0) memcpy(text, data + 1, len);

  static mt_netns_addresses set, again;
  char why[256] = "";
  memset(&set, 0, sizeof(set));
  int ok = parse(text, len, &set, why, sizeof(why));
  memset(&again, 0, sizeof(again));
  char why_again[256] = "";
  CHECK(parse(text, len, &again, why_again, sizeof(why_again)) == ok);
  check_format(&set);
  if (!ok) {
    check_reason(why, file);
    CHECK(strcmp(why, why_again) == 0);
    free(text);
    return 0;
  }
  check_set(&set, text, len);
  CHECK(again.count == set.count && memcmp(&again, &set, sizeof(set)) == 0);
  CHECK(parse(text, len, &again, why_again, sizeof(why_again)) == 1);
  CHECK(again.count == set.count);

  /* Prefixes ending at a newline. */
  size_t cut = 0;
  for (int n = 0; n < PREFIX_CUTS; n++) {
    const char *lf = memchr(text + cut, '\n', len - cut);
    if (lf == NULL) break;
    cut = (size_t)(lf - text) + 1;
    static mt_netns_addresses part;
    memset(&part, 0, sizeof(part));
    CHECK(parse(text, cut, &part, why, sizeof(why)) == 1);
    for (size_t i = 0; i < part.count; i++)
      CHECK(mt_netns_addresses_contain(&set, &part.address[i].sa));
  }
  free(text);
  return 0;
}
