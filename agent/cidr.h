/* cidr: an address block ("10.0.0.0/8", "fd00::/8", or one host), parsed
 * strictly and matched against socket addresses. Pure. */
#ifndef MT_CIDR_H
#define MT_CIDR_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#ifdef __cplusplus
extern "C" {
#endif

/* An address block: family, network bytes (host bits zero) and prefix. */
typedef struct {
  int family; /* AF_INET or AF_INET6 */
  uint8_t addr[16];
  int prefix_len;
} mt_cidr;

/* Parses "a.b.c.d/n", "v6/n" or a bare address (a single host) with the
 * host bits zero. Returns 1, or 0 with the reason in |why|. */
int mt_cidr_parse(const char *text, mt_cidr *out, char *why, size_t why_len);

/* 1 when |addr| (AF_INET or AF_INET6; NULL: no) is inside |cidr|. An
 * IPv4-mapped IPv6 address (::ffff:a.b.c.d) is compared as the IPv4
 * address it carries, as a dual-stack socket reports IPv4 peers. */
int mt_cidr_contains(const mt_cidr *cidr, const struct sockaddr *addr);

#ifdef __cplusplus
}
#endif

#endif /* MT_CIDR_H */
