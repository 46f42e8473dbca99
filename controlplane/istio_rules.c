/* istio_rules: AuthorizationPolicy rules -> Istio-form Rule messages. The
 * messages are built in a scratch arena, borrowing strings from the JSON,
 * and copied out whole by mt_istio_message_copy. */
#include "controlplane/istio_rules.h"

#include <arpa/inet.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "controlplane/istio_json.h"

enum {
  CONDITION_KEY_MAX = 256,
  HTTP_FIELDS_MAX = 512, /* the list of a rule's HTTP fields, in its `reduced` */
  REDUCED_MAX = 1024,
  DNS_NAME_MAX = 253,
};

/* How a string value is checked (and rewritten) before it reaches a Rule. */
typedef enum {
  VALUE_TEXT,            /* as written (wildcards are the agent's) */
  VALUE_PRINCIPAL,       /* as written, never with "spiffe://" */
  VALUE_IP_BLOCK,        /* canonical, host bits cleared */
  VALUE_PORT,            /* "1".."65535" */
  VALUE_SERVICE_ACCOUNT, /* "ns/sa" or "sa" -> the principal "*\/ns/<ns>/sa/<sa>" */
} value_kind;

typedef struct {
  mt_istio_scratch *mem;
  const char *ns; /* the policy's: a service account written without one is in it */
  char *err;
  size_t err_len;
  char rule_path[MT_ISTIO_FIELD_MAX]; /* "spec.rules[3]", for messages */
  char http_fields[HTTP_FIELDS_MAX];  /* this rule's fields that need HTTP */
} decoder;

static int refuse(decoder *d, const char *rel, const char *why) {
  char field[MT_ISTIO_FIELD_MAX];
  mt_istio_join(field, sizeof(field), d->rule_path, ".", rel);
  return mt_istio_refuse(d->err, d->err_len, field, why);
}

static void note_http_field(decoder *d, const char *rel) {
  char joined[HTTP_FIELDS_MAX];
  mt_istio_join(joined, sizeof(joined), d->http_fields, d->http_fields[0] ? ", " : "", rel);
  memcpy(d->http_fields, joined, strlen(joined) + 1);
}

static int is_dns_name(const char *s, size_t len) {
  if (len == 0 || len > DNS_NAME_MAX) return 0;
  for (size_t i = 0; i < len; i++) {
    char c = s[i];
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '.')) return 0;
  }
  return 1;
}

/* "a.b.c.d", "a.b.c.d/n", "v6", "v6/n" in canonical text; the host bits of
 * a CIDR cleared, as Istio (and ztunnel) read 10.1.2.3/16 as 10.1.0.0/16. */
static int canonical_ip_block(const char *text, char *out, size_t out_len) {
  const char *slash = strchr(text, '/');
  size_t addr_len = slash ? (size_t)(slash - text) : strlen(text);
  char addr[INET6_ADDRSTRLEN];
  if (addr_len == 0 || addr_len >= sizeof(addr)) return 0;
  memcpy(addr, text, addr_len);
  addr[addr_len] = '\0';
  unsigned char bytes[sizeof(struct in6_addr)];
  int family = AF_INET, bits = 32;
  if (inet_pton(AF_INET, addr, bytes) != 1) {
    if (inet_pton(AF_INET6, addr, bytes) != 1) return 0;
    family = AF_INET6;
    bits = 128;
  }
  int prefix = bits;
  if (slash != NULL) {
    const char *p = slash + 1;
    size_t digits = strlen(p);
    if (digits == 0 || digits > 3 || (p[0] == '0' && digits > 1)) return 0;
    prefix = 0;
    for (; *p; p++) {
      if (*p < '0' || *p > '9') return 0;
      prefix = prefix * 10 + (*p - '0');
    }
    if (prefix > bits) return 0;
    for (int bit = prefix; bit < bits; bit++)
      bytes[bit / 8] &= (unsigned char)~(0x80u >> (bit % 8));
  }
  char canonical[INET6_ADDRSTRLEN];
  if (inet_ntop(family, bytes, canonical, sizeof(canonical)) == NULL) return 0;
  int n = slash ? snprintf(out, out_len, "%s/%d", canonical, prefix)
                : snprintf(out, out_len, "%s", canonical);
  return n > 0 && (size_t)n < out_len;
}

