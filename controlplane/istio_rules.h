/* istio_rules: an AuthorizationPolicy's spec.rules -> mesh.proto Rule
 * messages in the Istio form, at L4, with ztunnel's reduction of the
 * fields that need HTTP (istio_policy.h states the semantics). Private to
 * the istio_policy library.
 *
 * The rules come back in a Policy message used only as a list (its
 * default_action and allow_policies unset), owned by protobuf-c: free it
 * with mtlsd__mesh__v1__policy__free_unpacked(list, NULL). */
#ifndef MT_CP_ISTIO_RULES_H
#define MT_CP_ISTIO_RULES_H

#include <jansson.h>
#include <stddef.h>

#include "proto/mtlsd/mesh.pb-c.h"

enum {
  MT_ISTIO_MAX_RULES = 256,   /* spec.rules entries */
  MT_ISTIO_MAX_CLAUSES = 256, /* from, to or when entries of one rule */
};

/* Decodes spec.rules of |spec| (an object, or NULL for none) of the policy
 * |ns|/|name|, whose action is DENY when |deny| (else ALLOW): one rule
 * per entry, named "<ns>/<name>[<index>]". Returns 1 with the list in
 * |*out| and, when some rule was reduced, "rules[<i>]: <why>; ..." in
 * |*reduced| (malloc'd; NULL when none was); or 0 with "<field>: <why>" in
 * |err|. */
int mt_istio_rules_decode(const json_t *spec, const char *ns, const char *name, int deny,
                          Mtlsd__Mesh__V1__Policy **out, char **reduced, char *err, size_t err_len);

/* A refused policy's whole effect: one DENY rule named "<ns>/<name>" that
 * matches every connection, its `reduced` quoting |why|. NULL when out of
 * memory. */
Mtlsd__Mesh__V1__Policy *mt_istio_rules_deny_all(const char *ns, const char *name, const char *why);

#endif /* MT_CP_ISTIO_RULES_H */
