/* istio_policy: the held Istio objects and their compilation per workload.
 * See istio_policy.h for the semantics; istio_rules.c decodes the rules. */
#include "controlplane/istio_policy.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "controlplane/istio_json.h"
#include "controlplane/istio_rules.h"

enum {
  ERR_MAX = 512,
  TIMESTAMP_MAX = 64,
  MAX_TARGET_REFS = 64,
  MAX_PORT_LEVEL_MTLS = 1024,
  SOURCE_NAME_MAX = 2 * MT_K8S_NAME_MAX + 2, /* "<ns>/<name>" */
};

static const char kApiGroupPrefix[] = "security.istio.io/";

/* What an AuthorizationPolicy does to the workloads it selects. */
typedef enum {
  EFFECT_NONE,     /* AUDIT: nothing */
  EFFECT_ALLOW,    /* its rules join the ALLOW rules; it makes the default DENY */
  EFFECT_DENY,     /* its rules join the DENY rules */
  EFFECT_DENY_ALL, /* refused: its one deny-everything rule */
} ap_effect;

typedef struct {
  uint32_t port;
  Mtlsd__Mesh__V1__MtlsMode mode; /* UNSPECIFIED: UNSET */
} port_mode;

/* One object as held: what decides its scope, and what it contributes. */
typedef struct {
  char *ns, *name;
  char *created; /* metadata.creationTimestamp (RFC 3339, compared as text); "" when absent */
  mt_istio_status status;
  char *detail; /* "" when applied */

  /* Scope. When it did not decode (a refused object), the object covers
   * its whole namespace (the mesh for the root namespace). */
  int scope_decoded;
  mt_k8s_label *match_labels; /* selector.matchLabels; none: no selector */
  size_t num_match_labels;
  int has_target_refs;    /* targetRefs / targetRef given: only these select */
  char **target_services; /* names of the targeted Services */
  size_t num_target_services;

  /* AuthorizationPolicy */
  ap_effect effect;
  Mtlsd__Mesh__V1__Policy *rules; /* a list (istio_rules.h); NULL when none */

  /* PeerAuthentication */
  int refused;                    /* fails closed: STRICT in its scope */
  Mtlsd__Mesh__V1__MtlsMode mode; /* UNSPECIFIED: UNSET */
  port_mode *ports;               /* portLevelMtls, sorted by port */
  size_t num_ports;
} held;

/* Held objects of one kind, sorted by namespace, then name. */
typedef struct {
  held **items;
  size_t num, cap;
} held_list;

struct mt_istio_policies {
  char *root_ns;
  Mtlsd__Mesh__V1__MtlsMode default_mode;
  held_list lists[2]; /* by mt_istio_kind */
};

struct mt_istio_compiled {
  Mtlsd__Mesh__V1__Policy *policy;
  Mtlsd__Mesh__V1__PeerAuthentication *peer_authentication;
};

/* ---- held objects ---- */

static void held_free(held *h) {
  if (h == NULL) return;
  free(h->ns);
  free(h->name);
  free(h->created);
  free(h->detail);
  for (size_t i = 0; i < h->num_match_labels; i++) {
    free(h->match_labels[i].key);
    free(h->match_labels[i].value);
  }
  free(h->match_labels);
  for (size_t i = 0; i < h->num_target_services; i++) free(h->target_services[i]);
  free(h->target_services);
  if (h->rules != NULL) mtlsd__mesh__v1__policy__free_unpacked(h->rules, NULL);
  free(h->ports);
  free(h);
}

static int compare_names(const char *ns_a, const char *name_a, const char *ns_b,
                         const char *name_b) {
  int c = strcmp(ns_a, ns_b);
  return c != 0 ? c : strcmp(name_a, name_b);
}

/* The index of |ns|/|name|, or where it would go (|*found| says which). */
static size_t list_find(const held_list *list, const char *ns, const char *name, int *found) {
  size_t lo = 0, hi = list->num;
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    int c = compare_names(list->items[mid]->ns, list->items[mid]->name, ns, name);
    if (c == 0) {
      *found = 1;
      return mid;
    }
    if (c < 0) {
      lo = mid + 1;
    } else {
      hi = mid;
    }
  }
  *found = 0;
  return lo;
}