/* Checks |text| as |kind|; the value to put in the Rule (borrowed from
 * |text| or in scratch), or NULL with the reason in d->err. */
static char *checked_value(decoder *d, value_kind kind, const char *text, const char *rel) {
  switch (kind) {
    case VALUE_TEXT: return (char *)text;
    case VALUE_PRINCIPAL:
      if (strcasestr(text, "spiffe://") != NULL) {
        refuse(d, rel, "an Istio principal is written without \"spiffe://\"");
        return NULL;
      }
      return (char *)text;
    case VALUE_PORT: {
      unsigned port;
      if (!mt_istio_port(text, &port)) {
        refuse(d, rel, "not a port in 1..65535");
        return NULL;
      }
      return (char *)text;
    }
    case VALUE_IP_BLOCK: {
      char block[INET6_ADDRSTRLEN + 8];
      if (!canonical_ip_block(text, block, sizeof(block))) {
        refuse(d, rel, "not an IP address or CIDR");
        return NULL;
      }
      char *copy = mt_istio_scratch_strdup(d->mem, block);
      if (copy == NULL) refuse(d, rel, "out of memory");
      return copy;
    }
    case VALUE_SERVICE_ACCOUNT: {
      /* Istio matches a service account in any trust domain: the principal
       * ends in /ns/<ns>/sa/<sa>. */
      const char *slash = strchr(text, '/');
      const char *sa_ns = slash ? text : d->ns;
      size_t ns_len = slash ? (size_t)(slash - text) : strlen(d->ns);
      const char *sa = slash ? slash + 1 : text;
      if (!is_dns_name(sa_ns, ns_len) || !is_dns_name(sa, strlen(sa))) {
        refuse(d, rel, "not \"<namespace>/<service account>\" or \"<service account>\"");
        return NULL;
      }
      char principal[2 * DNS_NAME_MAX + 16];
      snprintf(principal, sizeof(principal), "*/ns/%.*s/sa/%s", (int)ns_len, sa_ns, sa);
      char *copy = mt_istio_scratch_strdup(d->mem, principal);
      if (copy == NULL) refuse(d, rel, "out of memory");
      return copy;
    }
  }
  return NULL;
}

/* List field |key| of |obj| (at |rel|): strings, each checked as |kind|. */
static int string_list(decoder *d, const json_t *obj, const char *rel, const char *key,
                       value_kind kind, char ***out, size_t *num) {
  char field_rel[MT_ISTIO_FIELD_MAX], field[MT_ISTIO_FIELD_MAX];
  mt_istio_join(field_rel, sizeof(field_rel), rel, ".", key);
  mt_istio_join(field, sizeof(field), d->rule_path, ".", field_rel);
  const json_t *list;
  *out = NULL;
  *num = 0;
  if (!mt_istio_optional_array(obj, key, MT_ISTIO_MAX_VALUES, field, &list, d->err, d->err_len))
    return 0;
  if (list == NULL || json_array_size(list) == 0) return 1;
  char **values = mt_istio_scratch_calloc(d->mem, json_array_size(list), sizeof(*values));
  if (values == NULL) return refuse(d, field_rel, "out of memory");
  size_t i;
  const json_t *v;
  json_array_foreach(list, i, v) {
    char item_rel[MT_ISTIO_FIELD_MAX], item[MT_ISTIO_FIELD_MAX];
    mt_istio_index(item_rel, sizeof(item_rel), field_rel, i);
    mt_istio_join(item, sizeof(item), d->rule_path, ".", item_rel);
    const char *text;
    if (!mt_istio_text(v, MT_ISTIO_VALUE_MAX, item, &text, d->err, d->err_len)) return 0;
    values[i] = checked_value(d, kind, text, item_rel);
    if (values[i] == NULL) return 0;
  }
  *out = values;
  *num = json_array_size(list);
  return 1;
}

