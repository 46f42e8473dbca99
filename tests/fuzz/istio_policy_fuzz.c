/* libFuzzer target: Istio's security objects through the whole pipeline,
 * as a hostile or broken API server would feed it -- mtls-ca's
 * mt_istio_policies_apply and mt_istio_compile (controlplane/istio_*.c),
 * the compiled Policy packed and unpacked with protobuf-c as the Watch
 * stream carries it, then the agent's mt_policy_from_proto,
 * mt_policy_evaluate and mt_policy_trace_request (agent/policy*.c,
 * agent/cidr.c) and its PeerAuthentication (agent/peer_auth.c).
 *
 * Input: one header line, then the object's API JSON (the rest):
 *   byte 0      'P': a PeerAuthentication; anything else: an
 *               AuthorizationPolicy
 *   byte 1      'r': remove the object after the upsert; else upsert it a
 *               second time (a MODIFIED event that changes nothing)
 *   byte 2      the options' default mode: '1' STRICT, '2' PERMISSIVE,
 *               '3' DISABLE, else unspecified
 *   then space-separated fields (missing ones take the default in brackets):
 *     NS              the workload's namespace [shop]
 *     LABELS          k=v,k=v or "-" [-]
 *     SERVICES        a,b or "-" [-]
 *     PORT            destination port, decimal mod 65536 [8080]
 *     PEER            the peer's ID, or "-" for plaintext [-]
 *     PEER_ADDR       the peer's address (v4 or v6), or "-" [-]
 *     DEST_ADDR       the address it connected to, or "-" [-]
 *
 * Oracles, besides "never crashes, never leaks" (ASan, UBSan, LSan):
 *  - apply returns 1 or 0, a refusal with a message; at most one object is
 *    held, none after a removal;
 *  - compiling the same objects twice gives the same bytes; after a
 *    removal the workload compiles to what no object gives (ALLOW by
 *    default, no rules, the options' mode);
 *  - the agent accepts what the control plane compiles: mt_policy_from_proto
 *    of the unpacked Policy succeeds with one rule per message rule, and
 *    the PeerAuthentication has a known mode and unique ports 1..65535
 *    that mt_peer_auth takes (the agent refuses a whole snapshot
 *    otherwise);
 *  - the decision and its trace agree (policy_check.h), for the request as
 *    given and without addresses. */
#include <jansson.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent/peer_auth.h"
#include "agent/policy.h"
#include "agent/policy_proto.h"
#include "controlplane/istio_policy.h"
#include "proto/mtlsd/mesh.pb-c.h"
#include "tests/fuzz/policy_check.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

enum { MAX_HEADER = 512, MAX_LABELS = 8, MAX_SERVICES = 8, FIELD_MAX = 128 };

typedef struct {
  mt_istio_kind kind;
  int remove;
  Mtlsd__Mesh__V1__MtlsMode default_mode;
  char ns[FIELD_MAX];
  char labels_text[FIELD_MAX];
  char services_text[FIELD_MAX];
  uint16_t port;
  char peer[FIELD_MAX];
  char peer_addr[FIELD_MAX];
  char dest_addr[FIELD_MAX];
  mt_k8s_label labels[MAX_LABELS];
  size_t num_labels;
  const char *services[MAX_SERVICES];
  size_t num_services;
} scenario;

static void copy_field(char *dst, const char *src, const char *fallback) {
  snprintf(dst, FIELD_MAX, "%s", src != NULL ? src : fallback);
}

/* Splits |text| (in place) at ',' into k=v labels (an entry without '='
 * has the value ""). */
static void parse_labels(scenario *s) {
  char *save = NULL;
  if (strcmp(s->labels_text, "-") == 0) return;
  for (char *t = strtok_r(s->labels_text, ",", &save); t != NULL && s->num_labels < MAX_LABELS;
       t = strtok_r(NULL, ",", &save)) {
    char *eq = strchr(t, '=');
    if (eq != NULL) *eq = '\0';
    s->labels[s->num_labels++] = (mt_k8s_label){t, eq != NULL ? eq + 1 : t + strlen(t)};
  }
}

static void parse_services(scenario *s) {
  char *save = NULL;
  if (strcmp(s->services_text, "-") == 0) return;
  for (char *t = strtok_r(s->services_text, ",", &save);
       t != NULL && s->num_services < MAX_SERVICES; t = strtok_r(NULL, ",", &save))
    s->services[s->num_services++] = t;
}

