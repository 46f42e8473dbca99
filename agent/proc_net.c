/* proc_net.c: fib_trie and if_inet6 text, read through a CBS cursor line by
 * line; every line is checked against the kernel's exact format. */
#include "agent/proc_net.h"

#include <arpa/inet.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <openssl/bytestring.h>

#include "agent/errmsg.h"

/* if_inet6 flag (include/uapi/linux/if_addr.h): duplicate address detection
 * failed, so the address belongs to someone else on the link. */
#define IFA_FLAG_DADFAILED 0x08
/* if_inet6 prints the interface name with "%8s"; names are < IFNAMSIZ (16). */
#define IFNAME_PAD_WIDTH 8
#define IFNAME_MAX_LEN 15
/* Longest fields: an ifindex is an int ("%02x": 2..8 hex digits). */
#define IFINDEX_MAX_HEX 8
#define IPV6_HEX_LEN 32
#define IPV4_TEXT_MAX 15 /* "255.255.255.255" */

/* ---- cursor helpers --------------------------------------------------------- */

/* The next line of |in| without its '\n'. 0 at the end of input; -1 when the
 * last line has no newline (a truncated file) or a line is too long. */
static int get_line(CBS *in, CBS *line) {
  if (CBS_len(in) == 0) return 0;
  const uint8_t *lf = memchr(CBS_data(in), '\n', CBS_len(in));
  if (lf == NULL) return -1;
  size_t n = (size_t)(lf - CBS_data(in));
  if (n > MT_PROC_NET_MAX_LINE || !CBS_get_bytes(in, line, n) || !CBS_skip(in, 1)) return -1;
  return 1;
}

static int skip_prefix(CBS *s, const char *prefix) {
  size_t n = strlen(prefix);
  if (CBS_len(s) < n || memcmp(CBS_data(s), prefix, n) != 0) return 0;
  return CBS_skip(s, n);
}

static int equals(const CBS *s, const char *word) {
  return CBS_len(s) == strlen(word) && memcmp(CBS_data(s), word, CBS_len(s)) == 0;
}

static size_t count_spaces(const CBS *s) {
  size_t n = 0;
  while (n < CBS_len(s) && CBS_data(s)[n] == ' ') n++;
  return n;
}

/* A decimal without sign or leading zeros, at most |max|, up to the next
 * byte that is not a digit. */
static int get_decimal(CBS *s, unsigned long max, unsigned long *out) {
  unsigned long v = 0;
  size_t n = 0;
  while (n < CBS_len(s) && CBS_data(s)[n] >= '0' && CBS_data(s)[n] <= '9') {
    if (n > 0 && v == 0) return 0; /* leading zero */
    v = v * 10 + (unsigned long)(CBS_data(s)[n] - '0');
    if (v > max) return 0;
    n++;
  }
  *out = v;
  return n > 0 && CBS_skip(s, n);
}

static int hex_value(uint8_t c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10; /* the kernel prints lowercase */
  return -1;
}

/* Exactly |min|..|max| lowercase hex digits, up to the next non-hex byte. */
static int get_hex(CBS *s, size_t min, size_t max, unsigned long *out) {
  unsigned long v = 0;
  size_t n = 0;
  while (n < CBS_len(s) && hex_value(CBS_data(s)[n]) >= 0) {
    if (++n > max) return 0;
    v = v * 16 + (unsigned long)hex_value(CBS_data(s)[n - 1]);
  }
  *out = v;
  return n >= min && CBS_skip(s, n);
}

/* A dotted quad as %pI4 prints it, up to the next byte that is not part of one. */
static int get_ipv4(CBS *s, struct in_addr *out) {
  char text[IPV4_TEXT_MAX + 1];
  size_t n = 0;
  while (n < CBS_len(s) &&
         ((CBS_data(s)[n] >= '0' && CBS_data(s)[n] <= '9') || CBS_data(s)[n] == '.')) {
    if (n == IPV4_TEXT_MAX) return 0;
    text[n] = (char)CBS_data(s)[n];
    n++;
  }
  text[n] = '\0';
  /* inet_pton(AF_INET) takes exactly four decimals of 0..255, no leading zeros. */
  return n > 0 && inet_pton(AF_INET, text, out) == 1 && CBS_skip(s, n);
}

