/* explain.c: `mtlsd explain`. The first half renders an explanation into a
 * buffer (text or JSON) from policy.h's decision and trace; the second half
 * is the command: arguments, the config load, printing, the exit status. */
#include "agent/explain.h"

#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent/config.h"
#include "agent/mesh.h"
#include "agent/reason.h"
#include "agent/svid.h"

enum {
  ERR_TEXT_MAX = 1024,
  EXPLAIN_TEXT_START = 16384, /* bytes; a larger explanation is rendered again to fit */
  PUT_PIECE_MAX = 512,        /* bytes formatted on the stack before the buffer is used */
  EXIT_ALLOWED = 0,
  EXIT_DENIED = 1,
  EXIT_USAGE = 2,
};

/* Why plaintext on a strict port never reaches policy (inbound.c refuses it
 * at the peek, before any rule is consulted). */
static const char kStrictPlaintextReason[] =
    "port is not permissive: plaintext is refused before policy";

/* ---- a writer over a caller's buffer ------------------------------------ */

/* Counts every byte asked for, stores what fits (snprintf semantics). */
typedef struct {
  char *buf;
  size_t len;
  size_t pos;
} writer;

static void put_bytes(writer *w, const char *p, size_t n) {
  if (w->pos < w->len) {
    size_t room = w->len - w->pos;
    memcpy(w->buf + w->pos, p, n < room ? n : room);
  }
  w->pos += n;
}