/* Takes |h|, replacing any object of the same name. 0 when out of memory
 * (|h| is then not taken). */
static int list_upsert(held_list *list, held *h) {
  int found;
  size_t at = list_find(list, h->ns, h->name, &found);
  if (found) {
    held_free(list->items[at]);
    list->items[at] = h;
    return 1;
  }
  if (list->num == list->cap) {
    size_t cap = list->cap ? list->cap * 2 : 16;
    held **items = realloc(list->items, cap * sizeof(*items));
    if (items == NULL) return 0;
    list->items = items;
    list->cap = cap;
  }
  memmove(&list->items[at + 1], &list->items[at], (list->num - at) * sizeof(*list->items));
  list->items[at] = h;
  list->num++;
  return 1;
}

static void list_remove(held_list *list, const char *ns, const char *name) {
  int found;
  size_t at = list_find(list, ns, name, &found);
  if (!found) return;
  held_free(list->items[at]);
  memmove(&list->items[at], &list->items[at + 1], (list->num - at - 1) * sizeof(*list->items));
  list->num--;
}

static void list_clear(held_list *list) {
  for (size_t i = 0; i < list->num; i++) held_free(list->items[i]);
  free(list->items);
  memset(list, 0, sizeof(*list));
}

/* ---- decoding what both kinds share ---- */

static int refuse(char *err, const char *field, const char *why) {
  return mt_istio_refuse(err, ERR_MAX, field, why);
}

/* apiVersion and kind, when present (list items may omit them), must be
 * this kind in security.istio.io v1 or v1beta1 (one schema). */
static int check_type(const json_t *object, mt_istio_kind kind, char *err) {
  const json_t *api_version = mt_istio_member(object, "apiVersion");
  const json_t *object_kind = mt_istio_member(object, "kind");
  if (api_version != NULL && !json_is_null(api_version)) {
    const char *v = json_is_string(api_version) ? json_string_value(api_version) : "";
    if (strncmp(v, kApiGroupPrefix, sizeof(kApiGroupPrefix) - 1) != 0 ||
        (strcmp(v + sizeof(kApiGroupPrefix) - 1, "v1") != 0 &&
         strcmp(v + sizeof(kApiGroupPrefix) - 1, "v1beta1") != 0))
      return refuse(err, "apiVersion", "not security.istio.io/v1 or v1beta1");
  }
  if (object_kind != NULL && !json_is_null(object_kind)) {
    const char *want =
        kind == MT_ISTIO_AUTHORIZATION_POLICY ? "AuthorizationPolicy" : "PeerAuthentication";
    if (!json_is_string(object_kind) || strcmp(json_string_value(object_kind), want) != 0)
      return refuse(err, "kind", "not the kind being watched");
  }
  return 1;
}

/* metadata.creationTimestamp as the API writes it ("2024-05-01T10:00:00Z"):
 * the API formats every timestamp alike, so text order is time order. */
static int decode_created(const json_t *object, held *h, char *err) {
  const json_t *v = mt_istio_member(mt_istio_member(object, "metadata"), "creationTimestamp");
  const char *text = "";
  if (v != NULL && !json_is_null(v)) {
    if (!mt_istio_text(v, TIMESTAMP_MAX, "metadata.creationTimestamp", &text, err, ERR_MAX))
      return 0;
    for (const char *p = text; *p; p++) {
      if (!((*p >= '0' && *p <= '9') || strchr("-:.TZ+", *p) != NULL))
        return refuse(err, "metadata.creationTimestamp", "not an RFC 3339 time");
    }
  }
  h->created = strdup(text);
  return h->created != NULL || refuse(err, "metadata.creationTimestamp", "out of memory");
}