/* ---- the address set -------------------------------------------------------- */

static int ipv4_counts(const struct in_addr *a) {
  uint32_t h = ntohl(a->s_addr);
  uint8_t first = (uint8_t)(h >> 24);
  if (first == 0 || first == 127 || first >= 224) return 0;
  return (h >> 16) != 0xA9FE; /* 169.254.0.0/16 */
}

static int ipv6_counts(const struct in6_addr *a) {
  if (IN6_IS_ADDR_UNSPECIFIED(a) || IN6_IS_ADDR_LOOPBACK(a)) return 0;
  if (IN6_IS_ADDR_LINKLOCAL(a) || IN6_IS_ADDR_MULTICAST(a)) return 0;
  return 1;
}

int mt_netns_addresses_contain(const mt_netns_addresses *set, const struct sockaddr *address) {
  for (size_t i = 0; i < set->count; i++) {
    const mt_net_address *a = &set->address[i];
    if (a->sa.sa_family != address->sa_family) continue;
    if (address->sa_family == AF_INET &&
        a->in4.sin_addr.s_addr ==
            ((const struct sockaddr_in *)(const void *)address)->sin_addr.s_addr)
      return 1;
    if (address->sa_family == AF_INET6 &&
        memcmp(&a->in6.sin6_addr, &((const struct sockaddr_in6 *)(const void *)address)->sin6_addr,
               sizeof(struct in6_addr)) == 0)
      return 1;
  }
  return 0;
}

/* Adds |a| unless already there. 0 when the set is full. */
static int add_address(mt_netns_addresses *set, const mt_net_address *a) {
  if (mt_netns_addresses_contain(set, &a->sa)) return 1;
  if (set->count == MT_NETNS_MAX_ADDRESSES) return 0;
  set->address[set->count++] = *a;
  return 1;
}

void mt_netns_addresses_format(const mt_netns_addresses *set, char *buf, size_t len) {
  if (len == 0) return;
  if (set->count == 0) {
    snprintf(buf, len, "none");
    return;
  }
  size_t used = 0;
  buf[0] = '\0';
  for (size_t i = 0; i < set->count; i++) {
    char one[INET6_ADDRSTRLEN];
    const mt_net_address *a = &set->address[i];
    const void *raw = a->sa.sa_family == AF_INET ? (const void *)&a->in4.sin_addr
                                                 : (const void *)&a->in6.sin6_addr;
    if (inet_ntop(a->sa.sa_family, raw, one, sizeof(one)) == NULL) snprintf(one, sizeof(one), "?");
    int n = snprintf(buf + used, len - used, "%s%s", i > 0 ? ", " : "", one);
    if (n < 0 || (size_t)n >= len - used) {
      /* Cut after the last whole address, or inside it when even that
       * leaves no room for "...". */
      size_t at = used + 4 <= len ? used : len - 4;
      if (len >= 4) snprintf(buf + at, 4, "...");
      return;
    }
    used += (size_t)n;
  }
}

/* ---- fib_trie ----------------------------------------------------------------- */

/* fib_trie_seq_show indents every node line by "   " per trie level, then
 * two spaces. */
static int get_indent(CBS *line) {
  size_t n = count_spaces(line);
  return n >= 2 && (n - 2) % 3 == 0 && CBS_skip(line, n);
}

/* "Main:", "Local:" or "Id <table>:" (fib_table_print; it prints the u32
 * table ID with "%d", so IDs above 2^31 come out negative). */
static int is_table_header(const CBS *line) {
  if (equals(line, "Main:") || equals(line, "Local:")) return 1;
  CBS s = *line;
  unsigned long id;
  if (!skip_prefix(&s, "Id ")) return 0;
  skip_prefix(&s, "-");
  return get_decimal(&s, UINT32_MAX, &id) && equals(&s, ":");
}