static void put(writer *w, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void put(writer *w, const char *fmt, ...) {
  char piece[PUT_PIECE_MAX];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(piece, sizeof(piece), fmt, ap);
  va_end(ap);
  if (n < 0) return;
  if ((size_t)n < sizeof(piece)) {
    put_bytes(w, piece, (size_t)n);
    return;
  }
  /* Longer than a line: format again straight into the buffer. */
  char *dst = w->pos < w->len ? w->buf + w->pos : NULL;
  size_t room = w->pos < w->len ? w->len - w->pos : 0;
  va_start(ap, fmt);
  (void)vsnprintf(dst, room, fmt, ap);
  va_end(ap);
  w->pos += (size_t)n;
}

/* The inside of a JSON string: quotes, backslashes and control bytes
 * escaped; other bytes (a peer ID typed on the command line) pass through. */
static void put_json_chars(writer *w, const char *s) {
  for (const unsigned char *p = (const unsigned char *)s; *p != '\0'; p++) {
    if (*p == '"' || *p == '\\') {
      char esc[2] = {'\\', (char)*p};
      put_bytes(w, esc, sizeof(esc));
    } else if (*p < 0x20) {
      put(w, "\\u%04x", *p);
    } else {
      put_bytes(w, (const char *)p, 1);
    }
  }
}

/* A JSON string, or null for NULL. */
static void put_json_str(writer *w, const char *s) {
  if (s == NULL) {
    put(w, "null");
    return;
  }
  put(w, "\"");
  put_json_chars(w, s);
  put(w, "\"");
}

/* NUL-terminates and returns the full length, or -1 when it overflows int. */
static int finish(writer *w) {
  if (w->len > 0) w->buf[w->pos < w->len ? w->pos : w->len - 1] = '\0';
  return w->pos > INT_MAX ? -1 : (int)w->pos;
}

/* ---- what to say -------------------------------------------------------- */

static int policy_consulted(const mt_explain_query *q) {
  return q->peer_id != NULL || q->permissive;
}

static mt_policy_request request_of(const mt_explain_query *q) {
  mt_policy_request req = {q->peer_id, q->peer_addr, q->dest_addr, q->port};
  return req;
}

mt_decision mt_explain_decide(const mt_policy *policy, const mt_explain_query *q) {
  if (q->peer_id != NULL || q->permissive) {
    mt_policy_request req = request_of(q);
    return mt_policy_evaluate(policy, &req);
  }
  mt_decision d = {MT_ACTION_DENY, "", kStrictPlaintextReason};
  return d;
}

/* The peer ID's syntax problem, or NULL when it is a valid SPIFFE ID. */
static const char *peer_id_problem(const char *peer_id) {
  mt_spiffe_err e = mt_spiffe_id_parse(peer_id, strlen(peer_id), NULL);
  return e == MT_SPIFFE_OK ? NULL : mt_spiffe_err_str(e);
}

static int has_native_rules(const mt_policy_trace *t) {
  for (size_t i = 0; i < t->num_rules; i++)
    if (!t->rules[i].istio) return 1;
  return 0;
}

/* ---- text ---------------------------------------------------------------- */

static void text_peer(writer *w, const mt_explain_query *q) {
  if (q->peer_id == NULL) {
    put(w, "peer:     unauthenticated (plaintext, or TLS without the mesh ALPN)\n");
    return;
  }
  put(w, "peer:     %s\n", q->peer_id);
  const char *problem = peer_id_problem(q->peer_id);
  if (problem == NULL) return;
  put(w, "          NOT a valid SPIFFE ID: %s\n", problem);
  put(w, "          so the decision is the %s denial and no matcher is evaluated\n",
      MT_POLICY_RULE_INVALID_PEER);
  put(w, "          (a certificate with this ID already fails verification: %s)\n",
      mt_reason_str(MT_REASON_BAD_SPIFFE_ID));
}

static void text_header(writer *w, const mt_explain_query *q, const mt_decision *d) {
  put(w, "policy from %s (%s)\n", q->source, q->version);
  if (q->may_be_replaced && q->live)
    put(w, "note: the control plane's Watch stream may replace this policy at any moment\n");
  else if (q->may_be_replaced)
    put(w,
        "note: the control plane's Watch stream gives the running agent its policy, which can\n"
        "      differ from this one (ask the agent: mtlsd explain --admin)\n");
  text_peer(w, q);
  if (q->peer_addr != NULL) {
    char addr[MT_SOCKADDR_TEXT_MAX];
    mt_sockaddr_format(q->peer_addr, addr, sizeof(addr));
    char *port = strrchr(addr, ':'); /* an address alone: the peer's port says nothing */
    if (port != NULL) *port = '\0';
    size_t len = strlen(addr);
    if (addr[0] == '[' && len > 1 && addr[len - 1] == ']') addr[len - 1] = '\0';
    put(w, "from:     %s\n", addr[0] == '[' ? addr + 1 : addr);
  }
  put(w, "port:     %u (%s", (unsigned)q->port,
      q->permissive ? "permissive: also admits plaintext" : "strict: mTLS only");
  if (q->mtls_mode != NULL) put(w, "; PeerAuthentication %s from %s", q->mtls_mode, q->mtls_source);
  put(w, ")\n");
  put(w, "decision: %s\n", mt_action_str(d->action));
  put(w, "rule:     %s\n", d->rule[0] != '\0' ? d->rule : "(none)");
  put(w, "reason:   %s\n", d->reason);
}

static void text_ports(writer *w, const mt_rule_trace *r) {
  if (r->num_ports == 0) {
    put(w, "every port");
    return;
  }
  put(w, r->num_ports == 1 ? "port" : "ports");
  for (size_t i = 0; i < r->num_ports; i++) put(w, "%s%u", i == 0 ? " " : ",", r->ports[i]);
}

/* A matcher result, which an unauthenticated or invalid peer never gets. */
static const char *verdict(int evaluated, int value, const char *yes, const char *no) {
  if (!evaluated) return "not evaluated";
  return value ? yes : no;
}

/* A field's values, as written: [a, b]. */
static void text_values(writer *w, const mt_field_trace *f) {
  put(w, "[");
  for (size_t i = 0; i < f->num_values; i++) put(w, "%s%s", i ? ", " : "", f->values[i]);
  put(w, "]");
}

static void text_istio_rule(writer *w, size_t n, const mt_rule_trace *r, int evaluated,
                            int consulted) {
  put(w, "  %zu. %s: %s%s\n", n, r->name, mt_action_str(r->action),
      consulted && r->decided ? "   <- decided" : "");
  put(w, "       matches: %s\n", verdict(evaluated, r->matches_peer, "yes", "no"));
  if (r->num_clauses == 0 && !r->never_matches)
    put(w, "       - no from/to/when: matches every request\n");
  for (size_t i = 0; i < r->num_clauses; i++) {
    const mt_clause_trace *c = &r->clauses[i];
    put(w, "       - %s[%zu]: %s\n", c->kind, c->index,
        verdict(evaluated, c->matches, "holds", "does not hold"));
    for (size_t j = 0; j < c->num_fields; j++) {
      const mt_field_trace *f = &c->fields[j];
      put(w, "           %s%s ", f->field, f->negated && strchr(f->field, '.') ? " notValues" : "");
      text_values(w, f);
      put(w, ": %s\n", verdict(evaluated, f->matches, "yes", "no"));
    }
  }
  if (r->never_matches) put(w, "       never matches (it needed HTTP; see below)\n");
  if (r->reduced != NULL) put(w, "       reduced for L4: %s\n", r->reduced);
}

static void text_rule(writer *w, size_t n, const mt_rule_trace *r, int evaluated, int consulted) {
  if (r->istio) {
    text_istio_rule(w, n, r, evaluated, consulted);
    return;
  }
  put(w, "  %zu. %s: %s, ", n, r->name, mt_action_str(r->action));
  text_ports(w, r);
  put(w, "%s\n", consulted && r->decided ? "   <- decided" : "");
  put(w, "       covers the port: %s; peer matches: %s\n", r->covers_port ? "yes" : "no",
      verdict(evaluated, r->matches_peer, "yes", "no"));
  for (size_t i = 0; i < r->num_matchers; i++) {
    const mt_matcher_trace *m = &r->matchers[i];
    put(w, "       - %s", mt_match_kind_key(m->kind));
    if (m->value != NULL) put(w, " %s%s", m->value, m->kind == MT_MATCH_PREFIX ? "*" : "");
    put(w, ": %s\n", verdict(evaluated, m->matches, "matches", "no match"));
  }
}

static void text_rules(writer *w, const mt_policy *policy, const mt_explain_query *q,
                       const mt_policy_trace *t) {
  int consulted = policy_consulted(q);
  /* Istio rules are judged for plaintext peers too: say so. */
  int evaluated = t->peer_evaluated || (q->peer_id == NULL && consulted);
  if (t->num_rules == 0) {
    put(w, "\nrules: none; every port gets the default action\n");
  } else {
    put(w, "\nrules in evaluation order (%s):\n",
        q->peer_id != NULL || !has_native_rules(t)
            ? "every DENY rule, then every ALLOW rule"
            : "policy order; a rule covering the port denies an unauthenticated "
              "peer");
    if (!consulted) put(w, "  (not consulted: plaintext never reaches policy on a strict port)\n");
  }
  int any_decided = 0;
  for (size_t i = 0; i < t->num_rules; i++) {
    text_rule(w, i + 1, &t->rules[i], t->rules[i].istio ? evaluated : t->peer_evaluated, consulted);
    any_decided |= t->rules[i].decided;
  }
  if (consulted && !any_decided && t->num_rules > 0)
    put(w, "  no rule above decided: %s (%s)\n", t->decision.rule, t->decision.reason);
  size_t num_allow = mt_policy_num_allow_policies(policy);
  if (num_allow > 0) {
    put(w,
        "ALLOW policies selecting this workload (a request none of their rules matches is "
        "denied):");
    for (size_t i = 0; i < num_allow; i++)
      put(w, "%s%s", i ? ", " : " ", mt_policy_allow_policy(policy, i));
    put(w, "\n");
  }
  put(w, "default (ports no ALLOW rule covers): %s\n", mt_action_str(t->default_action));
}

/* What a plaintext peer gets on the port, when the question was a peer ID. */
static void text_plaintext(writer *w, const mt_policy *policy, const mt_explain_query *q) {
  if (!q->permissive) {
    put(w,
        "\nplaintext on port %u: refused before policy (%s;\n"
        "  access log reason %s)\n",
        (unsigned)q->port,
        q->mtls_mode != NULL ? "PeerAuthentication STRICT" : "not in inbound.permissive_ports",
        mt_reason_str(MT_REASON_PLAINTEXT_ON_STRICT_PORT));
    return;
  }
  mt_explain_query plain = *q;
  plain.peer_id = NULL;
  mt_decision d = mt_explain_decide(policy, &plain);
  put(w, "\nplaintext on port %u (permissive): %s by rule '%s' (%s)\n", (unsigned)q->port,
      mt_action_str(d.action), d.rule, d.reason);
}

static void render_text(writer *w, const mt_policy *policy, const mt_explain_query *q,
                        const mt_policy_trace *t) {
  mt_decision d = mt_explain_decide(policy, q);
  text_header(w, q, &d);
  text_rules(w, policy, q, t);
  if (q->peer_id != NULL) text_plaintext(w, policy, q);
}

/* ---- JSON ---------------------------------------------------------------- */

static const char *json_bool(int b) { return b ? "true" : "false"; }

static void json_decision(writer *w, const mt_decision *d) {
  put(w, "\"decision\":\"%s\",\"rule\":", mt_action_str(d->action));
  put_json_str(w, d->rule);
  put(w, ",\"reason\":");
  put_json_str(w, d->reason);
}

static void json_istio_rule(writer *w, const mt_rule_trace *r, int evaluated, int consulted) {
  put(w, "{\"name\":");
  put_json_str(w, r->name);
  put(w, ",\"position\":%zu,\"action\":\"%s\",\"istio\":true,\"covers_port\":%s,", r->position,
      mt_action_str(r->action), json_bool(r->covers_port));
  put(w, "\"matches_peer\":%s,\"decided\":%s,\"never_matches\":%s,\"reduced\":",
      evaluated ? json_bool(r->matches_peer) : "null", json_bool(consulted && r->decided),
      json_bool(r->never_matches));
  put_json_str(w, r->reduced);
  put(w, ",\"clauses\":[");
  for (size_t i = 0; i < r->num_clauses; i++) {
    const mt_clause_trace *c = &r->clauses[i];
    put(w, "%s{\"kind\":\"%s\",\"index\":%zu,\"matches\":%s,\"fields\":[", i ? "," : "", c->kind,
        c->index, evaluated ? json_bool(c->matches) : "null");
    for (size_t j = 0; j < c->num_fields; j++) {
      const mt_field_trace *f = &c->fields[j];
      put(w, "%s{\"field\":", j ? "," : "");
      put_json_str(w, f->field);
      put(w, ",\"negated\":%s,\"values\":[", json_bool(f->negated));
      for (size_t k = 0; k < f->num_values; k++) {
        if (k) put(w, ",");
        put_json_str(w, f->values[k]);
      }
      put(w, "],\"matches\":%s}", evaluated ? json_bool(f->matches) : "null");
    }
    put(w, "]}");
  }
  put(w, "]}");
}

static void json_rule(writer *w, const mt_rule_trace *r, int evaluated, int consulted) {
  if (r->istio) {
    json_istio_rule(w, r, evaluated, consulted);
    return;
  }
  put(w, "{\"name\":");
  put_json_str(w, r->name);
  put(w, ",\"position\":%zu,\"action\":\"%s\",\"all_ports\":%s,\"ports\":[", r->position,
      mt_action_str(r->action), json_bool(r->num_ports == 0));
  for (size_t i = 0; i < r->num_ports; i++) put(w, "%s%u", i == 0 ? "" : ",", r->ports[i]);
  put(w, "],\"covers_port\":%s,\"matches_peer\":%s,\"decided\":%s,\"matchers\":[",
      json_bool(r->covers_port), evaluated ? json_bool(r->matches_peer) : "null",
      json_bool(consulted && r->decided));
  for (size_t i = 0; i < r->num_matchers; i++) {
    const mt_matcher_trace *m = &r->matchers[i];
    put(w, "%s{\"kind\":\"%s\",\"value\":", i == 0 ? "" : ",", mt_match_kind_key(m->kind));
    if (m->kind == MT_MATCH_PREFIX && m->value != NULL) {
      put(w, "\"");
      put_json_chars(w, m->value);
      put(w, "*\""); /* as the config writes it */
    } else {
      put_json_str(w, m->value);
    }
    put(w, ",\"matches\":%s}", evaluated ? json_bool(m->matches) : "null");
  }
  put(w, "]}");
}

static void render_json(writer *w, const mt_policy *policy, const mt_explain_query *q,
                        const mt_policy_trace *t) {
  mt_decision d = mt_explain_decide(policy, q);
  int consulted = policy_consulted(q);
  put(w, "{\"source\":");
  put_json_str(w, q->source);
  put(w, ",\"version\":");
  put_json_str(w, q->version);
  put(w, ",\"may_be_replaced\":%s,\"peer\":", json_bool(q->may_be_replaced));
  put_json_str(w, q->peer_id);
  put(w, ",\"peer_valid\":%s,\"port\":%u,\"permissive\":%s,",
      q->peer_id == NULL ? "null" : json_bool(peer_id_problem(q->peer_id) == NULL),
      (unsigned)q->port, json_bool(q->permissive));
  put(w, "\"mtls_mode\":");
  put_json_str(w, q->mtls_mode);
  put(w, ",\"mtls_source\":");
  put_json_str(w, q->mtls_source);
  put(w, ",\"source_address\":");
  char addr[MT_SOCKADDR_TEXT_MAX];
  if (q->peer_addr != NULL) mt_sockaddr_format(q->peer_addr, addr, sizeof(addr));
  put_json_str(w, q->peer_addr != NULL ? addr : NULL);
  put(w, ",\"allow_policies\":[");
  for (size_t i = 0; i < mt_policy_num_allow_policies(policy); i++) {
    if (i) put(w, ",");
    put_json_str(w, mt_policy_allow_policy(policy, i));
  }
  put(w, "],");
  json_decision(w, &d);
  put(w, ",\"policy_consulted\":%s,\"default\":\"%s\",\"rules\":[", json_bool(consulted),
      mt_action_str(t->default_action));
  int evaluated = t->peer_evaluated || (q->peer_id == NULL && consulted);
  for (size_t i = 0; i < t->num_rules; i++) {
    if (i > 0) put_bytes(w, ",", 1);
    json_rule(w, &t->rules[i], t->rules[i].istio ? evaluated : t->peer_evaluated, consulted);
  }
  put(w, "]");
  if (q->peer_id != NULL) {
    mt_explain_query plain = *q;
    plain.peer_id = NULL;
    mt_decision pd = mt_explain_decide(policy, &plain);
    put(w, ",\"plaintext\":{");
    json_decision(w, &pd);
    put(w, "}");
  }
  put(w, "}\n");
}

int mt_explain_render(const mt_policy *policy, const mt_explain_query *query, int json, char *buf,
                      size_t len) {
  mt_policy_trace trace;
  mt_policy_request req = request_of(query);
  if (!mt_policy_trace_request(&trace, policy, &req)) return -1;
  writer w = {buf, len, 0};
  if (json)
    render_json(&w, policy, query, &trace);
  else
    render_text(&w, policy, query, &trace);
  mt_policy_trace_dispose(&trace);
  return finish(&w);
}

/* ---- the command ---------------------------------------------------------- */

static void usage(FILE *out) {
  fprintf(
      out,
      "usage: mtlsd explain --config FILE (--peer SPIFFE_ID | --plaintext) --port PORT\n"
      "                     [--source-ip IP] [--json]\n"
      "       mtlsd explain --admin IP:PORT [--workload POD_IP] (--peer SPIFFE_ID | --plaintext)\n"
      "                     --port PORT [--source-ip IP] [--json]\n"
      "Explains the inbound policy decision for a peer connecting to an app port: of\n"
      "FILE's (static) policy, or (--admin) of the policy a running agent enforces now,\n"
      "as its control plane pushed it (e.g. compiled from Istio AuthorizationPolicies).\n"
      "Exit status: 0 allowed, 1 denied, 2 usage, config or connection error.\n");
}

/* Digits only, 1..65535. */
static int parse_port(const char *text, uint16_t *out) {
  enum { PORT_MAX = 65535 };
  long value = 0;
  if (text[0] == '\0') return 0;
  for (const char *p = text; *p != '\0'; p++) {
    if (*p < '0' || *p > '9') return 0;
    value = value * 10 + (*p - '0');
    if (value > PORT_MAX) return 0;
  }
  if (value == 0) return 0;
  *out = (uint16_t)value;
  return 1;
}

/* Renders into a stack buffer, or a heap one when the text is longer. */
static int print_explanation(const mt_policy *policy, const mt_explain_query *q, int json) {
  char first[EXPLAIN_TEXT_START];
  int n = mt_explain_render(policy, q, json, first, sizeof(first));
  if (n < 0) return 0;
  if ((size_t)n < sizeof(first)) return fputs(first, stdout) >= 0;
  char *text = malloc((size_t)n + 1);
  int ok = text != NULL && mt_explain_render(policy, q, json, text, (size_t)n + 1) == n &&
           fputs(text, stdout) >= 0;
  free(text);
  return ok;
}

typedef struct {
  const char *config_path;
  const char *admin;    /* IP:PORT of a running agent's admin endpoint */
  const char *workload; /* node mode: the destination pod's IP */
  const char *source_ip;
  const char *peer_id;
  int plaintext;
  int has_port;
  uint16_t port;
  int json;
  int help;
} explain_args;

/* Returns 1 when the arguments make one question (or ask for help), else 0. */
static int parse_args(int argc, char **argv, explain_args *a) {
  static const struct option options[] = {
      {"config", required_argument, NULL, 'c'},   {"admin", required_argument, NULL, 'a'},
      {"workload", required_argument, NULL, 'w'}, {"source-ip", required_argument, NULL, 's'},
      {"peer", required_argument, NULL, 'p'},     {"plaintext", no_argument, NULL, 't'},
      {"port", required_argument, NULL, 'P'},     {"json", no_argument, NULL, 'j'},
      {"help", no_argument, NULL, 'h'},           {NULL, 0, NULL, 0},
  };
  memset(a, 0, sizeof(*a));
  int opt;
  optind = 1;
  while ((opt = getopt_long(argc, argv, "c:h", options, NULL)) != -1) {
    switch (opt) {
      case 'c': a->config_path = optarg; break;
      case 'a': a->admin = optarg; break;
      case 'w': a->workload = optarg; break;
      case 's': a->source_ip = optarg; break;
      case 'p': a->peer_id = optarg; break;
      case 't': a->plaintext = 1; break;
      case 'P':
        if (!parse_port(optarg, &a->port)) {
          fprintf(stderr, "mtlsd explain: --port must be 1..65535, got '%s'\n", optarg);
          return 0;
        }
        a->has_port = 1;
        break;
      case 'j': a->json = 1; break;
      case 'h': a->help = 1; return 1;
      default: return 0;
    }
  }
  return (a->config_path != NULL) != (a->admin != NULL) && a->has_port &&
         (a->peer_id != NULL) != a->plaintext && optind == argc &&
         (a->workload == NULL || a->admin != NULL);
}

/* ---- --admin: asking a running agent ------------------------------------ */

enum {
  ADMIN_TIMEOUT_S = 5,
  ADMIN_REQUEST_MAX = 4096,
  ADMIN_ANSWER_MAX = 4 * 1024 * 1024, /* an explanation of a very large policy */
};

/* Appends |value| percent-encoded for a query string. */
static void put_query_value(writer *w, const char *value) {
  for (const unsigned char *p = (const unsigned char *)value; *p != '\0'; p++) {
    if ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
        *p == '-' || *p == '.' || *p == '_' || *p == '~')
      put_bytes(w, (const char *)p, 1);
    else
      put(w, "%%%02X", *p);
  }
}