static int decode_match_labels(const json_t *spec, held *h, char *err) {
  const json_t *selector, *labels;
  if (!mt_istio_optional_object(spec, "selector", "spec.selector", &selector, err, ERR_MAX) ||
      !mt_istio_optional_object(selector, "matchLabels", "spec.selector.matchLabels", &labels, err,
                                ERR_MAX))
    return 0;
  if (labels == NULL || json_object_size(labels) == 0) return 1;
  if (json_object_size(labels) > MT_K8S_MAX_LABELS)
    return refuse(err, "spec.selector.matchLabels", "too many labels");
  h->match_labels = calloc(json_object_size(labels), sizeof(*h->match_labels));
  if (h->match_labels == NULL) return refuse(err, "spec.selector.matchLabels", "out of memory");
  const char *key;
  const json_t *value;
  json_object_foreach((json_t *)labels, key, value) {
    const char *text;
    if (key[0] == '\0' || strlen(key) > MT_K8S_LABEL_KEY_MAX)
      return refuse(err, "spec.selector.matchLabels", "bad label key");
    /* A label value may be empty, unlike every other value here. */
    if (!(json_is_string(value) && json_string_length(value) == 0) &&
        !mt_istio_text(value, MT_K8S_LABEL_VALUE_MAX, "spec.selector.matchLabels", &text, err,
                       ERR_MAX))
      return 0;
    mt_k8s_label *label = &h->match_labels[h->num_match_labels++];
    label->key = strdup(key);
    label->value = strdup(json_string_value(value));
    if (label->key == NULL || label->value == NULL)
      return refuse(err, "spec.selector.matchLabels", "out of memory");
  }
  return 1;
}

/* One targetRef: Services are kept by name; other kinds select nothing. */
static int decode_target_ref(const json_t *ref, const char *field, const char *policy_ns, held *h,
                             char *err) {
  char sub[MT_ISTIO_FIELD_MAX];
  const char *group = "", *kind, *name, *ref_ns;
  if (!json_is_object(ref)) return refuse(err, field, "not an object");
  const json_t *group_v = mt_istio_member(ref, "group");
  mt_istio_join(sub, sizeof(sub), field, ".", "group");
  if (group_v != NULL && !json_is_null(group_v) &&
      !(json_is_string(group_v) && json_string_length(group_v) == 0) &&
      !mt_istio_text(group_v, MT_K8S_NAME_MAX, sub, &group, err, ERR_MAX))
    return 0;
  mt_istio_join(sub, sizeof(sub), field, ".", "kind");
  if (!mt_istio_text(mt_istio_member(ref, "kind"), MT_K8S_NAME_MAX, sub, &kind, err, ERR_MAX))
    return 0;
  mt_istio_join(sub, sizeof(sub), field, ".", "name");
  if (!mt_istio_text(mt_istio_member(ref, "name"), MT_K8S_NAME_MAX, sub, &name, err, ERR_MAX))
    return 0;
  const json_t *ns_v = mt_istio_member(ref, "namespace");
  mt_istio_join(sub, sizeof(sub), field, ".", "namespace");
  if (ns_v != NULL && !json_is_null(ns_v) &&
      !(json_is_string(ns_v) && json_string_length(ns_v) == 0)) {
    if (!mt_istio_text(ns_v, MT_K8S_NAME_MAX, sub, &ref_ns, err, ERR_MAX)) return 0;
    if (strcmp(ref_ns, policy_ns) != 0)
      return refuse(err, sub, "not the policy's namespace (Istio refuses cross-namespace refs)");
  }
  if (strcmp(kind, "Service") != 0 || (strcmp(group, "") != 0 && strcmp(group, "core") != 0))
    return 1;
  char *copy = strdup(name);
  if (copy == NULL) return refuse(err, field, "out of memory");
  h->target_services[h->num_target_services++] = copy;
  return 1;
}

static int decode_target_refs(const json_t *spec, const char *policy_ns, held *h, char *err) {
  const json_t *refs, *single = mt_istio_member(spec, "targetRef");
  if (!mt_istio_optional_array(spec, "targetRefs", MAX_TARGET_REFS, "spec.targetRefs", &refs, err,
                               ERR_MAX))
    return 0;
  if (refs != NULL && json_array_size(refs) == 0) refs = NULL;
  if (single != NULL && json_is_null(single)) single = NULL;
  if (refs != NULL && single != NULL)
    return refuse(err, "spec.targetRef", "cannot be set with spec.targetRefs");
  if (refs == NULL && single == NULL) return 1;
  h->has_target_refs = 1;
  h->target_services = calloc(refs ? json_array_size(refs) : 1, sizeof(char *));
  if (h->target_services == NULL) return refuse(err, "spec.targetRefs", "out of memory");
  if (single != NULL) return decode_target_ref(single, "spec.targetRef", policy_ns, h, err);
  size_t i;
  const json_t *ref;
  json_array_foreach(refs, i, ref) {
    char field[MT_ISTIO_FIELD_MAX];
    mt_istio_index(field, sizeof(field), "spec.targetRefs", i);
    if (!decode_target_ref(ref, field, policy_ns, h, err)) return 0;
  }
  return 1;
}

