/* policy_match: an Istio-form rule's L4 match. See policy_match.h. */
#include "agent/policy_match.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent/cidr.h"

enum {
  MAX_VALUES = 4096, /* per field: far beyond any real policy, still bounded */
  PORT_TEXT_MAX = 8,
};

#define MT_SPIFFE_SCHEME "spiffe://"

/* Istio's string match: "*" (present), "abc*" (prefix), "*abc" (suffix). */
typedef enum { PATTERN_PRESENT, PATTERN_PREFIX, PATTERN_SUFFIX, PATTERN_EXACT } pattern_kind;

typedef struct {
  pattern_kind kind;
  const char *value; /* points into the field's own copy of the text */
  size_t len;
} pattern;

typedef enum { VALUES_PATTERN, VALUES_CIDR, VALUES_PORT } value_type;

/* What a field's values are matched against. */
typedef enum {
  SUBJECT_PRINCIPAL,
  SUBJECT_NAMESPACE,
  SUBJECT_PEER_IP,
  SUBJECT_DEST_IP,
  SUBJECT_PORT,
} subject;

/* One non-empty list of a clause, e.g. `notIpBlocks: [...]`. */
typedef struct {
  const char *name; /* static: "principals", "source.ip", ... */
  int negated;
  subject subj;
  value_type type;
  char **text; /* the values as written, owned (for explaining) */
  size_t count;
  pattern *patterns; /* VALUES_PATTERN */
  mt_cidr *cidrs;    /* VALUES_CIDR */
  uint16_t *ports;   /* VALUES_PORT */
} field;

typedef struct {
  const char *kind; /* "from", "to", "when" */
  size_t index;
  field *fields;
  size_t num_fields;
} clause;

struct mt_rule_match {
  clause *sources;
  size_t num_sources;
  clause *operations;
  size_t num_operations;
  clause *conditions;
  size_t num_conditions;
  int never_matches;
};

/* ---- compiling ----------------------------------------------------------- */

static void field_dispose(field *f) {
  for (size_t i = 0; i < f->count; i++) free(f->text[i]);
  free(f->text);
  free(f->patterns);
  free(f->cidrs);
  free(f->ports);
}

/* Every clause clauses_new allocated, built or not: a refused spec stops
 * building midway, and the zeroed entry after the last ends the array. */
static void clauses_free(clause *c) {
  if (c == NULL) return;
  for (size_t i = 0; c[i].fields != NULL; i++) {
    for (size_t j = 0; j < c[i].num_fields; j++) field_dispose(&c[i].fields[j]);
    free(c[i].fields);
  }
  free(c);
}

void mt_rule_match_free(mt_rule_match *m) {
  if (m == NULL) return;
  clauses_free(m->sources);
  clauses_free(m->operations);
  clauses_free(m->conditions);
  free(m);
}

static pattern pattern_of(const char *text) {
  pattern p;
  size_t len = strlen(text);
  if (len == 1 && text[0] == '*') {
    p.kind = PATTERN_PRESENT, p.value = text, p.len = 0;
  } else if (text[0] == '*') {
    p.kind = PATTERN_SUFFIX, p.value = text + 1, p.len = len - 1;
  } else if (text[len - 1] == '*') {
    p.kind = PATTERN_PREFIX, p.value = text, p.len = len - 1;
  } else {
    p.kind = PATTERN_EXACT, p.value = text, p.len = len;
  }
  return p;
}

/* Why |text| cannot be a value of |f|, or NULL. */
static const char *value_problem(const field *f, const char *text) {
  if (text == NULL || text[0] == '\0') return "empty value";
  if (f->subj == SUBJECT_PRINCIPAL && strncmp(text, MT_SPIFFE_SCHEME, 9) == 0)
    return "Istio principals are written without \"spiffe://\"";
  return NULL;
}

static int parse_port(const char *text, uint16_t *out) {
  unsigned long v = 0;
  size_t n = 0;
  for (; text[n] >= '0' && text[n] <= '9' && n < 6; n++)
    v = v * 10 + (unsigned long)(text[n] - '0');
  if (n == 0 || text[n] != '\0' || v == 0 || v > 65535) return 0;
  *out = (uint16_t)v;
  return 1;
}

