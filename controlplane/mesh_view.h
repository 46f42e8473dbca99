/* mesh_view: the MeshSnapshot (proto/mtlsd/mesh.proto) one Watch caller
 * gets, built from the mesh file and what mtls-ca knows of the cluster
 * (the Kubernetes source's state, or the workload registry). Pure: no I/O,
 * no clock, no logging.
 *
 * A view is built once per change of its inputs and holds, encoded once,
 * the part every caller shares:
 *   - the mesh file's trust_bundles and policy;
 *   - destinations: the mesh file's, in file order, then those derived
 *     from the cluster state, sorted by address: every ClusterIP:port of a
 *     Service in a mesh namespace with at least one ready endpoint ->
 *     spiffe_ids = its ready endpoints' identities (sorted); every workload
 *     IP alone -> spiffe_ids = [that workload's identity] (two workloads
 *     claiming one IP: both). A Service address without a ready endpoint
 *     is left out (the agent's unknown-destination setting applies). A
 *     derived address the mesh file lists too (same IP and port, compared
 *     canonically) is left out: the operator's entry wins. Derived entries
 *     carry their identities in spiffe_ids only (spiffe_id stays empty).
 *     A derived Service address also carries `endpoints`: its ready mesh
 *     endpoints, "ip:port" with the target port, each with its identity,
 *     chosen as kube-proxy chooses them (cluster_state.h,
 *     mt_cluster_state_foreach_service_address); node agents dial them.
 * It also copies out of the cluster state (or the registry) which
 * workloads run on which node, so it never points into a source that
 * changes after it was built.
 *
 * A caller's content is the shared bytes followed by its own fields
 * (protobuf messages concatenate), so each caller costs only its own part:
 *   - workload_policies: the mesh file's, and, with Istio policies
 *     (inputs.istio), for every identity of the cluster the one compiled
 *     from them (istio_identities.h), which replaces the mesh file's entry
 *     of that identity (said in the notes, below). A node agent (listed in node_agents, with a node
 *     name from its token) gets the entries of the identities of the
 *     workloads on its node, in identity order; every other caller the
 *     entry of its own identity, if there is one;
 *   - node_workloads: only for such a node agent, and only when the view
 *     has a source of workloads (cluster state or registry): the workloads
 *     on its node, even none. Registry entries without an address are left
 *     out (a Workload needs an IP); their identities still count for
 *     workload_policies.
 * The digest is SHA-256 of the caller's content without a version: equal
 * digests mean the caller would see nothing new. Output is deterministic.
 *
 * For deltas (mesh_delta.h) a view also holds its shared part split into
 * entries, and a caller's snapshot gives its own part's bytes, so a server
 * diffs the shared part once per new view and each caller's own part per
 * caller.
 *
 * A caller with destinations on demand (mt_mesh_caller.on_demand) shares
 * nothing: its content is the shared part without destinations, the
 * destination entries of the addresses it asked for, its own fields,
 * on_demand_destinations = true and its unresolved addresses, built per
 * caller (cost: the asked-for entries, not the cluster). A view whose
 * shared part cannot be split gives such a caller every destination, as
 * to anyone else, without the flag. */
#ifndef MT_CP_MESH_VIEW_H
#define MT_CP_MESH_VIEW_H

#include <stddef.h>
#include <stdint.h>

#include "agent/mesh_delta.h"
#include "controlplane/cluster_state.h"
#include "controlplane/istio_policy.h"
#include "controlplane/mesh_file.h"
#include "controlplane/workloads_file.h"