/* selector and targetRefs. On failure the object's scope stays its whole
 * namespace (a refused object fails closed there). */
static int decode_scope(const json_t *spec, mt_istio_kind kind, held *h, char *err) {
  int ok = decode_match_labels(spec, h, err) &&
           (kind == MT_ISTIO_PEER_AUTHENTICATION || decode_target_refs(spec, h->ns, h, err));
  if (ok && h->num_match_labels > 0 && h->has_target_refs)
    ok = refuse(err, "spec.targetRefs", "cannot be set with spec.selector");
  h->scope_decoded = ok;
  return ok;
}

/* spec: absent or null reads as {} (an ALLOW policy without rules). */
static int decode_spec(const json_t *object, const json_t **spec, char *err) {
  return mt_istio_optional_object(object, "spec", "spec", spec, err, ERR_MAX);
}

/* ---- AuthorizationPolicy ---- */

/* spec.action; sets h->effect to what the object does if refused after
 * this point (AUDIT: nothing; CUSTOM, unknown: deny all). */
static int decode_action(const json_t *spec, held *h, char *err) {
  const json_t *v = mt_istio_member(spec, "action");
  h->effect = EFFECT_DENY_ALL;
  if (v == NULL || json_is_null(v)) {
    h->effect = EFFECT_ALLOW;
    return 1;
  }
  const char *action = json_is_string(v) ? json_string_value(v) : NULL;
  if (action == NULL) return refuse(err, "spec.action", "not a string");
  if (strcmp(action, "ALLOW") == 0) {
    h->effect = EFFECT_ALLOW;
    return 1;
  }
  if (strcmp(action, "DENY") == 0) {
    h->effect = EFFECT_DENY;
    return 1;
  }
  if (strcmp(action, "AUDIT") == 0) {
    h->effect = EFFECT_NONE;
    return refuse(err, "spec.action",
                  "AUDIT is not supported (auditing never allows or denies): no effect");
  }
  if (strcmp(action, "CUSTOM") == 0)
    return refuse(err, "spec.action", "CUSTOM (an external authorizer) is not supported");
  return refuse(err, "spec.action", "not ALLOW, DENY, AUDIT or CUSTOM");
}

static int decode_authorization_policy(const json_t *object, held *h, char *err) {
  const json_t *spec = NULL;
  char scope_err[ERR_MAX];
  /* The scope first and whatever else fails: a refused policy still
   * fails closed only where its selector points, when that decoded. */
  int spec_ok = decode_spec(object, &spec, err);
  int scope_ok = spec_ok && decode_scope(spec, MT_ISTIO_AUTHORIZATION_POLICY, h, scope_err);
  h->effect = EFFECT_DENY_ALL;
  int ok = spec_ok && check_type(object, MT_ISTIO_AUTHORIZATION_POLICY, err) &&
           decode_action(spec, h, err) && decode_created(object, h, err);
  if (ok && !scope_ok) {
    snprintf(err, ERR_MAX, "%s", scope_err);
    ok = 0;
  }
  char *reduced = NULL;
  ok = ok && mt_istio_rules_decode(spec, h->ns, h->name, h->effect == EFFECT_DENY, &h->rules,
                                   &reduced, err, ERR_MAX);
  if (!ok) return 0;
  h->status = reduced ? MT_ISTIO_REDUCED : MT_ISTIO_APPLIED;
  h->detail = reduced ? reduced : strdup("");
  return h->detail != NULL || refuse(err, "spec", "out of memory");
}

/* ---- PeerAuthentication ---- */