static int port_list(decoder *d, const json_t *obj, const char *rel, const char *key,
                     uint32_t **out, size_t *num) {
  char **texts;
  size_t n;
  *out = NULL;
  *num = 0;
  if (!string_list(d, obj, rel, key, VALUE_PORT, &texts, &n)) return 0;
  if (n == 0) return 1;
  uint32_t *ports = mt_istio_scratch_calloc(d->mem, n, sizeof(*ports));
  if (ports == NULL) return refuse(d, rel, "out of memory");
  for (size_t i = 0; i < n; i++) {
    unsigned port = 0;
    (void)mt_istio_port(texts[i], &port); /* checked by string_list */
    ports[i] = port;
  }
  *out = ports;
  *num = n;
  return 1;
}

/* Fields that exist only in HTTP: checked like the rest, then noted
 * (when set) for the rule's `reduced` and left out of the Rule. */
typedef struct {
  const char *key;
  value_kind kind;
} http_field;

static int http_fields(decoder *d, const json_t *obj, const char *rel, const http_field *fields,
                       size_t num_fields, size_t *num_set) {
  for (size_t i = 0; i < num_fields; i++) {
    char **values;
    size_t n;
    if (!string_list(d, obj, rel, fields[i].key, fields[i].kind, &values, &n)) return 0;
    if (n == 0) continue;
    char noted[MT_ISTIO_FIELD_MAX];
    mt_istio_join(noted, sizeof(noted), rel, ".", fields[i].key);
    note_http_field(d, noted);
    (*num_set)++;
  }
  return 1;
}

static const http_field kSourceHttpFields[] = {
    {"requestPrincipals", VALUE_TEXT},
    {"notRequestPrincipals", VALUE_TEXT},
    {"remoteIpBlocks", VALUE_IP_BLOCK},
    {"notRemoteIpBlocks", VALUE_IP_BLOCK},
};

static const http_field kOperationHttpFields[] = {
    {"hosts", VALUE_TEXT},      {"notHosts", VALUE_TEXT}, {"methods", VALUE_TEXT},
    {"notMethods", VALUE_TEXT}, {"paths", VALUE_TEXT},    {"notPaths", VALUE_TEXT},
};

#define COUNT_OF(a) (sizeof(a) / sizeof((a)[0]))

/* from[j].source. serviceAccounts become principals (Istio forbids
 * setting both, so one list is always empty). */