/* Copies and compiles |count| values into |f| (name, subject, type set). */
static int field_fill(field *f, const char *const *values, size_t count, const char *where,
                      char *err, size_t err_len) {
  if (count > MAX_VALUES)
    return snprintf(err, err_len, "%s.%s: %zu values, more than %d", where, f->name, count,
                    MAX_VALUES),
           0;
  f->text = calloc(count, sizeof(*f->text));
  if (f->text == NULL) return snprintf(err, err_len, "out of memory"), 0;
  if (f->type == VALUES_PATTERN) f->patterns = calloc(count, sizeof(*f->patterns));
  if (f->type == VALUES_CIDR) f->cidrs = calloc(count, sizeof(*f->cidrs));
  if (f->type == VALUES_PORT) f->ports = calloc(count, sizeof(*f->ports));
  if (f->patterns == NULL && f->cidrs == NULL && f->ports == NULL)
    return snprintf(err, err_len, "out of memory"), 0;
  for (size_t i = 0; i < count; i++) {
    const char *problem = value_problem(f, values[i]);
    if (problem != NULL)
      return snprintf(err, err_len, "%s.%s[%zu]: %s", where, f->name, i, problem), 0;
    f->text[i] = strdup(values[i]);
    if (f->text[i] == NULL) return snprintf(err, err_len, "out of memory"), 0;
    f->count = i + 1;
    char why[160];
    switch (f->type) {
      case VALUES_PATTERN: f->patterns[i] = pattern_of(f->text[i]); break;
      case VALUES_CIDR:
        if (!mt_cidr_parse(f->text[i], &f->cidrs[i], why, sizeof(why)))
          return snprintf(err, err_len, "%s.%s[%zu]: %s", where, f->name, i, why), 0;
        break;
      case VALUES_PORT:
        if (!parse_port(f->text[i], &f->ports[i]))
          return snprintf(err, err_len, "%s.%s[%zu]: '%s' is not a port in 1..65535", where,
                          f->name, i, f->text[i]),
                 0;
        break;
    }
  }
  return 1;
}

/* A field builder: the clause grows by one field per non-empty list. */
typedef struct {
  clause *c;
  const char *where;
  char *err;
  size_t err_len;
  int ok;
} clause_builder;

static void add_field(clause_builder *b, const char *name, int negated, subject subj,
                      value_type type, const char *const *values, size_t count) {
  if (!b->ok || count == 0) return;
  field *f = &b->c->fields[b->c->num_fields++];
  memset(f, 0, sizeof(*f));
  f->name = name, f->negated = negated, f->subj = subj, f->type = type;
  b->ok = field_fill(f, values, count, b->where, b->err, b->err_len);
}

/* Ports arrive as numbers; the field keeps them as text too, for explaining. */
static void add_port_field(clause_builder *b, const char *name, int negated, const uint16_t *ports,
                           size_t count) {
  if (!b->ok || count == 0) return;
  if (count > MAX_VALUES) {
    b->ok = 0;
    snprintf(b->err, b->err_len, "%s.%s: %zu ports, more than %d", b->where, name, count,
             MAX_VALUES);
    return;
  }
  char(*texts)[PORT_TEXT_MAX] = calloc(count, sizeof(*texts));
  const char **ptrs = calloc(count, sizeof(*ptrs));
  if (texts == NULL || ptrs == NULL) {
    b->ok = 0;
    snprintf(b->err, b->err_len, "out of memory");
  } else {
    for (size_t i = 0; i < count; i++) {
      snprintf(texts[i], PORT_TEXT_MAX, "%u", (unsigned)ports[i]);
      ptrs[i] = texts[i];
    }
    add_field(b, name, negated, SUBJECT_PORT, VALUES_PORT, ptrs, count);
  }
  free(texts);
  free(ptrs);
}

static clause *clauses_new(size_t n, size_t fields_each) {
  clause *c = calloc(n + 1, sizeof(*c));
  if (c == NULL) return NULL;
  for (size_t i = 0; i < n; i++) {
    c[i].fields = calloc(fields_each, sizeof(*c[i].fields));
    if (c[i].fields == NULL) {
      clauses_free(c);
      return NULL;
    }
  }
  return c;
}

static int compile_sources(mt_rule_match *m, const mt_istio_rule_spec *spec, char *err,
                           size_t err_len) {
  m->sources = clauses_new(spec->num_sources, 6);
  if (m->sources == NULL) return snprintf(err, err_len, "out of memory"), 0;
  for (size_t i = 0; i < spec->num_sources; i++) {
    const mt_source_spec *s = &spec->sources[i];
    char where[48];
    snprintf(where, sizeof(where), "from[%zu].source", i);
    clause *c = &m->sources[m->num_sources++];
    c->kind = "from", c->index = i;
    clause_builder b = {c, where, err, err_len, 1};
    add_field(&b, "principals", 0, SUBJECT_PRINCIPAL, VALUES_PATTERN, s->principals,
              s->num_principals);
    add_field(&b, "notPrincipals", 1, SUBJECT_PRINCIPAL, VALUES_PATTERN, s->not_principals,
              s->num_not_principals);
    add_field(&b, "namespaces", 0, SUBJECT_NAMESPACE, VALUES_PATTERN, s->namespaces,
              s->num_namespaces);
    add_field(&b, "notNamespaces", 1, SUBJECT_NAMESPACE, VALUES_PATTERN, s->not_namespaces,
              s->num_not_namespaces);
    add_field(&b, "ipBlocks", 0, SUBJECT_PEER_IP, VALUES_CIDR, s->ip_blocks, s->num_ip_blocks);
    add_field(&b, "notIpBlocks", 1, SUBJECT_PEER_IP, VALUES_CIDR, s->not_ip_blocks,
              s->num_not_ip_blocks);
    if (!b.ok) return 0;
  }
  return 1;
}