static int decode_mode(const json_t *parent, const char *field, Mtlsd__Mesh__V1__MtlsMode *out,
                       char *err) {
  static const struct {
    const char *word;
    Mtlsd__Mesh__V1__MtlsMode mode;
  } kModes[] = {
      {"UNSET", MTLSD__MESH__V1__MTLS_MODE__MTLS_MODE_UNSPECIFIED},
      {"STRICT", MTLSD__MESH__V1__MTLS_MODE__STRICT},
      {"PERMISSIVE", MTLSD__MESH__V1__MTLS_MODE__PERMISSIVE},
      {"DISABLE", MTLSD__MESH__V1__MTLS_MODE__DISABLE},
  };
  const json_t *v = mt_istio_member(parent, "mode");
  *out = MTLSD__MESH__V1__MTLS_MODE__MTLS_MODE_UNSPECIFIED;
  if (v == NULL || json_is_null(v)) return 1;
  if (!json_is_string(v)) return refuse(err, field, "not a string");
  for (size_t i = 0; i < sizeof(kModes) / sizeof(kModes[0]); i++) {
    if (strcmp(json_string_value(v), kModes[i].word) == 0) {
      *out = kModes[i].mode;
      return 1;
    }
  }
  return refuse(err, field, "not UNSET, STRICT, PERMISSIVE or DISABLE");
}

static int compare_port_modes(const void *a, const void *b) {
  uint32_t pa = ((const port_mode *)a)->port, pb = ((const port_mode *)b)->port;
  return (pa > pb) - (pa < pb);
}

static int decode_port_level_mtls(const json_t *spec, held *h, char *err) {
  const json_t *ports;
  if (!mt_istio_optional_object(spec, "portLevelMtls", "spec.portLevelMtls", &ports, err, ERR_MAX))
    return 0;
  if (ports == NULL || json_object_size(ports) == 0) return 1;
  if (json_object_size(ports) > MAX_PORT_LEVEL_MTLS)
    return refuse(err, "spec.portLevelMtls", "too many ports");
  h->ports = calloc(json_object_size(ports), sizeof(*h->ports));
  if (h->ports == NULL) return refuse(err, "spec.portLevelMtls", "out of memory");
  const char *key;
  const json_t *value;
  json_object_foreach((json_t *)ports, key, value) {
    char field[MT_ISTIO_FIELD_MAX];
    snprintf(field, sizeof(field), "spec.portLevelMtls[%.8s]", key);
    unsigned port;
    if (!mt_istio_port(key, &port)) return refuse(err, field, "not a port in 1..65535");
    if (!json_is_object(value)) return refuse(err, field, "not an object");
    port_mode *entry = &h->ports[h->num_ports++];
    entry->port = port;
    strncat(field, ".mode", sizeof(field) - strlen(field) - 1);
    if (!decode_mode(value, field, &entry->mode, err)) return 0;
  }
  qsort(h->ports, h->num_ports, sizeof(*h->ports), compare_port_modes);
  return 1;
}

static int decode_peer_authentication(const json_t *object, held *h, char *err) {
  const json_t *spec = NULL, *mtls;
  char scope_err[ERR_MAX];
  int spec_ok = decode_spec(object, &spec, err);
  int scope_ok = spec_ok && decode_scope(spec, MT_ISTIO_PEER_AUTHENTICATION, h, scope_err);
  int ok = spec_ok && check_type(object, MT_ISTIO_PEER_AUTHENTICATION, err) &&
           decode_created(object, h, err);
  if (ok && !scope_ok) {
    snprintf(err, ERR_MAX, "%s", scope_err);
    ok = 0;
  }
  ok = ok && mt_istio_optional_object(spec, "mtls", "spec.mtls", &mtls, err, ERR_MAX) &&
       decode_mode(mtls, "spec.mtls.mode", &h->mode, err) && decode_port_level_mtls(spec, h, err);
  if (!ok) return 0;
  h->status = MT_ISTIO_APPLIED;
  h->detail = strdup("");
  return h->detail != NULL || refuse(err, "spec", "out of memory");
}

/* ---- the store ---- */

mt_istio_policies *mt_istio_policies_new(const mt_istio_options *options) {
  mt_istio_policies *p = calloc(1, sizeof(*p));
  if (p == NULL) return NULL;
  const char *root = options && options->root_namespace ? options->root_namespace
                                                        : MT_ISTIO_DEFAULT_ROOT_NAMESPACE;
  p->root_ns = strdup(root);
  p->default_mode = options ? options->default_mode : MTLSD__MESH__V1__MTLS_MODE__PERMISSIVE;
  if (p->default_mode != MTLSD__MESH__V1__MTLS_MODE__STRICT &&
      p->default_mode != MTLSD__MESH__V1__MTLS_MODE__DISABLE)
    p->default_mode = MTLSD__MESH__V1__MTLS_MODE__PERMISSIVE;
  if (p->root_ns == NULL) {
    free(p);
    return NULL;
  }
  return p;
}

