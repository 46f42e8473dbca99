/* workload_attest: who is calling the Workload API, from what the kernel
 * says about the caller of its Unix socket, never from what the caller asks.
 *
 * The Workload API server (agent/workload_api.c) takes the peer's
 * credentials when it accepts a connection and asks this module:
 *
 *   sidecar mode: is the caller one of the workload's users?
 *     mt_attest_selector_admits(selector, cred) on SO_PEERCRED's uid and gid
 *     (and SO_PEERGROUPS' supplementary groups, when the server reads them).
 *   node mode: which pod of this node is the caller?
 *     mt_attest_agent_netns once at start-up, then per caller
 *     mt_attest_read_netns(pid, pidfd, agent_netns) -> the addresses of the
 *     caller's network namespace, and mt_attest_pick_workload(table,
 *     addresses) -> the one workload of the node's table
 *     (agent/workloads.h) that owns them.
 *
 * Every function returns 1 (admitted / read) or 0 with a reason in |why| or
 * |err| that names the caller and what was wrong; nothing here logs. Every
 * doubt is a refusal: an empty selector admits nobody, an unreadable or
 * oddly shaped /proc file, a caller that exited, the agent's own network
 * namespace, a namespace with addresses of two workloads or with none is
 * refused. No function keeps state between calls: any thread may call any
 * of them.
 *
 * What is read (node mode), all through one directory fd of /proc/<pid> so
 * that every file comes from one process: net/fib_trie, net/if_inet6 (its
 * absence, IPv6 disabled, means no IPv6 addresses), and, without a pidfd,
 * stat; plus /proc/self/fdinfo/<pidfd>. Reading them needs no capability
 * (these files are world-readable; ns/net, which would need ptrace access,
 * is not used), so the agent's sandbox (agent/sandbox.h) may drop them
 * all; the calls made (openat, read, fstat/stat, poll, close) are all on
 * its seccomp allowlist. The reads are blocking procfs reads, bounded
 * (MT_ATTEST_MAX_FILE_BYTES per file; a pod's files are a few KiB):
 * acceptable once per Workload API connection, not per byte. /proc must be
 * of the agent's own PID namespace (node mode: hostPID), as SO_PEERCRED's
 * pid is.
 *
 * Races, and how they are closed:
 *   - PID reuse. SO_PEERCRED's pid is a number: the caller may exit after
 *     connecting and the number go to another process. With the pidfd
 *     (SO_PEERPIDFD, Linux >= 6.5: a handle on the very process that
 *     connected), after reading the files the module checks that the
 *     pidfd's process is still alive (poll: readable = exited) and still
 *     has PID |pid| (the "Pid:" line of /proc/self/fdinfo/<pidfd>). A live
 *     process keeps its PID, and /proc/<pid> resolves to the live process
 *     that holds it, so what was read came from the process that connected;
 *     otherwise the call is refused ("caller exited during attestation").
 *   - Without a pidfd (older kernels; pass -1 only when getsockopt says
 *     ENOPROTOOPT; any other failure to get one should refuse the caller),
 *     the process start time (stat field 22) is compared before and after
 *     reading, and a zombie is refused. The directory fd pins the process
 *     it was opened for, so a reuse *during* the read fails either way;
 *     what this cannot see is a reuse *before* /proc/<pid> was opened (the
 *     caller connected, handed its socket to another process and exited,
 *     and its PID went to a process in another pod). Deployments that need
 *     that closed need a kernel with SO_PEERPIDFD.
 *   - Address changes. The addresses are those of the caller's namespace
 *     while the files are read, not at connect time; a pod's address does
 *     not change during its life.
 *
 * What is NOT guaranteed, or rests on an assumption:
 *   - A process with CAP_NET_ADMIN in its own network namespace decides
 *     that namespace's addresses. A pod granted NET_ADMIN (or one that is
 *     privileged) can remove its own address, add another pod's, and be
 *     attested as that pod. The table cannot tell; deny NET_ADMIN to pods
 *     on nodes that serve the Workload API by node mode (admission policy).
 *   - A process that can enter another pod's namespace (setns: root on the
 *     node) is attested by the namespace it is in when the files are read.
 *   - Only the thread-group leader's namespace is read (/proc/<pid>/net is
 *     the leader's); a thread that moved to another namespace is not seen.
 *   - Host-network callers are refused by namespace, before any address
 *     is read, even when the table lists a host address (a hostNetwork
 *     pod's IP is the node's: anything on the host would get its
 *     identity). A namespace is told by the inode of its net/fib_trie
 *     (procfs gives each namespace's proc entries their own inode numbers,
 *     shared by every process in it, and they are world-readable, unlike
 *     ns/net). That is how procfs works, not a documented interface: were
 *     it to change, the host would still be refused as long as the table
 *     lists no host address (a host namespace's address is no pod's).
 *     This refuses the agent's own namespace: it assumes the agent runs in
 *     the host's (node mode: hostNetwork).
 *   - Sidecar mode trusts whoever can connect to the socket with a listed
 *     uid/gid. SO_PEERCRED's ids are the caller's effective ids at connect
 *     time, mapped into the agent's user namespace; ids that do not map
 *     come out as the overflow id (65534 by default), so listing 65534
 *     ("nobody") admits every caller from an unmapped user namespace. */