static int decode_source(decoder *d, const json_t *source, const char *rel,
                         Mtlsd__Mesh__V1__Source **out) {
  if (!json_is_object(source)) return refuse(d, rel, "missing or not an object");
  Mtlsd__Mesh__V1__Source *s = mt_istio_scratch_calloc(d->mem, 1, sizeof(*s));
  if (s == NULL) return refuse(d, rel, "out of memory");
  mtlsd__mesh__v1__source__init(s);
  char **sa, **not_sa;
  size_t n_sa, n_not_sa, n_http = 0;
  int ok =
      string_list(d, source, rel, "principals", VALUE_PRINCIPAL, &s->principals,
                  &s->n_principals) &&
      string_list(d, source, rel, "notPrincipals", VALUE_PRINCIPAL, &s->not_principals,
                  &s->n_not_principals) &&
      string_list(d, source, rel, "namespaces", VALUE_TEXT, &s->namespaces, &s->n_namespaces) &&
      string_list(d, source, rel, "notNamespaces", VALUE_TEXT, &s->not_namespaces,
                  &s->n_not_namespaces) &&
      string_list(d, source, rel, "ipBlocks", VALUE_IP_BLOCK, &s->ip_blocks, &s->n_ip_blocks) &&
      string_list(d, source, rel, "notIpBlocks", VALUE_IP_BLOCK, &s->not_ip_blocks,
                  &s->n_not_ip_blocks) &&
      string_list(d, source, rel, "serviceAccounts", VALUE_SERVICE_ACCOUNT, &sa, &n_sa) &&
      string_list(d, source, rel, "notServiceAccounts", VALUE_SERVICE_ACCOUNT, &not_sa,
                  &n_not_sa) &&
      http_fields(d, source, rel, kSourceHttpFields, COUNT_OF(kSourceHttpFields), &n_http);
  if (!ok) return 0;
  size_t n_l4 = s->n_principals + s->n_not_principals + s->n_namespaces + s->n_not_namespaces +
                s->n_ip_blocks + s->n_not_ip_blocks + n_sa + n_not_sa;
  if (n_l4 + n_http == 0) return refuse(d, rel, "empty (Istio requires at least one field)");
  if (n_sa > 0 && (s->n_principals > 0 || s->n_namespaces > 0))
    return refuse(d, rel, "serviceAccounts cannot be set with principals or namespaces");
  if (n_not_sa > 0 && (s->n_not_principals > 0 || s->n_not_namespaces > 0))
    return refuse(d, rel, "notServiceAccounts cannot be set with notPrincipals or notNamespaces");
  if (n_sa > 0) {
    s->principals = sa;
    s->n_principals = n_sa;
  }
  if (n_not_sa > 0) {
    s->not_principals = not_sa;
    s->n_not_principals = n_not_sa;
  }
  *out = s;
  return 1;
}

static int decode_operation(decoder *d, const json_t *operation, const char *rel,
                            Mtlsd__Mesh__V1__Operation **out) {
  if (!json_is_object(operation)) return refuse(d, rel, "missing or not an object");
  Mtlsd__Mesh__V1__Operation *o = mt_istio_scratch_calloc(d->mem, 1, sizeof(*o));
  if (o == NULL) return refuse(d, rel, "out of memory");
  mtlsd__mesh__v1__operation__init(o);
  size_t n_http = 0;
  int ok =
      port_list(d, operation, rel, "ports", &o->ports, &o->n_ports) &&
      port_list(d, operation, rel, "notPorts", &o->not_ports, &o->n_not_ports) &&
      http_fields(d, operation, rel, kOperationHttpFields, COUNT_OF(kOperationHttpFields), &n_http);
  if (!ok) return 0;
  if (o->n_ports + o->n_not_ports + n_http == 0)
    return refuse(d, rel, "empty (Istio requires at least one field)");
  *out = o;
  return 1;
}

/* The `when` keys mtlsd checks at L4 (policy.h MT_CONDITION_*). */
static const http_field kL4ConditionKeys[] = {
    {"source.ip", VALUE_IP_BLOCK},         {"source.namespace", VALUE_TEXT},
    {"source.principal", VALUE_PRINCIPAL}, {"destination.ip", VALUE_IP_BLOCK},
    {"destination.port", VALUE_PORT},
};

static int has_prefix(const char *s, const char *prefix) {
  return strncmp(s, prefix, strlen(prefix)) == 0;
}

/* "name[<something>]" */
static int is_indexed_key(const char *key, const char *name_open) {
  size_t len = strlen(key), open = strlen(name_open);
  return has_prefix(key, name_open) && len > open + 1 && key[len - 1] == ']';
}

/* Istio's other condition keys, each of which needs HTTP (or the TLS SNI
 * the agent does not expose to policy); any key outside both lists is
 * refused, as Istio's validation does. */