void mt_istio_policies_free(mt_istio_policies *policies) {
  if (policies == NULL) return;
  list_clear(&policies->lists[MT_ISTIO_AUTHORIZATION_POLICY]);
  list_clear(&policies->lists[MT_ISTIO_PEER_AUTHENTICATION]);
  free(policies->root_ns);
  free(policies);
}

/* What a refused object becomes: status and detail, and for an
 * AuthorizationPolicy its deny-everything rule (none for AUDIT). */
static int hold_refused(held *h, mt_istio_kind kind, const char *why) {
  free(h->detail);
  if (h->rules != NULL) mtlsd__mesh__v1__policy__free_unpacked(h->rules, NULL);
  h->rules = NULL;
  h->status = MT_ISTIO_REFUSED;
  h->detail = strdup(why);
  if (h->detail == NULL) return 0;
  if (kind == MT_ISTIO_PEER_AUTHENTICATION) {
    h->refused = 1;
    return 1;
  }
  if (h->effect == EFFECT_NONE) return 1;
  h->effect = EFFECT_DENY_ALL;
  h->rules = mt_istio_rules_deny_all(h->ns, h->name, why);
  return h->rules != NULL;
}

int mt_istio_policies_apply(mt_istio_policies *policies, mt_istio_kind kind,
                            mt_cluster_change change, const json_t *object, char *err,
                            size_t err_len) {
  mt_k8s_meta meta;
  char why[ERR_MAX];
  if (!mt_k8s_meta_decode(object, 1, &meta, err, err_len)) return 0;
  held_list *list = &policies->lists[kind];
  if (change == MT_CLUSTER_REMOVE) {
    list_remove(list, meta.ns, meta.name);
    mt_k8s_meta_clear(&meta);
    return 1;
  }
  held *h = calloc(1, sizeof(*h));
  int ok = 0;
  if (h != NULL) {
    h->ns = meta.ns;
    h->name = meta.name;
    meta.ns = meta.name = NULL;
    why[0] = '\0';
    ok = kind == MT_ISTIO_AUTHORIZATION_POLICY ? decode_authorization_policy(object, h, why)
                                               : decode_peer_authentication(object, h, why);
  }
  /* Out of memory on the way keeps the object held before, whatever it
   * said: dropping it could open what it closed. */
  int stored = h != NULL && (ok || hold_refused(h, kind, why)) && list_upsert(list, h);
  if (!stored) {
    snprintf(err, err_len, "object refused: %s/%s: out of memory", h ? h->ns : "?",
             h ? h->name : "?");
    held_free(h);
  } else if (!ok) {
    snprintf(err, err_len, "object refused: %s/%s: %s", h->ns, h->name, why);
  }
  mt_k8s_meta_clear(&meta);
  return stored && ok;
}

void mt_istio_policies_clear(mt_istio_policies *policies, mt_istio_kind kind) {
  list_clear(&policies->lists[kind]);
}

size_t mt_istio_policies_count(const mt_istio_policies *policies, mt_istio_kind kind) {
  return policies->lists[kind].num;
}

const char *mt_istio_status_str(mt_istio_status status) {
  switch (status) {
    case MT_ISTIO_APPLIED: return "applied";
    case MT_ISTIO_REDUCED: return "reduced";
    case MT_ISTIO_REFUSED: return "refused";
  }
  return "unknown";
}

void mt_istio_policies_foreach(const mt_istio_policies *policies, mt_istio_on_object on_object,
                               void *ctx) {
  static const mt_istio_kind kKinds[] = {MT_ISTIO_AUTHORIZATION_POLICY,
                                         MT_ISTIO_PEER_AUTHENTICATION};
  for (size_t k = 0; k < 2; k++) {
    const held_list *list = &policies->lists[kKinds[k]];
    for (size_t i = 0; i < list->num; i++) {
      const held *h = list->items[i];
      on_object(ctx, kKinds[k], h->ns, h->name, h->status, h->detail);
    }
  }
}

/* ---- compiling for one workload ---- */