/* "+-- 10.0.0.0/24 2 0 2": prefix/length, bits, full and empty children. */
static int is_tnode(CBS s) {
  struct in_addr a;
  unsigned long v;
  if (!skip_prefix(&s, "+-- ") || !get_ipv4(&s, &a) || !skip_prefix(&s, "/") ||
      !get_decimal(&s, 32, &v))
    return 0;
  for (int i = 0; i < 3; i++)
    if (!skip_prefix(&s, " ") || !get_decimal(&s, UINT32_MAX, &v)) return 0;
  return CBS_len(&s) == 0;
}

/* A scope or type word as rtn_scope / rtn_type print it: "host", "LOCAL",
 * "scope=200", "type 12"; printable ASCII without spaces except the one in
 * "type N". */
static int is_word(const CBS *s) {
  if (CBS_len(s) == 0) return 0;
  for (size_t i = 0; i < CBS_len(s); i++)
    if (CBS_data(s)[i] <= ' ' || CBS_data(s)[i] >= 0x7f) return 0;
  return 1;
}

/* The rest of an alias line after "/len ": "<scope> <type>[ tos=N]".
 * Sets |*is_local| for scope "host", type "LOCAL". */
static int parse_alias_tail(CBS s, int *is_local) {
  const uint8_t *sp = memchr(CBS_data(&s), ' ', CBS_len(&s));
  CBS scope;
  if (sp == NULL || !CBS_get_bytes(&s, &scope, (size_t)(sp - CBS_data(&s))) || !CBS_skip(&s, 1) ||
      !is_word(&scope))
    return 0;
  /* The type, then an optional " tos=N". */
  CBS type = s;
  const uint8_t *tos = NULL;
  for (size_t i = 0; i + 5 <= CBS_len(&s); i++)
    if (memcmp(CBS_data(&s) + i, " tos=", 5) == 0) tos = CBS_data(&s) + i;
  if (tos != NULL) {
    CBS_init(&type, CBS_data(&s), (size_t)(tos - CBS_data(&s)));
    CBS t;
    CBS_init(&t, tos + 5, CBS_len(&s) - CBS_len(&type) - 5);
    unsigned long v;
    if (!get_decimal(&t, UINT8_MAX, &v) || CBS_len(&t) != 0) return 0;
  }
  CBS number = type;
  unsigned long v;
  int ok = is_word(&type) || (skip_prefix(&number, "type ") &&
                              get_decimal(&number, UINT8_MAX, &v) && CBS_len(&number) == 0);
  if (!ok) return 0;
  *is_local = equals(&scope, "host") && equals(&type, "LOCAL");
  return 1;
}

int mt_proc_net_parse_fib_trie(const char *text, size_t len, mt_netns_addresses *into, char *err,
                               size_t err_len) {
  CBS in, line;
  CBS_init(&in, (const uint8_t *)text, len);
  int in_table = 0, has_leaf = 0;
  struct in_addr leaf = {0};
  size_t number = 0;
  int got;
  while ((got = get_line(&in, &line)) == 1) {
    number++;
    if (is_table_header(&line)) {
      in_table = 1;
      has_leaf = 0;
      continue;
    }
    if (!in_table) {
      mt_errmsg_set(err, err_len, "fib_trie line %zu: a node before any table header", number);
      return 0;
    }
    if (!get_indent(&line)) {
      mt_errmsg_set(err, err_len, "fib_trie line %zu: not indented as the kernel indents", number);
      return 0;
    }
    if (is_tnode(line)) {
      has_leaf = 0;
      continue;
    }
    if (skip_prefix(&line, "|-- ")) {
      if (!get_ipv4(&line, &leaf) || CBS_len(&line) != 0) {
        mt_errmsg_set(err, err_len, "fib_trie line %zu: a leaf that is not an IPv4 address",
                      number);
        return 0;
      }
      has_leaf = 1;
      continue;
    }
    unsigned long prefix_len;
    int is_local = 0;
    if (!skip_prefix(&line, "/") || !get_decimal(&line, 32, &prefix_len) ||
        !skip_prefix(&line, " ") || !parse_alias_tail(line, &is_local)) {
      mt_errmsg_set(err, err_len, "fib_trie line %zu: not a table, node, leaf or route line",
                    number);
      return 0;
    }
    if (!has_leaf) {
      mt_errmsg_set(err, err_len, "fib_trie line %zu: a route outside a leaf", number);
      return 0;
    }
    if (prefix_len != 32 || !is_local || !ipv4_counts(&leaf)) continue;
    mt_net_address a;
    memset(&a, 0, sizeof(a));
    a.in4.sin_family = AF_INET;
    a.in4.sin_addr = leaf;
    if (!add_address(into, &a)) {
      mt_errmsg_set(err, err_len, "fib_trie: more than %d addresses", MT_NETNS_MAX_ADDRESSES);
      return 0;
    }
  }
  if (got < 0) {
    mt_errmsg_set(err, err_len, "fib_trie line %zu: too long or not ended by a newline",
                  number + 1);
    return 0;
  }
  return 1;
}