static int compile_operations(mt_rule_match *m, const mt_istio_rule_spec *spec, char *err,
                              size_t err_len) {
  m->operations = clauses_new(spec->num_operations, 2);
  if (m->operations == NULL) return snprintf(err, err_len, "out of memory"), 0;
  for (size_t i = 0; i < spec->num_operations; i++) {
    const mt_operation_spec *o = &spec->operations[i];
    char where[48];
    snprintf(where, sizeof(where), "to[%zu].operation", i);
    clause *c = &m->operations[m->num_operations++];
    c->kind = "to", c->index = i;
    clause_builder b = {c, where, err, err_len, 1};
    add_port_field(&b, "ports", 0, o->ports, o->num_ports);
    add_port_field(&b, "notPorts", 1, o->not_ports, o->num_not_ports);
    if (!b.ok) return 0;
  }
  return 1;
}

typedef struct {
  const char *key;
  subject subj;
  value_type type;
} condition_key;

static const condition_key kConditionKeys[] = {
    {MT_CONDITION_SOURCE_IP, SUBJECT_PEER_IP, VALUES_CIDR},
    {MT_CONDITION_SOURCE_NAMESPACE, SUBJECT_NAMESPACE, VALUES_PATTERN},
    {MT_CONDITION_SOURCE_PRINCIPAL, SUBJECT_PRINCIPAL, VALUES_PATTERN},
    {MT_CONDITION_DESTINATION_IP, SUBJECT_DEST_IP, VALUES_CIDR},
    {MT_CONDITION_DESTINATION_PORT, SUBJECT_PORT, VALUES_PORT},
};

static int compile_conditions(mt_rule_match *m, const mt_istio_rule_spec *spec, char *err,
                              size_t err_len) {
  m->conditions = clauses_new(spec->num_conditions, 2);
  if (m->conditions == NULL) return snprintf(err, err_len, "out of memory"), 0;
  for (size_t i = 0; i < spec->num_conditions; i++) {
    const mt_condition_spec *w = &spec->conditions[i];
    const condition_key *k = NULL;
    for (size_t j = 0; w->key != NULL && j < sizeof(kConditionKeys) / sizeof(*k); j++)
      if (strcmp(w->key, kConditionKeys[j].key) == 0) k = &kConditionKeys[j];
    if (k == NULL)
      return snprintf(err, err_len, "when[%zu]: key \"%s\" cannot be checked at L4", i,
                      w->key != NULL ? w->key : ""),
             0;
    if (w->num_values == 0 && w->num_not_values == 0)
      return snprintf(err, err_len, "when[%zu]: %s has neither values nor notValues", i, k->key), 0;
    char where[48];
    snprintf(where, sizeof(where), "when[%zu]", i);
    clause *c = &m->conditions[m->num_conditions++];
    c->kind = "when", c->index = i;
    clause_builder b = {c, where, err, err_len, 1};
    add_field(&b, k->key, 0, k->subj, k->type, w->values, w->num_values);
    add_field(&b, k->key, 1, k->subj, k->type, w->not_values, w->num_not_values);
    if (!b.ok) return 0;
  }
  return 1;
}

mt_rule_match *mt_rule_match_new(const mt_istio_rule_spec *spec, char *err, size_t err_len) {
  mt_rule_match *m = calloc(1, sizeof(*m));
  if (m == NULL) {
    snprintf(err, err_len, "out of memory");
    return NULL;
  }
  m->never_matches = spec->never_matches;
  if (!compile_sources(m, spec, err, err_len) || !compile_operations(m, spec, err, err_len) ||
      !compile_conditions(m, spec, err, err_len)) {
    mt_rule_match_free(m);
    return NULL;
  }
  return m;
}

/* ---- matching -------------------------------------------------------------- */