static int labels_match(const held *h, const mt_istio_workload *w) {
  for (size_t i = 0; i < h->num_match_labels; i++) {
    int found = 0;
    for (size_t j = 0; j < w->num_labels && !found; j++) {
      found = strcmp(w->labels[j].key, h->match_labels[i].key) == 0 &&
              strcmp(w->labels[j].value, h->match_labels[i].value) == 0;
    }
    if (!found) return 0;
  }
  return 1;
}

static int targets_workload(const held *h, const mt_istio_workload *w) {
  if (strcmp(h->ns, w->ns) != 0) return 0; /* a targeted Service is in the policy's namespace */
  for (size_t i = 0; i < h->num_target_services; i++) {
    for (size_t j = 0; j < w->num_services; j++) {
      if (strcmp(h->target_services[i], w->services[j]) == 0) return 1;
    }
  }
  return 0;
}

/* The object's namespace (or the mesh), narrowed by its selector or
 * targetRefs when they decoded. */
static int selects(const mt_istio_policies *p, const held *h, const mt_istio_workload *w) {
  if (strcmp(h->ns, p->root_ns) != 0 && strcmp(h->ns, w->ns) != 0) return 0;
  if (!h->scope_decoded) return 1;
  if (h->has_target_refs) return targets_workload(h, w);
  return labels_match(h, w);
}

static int compile_policy(const mt_istio_policies *p, const mt_istio_workload *w,
                          mt_istio_compiled *out) {
  const held_list *list = &p->lists[MT_ISTIO_AUTHORIZATION_POLICY];
  size_t num_rules = 0, num_allow = 0;
  for (size_t i = 0; i < list->num; i++) {
    const held *h = list->items[i];
    if (h->effect == EFFECT_NONE || !selects(p, h, w)) continue;
    if (h->rules != NULL) num_rules += h->rules->n_rules;
    if (h->effect == EFFECT_ALLOW) num_allow++;
  }
  Mtlsd__Mesh__V1__Rule **rules = calloc(num_rules + 1, sizeof(*rules));
  char **allow = calloc(num_allow + 1, sizeof(*allow));
  char *names = calloc(num_allow + 1, SOURCE_NAME_MAX);
  int ok = rules != NULL && allow != NULL && names != NULL;
  Mtlsd__Mesh__V1__Policy policy = MTLSD__MESH__V1__POLICY__INIT;
  /* DENY rules (refused policies' included) first, then ALLOW rules. */
  for (int pass = 0; ok && pass < 2; pass++) {
    for (size_t i = 0; i < list->num; i++) {
      const held *h = list->items[i];
      int allow_pass = h->effect == EFFECT_ALLOW;
      if (h->effect == EFFECT_NONE || allow_pass != (pass == 1) || !selects(p, h, w)) continue;
      for (size_t r = 0; h->rules != NULL && r < h->rules->n_rules; r++) {
        rules[policy.n_rules++] = h->rules->rules[r];
      }
      if (allow_pass) {
        char *name = names + policy.n_allow_policies * SOURCE_NAME_MAX;
        mt_istio_join(name, SOURCE_NAME_MAX, h->ns, "/", h->name);
        allow[policy.n_allow_policies++] = name;
      }
    }
  }
  policy.default_action =
      num_allow > 0 ? MTLSD__MESH__V1__ACTION__DENY : MTLSD__MESH__V1__ACTION__ALLOW;
  policy.rules = rules;
  policy.allow_policies = allow;
  if (ok) out->policy = (Mtlsd__Mesh__V1__Policy *)mt_istio_message_copy(&policy.base);
  free(rules);
  free(allow);
  free(names);
  return out->policy != NULL;
}

/* Istio's tie-break among PeerAuthentications of one level: the oldest,
 * then the first by name. */
static int older(const held *a, const held *b) {
  int c = strcmp(a->created, b->created);
  return c != 0 ? c < 0 : strcmp(a->name, b->name) < 0;
}

static void keep_oldest(const held **best, const held *candidate) {
  if (*best == NULL || older(candidate, *best)) *best = candidate;
}

static void source_name(const held *h, char *out) {
  mt_istio_join(out, SOURCE_NAME_MAX, h->ns, "/", h->name);
}