#ifdef __cplusplus
extern "C" {
#endif

enum { MT_MESH_VIEW_ERR_MAX = 256 };

typedef struct {
  /* Required; borrowed: it must outlive the view. */
  const mt_mesh_file *mesh;
  /* Read during mt_mesh_view_new only (copied). NULL: no Kubernetes source. */
  const mt_cluster_state *cluster;
  /* The registry, read during mt_mesh_view_new only; ignored when
   * |cluster| is set. NULL: none. */
  const mt_workloads *workloads;
  /* Largest content (without the version) a caller may get; 0 means
   * MT_MESH_SNAPSHOT_MAX_BYTES. */
  size_t max_bytes;
  /* Istio's objects, read during mt_mesh_view_new only; used with
   * |cluster|. NULL: none (the mesh file's workload_policies alone). */
  const mt_istio_policies *istio;
} mt_mesh_view_inputs;

/* Longest canonical address, "[v6]:65535" and its NUL. */
enum { MT_MESH_ADDRESS_MAX = 56 };

/* Who is asking, as authenticated. Borrowed for the call. */
typedef struct {
  const char *spiffe_id;
  int node_agent;        /* listed in the server's node_agents */
  const char *node_name; /* from its token; NULL or "": none */
  /* Destinations on demand (mesh.proto, WatchRequest.
   * on_demand_destinations): the caller gets, instead of every
   * destination, the entries of the |num_wanted| addresses it asked for
   * (canonical "ip:port", see mt_mesh_view_canonical_address; sorted, no
   * repeats): each one's "ip:port" entry and its IP-alone entry; the
   * addresses with neither are listed as unresolved. */
  int on_demand;
  const char *const *wanted;
  size_t num_wanted;
} mt_mesh_caller;

/* |text| ("ip:port", "[v6]:port") in the form the view's keys use
 * (lowercase, shortest IPv6, brackets): 0 when it is not such an address. */
int mt_mesh_view_canonical_address(const char *text, char out[MT_MESH_ADDRESS_MAX]);

/* A destination key as entries carry it ("ip:port" or an IP alone, |len|
 * bytes, not NUL-terminated) in canonical form: 0 when it is neither. */
int mt_mesh_view_canonical_key(const char *text, size_t len, char out[MT_MESH_ADDRESS_MAX]);

/* The IP of a canonical "ip:port" (brackets dropped): the key of its
 * IP-alone entry. */
void mt_mesh_view_address_ip(const char *address, char out[MT_MESH_ADDRESS_MAX]);

typedef struct mt_mesh_view mt_mesh_view;
typedef struct mt_mesh_view_snapshot mt_mesh_view_snapshot;

/* Builds the shared part. Returns NULL with the reason in |err| when out
 * of memory or when the shared part alone exceeds the size limit. */
mt_mesh_view *mt_mesh_view_new(const mt_mesh_view_inputs *in, char *err, size_t err_len);
void mt_mesh_view_free(mt_mesh_view *view); /* accepts NULL */

/* For logs: the encoded size of the shared part, and how many of its
 * destinations were derived from the cluster. */
size_t mt_mesh_view_shared_len(const mt_mesh_view *view);
size_t mt_mesh_view_num_derived_destinations(const mt_mesh_view *view);

/* What the owner should log about the policies (identities in conflict,
 * mesh file entries replaced by Istio's), one line each, in a stable order;
 * "" when nothing. Log them when they differ from the previous view's. Borrowed. */
const char *mt_mesh_view_policy_notes(const mt_mesh_view *view);

/* SHA-256 of the shared part (for the server's own version and logs). */
void mt_mesh_view_shared_digest(const mt_mesh_view *view, uint8_t out[MT_MESH_DIGEST_LEN]);

/* The shared part split into entries, for deltas; NULL when it cannot be
 * (two destinations with the same address text): then only complete
 * snapshots can be sent. Borrowed from |view|. */
const mt_mesh_entries *mt_mesh_view_shared_entries(const mt_mesh_view *view);

/* |caller|'s content. Returns NULL with the reason in |err| when out of
 * memory or when it would exceed the size limit (then nothing may be sent
 * to that caller). The result borrows |view|: free it first. */
mt_mesh_view_snapshot *mt_mesh_view_for(const mt_mesh_view *view, const mt_mesh_caller *caller,
                                        char *err, size_t err_len);
void mt_mesh_view_snapshot_free(mt_mesh_view_snapshot *snap); /* accepts NULL */

/* SHA-256 of the content without a version (MT_MESH_DIGEST_LEN bytes). */
const uint8_t *mt_mesh_view_snapshot_digest(const mt_mesh_view_snapshot *snap);

/* The content's length without a version. */
size_t mt_mesh_view_snapshot_len(const mt_mesh_view_snapshot *snap);

/* 0 when the snapshot is the caller's own part alone (destinations on
 * demand, or a view that cannot be split): then its own part is the whole
 * content and a delta is a diff of that alone. */
int mt_mesh_view_snapshot_has_shared(const mt_mesh_view_snapshot *snap);

/* SHA-256 of |caller|'s own fields alone (workload policies, node
 * workloads), without building its snapshot: a server tells from it that
 * they did not change. 0 when out of memory. */
int mt_mesh_view_own_digest(const mt_mesh_view *view, const mt_mesh_caller *caller,
                            uint8_t out[MT_MESH_DIGEST_LEN]);

/* The caller's own part alone (what follows the shared part, or the whole
 * content, see above), encoded; borrowed from |snap|. */
const uint8_t *mt_mesh_view_snapshot_own(const mt_mesh_view_snapshot *snap, size_t *len);

/* The encoded MeshSnapshot with |version| set: malloc'd, length in |*len|;
 * NULL when out of memory. */
uint8_t *mt_mesh_view_snapshot_encode(const mt_mesh_view_snapshot *snap, const char *version,
                                      size_t *len);

#ifdef __cplusplus
}
#endif

#endif /* MT_CP_MESH_VIEW_H */