/* ---- if_inet6 ----------------------------------------------------------------- */

/* An interface name byte: dev_valid_name refuses '/', ':' and whitespace. */
static int is_ifname_byte(uint8_t c) { return c > ' ' && c != '/' && c != ':'; }

/* "fd000000000000000000000000000002 04 40 00 82     eth0": address,
 * ifindex, prefix length, scope, flags (u8), name as "%8s". */
static int parse_inet6_line(CBS s, struct in6_addr *addr, unsigned long *flags) {
  CBS hex;
  if (!CBS_get_bytes(&s, &hex, IPV6_HEX_LEN)) return 0;
  for (size_t i = 0; i < IPV6_HEX_LEN; i += 2) {
    int hi = hex_value(CBS_data(&hex)[i]), lo = hex_value(CBS_data(&hex)[i + 1]);
    if (hi < 0 || lo < 0) return 0;
    addr->s6_addr[i / 2] = (uint8_t)(hi * 16 + lo);
  }
  unsigned long ifindex, prefix_len, scope;
  if (!skip_prefix(&s, " ") || !get_hex(&s, 2, IFINDEX_MAX_HEX, &ifindex) ||
      !skip_prefix(&s, " ") || !get_hex(&s, 2, 2, &prefix_len) || prefix_len > 128 ||
      !skip_prefix(&s, " ") || !get_hex(&s, 2, 2, &scope) || !skip_prefix(&s, " ") ||
      !get_hex(&s, 2, 2, flags) || !skip_prefix(&s, " "))
    return 0;
  size_t pad = count_spaces(&s);
  if (!CBS_skip(&s, pad)) return 0;
  size_t name_len = CBS_len(&s);
  if (name_len == 0 || name_len > IFNAME_MAX_LEN) return 0;
  size_t want_pad = name_len < IFNAME_PAD_WIDTH ? IFNAME_PAD_WIDTH - name_len : 0;
  if (pad != want_pad) return 0;
  for (size_t i = 0; i < name_len; i++)
    if (!is_ifname_byte(CBS_data(&s)[i])) return 0;
  return 1;
}

int mt_proc_net_parse_if_inet6(const char *text, size_t len, mt_netns_addresses *into, char *err,
                               size_t err_len) {
  CBS in, line;
  CBS_init(&in, (const uint8_t *)text, len);
  size_t number = 0;
  int got;
  while ((got = get_line(&in, &line)) == 1) {
    number++;
    mt_net_address a;
    memset(&a, 0, sizeof(a));
    unsigned long flags;
    if (!parse_inet6_line(line, &a.in6.sin6_addr, &flags)) {
      mt_errmsg_set(err, err_len, "if_inet6 line %zu: not shaped as the kernel prints it", number);
      return 0;
    }
    if ((flags & IFA_FLAG_DADFAILED) != 0 || !ipv6_counts(&a.in6.sin6_addr)) continue;
    a.in6.sin6_family = AF_INET6;
    if (!add_address(into, &a)) {
      mt_errmsg_set(err, err_len, "if_inet6: more than %d addresses", MT_NETNS_MAX_ADDRESSES);
      return 0;
    }
  }
  if (got < 0) {
    mt_errmsg_set(err, err_len, "if_inet6 line %zu: too long or not ended by a newline",
                  number + 1);
    return 0;
  }
  return 1;
}