static int is_http_condition_key(const char *key, value_kind *kind) {
  static const char *const kExact[] = {"request.auth.principal", "request.auth.audiences",
                                       "request.auth.presenter", "connection.sni"};
  *kind = VALUE_TEXT;
  if (strcmp(key, "remote.ip") == 0) {
    *kind = VALUE_IP_BLOCK;
    return 1;
  }
  for (size_t i = 0; i < COUNT_OF(kExact); i++) {
    if (strcmp(key, kExact[i]) == 0) return 1;
  }
  return is_indexed_key(key, "request.headers[") || is_indexed_key(key, "request.auth.claims[") ||
         (has_prefix(key, "experimental.envoy.filters.") &&
          strlen(key) > strlen("experimental.envoy.filters."));
}

/* when[k]: |*out| NULL when the condition needs HTTP (noted, left out). */
static int decode_condition(decoder *d, const json_t *when, const char *rel,
                            Mtlsd__Mesh__V1__Condition **out) {
  *out = NULL;
  if (!json_is_object(when)) return refuse(d, rel, "not an object");
  char key_rel[MT_ISTIO_FIELD_MAX], key_field[MT_ISTIO_FIELD_MAX];
  mt_istio_join(key_rel, sizeof(key_rel), rel, ".", "key");
  mt_istio_join(key_field, sizeof(key_field), d->rule_path, ".", key_rel);
  const char *key;
  if (!mt_istio_text(mt_istio_member(when, "key"), CONDITION_KEY_MAX, key_field, &key, d->err,
                     d->err_len))
    return 0;
  value_kind kind = VALUE_TEXT;
  int l4 = 0;
  for (size_t i = 0; i < COUNT_OF(kL4ConditionKeys); i++) {
    if (strcmp(key, kL4ConditionKeys[i].key) == 0) {
      kind = kL4ConditionKeys[i].kind;
      l4 = 1;
    }
  }
  if (!l4 && !is_http_condition_key(key, &kind)) return refuse(d, key_rel, "unknown key");
  Mtlsd__Mesh__V1__Condition *c = mt_istio_scratch_calloc(d->mem, 1, sizeof(*c));
  if (c == NULL) return refuse(d, rel, "out of memory");
  mtlsd__mesh__v1__condition__init(c);
  c->key = (char *)key;
  if (!string_list(d, when, rel, "values", kind, &c->values, &c->n_values) ||
      !string_list(d, when, rel, "notValues", kind, &c->not_values, &c->n_not_values))
    return 0;
  if (c->n_values + c->n_not_values == 0)
    return refuse(d, rel, "neither values nor notValues is set");
  if (!l4) {
    char noted[MT_ISTIO_FIELD_MAX + CONDITION_KEY_MAX];
    mt_istio_join(noted, sizeof(noted), rel, " ", key);
    note_http_field(d, noted);
    return 1;
  }
  *out = c;
  return 1;
}

/* The entries of list |key| of |rule| (from, to, when), each decoded by
 * |decode_entry|; an entry that yields no message (an HTTP condition) is
 * left out. Istio refuses a list that is present but empty. */
typedef int (*entry_decoder)(decoder *d, const json_t *entry, const char *rel, void **out);

static int decode_from_entry(decoder *d, const json_t *entry, const char *rel, void **out) {
  char source_rel[MT_ISTIO_FIELD_MAX];
  mt_istio_join(source_rel, sizeof(source_rel), rel, ".", "source");
  if (!json_is_object(entry)) return refuse(d, rel, "not an object");
  return decode_source(d, mt_istio_member(entry, "source"), source_rel,
                       (Mtlsd__Mesh__V1__Source **)out);
}

static int decode_to_entry(decoder *d, const json_t *entry, const char *rel, void **out) {
  char operation_rel[MT_ISTIO_FIELD_MAX];
  mt_istio_join(operation_rel, sizeof(operation_rel), rel, ".", "operation");
  if (!json_is_object(entry)) return refuse(d, rel, "not an object");
  return decode_operation(d, mt_istio_member(entry, "operation"), operation_rel,
                          (Mtlsd__Mesh__V1__Operation **)out);
}

static int decode_when_entry(decoder *d, const json_t *entry, const char *rel, void **out) {
  return decode_condition(d, entry, rel, (Mtlsd__Mesh__V1__Condition **)out);
}