static int pattern_matches(const pattern *p, const char *s, size_t len) {
  switch (p->kind) {
    case PATTERN_PRESENT: return 1;
    case PATTERN_PREFIX: return len >= p->len && memcmp(s, p->value, p->len) == 0;
    case PATTERN_SUFFIX: return len >= p->len && memcmp(s + len - p->len, p->value, p->len) == 0;
    case PATTERN_EXACT: return len == p->len && memcmp(s, p->value, len) == 0;
  }
  return 0;
}

/* 1 when some value of |f| matches the request (negation not applied).
 * An absent subject (no principal, no namespace, no address) matches no
 * value. */
static int field_any_value(const field *f, const mt_match_input *in) {
  const char *s = NULL;
  size_t len = 0;
  const struct sockaddr *addr = NULL;
  switch (f->subj) {
    case SUBJECT_PRINCIPAL: s = in->principal, len = in->principal_len; break;
    case SUBJECT_NAMESPACE: s = in->ns, len = in->ns_len; break;
    case SUBJECT_PEER_IP: addr = in->peer_addr; break;
    case SUBJECT_DEST_IP: addr = in->dest_addr; break;
    case SUBJECT_PORT: break;
  }
  for (size_t i = 0; i < f->count; i++) {
    switch (f->type) {
      case VALUES_PATTERN:
        if (s != NULL && pattern_matches(&f->patterns[i], s, len)) return 1;
        break;
      case VALUES_CIDR:
        if (mt_cidr_contains(&f->cidrs[i], addr)) return 1;
        break;
      case VALUES_PORT:
        if (f->ports[i] == in->port) return 1;
        break;
    }
  }
  return 0;
}

static int field_holds(const field *f, const mt_match_input *in) {
  return field_any_value(f, in) != f->negated;
}

static int clause_holds(const clause *c, const mt_match_input *in) {
  for (size_t i = 0; i < c->num_fields; i++)
    if (!field_holds(&c->fields[i], in)) return 0;
  return 1;
}

/* Any clause holds; an empty list holds. */
static int any_clause(const clause *c, size_t n, const mt_match_input *in) {
  if (n == 0) return 1;
  for (size_t i = 0; i < n; i++)
    if (clause_holds(&c[i], in)) return 1;
  return 0;
}

int mt_rule_match_eval(const mt_rule_match *m, const mt_match_input *in) {
  if (m->never_matches) return 0;
  if (!any_clause(m->sources, m->num_sources, in)) return 0;
  if (!any_clause(m->operations, m->num_operations, in)) return 0;
  for (size_t i = 0; i < m->num_conditions; i++)
    if (!clause_holds(&m->conditions[i], in)) return 0;
  return 1;
}

int mt_rule_match_covers_port(const mt_rule_match *m, uint16_t port) {
  mt_match_input in;
  memset(&in, 0, sizeof(in));
  in.port = port;
  return any_clause(m->operations, m->num_operations, &in);
}

/* ---- explaining ------------------------------------------------------------ */

void mt_rule_match_trace_size(const mt_rule_match *m, size_t *num_clauses, size_t *num_fields) {
  *num_clauses = m->num_sources + m->num_operations + m->num_conditions;
  size_t n = 0;
  for (size_t i = 0; i < m->num_sources; i++) n += m->sources[i].num_fields;
  for (size_t i = 0; i < m->num_operations; i++) n += m->operations[i].num_fields;
  for (size_t i = 0; i < m->num_conditions; i++) n += m->conditions[i].num_fields;
  *num_fields = n;
}

static void trace_clauses(const clause *c, size_t n, const mt_match_input *in,
                          mt_clause_trace **clauses, mt_field_trace **fields) {
  for (size_t i = 0; i < n; i++) {
    mt_clause_trace *ct = (*clauses)++;
    ct->kind = c[i].kind;
    ct->index = c[i].index;
    ct->fields = *fields;
    ct->num_fields = c[i].num_fields;
    ct->matches = in != NULL && clause_holds(&c[i], in);
    for (size_t j = 0; j < c[i].num_fields; j++) {
      mt_field_trace *ft = (*fields)++;
      const field *f = &c[i].fields[j];
      ft->field = f->name;
      ft->negated = f->negated;
      ft->values = (const char *const *)f->text;
      ft->num_values = f->count;
      ft->matches = in != NULL && field_holds(f, in);
    }
  }
}

void mt_rule_match_trace(const mt_rule_match *m, const mt_match_input *in, mt_clause_trace *clauses,
                         mt_field_trace *fields) {
  trace_clauses(m->sources, m->num_sources, in, &clauses, &fields);
  trace_clauses(m->operations, m->num_operations, in, &clauses, &fields);
  trace_clauses(m->conditions, m->num_conditions, in, &clauses, &fields);
}
