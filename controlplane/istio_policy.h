/* istio_policy: Istio's security objects -- AuthorizationPolicy and
 * PeerAuthentication, security.istio.io/v1 and v1beta1 (one schema) --
 * held as the Kubernetes API describes them and compiled, per workload,
 * into mtlsd's own terms (proto/mtlsd/mesh.proto: Policy with Istio-form
 * rules, PeerAuthentication) with Istio's semantics at L4. Pure: no I/O,
 * no clock, no logging; fed one watch event at a time.
 *
 * AuthorizationPolicy scope: in the root namespace (options) every
 * workload of the mesh; elsewhere the workloads of its namespace;
 * `selector.matchLabels` narrows to the pods whose labels hold every
 * pair; `targetRefs` (or the older `targetRef`) of kind Service (group ""
 * or "core") to the pods that Service selects (the caller says which, see
 * mt_istio_workload). Other targetRef kinds (Gateway, ...) select no mtlsd
 * workload. selector and targetRefs together: refused.
 *
 * Compiled per workload: the DENY rules of every policy that selects it,
 * then the ALLOW rules, each named "<ns>/<name>[<index in spec.rules>]",
 * policies ordered by namespace then name; default_action DENY when at
 * least one ALLOW policy selects it (allow_policies lists them, even those
 * without rules: Istio's "ALLOW with no rules matches nothing" and
 * `spec: {}` deny all), else ALLOW.
 *
 * L7 at L4, as ztunnel does (fail closed): a rule that needs HTTP
 * (to.operation hosts/notHosts/methods/notMethods/paths/notPaths,
 * from.source requestPrincipals/notRequestPrincipals/remoteIpBlocks/
 * notRemoteIpBlocks, `when` keys other than source.ip, source.namespace,
 * source.principal, destination.ip, destination.port) is, in an ALLOW policy, kept with never_matches set
 * (it grants nothing); in a DENY policy, kept without the L7 parts (it
 * denies more: everything its L4 parts match). `reduced` says which fields
 * and why; the object's status (below) is MT_ISTIO_REDUCED.
 *
 * Refusals, fail closed: an object that does not decode (a wrong type, a
 * bad principal, an ipBlock that is not a CIDR, a port out of 1..65535, ...)
 * or whose action is CUSTOM or an unknown word is held as refused and
 * compiles, for every workload in its scope (its namespace, or the mesh
 * for the root namespace; narrowed by its selector when that part decoded),
 * into one DENY rule named "<ns>/<name>" that matches everything, with
 * `reduced` saying why. An AUDIT policy is refused without effect on
 * decisions (auditing never allows or denies). Both are reported by
 * mt_istio_policies_foreach as MT_ISTIO_REFUSED with the reason.
 *
 * PeerAuthentication: the most specific applies -- a workload's own
 * (selector matches; several: the oldest by creationTimestamp, then by
 * name), else its namespace's (no selector; several: the oldest), else the
 * root namespace's (no selector), else the options' default mode. UNSET
 * inherits from the next level. portLevelMtls counts only in a policy with
 * a selector (as Istio); a port's UNSET inherits the workload's resolved
 * mode. A PeerAuthentication that does not decode is refused and fails
 * closed: the workloads in its scope get STRICT.
 */
#ifndef MT_CP_ISTIO_POLICY_H
#define MT_CP_ISTIO_POLICY_H

#include <jansson.h>
#include <stddef.h>

#include "controlplane/cluster_state.h"
#include "controlplane/k8s_objects.h"
#include "proto/mtlsd/mesh.pb-c.h"

#ifdef __cplusplus
extern "C" {
#endif

#define MT_ISTIO_DEFAULT_ROOT_NAMESPACE "istio-system"

typedef enum {
  MT_ISTIO_AUTHORIZATION_POLICY,
  MT_ISTIO_PEER_AUTHENTICATION,
} mt_istio_kind;

typedef struct {
  /* Where mesh-wide policies live; NULL: MT_ISTIO_DEFAULT_ROOT_NAMESPACE. */
  const char *root_namespace;
  /* The mode when no PeerAuthentication applies; MTLS_MODE_UNSPECIFIED
   * means PERMISSIVE, Istio's default. */
  Mtlsd__Mesh__V1__MtlsMode default_mode;
} mt_istio_options;

typedef struct mt_istio_policies mt_istio_policies;

/* Returns NULL when out of memory; |options| copied. */
mt_istio_policies *mt_istio_policies_new(const mt_istio_options *options);
void mt_istio_policies_free(mt_istio_policies *policies); /* accepts NULL */

/* One watch event about one object (API JSON, borrowed; apiVersion v1 or
 * v1beta1). Returns 1 when the object was held as it is (applied or
 * reduced), 0 with "object refused: <ns>/<name>: <field>: <why>" in |err|
 * when it was refused -- it is then held as refused when its namespace and
 * name could be read (fail closed, above), else ignored. Removing an
 * unknown object is a no-op (returns 1). */
int mt_istio_policies_apply(mt_istio_policies *policies, mt_istio_kind kind,
                            mt_cluster_change change, const json_t *object, char *err,
                            size_t err_len);

/* Forgets every object (before a relist that replays them all). */
void mt_istio_policies_clear(mt_istio_policies *policies, mt_istio_kind kind);

size_t mt_istio_policies_count(const mt_istio_policies *policies, mt_istio_kind kind);

typedef enum {
  MT_ISTIO_APPLIED, /* compiled as written */
  MT_ISTIO_REDUCED, /* some rules changed for L4 (detail says which and why) */
  MT_ISTIO_REFUSED, /* not applied as written: AUDIT, CUSTOM, undecodable (detail) */
} mt_istio_status;

const char *mt_istio_status_str(mt_istio_status status); /* "applied", ... */

/* Every held object, sorted by kind, namespace, name; strings borrowed for
 * the call. |detail| is "" for MT_ISTIO_APPLIED. */
typedef void (*mt_istio_on_object)(void *ctx, mt_istio_kind kind, const char *ns,
                                   const char *name, mt_istio_status status, const char *detail);
void mt_istio_policies_foreach(const mt_istio_policies *policies, mt_istio_on_object on_object,
                               void *ctx);

/* The facts about one workload (pod) that decide what selects it.
 * Borrowed for the call. */
typedef struct {
  const char *ns;
  const mt_k8s_label *labels;
  size_t num_labels;
  /* Names of the Services in |ns| whose spec.selector selects the pod
   * (for targetRefs). */
  const char *const *services;
  size_t num_services;
} mt_istio_workload;

typedef struct mt_istio_compiled mt_istio_compiled;

/* What applies to |workload|. Returns NULL when out of memory. */
mt_istio_compiled *mt_istio_compile(const mt_istio_policies *policies,
                                    const mt_istio_workload *workload);
void mt_istio_compiled_free(mt_istio_compiled *compiled); /* accepts NULL */

/* Borrowed from |compiled|; never NULL. */
const Mtlsd__Mesh__V1__Policy *mt_istio_compiled_policy(const mt_istio_compiled *compiled);
const Mtlsd__Mesh__V1__PeerAuthentication *mt_istio_compiled_peer_authentication(
    const mt_istio_compiled *compiled);

#ifdef __cplusplus
}
#endif

#endif /* MT_CP_ISTIO_POLICY_H */
