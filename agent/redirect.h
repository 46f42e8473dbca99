/* redirect: the traffic-interception rules behind `mtlsd init-iptables`.
 *
 * The rules live in chains of the nat table, jumped to from PREROUTING and
 * OUTPUT (layout in README.md, "Interception rules"). Node mode
 * (interception.node_pod_cidrs) captures in PREROUTING only: what the
 * node's pods send goes to the outbound port, what arrives for them from
 * elsewhere to the inbound port; the node's own traffic is left alone.
 * This module owns their text and their installation:
 *
 *  - generation is pure: (config, what is installed now) -> the input of one
 *    `iptables-restore --noflush` transaction, so it is tested on exact text;
 *  - installation runs `iptables -t nat -S` (to count the jumps already
 *    there) and `iptables-restore` (or the ip6tables twins) with fork/exec,
 *    never a shell, and reports their stderr when they fail.
 *
 * Applying twice leaves one jump from each built-in chain; removing deletes
 * the jumps and the chains and succeeds when nothing is installed. */
#ifndef MT_REDIRECT_H
#define MT_REDIRECT_H

#include "agent/config.h"

#ifdef __cplusplus
extern "C" {
#endif

#define MT_CHAIN_INBOUND "MTLSD_INBOUND"         /* jumped from PREROUTING -p tcp */
#define MT_CHAIN_IN_REDIRECT "MTLSD_IN_REDIRECT" /* REDIRECT to interception.inbound_port */
#define MT_CHAIN_OUTPUT "MTLSD_OUTPUT"           /* jumped from OUTPUT -p tcp */
#define MT_CHAIN_REDIRECT "MTLSD_REDIRECT"       /* REDIRECT to interception.outbound_port */
#define MT_CHAIN_NODE_OUT "MTLSD_NODE_OUT"       /* node mode: what pods send, from PREROUTING */

/* What one address family's nat table holds of ours right now. */
typedef struct {
  unsigned prerouting_jumps; /* "-A PREROUTING -p tcp -j MTLSD_INBOUND" rules */
  unsigned output_jumps;     /* "-A OUTPUT -p tcp -j MTLSD_OUTPUT" rules */
  unsigned chains;           /* how many of our MTLSD_ chains exist */
} mt_redirect_state;

/* Reads the output of `iptables -t nat -S` (or ip6tables). */
void mt_redirect_state_parse(const char *listing, mt_redirect_state *out);

/* |node_pod_cidrs| below: the node layout's pod CIDRs when they are not in
 * the config (interception.node_pod_cidrs: from_control_plane, answered by
 * the control plane; borrowed); NULL means the config's own list. A
 * non-empty list selects the node layout. */

/* 1 when the config names an IPv6 address (a listener, the control plane,
 * an interception CIDR, a node pod CIDR or app_source_address): the rules
 * are then installed for IPv6 too. */
int mt_redirect_wants_ipv6(const mt_config *config, const mt_cidr_list *node_pod_cidrs);

/* The iptables-restore --noflush input that leaves |family|'s (AF_INET or
 * AF_INET6) nat table with exactly our chains and rules and one jump from
 * PREROUTING and OUTPUT, given |now| (all zero: a fresh table).
 * |config| must have an interception section. Returns a malloc'd string
 * (the caller frees it) or NULL when out of memory. */
char *mt_redirect_install_text(const mt_config *config, const mt_cidr_list *node_pod_cidrs,
                               int family, const mt_redirect_state *now);

/* The input that deletes our jumps and chains given |now|; "" when nothing
 * of ours is installed. Malloc'd, or NULL when out of memory. */
char *mt_redirect_remove_text(const mt_redirect_state *now);

/* `mtlsd init-iptables --config FILE (--apply | --remove | --print)`;
 * argv[0] is "init-iptables". With node_pod_cidrs: from_control_plane,
 * --apply and --print first ask the control plane (node_info_client.h) and
 * change nothing when it does not answer with CIDRs. Prints its own
 * messages; returns the exit status (0 done, 1 config, control-plane or
 * iptables failure, 2 usage). */
int mt_redirect_main(int argc, char **argv);

#ifdef __cplusplus
}
#endif

#endif /* MT_REDIRECT_H */
