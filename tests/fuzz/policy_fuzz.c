/* libFuzzer target: build a policy from fuzz input, then decide.
 *
 * Input: text lines (anything else is ignored), e.g.
 *   default deny                  allow | deny | other (an invalid action)
 *   port 8080                     destination port (mod 65536); default 8080
 *   peer spiffe://example.org/x   the rest of the line is the peer ID; none = NULL
 *   rule allow NAME PORTS M...    action: allow | deny | other (invalid);
 *                                 NAME "-" = NULL; PORTS "*" = all (NULL, 0),
 *                                 else a comma list ("0" and 65536+ included);
 *                                 M = kind or kind=value with kind one of
 *                                 any, id, prefix, ns, td (no '=' = NULL value)
 *
 * Oracles, besides "never crashes" and "never leaks":
 *  - mt_policy_add_rule accepts exactly the rules that policy.h says it must
 *    (non-empty unique name, known action, >= 1 matcher, no port 0, matcher
 *    values well formed), and writes an error message when it refuses;
 *  - every decision has a non-NULL rule and reason and equals the decision
 *    of a reference model of policy.h's evaluation order, written here
 *    independently of agent/policy.c. */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent/policy.h"
#include "agent/svid.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                          \
  do {                                                                                       \
    if (!(cond)) {                                                                           \
      fprintf(stderr, "policy_fuzz: invariant failed at %s:%d: %s\n", __FILE__, __LINE__, \
              #cond);                                                                        \
      abort();                                                                               \
    }                                                                                        \
  } while (0)

enum { MAX_RULES = 16, MAX_PORTS = 8, MAX_MATCHERS = 8, MAX_TOKENS = 2 + 1 + 1 + MAX_MATCHERS + 1 };

static const char kScheme[] = "spiffe://";
#define SCHEME_LEN (sizeof(kScheme) - 1)

typedef struct {
  mt_action action;
  const char *name;
  uint16_t ports[MAX_PORTS];
  size_t num_ports;
  int ports_null;
  mt_matcher matchers[MAX_MATCHERS];
  size_t num_matchers;
  int accepted;
} ref_rule;

typedef struct {
  mt_action default_action;
  int port;
  const char *peer;
  ref_rule rules[MAX_RULES];
  size_t num_rules;
} scenario;

/* ---- input ------------------------------------------------------------- */

static mt_action parse_action(const char *s) {
  if (strcmp(s, "allow") == 0) return MT_ACTION_ALLOW;
  if (strcmp(s, "deny") == 0) return MT_ACTION_DENY;
  return (mt_action)2; /* out of range on purpose: must be refused */
}

static size_t split(char *line, char **tok, size_t max) {
  size_t n = 0;
  char *save = NULL;
  for (char *t = strtok_r(line, " \t", &save); t != NULL && n < max; t = strtok_r(NULL, " \t", &save))
    tok[n++] = t;
  return n;
}

static void parse_ports(ref_rule *r, char *s) {
  r->ports_null = strcmp(s, "*") == 0;
  if (r->ports_null) return;
  char *save = NULL;
  for (char *t = strtok_r(s, ",", &save); t != NULL && r->num_ports < MAX_PORTS;
       t = strtok_r(NULL, ",", &save))
    r->ports[r->num_ports++] = (uint16_t)strtoul(t, NULL, 10);
}

static int parse_matcher(mt_matcher *m, char *s) {
  char *eq = strchr(s, '=');
  if (eq != NULL) *eq = '\0';
  if (strcmp(s, "any") == 0) m->kind = MT_MATCH_ANY;
  else if (strcmp(s, "id") == 0) m->kind = MT_MATCH_EXACT;
  else if (strcmp(s, "prefix") == 0) m->kind = MT_MATCH_PREFIX;
  else if (strcmp(s, "ns") == 0) m->kind = MT_MATCH_NAMESPACE;
  else if (strcmp(s, "td") == 0) m->kind = MT_MATCH_TRUST_DOMAIN;
  else return 0;
  m->value = eq != NULL ? eq + 1 : NULL;
  return 1;
}

static void parse_rule(scenario *sc, char *rest) {
  if (sc->num_rules >= MAX_RULES) return;
  char *tok[MAX_TOKENS];
  size_t n = split(rest, tok, MAX_TOKENS);
  if (n < 3) return;
  ref_rule *r = &sc->rules[sc->num_rules++];
  memset(r, 0, sizeof(*r));
  r->action = parse_action(tok[0]);
  r->name = strcmp(tok[1], "-") == 0 ? NULL : tok[1];
  parse_ports(r, tok[2]);
  for (size_t i = 3; i < n && r->num_matchers < MAX_MATCHERS; i++) {
    if (parse_matcher(&r->matchers[r->num_matchers], tok[i])) r->num_matchers++;
  }
}

/* |text| is a NUL-terminated, writable copy of the input. */
static void parse_scenario(scenario *sc, char *text) {
  memset(sc, 0, sizeof(*sc));
  sc->default_action = MT_ACTION_ALLOW;
  sc->port = 8080;
  char *save = NULL;
  for (char *line = strtok_r(text, "\n", &save); line != NULL; line = strtok_r(NULL, "\n", &save)) {
    if (strncmp(line, "default ", 8) == 0) {
      char *tok[1];
      if (split(line + 8, tok, 1) == 1) sc->default_action = parse_action(tok[0]);
    } else if (strncmp(line, "port ", 5) == 0) {
      sc->port = (int)(strtoul(line + 5, NULL, 10) & 0xFFFF);
    } else if (strncmp(line, "peer ", 5) == 0) {
      sc->peer = line + 5;
    } else if (strncmp(line, "rule ", 5) == 0) {
      parse_rule(sc, line + 5);
    }
  }
}

/* ---- reference model (policy.h) ---------------------------------------- */

static int ref_matcher_ok(const mt_matcher *m) {
  if (m->kind == MT_MATCH_ANY) return m->value == NULL;
  if (m->value == NULL || m->value[0] == '\0') return 0;
  switch (m->kind) {
    case MT_MATCH_EXACT:
      return mt_spiffe_id_parse(m->value, strlen(m->value), NULL) == MT_SPIFFE_OK;
    case MT_MATCH_PREFIX:
      return strncmp(m->value, kScheme, SCHEME_LEN) == 0;
    case MT_MATCH_NAMESPACE:
      return strchr(m->value, '/') == NULL;
    case MT_MATCH_TRUST_DOMAIN:
      return mt_trust_domain_validate(m->value, strlen(m->value)) == MT_SPIFFE_OK;
    case MT_MATCH_ANY:
      break;
  }
  return 0;
}

static int ref_rule_ok(const scenario *sc, size_t index) {
  const ref_rule *r = &sc->rules[index];
  if (r->name == NULL || r->name[0] == '\0') return 0;
  for (size_t i = 0; i < index; i++) {
    if (sc->rules[i].accepted && strcmp(sc->rules[i].name, r->name) == 0) return 0;
  }
  if (r->action != MT_ACTION_ALLOW && r->action != MT_ACTION_DENY) return 0;
  if (r->num_matchers == 0) return 0;
  for (size_t i = 0; i < r->num_ports; i++) {
    if (r->ports[i] == 0) return 0;
  }
  for (size_t i = 0; i < r->num_matchers; i++) {
    if (!ref_matcher_ok(&r->matchers[i])) return 0;
  }
  return 1;
}

static int ref_covers(const ref_rule *r, uint16_t port) {
  if (r->num_ports == 0) return 1;
  for (size_t i = 0; i < r->num_ports; i++) {
    if (r->ports[i] == port) return 1;
  }
  return 0;
}

/* |peer| is a valid SPIFFE ID. */
static int ref_matches(const mt_matcher *m, const char *peer) {
  const char *td = peer + SCHEME_LEN;
  const char *path = strchr(td, '/');
  size_t td_len = path ? (size_t)(path - td) : strlen(td);
  if (path == NULL) path = "";
  switch (m->kind) {
    case MT_MATCH_ANY:
      return 1;
    case MT_MATCH_EXACT:
      return strcmp(peer, m->value) == 0;
    case MT_MATCH_PREFIX:
      return strncmp(peer, m->value, strlen(m->value)) == 0;
    case MT_MATCH_NAMESPACE: {
      size_t n = strlen(m->value);
      return strncmp(path, "/ns/", 4) == 0 && strncmp(path + 4, m->value, n) == 0 &&
             (path[4 + n] == '\0' || path[4 + n] == '/');
    }
    case MT_MATCH_TRUST_DOMAIN:
      return strlen(m->value) == td_len && strncmp(td, m->value, td_len) == 0;
  }
  return 0;
}

static const ref_rule *ref_first(const scenario *sc, mt_action action, const char *peer,
                                 uint16_t port, int *covered) {
  for (size_t i = 0; i < sc->num_rules; i++) {
    const ref_rule *r = &sc->rules[i];
    if (!r->accepted || r->action != action || !ref_covers(r, port)) continue;
    *covered = 1;
    for (size_t j = 0; j < r->num_matchers; j++) {
      if (ref_matches(&r->matchers[j], peer)) return r;
    }
  }
  return NULL;
}

static void ref_decide(const scenario *sc, int have_policy, const char *peer, uint16_t port,
                       mt_action *action, const char **rule) {
  if (!have_policy || peer == NULL ||
      mt_spiffe_id_parse(peer, strlen(peer), NULL) != MT_SPIFFE_OK) {
    *action = MT_ACTION_DENY;
    *rule = MT_POLICY_RULE_INVALID_PEER;
    return;
  }
  int covered = 0;
  const ref_rule *r = ref_first(sc, MT_ACTION_DENY, peer, port, &covered);
  if (r != NULL) {
    *action = MT_ACTION_DENY;
    *rule = r->name;
    return;
  }
  covered = 0;
  r = ref_first(sc, MT_ACTION_ALLOW, peer, port, &covered);
  if (r != NULL) {
    *action = MT_ACTION_ALLOW;
    *rule = r->name;
  } else if (covered) {
    *action = MT_ACTION_DENY;
    *rule = MT_POLICY_RULE_NO_ALLOW_MATCH;
  } else {
    *action = sc->default_action;
    *rule = MT_POLICY_RULE_DEFAULT;
  }
}

/* ---- target ------------------------------------------------------------ */

static void check_decision(const scenario *sc, const mt_policy *policy, const char *peer,
                           uint16_t port) {
  mt_decision d = mt_policy_decide(policy, peer, port);
  CHECK(d.rule != NULL && d.rule[0] != '\0');
  CHECK(d.reason != NULL && d.reason[0] != '\0');
  CHECK(d.action == MT_ACTION_ALLOW || d.action == MT_ACTION_DENY);
  mt_action want_action;
  const char *want_rule;
  ref_decide(sc, policy != NULL, peer, port, &want_action, &want_rule);
  if (d.action != want_action || strcmp(d.rule, want_rule) != 0) {
    fprintf(stderr,
            "policy_fuzz: peer \"%s\" port %u: got %s by \"%s\" (%s), model says %s by \"%s\"\n",
            peer ? peer : "(null)", port, mt_action_str(d.action), d.rule, d.reason,
            mt_action_str(want_action), want_rule);
    abort();
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size > 4096) return 0;
  char *text = malloc(size + 1);
  if (text == NULL) return 0;
  if (size > 0) memcpy(text, data, size);
  text[size] = '\0';
  static scenario sc;
  parse_scenario(&sc, text);

  mt_policy *policy = mt_policy_new(sc.default_action);
  int valid_default = sc.default_action == MT_ACTION_ALLOW || sc.default_action == MT_ACTION_DENY;
  CHECK((policy != NULL) == valid_default);
  size_t accepted = 0;
  for (size_t i = 0; i < sc.num_rules; i++) {
    ref_rule *r = &sc.rules[i];
    char err[256];
    memset(err, 0x5A, sizeof(err));
    err[0] = '\0';
    int ok = mt_policy_add_rule(policy, r->name, r->action, r->ports_null ? NULL : r->ports,
                                r->num_ports, r->matchers, r->num_matchers, err, sizeof(err));
    CHECK(ok == 0 || ok == 1);
    if (policy == NULL) {
      CHECK(!ok);
    } else {
      int want = ref_rule_ok(&sc, i);
      if (ok != want) {
        fprintf(stderr, "policy_fuzz: rule %zu (\"%s\"): add_rule returned %d, model says %d (%s)\n",
                i, r->name ? r->name : "(null)", ok, want, err);
        abort();
      }
    }
    if (!ok) {
      CHECK(memchr(err, '\0', sizeof(err)) != NULL && err[0] != '\0');
    }
    r->accepted = ok;
    accepted += (size_t)ok;
  }
  CHECK(mt_policy_rule_count(policy) == accepted);

  uint16_t port = (uint16_t)sc.port;
  check_decision(&sc, policy, sc.peer, port);
  /* Also decide at every listed port and for peers built from the matcher
   * values, so that matching paths are reached without the fuzzer having to
   * repeat a value in the peer line. */
  char peer[256];
  for (size_t i = 0; i < sc.num_rules; i++) {
    const ref_rule *r = &sc.rules[i];
    for (size_t j = 0; j < r->num_ports; j++) check_decision(&sc, policy, sc.peer, r->ports[j]);
    for (size_t j = 0; j < r->num_matchers; j++) {
      const mt_matcher *m = &r->matchers[j];
      if (m->value == NULL) continue;
      switch (m->kind) {
        case MT_MATCH_EXACT:
          check_decision(&sc, policy, m->value, port);
          break;
        case MT_MATCH_PREFIX:
          snprintf(peer, sizeof(peer), "%sx", m->value);
          check_decision(&sc, policy, peer, port);
          snprintf(peer, sizeof(peer), "%s", m->value);
          check_decision(&sc, policy, peer, port);
          break;
        case MT_MATCH_NAMESPACE:
          snprintf(peer, sizeof(peer), "spiffe://example.org/ns/%s", m->value);
          check_decision(&sc, policy, peer, port);
          snprintf(peer, sizeof(peer), "spiffe://example.org/ns/%s/sa/x", m->value);
          check_decision(&sc, policy, peer, port);
          snprintf(peer, sizeof(peer), "spiffe://example.org/ns/%sx", m->value);
          check_decision(&sc, policy, peer, port);
          break;
        case MT_MATCH_TRUST_DOMAIN:
          snprintf(peer, sizeof(peer), "spiffe://%s/a", m->value);
          check_decision(&sc, policy, peer, port);
          break;
        case MT_MATCH_ANY:
          break;
      }
    }
  }
  mt_policy_free(policy);
  free(text);
  return 0;
}
