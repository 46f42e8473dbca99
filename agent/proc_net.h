/* proc_net: the addresses of a network namespace, from the text of its
 * /proc/<pid>/net/fib_trie (IPv4) and /proc/<pid>/net/if_inet6 (IPv6).
 *
 * Pure parsers: they read only the bytes handed to them (no file, no
 * allocation), so they can be unit-tested from fixtures and fuzzed.
 * agent/workload_attest reads the files and decides what they mean.
 *
 * The files are kernel-generated, but a parser is strict anyway: any line
 * that is not shaped exactly as the kernel prints it (net/ipv4/fib_trie.c
 * fib_trie_seq_show, net/ipv6/addrconf.c if6_seq_show) is an error naming
 * the line, never a guess. A kernel that changes the format therefore makes
 * attestation fail (closed, with a reason), not silently succeed.
 *
 * What counts as an address of the namespace:
 *   IPv4: every leaf of any table with an alias "/32 host LOCAL" (optionally
 *     followed by " tos=N"): the kernel's local route of an address assigned
 *     to an interface. Wider local routes (127.0.0.0/8 on lo, "ip route add
 *     local 10.0.0.0/24") are not addresses.
 *   IPv6: every line of if_inet6, except those flagged IFA_F_DADFAILED
 *     (0x08: another host on the link holds the address).
 * Never counted, because they do not tell one namespace from another:
 *   0.0.0.0/8, 127.0.0.0/8 (loopback), 169.254.0.0/16 (link-local),
 *   224.0.0.0/3 (multicast, reserved, broadcast); ::, ::1, fe80::/10
 *   (link-local), ff00::/8 (multicast).
 * An address listed twice (fib_trie prints the Main and Local tables, which
 * share local routes) is kept once. */
#ifndef MT_PROC_NET_H
#define MT_PROC_NET_H

#include <netinet/in.h>
#include <stddef.h>
#include <sys/socket.h>

#ifdef __cplusplus
extern "C" {
#endif

/* A pod has one or two; a namespace with more than this is refused (the
 * caller's error), not truncated. */
#define MT_NETNS_MAX_ADDRESSES 32

/* Longest line either file has (a fib_trie line at the trie's deepest,
 * 32 levels, is about 150 bytes); a longer one is an error. */
#define MT_PROC_NET_MAX_LINE 256

/* One address, port 0; |sa.sa_family| is AF_INET or AF_INET6. */
typedef union {
  struct sockaddr sa;
  struct sockaddr_in in4;
  struct sockaddr_in6 in6;
} mt_net_address;

/* A set of addresses, embedded by the caller (zero it to start empty). */
typedef struct {
  size_t count;
  mt_net_address address[MT_NETNS_MAX_ADDRESSES];
} mt_netns_addresses;

/* Adds the namespace addresses in |text| (|len| bytes, not NUL-terminated,
 * the whole file: it must end with a newline unless empty) to |into|.
 * Returns 1, or 0 with the reason in |err| ("fib_trie line 7: ..."); after
 * a failure |into| may hold some of the file's addresses: discard it. */
int mt_proc_net_parse_fib_trie(const char *text, size_t len, mt_netns_addresses *into, char *err,
                               size_t err_len);
int mt_proc_net_parse_if_inet6(const char *text, size_t len, mt_netns_addresses *into, char *err,
                               size_t err_len);

/* 1 when |set| holds the IP of |address| (port ignored). */
int mt_netns_addresses_contain(const mt_netns_addresses *set, const struct sockaddr *address);

/* The addresses as "10.0.0.9, fd00::9" ("none" for an empty set), cut with
 * "..." to fit |len|. */
void mt_netns_addresses_format(const mt_netns_addresses *set, char *buf, size_t len);

#ifdef __cplusplus
}
#endif

#endif /* MT_PROC_NET_H */
