/* cluster_state: what mtls-ca knows of the cluster, derived from the
 * Kubernetes API's pods, services, EndpointSlices and namespaces, and kept
 * current one watch event at a time. Pure: no I/O, no clock, no logging.
 *
 * The mesh covers the namespaces labelled MT_CLUSTER_MESH_LABEL=
 * MT_CLUSTER_MESH_ENABLED (mtlsd.io/mesh=enabled); objects elsewhere are
 * held (a namespace may be labelled later) but derive nothing.
 *
 * Workload: a pod in a mesh namespace, in phase Running, with at least one
 * IP, scheduled on a node, not on the host network and not being deleted.
 * Its identity is spiffe://<trust domain>/ns/<namespace>/sa/<service
 * account>. A pod that stops qualifying (terminating, deleted, failed,
 * namespace unlabelled) leaves at once.
 *
 * Service identities: for a Service in a mesh namespace, ClusterIP:port
 * (each of spec.clusterIPs, each spec.ports[].port) -> the sorted set of
 * identities of the workloads behind its ready endpoints (EndpointSlices
 * labelled kubernetes.io/service-name with the Service's name); a client
 * accepts any of them (Istio's secure naming).
 *
 * Each event costs one object's update (plus the pods of a namespace whose
 * labels changed); the service sets are computed when asked. Lookups scan
 * linearly for now: fine for thousands of pods, to be indexed for more. */
#ifndef MT_CP_CLUSTER_STATE_H
#define MT_CP_CLUSTER_STATE_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "controlplane/k8s_objects.h"

#ifdef __cplusplus
extern "C" {
#endif

#define MT_CLUSTER_MESH_LABEL "mtlsd.io/mesh"
#define MT_CLUSTER_MESH_ENABLED "enabled"

typedef enum {
  MT_K8S_KIND_POD,
  MT_K8S_KIND_SERVICE,
  MT_K8S_KIND_ENDPOINTSLICE,
  MT_K8S_KIND_NAMESPACE,
  MT_K8S_KIND_COUNT
} mt_k8s_kind;

typedef enum {
  MT_CLUSTER_UPSERT, /* ADDED or MODIFIED: the object as it now is */
  MT_CLUSTER_REMOVE, /* DELETED: only metadata (name, namespace) is read */
} mt_cluster_change;

typedef struct mt_cluster_state mt_cluster_state;

/* A workload as the state holds it; every pointer is borrowed and valid
 * until the next apply. */
typedef struct {
  const char *spiffe_id;
  const char *ns;
  const char *pod;
  const char *node;
  const char *const *ips; /* canonical text (inet_ntop), API order */
  size_t num_ips;
  const mt_k8s_label *labels;
  size_t num_labels;
} mt_cluster_workload;

/* Returns NULL when out of memory. |trust_domain| is copied. */
mt_cluster_state *mt_cluster_state_new(const char *trust_domain);
void mt_cluster_state_free(mt_cluster_state *state);

/* Applies one event about one object (API JSON, borrowed). Returns 1, or 0
 * with "object refused: ..." in |err| when the object does not decode; a
 * refused object changes nothing. Removing an unknown object is a no-op. */
int mt_cluster_state_apply(mt_cluster_state *state, mt_k8s_kind kind, mt_cluster_change change,
                           const json_t *object, char *err, size_t err_len);

size_t mt_cluster_state_num_workloads(const mt_cluster_state *state);

/* The workload holding |ip| (any textual form), or NULL. */
int mt_cluster_state_workload_by_ip(const mt_cluster_state *state, const char *ip,
                                    mt_cluster_workload *out);

/* 1 when a workload with |spiffe_id| runs on |node| (the node-agent rule). */
int mt_cluster_state_identity_on_node(const mt_cluster_state *state, const char *spiffe_id,
                                      const char *node);

/* Calls |on_workload| for every workload on |node|; returns how many. */
size_t mt_cluster_state_foreach_on_node(const mt_cluster_state *state, const char *node,
                                        void (*on_workload)(void *ctx,
                                                            const mt_cluster_workload *w),
                                        void *ctx);

/* Calls |on_workload| for every workload, in no particular order; returns
 * how many. */
size_t mt_cluster_state_foreach_workload(const mt_cluster_state *state,
                                         void (*on_workload)(void *ctx,
                                                             const mt_cluster_workload *w),
                                         void *ctx);

/* The names of the Services in |w|'s namespace whose spec.selector selects
 * its pod (mt_k8s_service_selects): up to |max| of them, sorted, into
 * |names| (borrowed until the next apply). Returns how many there are in
 * all. Scans every Service: O(services) per call. */
size_t mt_cluster_state_services_selecting(const mt_cluster_state *state,
                                           const mt_cluster_workload *w, const char **names,
                                           size_t max);

/* One ready endpoint of a Service address, where kube-proxy would send
 * the connection: the endpoint's IP (canonical text) and the target port
 * resolved for it. Borrowed for the call. */
typedef struct {
  const char *ip;
  uint16_t port;
  const char *spiffe_id;
} mt_cluster_endpoint;

/* One mesh Service address and the identities accepted there: |ip| in
 * canonical text, the sorted unique identities of its ready endpoints
 * (|num_ids| may be 0), and those endpoints themselves (see
 * mt_cluster_state_foreach_service_address). Borrowed for the call. */
typedef void (*mt_cluster_on_service_address)(void *ctx, const char *ip, uint16_t port,
                                              const char *const *ids, size_t num_ids,
                                              const mt_cluster_endpoint *endpoints,
                                              size_t num_endpoints);

/* Calls |on_address| for every ClusterIP:port of every Service in a mesh
 * namespace. Indexes pods and slices once per call (not per service), so
 * a whole cluster costs O((pods + endpoints) log n). Returns 1, or 0 when
 * out of memory (some calls may have been made).
 *
 * The endpoints of ClusterIP:port are chosen as kube-proxy chooses them:
 * from the Service's EndpointSlices of the ClusterIP's family (an IPv4
 * ClusterIP gets IPv4 endpoints), the slice port named as the Service port
 * (whether its targetPort is a number or a name, the slice port carries
 * the number; a slice without that port contributes nothing to it), each
 * ready endpoint's first address. Only endpoints that are mesh workloads
 * are listed (with their identity), and only for TCP ports; sorted by IP
 * text, then port, without repeats. */
int mt_cluster_state_foreach_service_address(const mt_cluster_state *state,
                                             mt_cluster_on_service_address on_address, void *ctx);

/* The identities accepted for Service address |ip|:|port|: up to |max| of
 * them, sorted and unique, into |ids| (borrowed until the next apply).
 * Returns how many there are in all (0: not a mesh service's address). */
size_t mt_cluster_state_service_ids(const mt_cluster_state *state, const char *ip, uint16_t port,
                                    const char **ids, size_t max);

/* Every workload and every service address with its identities, one per
 * line, sorted: a canonical text for tests and debugging. Caller frees. */
char *mt_cluster_state_dump(const mt_cluster_state *state);

#ifdef __cplusplus
}
#endif

#endif /* MT_CP_CLUSTER_STATE_H */
