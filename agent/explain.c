/* explain.c: `mtlsd explain`. The first half renders an explanation into a
 * buffer (text or JSON) from policy.h's decision and trace; the second half
 * is the command: arguments, the config load, printing, the exit status. */
#include "agent/explain.h"

#include <getopt.h>
#include <limits.h>
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

mt_decision mt_explain_decide(const mt_policy *policy, const mt_explain_query *q) {
  if (q->peer_id != NULL) return mt_policy_decide(policy, q->peer_id, q->port);
  if (q->permissive) return mt_policy_decide_unauthenticated(policy, q->port);
  mt_decision d = {MT_ACTION_DENY, "", kStrictPlaintextReason};
  return d;
}

/* The peer ID's syntax problem, or NULL when it is a valid SPIFFE ID. */
static const char *peer_id_problem(const char *peer_id) {
  mt_spiffe_err e = mt_spiffe_id_parse(peer_id, strlen(peer_id), NULL);
  return e == MT_SPIFFE_OK ? NULL : mt_spiffe_err_str(e);
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
  if (q->may_be_replaced)
    put(w,
        "note: the control plane's Watch stream gives the running agent its policy, which can\n"
        "      differ from this one\n");
  text_peer(w, q);
  put(w, "port:     %u (%s)\n", (unsigned)q->port,
      q->permissive ? "permissive: also admits plaintext" : "strict: mTLS only");
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

static void text_rule(writer *w, size_t n, const mt_rule_trace *r, int evaluated, int consulted) {
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

static void text_rules(writer *w, const mt_explain_query *q, const mt_policy_trace *t) {
  int consulted = policy_consulted(q);
  if (t->num_rules == 0) {
    put(w, "\nrules: none; every port gets the default action\n");
  } else {
    put(w, "\nrules in evaluation order (%s):\n",
        q->peer_id != NULL ? "every DENY rule, then every ALLOW rule"
                           : "policy order; a rule covering the port denies an unauthenticated "
                             "peer");
    if (!consulted) put(w, "  (not consulted: plaintext never reaches policy on a strict port)\n");
  }
  int any_decided = 0;
  for (size_t i = 0; i < t->num_rules; i++) {
    text_rule(w, i + 1, &t->rules[i], t->peer_evaluated, consulted);
    any_decided |= t->rules[i].decided;
  }
  if (consulted && !any_decided && t->num_rules > 0)
    put(w, "  no rule above decided: %s (%s)\n", t->decision.rule, t->decision.reason);
  put(w, "default (ports no ALLOW rule covers): %s\n", mt_action_str(t->default_action));
}

/* What a plaintext peer gets on the port, when the question was a peer ID. */
static void text_plaintext(writer *w, const mt_policy *policy, const mt_explain_query *q) {
  if (!q->permissive) {
    put(w,
        "\nplaintext on port %u: refused before policy (not in inbound.permissive_ports;\n"
        "  access log reason %s)\n",
        (unsigned)q->port, mt_reason_str(MT_REASON_PLAINTEXT_ON_STRICT_PORT));
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
  text_rules(w, q, t);
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

static void json_rule(writer *w, const mt_rule_trace *r, int evaluated, int consulted) {
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
  json_decision(w, &d);
  put(w, ",\"policy_consulted\":%s,\"default\":\"%s\",\"rules\":[", json_bool(consulted),
      mt_action_str(t->default_action));
  for (size_t i = 0; i < t->num_rules; i++) {
    if (i > 0) put_bytes(w, ",", 1);
    json_rule(w, &t->rules[i], t->peer_evaluated, consulted);
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
  if (!mt_policy_trace_init(&trace, policy, query->peer_id, query->port)) return -1;
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
      "usage: mtlsd explain --config FILE --peer SPIFFE_ID --port PORT [--json]\n"
      "       mtlsd explain --config FILE --plaintext --port PORT [--json]\n"
      "Explains the inbound policy decision of FILE's (static) policy for a peer\n"
      "connecting to an app port. Exit status: 0 allowed, 1 denied, 2 usage or config error.\n");
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

static int is_permissive(const mt_config *config, uint16_t port) {
  for (size_t i = 0; i < config->num_permissive_ports; i++)
    if (config->permissive_ports[i] == port) return 1;
  return 0;
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
      {"config", required_argument, NULL, 'c'},
      {"peer", required_argument, NULL, 'p'},
      {"plaintext", no_argument, NULL, 't'},
      {"port", required_argument, NULL, 'P'},
      {"json", no_argument, NULL, 'j'},
      {"help", no_argument, NULL, 'h'},
      {NULL, 0, NULL, 0},
  };
  memset(a, 0, sizeof(*a));
  int opt;
  optind = 1;
  while ((opt = getopt_long(argc, argv, "c:h", options, NULL)) != -1) {
    switch (opt) {
      case 'c': a->config_path = optarg; break;
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
  return a->config_path != NULL && a->has_port && (a->peer_id != NULL) != a->plaintext &&
         optind == argc;
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
      .permissive = is_permissive(config, a.port),
  };
  int rc = mt_explain_decide(policy, &q).action == MT_ACTION_ALLOW ? EXIT_ALLOWED : EXIT_DENIED;
  if (!print_explanation(policy, &q, a.json)) {
    fprintf(stderr, "mtlsd explain: out of memory\n");
    rc = EXIT_USAGE;
  }
  mt_config_free(config);
  return rc;
}