/* Reads the header line; returns where the JSON starts. */
static size_t parse_header(const uint8_t *data, size_t size, scenario *s) {
  memset(s, 0, sizeof(*s));
  const uint8_t *nl = memchr(data, '\n', size < MAX_HEADER ? size : MAX_HEADER);
  size_t header_len = nl != NULL ? (size_t)(nl - data) : 0;
  char header[MAX_HEADER + 1];
  memcpy(header, data, header_len);
  header[header_len] = '\0';

  s->kind = header_len > 0 && header[0] == 'P' ? MT_ISTIO_PEER_AUTHENTICATION
                                               : MT_ISTIO_AUTHORIZATION_POLICY;
  s->remove = header_len > 1 && header[1] == 'r';
  char mode = header_len > 2 ? header[2] : '0';
  s->default_mode = mode == '1'   ? MTLSD__MESH__V1__MTLS_MODE__STRICT
                    : mode == '2' ? MTLSD__MESH__V1__MTLS_MODE__PERMISSIVE
                    : mode == '3' ? MTLSD__MESH__V1__MTLS_MODE__DISABLE
                                  : MTLSD__MESH__V1__MTLS_MODE__MTLS_MODE_UNSPECIFIED;
  char *tok[7] = {0};
  size_t n = 0;
  char *save = NULL;
  if (header_len > 3) {
    for (char *t = strtok_r(header + 3, " ", &save); t != NULL && n < 7;
         t = strtok_r(NULL, " ", &save))
      tok[n++] = t;
  }
  copy_field(s->ns, tok[0], "shop");
  copy_field(s->labels_text, tok[1], "-");
  copy_field(s->services_text, tok[2], "-");
  s->port = tok[3] != NULL ? (uint16_t)strtoul(tok[3], NULL, 10) : 8080;
  copy_field(s->peer, tok[4], "-");
  copy_field(s->peer_addr, tok[5], "-");
  copy_field(s->dest_addr, tok[6], "-");
  parse_labels(s);
  parse_services(s);
  return nl != NULL ? header_len + 1 : 0;
}

static mt_mtls_mode agent_mode(Mtlsd__Mesh__V1__MtlsMode m) {
  switch (m) {
    case MTLSD__MESH__V1__MTLS_MODE__STRICT: return MT_MTLS_STRICT;
    case MTLSD__MESH__V1__MTLS_MODE__PERMISSIVE: return MT_MTLS_PERMISSIVE;
    case MTLSD__MESH__V1__MTLS_MODE__DISABLE: return MT_MTLS_DISABLE;
    default: FUZZ_CHECK(!"a PeerAuthentication mode the agent refuses"); return MT_MTLS_STRICT;
  }
}

/* The compiled PeerAuthentication as an agent builds it (mesh_snapshot.c):
 * it must take it. */
static void check_peer_auth(const Mtlsd__Mesh__V1__PeerAuthentication *p) {
  FUZZ_CHECK(p != NULL && p->source != NULL && p->source[0] != '\0');
  mt_peer_auth *pa = mt_peer_auth_new(agent_mode(p->mode), p->source);
  FUZZ_CHECK(pa != NULL);
  for (size_t i = 0; i < p->n_ports; i++) {
    const Mtlsd__Mesh__V1__PortMtls *pm = p->ports[i];
    char why[256];
    FUZZ_CHECK(pm->port >= 1 && pm->port <= 65535);
    FUZZ_CHECK(mt_peer_auth_add_port(pa, (uint16_t)pm->port, agent_mode(pm->mode), pm->source, why,
                                     sizeof(why)) == 1);
  }
  FUZZ_CHECK(mt_peer_auth_num_ports(pa) == p->n_ports);
  mt_peer_auth_free(pa);
}

static void decide_all(const mt_policy *policy, const scenario *s) {
  struct sockaddr_storage peer_ss, dest_ss;
  mt_policy_request req = {strcmp(s->peer, "-") == 0 ? NULL : s->peer, NULL, NULL, s->port};
  if (fuzz_sockaddr(s->peer_addr, 40000, &peer_ss)) req.peer_addr = (struct sockaddr *)&peer_ss;
  if (fuzz_sockaddr(s->dest_addr, s->port, &dest_ss)) req.dest_addr = (struct sockaddr *)&dest_ss;
  fuzz_decide(policy, &req);
  if (req.peer_addr != NULL || req.dest_addr != NULL) {
    req.peer_addr = req.dest_addr = NULL;
    fuzz_decide(policy, &req);
  }
}

/* Compiles for the scenario's workload, checks what the agent makes of
 * it, decides; returns the packed Policy and PeerAuthentication
 * (malloc'd) for comparing two compiles. */