static int admin_connect(const char *address) {
  mt_sockaddr sa;
  if (!mt_sockaddr_parse(address, &sa, 1)) {
    fprintf(stderr, "mtlsd explain: --admin must be IP:PORT, got '%s'\n", address);
    return -1;
  }
  int fd = socket(sa.addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  struct timeval tv = {ADMIN_TIMEOUT_S, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
  if (connect(fd, (const struct sockaddr *)&sa.addr, sa.addr_len) != 0) {
    fprintf(stderr, "mtlsd explain: cannot connect to the admin endpoint %s: %s\n", address,
            strerror(errno));
    close(fd);
    return -1;
  }
  return fd;
}

/* Reads the whole answer (the server closes: Connection: close). Returns a
 * malloc'd NUL-terminated text, or NULL. */
static char *admin_read_answer(int fd, const char *address) {
  size_t cap = 65536, len = 0;
  char *buf = malloc(cap);
  while (buf != NULL) {
    if (len + 1 == cap) {
      char *grown = cap < ADMIN_ANSWER_MAX ? realloc(buf, cap * 2) : NULL;
      if (grown == NULL) break;
      buf = grown, cap *= 2;
    }
    ssize_t n = recv(fd, buf + len, cap - len - 1, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      fprintf(stderr, "mtlsd explain: no answer from %s: %s\n", address, strerror(errno));
      break;
    }
    if (n == 0) {
      buf[len] = '\0';
      return buf;
    }
    len += (size_t)n;
  }
  free(buf);
  return NULL;
}

/* GET /policy?... on the agent's admin endpoint; prints the explanation. */
static int explain_via_admin(const explain_args *a) {
  char request[ADMIN_REQUEST_MAX];
  writer w = {request, sizeof(request), 0};
  put(&w, "GET /policy?port=%u&format=%s", (unsigned)a->port, a->json ? "json" : "text");
  if (a->peer_id != NULL) {
    put(&w, "&peer=");
    put_query_value(&w, a->peer_id);
  } else {
    put(&w, "&plaintext=1");
  }
  if (a->source_ip != NULL) {
    put(&w, "&source_ip=");
    put_query_value(&w, a->source_ip);
  }
  if (a->workload != NULL) {
    put(&w, "&workload=");
    put_query_value(&w, a->workload);
  }
  put(&w, " HTTP/1.1\r\nHost: mtlsd\r\nConnection: close\r\n\r\n");
  if (w.pos >= sizeof(request)) {
    fprintf(stderr, "mtlsd explain: arguments too long\n");
    return EXIT_USAGE;
  }
  int fd = admin_connect(a->admin);
  if (fd < 0) return EXIT_USAGE;
  char *answer = NULL;
  if (send(fd, request, w.pos, MSG_NOSIGNAL) == (ssize_t)w.pos)
    answer = admin_read_answer(fd, a->admin);
  close(fd);
  if (answer == NULL) return EXIT_USAGE;
  const char *body = strstr(answer, "\r\n\r\n");
  int status = 0;
  if (body == NULL || sscanf(answer, "HTTP/1.%*d %d", &status) != 1 || status != 200) {
    fprintf(stderr, "mtlsd explain: the admin endpoint answered: %.*s\n", 200,
            body != NULL ? body + 4 : answer);
    free(answer);
    return EXIT_USAGE;
  }
  body += 4;
  fputs(body, stdout);
  int allowed = strstr(body, a->json ? "\"decision\":\"allow\"" : "\ndecision: allow\n") != NULL;
  free(answer);
  return allowed ? EXIT_ALLOWED : EXIT_DENIED;
}

int mt_explain_main(int argc, char **argv) {
  explain_args a;
  if (!parse_args(argc, argv, &a)) {
    usage(stderr);
    return EXIT_USAGE;
  }
  if (a.help) {
    usage(stdout);
    return EXIT_ALLOWED;
  }
  if (a.admin != NULL) return explain_via_admin(&a);
  mt_sockaddr source;
  if (a.source_ip != NULL && !mt_sockaddr_parse(a.source_ip, &source, 0)) {
    fprintf(stderr, "mtlsd explain: --source-ip must be an IP address, got '%s'\n", a.source_ip);
    return EXIT_USAGE;
  }
  char err[ERR_TEXT_MAX];
  mt_config *config = mt_config_load(a.config_path, err, sizeof(err));
  if (config == NULL) {
    fprintf(stderr, "%s\n", err);
    return EXIT_USAGE;
  }
  /* The policy the agent starts with: the config's static mesh view. */
  const mt_policy *policy = mt_mesh_policy(config->mesh);
  mt_explain_query q = {
      .source = a.config_path,
      .version = mt_mesh_version(config->mesh),
      .may_be_replaced = config->has_control_plane && config->cp_watch,
      .peer_id = a.peer_id,
      .port = a.port,
      .permissive = mt_mesh_admits_plaintext(config->mesh, config, a.port),
      .peer_addr = a.source_ip != NULL ? (const struct sockaddr *)&source.addr : NULL,
  };
  int rc = mt_explain_decide(policy, &q).action == MT_ACTION_ALLOW ? EXIT_ALLOWED : EXIT_DENIED;
  if (!print_explanation(policy, &q, a.json)) {
    fprintf(stderr, "mtlsd explain: out of memory\n");
    rc = EXIT_USAGE;
  }
  mt_config_free(config);
  return rc;
}
