/* policy_proto: a mesh.proto Policy message -> an mt_policy, validated
 * as strictly as the YAML config (native rules) and as policy.h says for
 * Istio-form rules. Used by the Watch stream's snapshots and by anything
 * that must judge a control plane's policy exactly as an agent would
 * (the Istio conformance table). */
#ifndef MT_POLICY_PROTO_H
#define MT_POLICY_PROTO_H

#include <stddef.h>

#include "agent/policy.h"
#include "proto/mtlsd/mesh.pb-c.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Returns the policy, or NULL with "rules[3]: ..." (or the like) in |err|. */
mt_policy *mt_policy_from_proto(const Mtlsd__Mesh__V1__Policy *message, char *err,
                                size_t err_len);

#ifdef __cplusplus
}
#endif

#endif /* MT_POLICY_PROTO_H */