#ifndef MT_WORKLOAD_ATTEST_H
#define MT_WORKLOAD_ATTEST_H

#include <stddef.h>
#include <sys/types.h>

#include "agent/proc_net.h"
#include "agent/workloads.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Largest /proc file read (a node's fib_trie may be large; a pod's is a few
 * KiB). A larger file is an error, not a truncation. */
#define MT_ATTEST_MAX_FILE_BYTES (4u * 1024 * 1024)

/* What the kernel says about the caller, taken when the connection was
 * accepted. */
typedef struct {
  pid_t pid; /* SO_PEERCRED */
  uid_t uid; /* SO_PEERCRED: effective uid at connect */
  gid_t gid; /* SO_PEERCRED: effective (primary) gid at connect */
  /* SO_PEERGROUPS: the supplementary groups at connect, borrowed; NULL and 0
   * when the server does not read them (then only |gid| counts). */
  const gid_t *groups;
  size_t group_count;
} mt_peer_cred;

/* ---- sidecar mode: who may call ------------------------------------------- */

/* workload_api.allowed_uids / allowed_gids, immutable once built (share it
 * read-only between threads). */
typedef struct mt_attest_selector mt_attest_selector;

/* A selector admitting the listed uids and gids (copied; either array may be
 * NULL when its count is 0). Both empty: it admits nobody. NULL when out of
 * memory. */
mt_attest_selector *mt_attest_selector_new(const uid_t *uids, size_t uid_count, const gid_t *gids,
                                           size_t gid_count);
void mt_attest_selector_free(mt_attest_selector *selector); /* accepts NULL */

/* 1 when |cred|'s uid is listed, or its gid, or one of its supplementary
 * groups (when |cred| has them: SO_PEERGROUPS is taken at connect time like
 * SO_PEERCRED, so it is as race-free; the module never reads
 * /proc/<pid>/status "Groups:", which would be the groups of whatever holds
 * the PID by then). Else 0 and |why|: "uid 1001 gid 1001 is not in
 * workload_api.allowed_uids [1000] or allowed_gids []" (with
 * "groups [..]" after the gid when |cred| has some). A NULL selector admits
 * nobody. */
int mt_attest_selector_admits(const mt_attest_selector *selector, const mt_peer_cred *cred,
                              char *why, size_t why_len);

/* ---- node mode: which pod is calling -------------------------------------- */

/* A network namespace, as told by the inode of its /proc/<pid>/net/fib_trie. */
typedef struct {
  dev_t dev;
  ino_t ino;
} mt_netns_id;

/* The agent's own network namespace (the host's, in node mode); it does not
 * change while the agent runs, so read it once. Returns 1, or 0 with |err|. */
int mt_attest_agent_netns(mt_netns_id *out, char *err, size_t err_len);

/* The network namespace process |pid| is in now, by the same rule; a
 * cheap label (one stat, no pidfd check), e.g. for per-pod limits taken
 * before attestation, never a verdict on who the caller is. Returns 1, or
 * 0 with |err|. */
int mt_attest_netns_of(pid_t pid, mt_netns_id *out, char *err, size_t err_len);

/* Fills |out| with the addresses of the network namespace of process |pid|
 * (see proc_net.h for what counts), checking afterwards that |pid| is still
 * the process that connected: |pidfd| (borrowed, not closed; -1 when the
 * kernel has no SO_PEERPIDFD) is the caller's pidfd. |agent| (required) is
 * mt_attest_agent_netns's: a caller in that namespace is refused. Returns
 * 1, or 0 with |err| (and |out| empty):
 *   "caller pid 1234 exited before attestation" (or "during attestation")
 *   "caller pid 1234 is in the agent's network namespace (host network),
 *    not a pod"
 *   "caller pid 1234: cannot read net/fib_trie: ..."
 *   "caller pid 1234: fib_trie line 7: ..." (a file not shaped as the
 *    kernel prints it; "more than 32 addresses")
 *   "caller pid 1234: fd 9 is not a pidfd (...)" */
int mt_attest_read_netns(pid_t pid, int pidfd, const mt_netns_id *agent, mt_netns_addresses *out,
                         char *err, size_t err_len);

/* The workload of |table| that the caller |pid| is, from its namespace's
 * addresses |caller| (mt_attest_read_netns's). Admitted (1, |*index| = its
 * entry in |table|) when at least one of the addresses is listed and all
 * listed ones name one SPIFFE ID (a dual-stack pod is listed once per
 * address; the table does not record pods, and two pods of one service
 * account would be served the same identity anyway). Unlisted addresses
 * beside a listed one are ignored. The entry may have no identity yet
 * (mt_workloads_identity_at NULL): the server decides whether to wait or
 * refuse. Refused (0, |why|):
 *   "caller pid 1234 (addresses 10.0.0.9) is not a pod of this node"
 *   "caller pid 1234 has addresses of two workloads: 10.0.0.5
 *    (spiffe://...) and 10.0.0.6 (spiffe://...)"
 * A NULL table lists nothing. */
int mt_attest_pick_workload(const mt_workloads *table, pid_t pid, const mt_netns_addresses *caller,
                            size_t *index, char *why, size_t why_len);

#ifdef __cplusplus
}
#endif

#endif /* MT_WORKLOAD_ATTEST_H */