static uint8_t *compile_and_decide(const mt_istio_policies *policies, const scenario *s,
                                   size_t *packed_len) {
  mt_istio_workload w = {s->ns, s->labels, s->num_labels, s->services, s->num_services};
  mt_istio_compiled *c = mt_istio_compile(policies, &w);
  FUZZ_CHECK(c != NULL);
  const Mtlsd__Mesh__V1__Policy *compiled = mt_istio_compiled_policy(c);
  const Mtlsd__Mesh__V1__PeerAuthentication *pa = mt_istio_compiled_peer_authentication(c);
  FUZZ_CHECK(compiled != NULL);
  check_peer_auth(pa);

  size_t policy_len = mtlsd__mesh__v1__policy__get_packed_size(compiled);
  size_t pa_len = mtlsd__mesh__v1__peer_authentication__get_packed_size(pa);
  *packed_len = policy_len + pa_len;
  uint8_t *packed = malloc(*packed_len + 1);
  FUZZ_CHECK(packed != NULL);
  FUZZ_CHECK(mtlsd__mesh__v1__policy__pack(compiled, packed) == policy_len);
  FUZZ_CHECK(mtlsd__mesh__v1__peer_authentication__pack(pa, packed + policy_len) == pa_len);
  mt_istio_compiled_free(c);

  Mtlsd__Mesh__V1__Policy *wire = mtlsd__mesh__v1__policy__unpack(NULL, policy_len, packed);
  FUZZ_CHECK(wire != NULL);
  char err[512];
  memset(err, 'x', sizeof(err));
  mt_policy *policy = mt_policy_from_proto(wire, err, sizeof(err));
  if (policy == NULL) {
    fprintf(stderr, "the agent refused a compiled policy: %.*s\n", (int)sizeof(err), err);
    FUZZ_CHECK(!"the agent refuses what the control plane compiled");
  }
  FUZZ_CHECK(mt_policy_rule_count(policy) == wire->n_rules);
  FUZZ_CHECK(mt_policy_num_allow_policies(policy) == wire->n_allow_policies);
  decide_all(policy, s);
  mt_policy_free(policy);
  mtlsd__mesh__v1__policy__free_unpacked(wire, NULL);
  return packed;
}

/* One watch event; the oracles on its result. */
static int apply(mt_istio_policies *policies, const scenario *s, mt_cluster_change change,
                 const json_t *object) {
  char err[512];
  memset(err, 'x', sizeof(err));
  int ok = mt_istio_policies_apply(policies, s->kind, change, object, err, sizeof(err));
  FUZZ_CHECK(ok == 0 || ok == 1);
  if (!ok) FUZZ_CHECK(fuzz_is_message(err, sizeof(err)));
  FUZZ_CHECK(mt_istio_policies_count(policies, s->kind) <= 1);
  FUZZ_CHECK(mt_istio_policies_count(policies, s->kind == MT_ISTIO_AUTHORIZATION_POLICY
                                                   ? MT_ISTIO_PEER_AUTHENTICATION
                                                   : MT_ISTIO_AUTHORIZATION_POLICY) == 0);
  return ok;
}

static void on_object(void *ctx, mt_istio_kind kind, const char *ns, const char *name,
                      mt_istio_status status, const char *detail) {
  size_t *seen = ctx;
  (*seen)++;
  FUZZ_CHECK(kind == MT_ISTIO_AUTHORIZATION_POLICY || kind == MT_ISTIO_PEER_AUTHENTICATION);
  FUZZ_CHECK(ns != NULL && ns[0] != '\0' && name != NULL && name[0] != '\0' && detail != NULL);
  FUZZ_CHECK(strcmp(mt_istio_status_str(status), "unknown") != 0);
  FUZZ_CHECK((status == MT_ISTIO_APPLIED) == (detail[0] == '\0'));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  scenario s;
  size_t json_at = parse_header(data, size, &s);
  json_error_t jerr;
  json_t *object =
      json_loadb((const char *)data + json_at, size - json_at, JSON_REJECT_DUPLICATES, &jerr);
  if (object == NULL) return 0;

  mt_istio_options options = {NULL, s.default_mode};
  mt_istio_policies *policies = mt_istio_policies_new(&options);
  FUZZ_CHECK(policies != NULL);
  size_t empty_len, first_len, second_len;
  uint8_t *empty = compile_and_decide(policies, &s, &empty_len);

  apply(policies, &s, MT_CLUSTER_UPSERT, object);
  size_t seen = 0;
  mt_istio_policies_foreach(policies, on_object, &seen);
  FUZZ_CHECK(seen == mt_istio_policies_count(policies, s.kind));
  uint8_t *first = compile_and_decide(policies, &s, &first_len);

  if (s.remove) {
    FUZZ_CHECK(apply(policies, &s, MT_CLUSTER_REMOVE, object) == 1 ||
               mt_istio_policies_count(policies, s.kind) == seen);
    /* A removal that named the object leaves nothing; one whose metadata
     * did not decode removes nothing (and was refused). */
    uint8_t *after = compile_and_decide(policies, &s, &second_len);
    if (mt_istio_policies_count(policies, s.kind) == 0)
      FUZZ_CHECK(second_len == empty_len && memcmp(after, empty, empty_len) == 0);
    free(after);
  } else {
    apply(policies, &s, MT_CLUSTER_UPSERT, object);
    uint8_t *second = compile_and_decide(policies, &s, &second_len);
    FUZZ_CHECK(second_len == first_len && memcmp(second, first, first_len) == 0);
    free(second);
  }
  free(first);
  free(empty);
  mt_istio_policies_free(policies);
  json_decref(object);
  return 0;
}
