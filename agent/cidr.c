/* cidr: address blocks. See cidr.h. */
#include "agent/cidr.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>

enum {
  IPV4_BITS = 32,
  IPV6_BITS = 128,
};

int mt_cidr_parse(const char *text, mt_cidr *out, char *why, size_t why_len) {
  char host[INET6_ADDRSTRLEN + 1];
  const char *slash = strchr(text, '/');
  size_t hlen = slash ? (size_t)(slash - text) : strlen(text);
  memset(out, 0, sizeof(*out));
  int bits;
  if (hlen < sizeof(host)) {
    memcpy(host, text, hlen);
    host[hlen] = '\0';
  }
  if (hlen < sizeof(host) && inet_pton(AF_INET, host, out->addr) == 1) {
    out->family = AF_INET;
    bits = IPV4_BITS;
  } else if (hlen < sizeof(host) && inet_pton(AF_INET6, host, out->addr) == 1) {
    out->family = AF_INET6;
    bits = IPV6_BITS;
  } else {
    snprintf(why, why_len, "'%s' is not a valid CIDR", text);
    return 0;
  }
  out->prefix_len = bits;
  if (slash != NULL) {
    const char *p = slash + 1;
    int len = 0;
    size_t n = 0;
    for (; p[n] != '\0' && n < 4; n++) {
      if (p[n] < '0' || p[n] > '9') break;
      len = len * 10 + (p[n] - '0');
    }
    if (n == 0 || p[n] != '\0' || len > bits) {
      snprintf(why, why_len, "'%s' is not a valid CIDR", text);
      return 0;
    }
    out->prefix_len = len;
  }
  for (int b = out->prefix_len; b < bits; b++) {
    if (out->addr[b / 8] & (0x80 >> (b % 8))) {
      snprintf(why, why_len, "'%s' has address bits set beyond the /%d prefix", text,
               out->prefix_len);
      return 0;
    }
  }
  return 1;
}

static int prefix_equal(const uint8_t *a, const uint8_t *b, int bits) {
  int whole = bits / 8;
  if (memcmp(a, b, (size_t)whole) != 0) return 0;
  int rest = bits % 8;
  if (rest == 0) return 1;
  uint8_t mask = (uint8_t)(0xff << (8 - rest));
  return (a[whole] & mask) == (b[whole] & mask);
}

int mt_cidr_contains(const mt_cidr *cidr, const struct sockaddr *addr) {
  if (addr == NULL) return 0;
  if (addr->sa_family == AF_INET) {
    const struct sockaddr_in *in = (const struct sockaddr_in *)addr;
    return cidr->family == AF_INET &&
           prefix_equal(cidr->addr, (const uint8_t *)&in->sin_addr, cidr->prefix_len);
  }
  if (addr->sa_family != AF_INET6) return 0;
  const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)addr;
  const uint8_t *bytes = in6->sin6_addr.s6_addr;
  if (cidr->family == AF_INET6) return prefix_equal(cidr->addr, bytes, cidr->prefix_len);
  return IN6_IS_ADDR_V4MAPPED(&in6->sin6_addr) &&
         prefix_equal(cidr->addr, bytes + 12, cidr->prefix_len);
}