static int decode_entries(decoder *d, const json_t *rule, const char *key,
                          entry_decoder decode_entry, void ***out, size_t *num) {
  char field[MT_ISTIO_FIELD_MAX];
  mt_istio_join(field, sizeof(field), d->rule_path, ".", key);
  const json_t *list;
  *out = NULL;
  *num = 0;
  if (!mt_istio_optional_array(rule, key, MT_ISTIO_MAX_CLAUSES, field, &list, d->err, d->err_len))
    return 0;
  if (list == NULL) return 1;
  if (json_array_size(list) == 0) return refuse(d, key, "empty list (Istio refuses it)");
  void **entries = mt_istio_scratch_calloc(d->mem, json_array_size(list), sizeof(*entries));
  if (entries == NULL) return refuse(d, key, "out of memory");
  size_t i;
  const json_t *entry;
  json_array_foreach(list, i, entry) {
    char rel[MT_ISTIO_FIELD_MAX];
    mt_istio_index(rel, sizeof(rel), key, i);
    void *message = NULL;
    if (!decode_entry(d, entry, rel, &message)) return 0;
    if (message != NULL) entries[(*num)++] = message;
  }
  *out = entries;
  return 1;
}

/* ztunnel's reduction of a rule that needs HTTP: an ALLOW rule grants
 * nothing, a DENY rule loses its HTTP parts (and so denies more). */
static int reduce_for_l4(decoder *d, Mtlsd__Mesh__V1__Rule *r, int deny) {
  if (d->http_fields[0] == '\0') return 1;
  char text[REDUCED_MAX];
  if (deny) {
    snprintf(text, sizeof(text),
             "%s need%s HTTP, which mtlsd does not see: left out, so this DENY rule denies every "
             "connection the rest of it matches (as ztunnel does)",
             d->http_fields, strchr(d->http_fields, ',') ? "" : "s");
  } else {
    snprintf(text, sizeof(text),
             "%s need%s HTTP, which mtlsd does not see: this ALLOW rule grants nothing (as "
             "ztunnel does)",
             d->http_fields, strchr(d->http_fields, ',') ? "" : "s");
    r->never_matches = 1;
  }
  r->reduced = mt_istio_scratch_strdup(d->mem, text);
  return r->reduced != NULL || mt_istio_refuse(d->err, d->err_len, d->rule_path, "out of memory");
}

static int decode_rule(decoder *d, const json_t *rule, size_t index, const char *name, int deny,
                       Mtlsd__Mesh__V1__Rule **out) {
  mt_istio_index(d->rule_path, sizeof(d->rule_path), "spec.rules", index);
  d->http_fields[0] = '\0';
  if (!json_is_object(rule))
    return mt_istio_refuse(d->err, d->err_len, d->rule_path, "not an object");
  Mtlsd__Mesh__V1__Rule *r = mt_istio_scratch_calloc(d->mem, 1, sizeof(*r));
  char policy_name[2 * DNS_NAME_MAX + 2], rule_name[2 * DNS_NAME_MAX + 32];
  mt_istio_join(policy_name, sizeof(policy_name), d->ns, "/", name);
  mt_istio_index(rule_name, sizeof(rule_name), policy_name, index);
  if (r == NULL) return mt_istio_refuse(d->err, d->err_len, d->rule_path, "out of memory");
  mtlsd__mesh__v1__rule__init(r);
  r->name = mt_istio_scratch_strdup(d->mem, rule_name);
  if (r->name == NULL) return mt_istio_refuse(d->err, d->err_len, d->rule_path, "out of memory");
  r->action = deny ? MTLSD__MESH__V1__ACTION__DENY : MTLSD__MESH__V1__ACTION__ALLOW;
  r->istio = 1;
  int ok =
      decode_entries(d, rule, "from", decode_from_entry, (void ***)&r->sources, &r->n_sources) &&
      decode_entries(d, rule, "to", decode_to_entry, (void ***)&r->operations, &r->n_operations) &&
      decode_entries(d, rule, "when", decode_when_entry, (void ***)&r->conditions,
                     &r->n_conditions) &&
      reduce_for_l4(d, r, deny);
  if (ok) *out = r;
  return ok;
}