static int compile_peer_authentication(const mt_istio_policies *p, const mt_istio_workload *w,
                                       mt_istio_compiled *out) {
  const held_list *list = &p->lists[MT_ISTIO_PEER_AUTHENTICATION];
  const held *mesh = NULL, *ns = NULL, *workload = NULL, *refused = NULL;
  for (size_t i = 0; i < list->num && refused == NULL; i++) {
    const held *h = list->items[i];
    int in_root = strcmp(h->ns, p->root_ns) == 0;
    if (h->refused) {
      if (selects(p, h, w)) refused = h;
      continue;
    }
    if (!in_root && strcmp(h->ns, w->ns) != 0) continue;
    if (h->num_match_labels == 0) {
      keep_oldest(in_root ? &mesh : &ns, h);
    } else if (!in_root && labels_match(h, w)) {
      /* Istio ignores a selector in the root namespace. */
      keep_oldest(&workload, h);
    }
  }
  Mtlsd__Mesh__V1__PeerAuthentication pa = MTLSD__MESH__V1__PEER_AUTHENTICATION__INIT;
  char source[SOURCE_NAME_MAX] = "default";
  pa.mode = p->default_mode;
  pa.source = source;
  const held *levels[] = {mesh, ns, workload};
  for (size_t i = 0; i < 3; i++) {
    if (levels[i] == NULL || levels[i]->mode == MTLSD__MESH__V1__MTLS_MODE__MTLS_MODE_UNSPECIFIED)
      continue;
    pa.mode = levels[i]->mode;
    source_name(levels[i], source);
  }
  if (refused != NULL) { /* fails closed, whatever else says */
    pa.mode = MTLSD__MESH__V1__MTLS_MODE__STRICT;
    source_name(refused, source);
    workload = NULL;
  }
  size_t num_ports = workload ? workload->num_ports : 0;
  Mtlsd__Mesh__V1__PortMtls *ports = calloc(num_ports + 1, sizeof(*ports));
  Mtlsd__Mesh__V1__PortMtls **port_list = calloc(num_ports + 1, sizeof(*port_list));
  char workload_source[SOURCE_NAME_MAX] = "";
  if (workload != NULL) source_name(workload, workload_source);
  int ok = ports != NULL && port_list != NULL;
  for (size_t i = 0; ok && i < num_ports; i++) {
    const port_mode *pm = &workload->ports[i];
    int inherits = pm->mode == MTLSD__MESH__V1__MTLS_MODE__MTLS_MODE_UNSPECIFIED;
    mtlsd__mesh__v1__port_mtls__init(&ports[i]);
    ports[i].port = pm->port;
    ports[i].mode = inherits ? pa.mode : pm->mode;
    ports[i].source = inherits ? source : workload_source;
    port_list[i] = &ports[i];
  }
  pa.ports = port_list;
  pa.n_ports = num_ports;
  if (ok) {
    out->peer_authentication =
        (Mtlsd__Mesh__V1__PeerAuthentication *)mt_istio_message_copy(&pa.base);
  }
  free(ports);
  free(port_list);
  return out->peer_authentication != NULL;
}

mt_istio_compiled *mt_istio_compile(const mt_istio_policies *policies,
                                    const mt_istio_workload *workload) {
  mt_istio_compiled *c = calloc(1, sizeof(*c));
  if (c == NULL) return NULL;
  if (!compile_policy(policies, workload, c) ||
      !compile_peer_authentication(policies, workload, c)) {
    mt_istio_compiled_free(c);
    return NULL;
  }
  return c;
}

void mt_istio_compiled_free(mt_istio_compiled *compiled) {
  if (compiled == NULL) return;
  if (compiled->policy != NULL) mtlsd__mesh__v1__policy__free_unpacked(compiled->policy, NULL);
  if (compiled->peer_authentication != NULL)
    mtlsd__mesh__v1__peer_authentication__free_unpacked(compiled->peer_authentication, NULL);
  free(compiled);
}

const Mtlsd__Mesh__V1__Policy *mt_istio_compiled_policy(const mt_istio_compiled *compiled) {
  return compiled->policy;
}

const Mtlsd__Mesh__V1__PeerAuthentication *mt_istio_compiled_peer_authentication(
    const mt_istio_compiled *compiled) {
  return compiled->peer_authentication;
}