static Mtlsd__Mesh__V1__Policy *copy_rule_list(Mtlsd__Mesh__V1__Rule **rules, size_t num) {
  Mtlsd__Mesh__V1__Policy list = MTLSD__MESH__V1__POLICY__INIT;
  list.rules = rules;
  list.n_rules = num;
  return (Mtlsd__Mesh__V1__Policy *)mt_istio_message_copy(&list.base);
}

/* "rules[<i>]: <reduced>; ..." of the reduced rules, or NULL. */
static char *reduced_summary(Mtlsd__Mesh__V1__Rule **rules, size_t num, int *oom) {
  size_t len = 0;
  for (size_t i = 0; i < num; i++) {
    if (rules[i]->reduced[0] != '\0') len += strlen(rules[i]->reduced) + 32;
  }
  *oom = 0;
  if (len == 0) return NULL;
  char *summary = malloc(len + 1);
  if (summary == NULL) {
    *oom = 1;
    return NULL;
  }
  size_t used = 0;
  summary[0] = '\0';
  for (size_t i = 0; i < num; i++) {
    if (rules[i]->reduced[0] == '\0') continue;
    used += (size_t)snprintf(summary + used, len + 1 - used, "%srules[%zu]: %s", used ? "; " : "",
                             i, rules[i]->reduced);
  }
  return summary;
}

int mt_istio_rules_decode(const json_t *spec, const char *ns, const char *name, int deny,
                          Mtlsd__Mesh__V1__Policy **out, char **reduced, char *err,
                          size_t err_len) {
  mt_istio_scratch mem = {0};
  decoder d = {.mem = &mem, .ns = ns, .err = err, .err_len = err_len};
  const json_t *list;
  *out = NULL;
  *reduced = NULL;
  if (!mt_istio_optional_array(spec, "rules", MT_ISTIO_MAX_RULES, "spec.rules", &list, err,
                               err_len))
    return 0;
  size_t num = list ? json_array_size(list) : 0;
  Mtlsd__Mesh__V1__Rule **rules = mt_istio_scratch_calloc(&mem, num, sizeof(*rules));
  int ok = rules != NULL || mt_istio_refuse(err, err_len, "spec.rules", "out of memory");
  for (size_t i = 0; ok && i < num; i++) {
    ok = decode_rule(&d, json_array_get(list, i), i, name, deny, &rules[i]);
  }
  int oom = 0;
  if (ok) *reduced = reduced_summary(rules, num, &oom);
  if (ok && !oom) *out = copy_rule_list(rules, num);
  if (ok && (oom || *out == NULL)) {
    free(*reduced);
    *reduced = NULL;
    ok = mt_istio_refuse(err, err_len, "spec.rules", "out of memory");
  }
  mt_istio_scratch_release(&mem);
  return ok;
}

Mtlsd__Mesh__V1__Policy *mt_istio_rules_deny_all(const char *ns, const char *name,
                                                 const char *why) {
  char rule_name[2 * DNS_NAME_MAX + 2], text[REDUCED_MAX];
  mt_istio_join(rule_name, sizeof(rule_name), ns, "/", name);
  snprintf(text, sizeof(text), "policy refused (%s): it denies every connection until fixed", why);
  Mtlsd__Mesh__V1__Rule rule = MTLSD__MESH__V1__RULE__INIT;
  rule.name = rule_name;
  rule.action = MTLSD__MESH__V1__ACTION__DENY;
  rule.istio = 1;
  rule.reduced = text;
  Mtlsd__Mesh__V1__Rule *rules[] = {&rule};
  return copy_rule_list(rules, 1);
}
