/* ca_service.c: CreateCertificate. */
#include "controlplane/ca_service.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/pem.h>

#include "controlplane/node_auth.h"
#include "proto/istio/ca.pb-c.h"

enum {
  SIGN_ERR_MAX = 512,
  SERIAL_HEX_MAX = 2 * 20 + 1, /* RFC 5280: at most 20 octets */
  SECONDS_PER_DAY = 24 * 3600,
};

static const char kPemEnd[] = "-----END CERTIFICATE-----";
static const char kPemBegin[] = "-----BEGIN CERTIFICATE-----";
/* Prefixes of mt_signer_sign_csr messages that are the server's fault, not
 * the CSR's (signer.h has no error codes). */
static const char *const kInternalSignErrors[] = {"out of memory", "cannot build", "maximum TTL",
                                                  "issuer certificate"};

struct mt_ca_service {
  const mt_ca_auth *auth;
  mt_ca_log *log;
  mt_ca_issuer *issuer;
  int64_t default_ttl_s, max_ttl_s;
  /* Who may ask for whom: the trust domain and node agents; the workloads
   * come from |registry| (NULL: none) at each call. */
  mt_node_auth_policy node_policy;
  const mt_workload_registry *registry;
  const mt_cluster_state *cluster; /* set: replaces |registry| */
  int cluster_synced;              /* |cluster| has been listed once */
};

/* Everything one call produces for its reply and its log line. */
typedef struct {
  const mt_grpc_request *req;
  int64_t started_ms;
  mt_ca_auth_result auth;
  /* The identity the call is for: the caller's own once authenticated, the
   * workload's once an impersonation is allowed, "" once one is refused. */
  char identity[MT_SPIFFE_ID_MAX_LEN + 1];
  char impersonated[MT_SPIFFE_ID_MAX_LEN + 1]; /* as asked for (cut if longer), or "" */
  mt_ca_outcome out;
  char serial[SERIAL_HEX_MAX];
  int64_t ttl_s;
} call_state;

mt_ca_service *mt_ca_service_new(const mt_ca_auth *auth, mt_ca_log *log, mt_ca_issuer *issuer,
                                 int64_t default_ttl_s, int64_t max_ttl_s) {
  mt_ca_service *svc = calloc(1, sizeof(*svc));
  if (svc == NULL) {
    mt_ca_issuer_free(issuer);
    return NULL;
  }
  svc->auth = auth;
  svc->log = log;
  svc->issuer = issuer;
  svc->default_ttl_s = default_ttl_s;
  svc->max_ttl_s = max_ttl_s;
  return svc;
}

void mt_ca_service_free(mt_ca_service *svc) {
  if (svc == NULL) return;
  mt_ca_issuer_free(svc->issuer);
  free(svc);
}

void mt_ca_service_set_issuer(mt_ca_service *svc, mt_ca_issuer *issuer) {
  mt_ca_issuer_free(svc->issuer);
  svc->issuer = issuer;
}

void mt_ca_service_allow_node_agents(mt_ca_service *svc, const char *trust_domain,
                                     const char *const *node_agents, size_t count,
                                     const mt_workload_registry *registry) {
  svc->node_policy.trust_domain = trust_domain;
  svc->node_policy.node_agents = node_agents;
  svc->node_policy.num_node_agents = count;
  svc->registry = registry;
}

void mt_ca_service_use_cluster(mt_ca_service *svc, const mt_cluster_state *cluster) {
  svc->cluster = cluster;
  svc->cluster_synced = 0;
}

void mt_ca_service_cluster_synced(mt_ca_service *svc) { svc->cluster_synced = 1; }

/* ---- the certificate chain --------------------------------------------- */

/* Splits a PEM chain into one malloc'd string per certificate. Returns the
 * count (0 when out of memory or when there is none). */
static size_t split_pem_chain(const char *pem, char ***out) {
  size_t count = 0;
  char **list = NULL;
  const char *p = pem;
  const char *begin;
  while ((begin = strstr(p, kPemBegin)) != NULL) {
    const char *end = strstr(begin, kPemEnd);
    if (end == NULL) break;
    end += sizeof(kPemEnd) - 1;
    if (*end == '\n') end++;
    char **grown = realloc(list, (count + 1) * sizeof(*list));
    char *one = grown != NULL ? strndup(begin, (size_t)(end - begin)) : NULL;
    if (grown != NULL) list = grown;
    if (one == NULL) {
      for (size_t i = 0; i < count; i++) free(list[i]);
      free(list);
      *out = NULL;
      return 0;
    }
    list[count++] = one;
    p = end;
  }
  *out = list;
  return count;
}

static void free_list(char **list, size_t count) {
  for (size_t i = 0; i < count; i++) free(list[i]);
  free(list);
}

/* Serial (lowercase hex) and remaining lifetime of the leaf PEM. */
static void describe_leaf(const char *leaf_pem, time_t now, call_state *st) {
  BIO *bio = BIO_new_mem_buf(leaf_pem, -1);
  X509 *leaf = bio != NULL ? PEM_read_bio_X509(bio, NULL, NULL, NULL) : NULL;
  BIGNUM *bn = leaf != NULL ? ASN1_INTEGER_to_BN(X509_get0_serialNumber(leaf), NULL) : NULL;
  char *hex = bn != NULL ? BN_bn2hex(bn) : NULL;
  if (hex != NULL) {
    size_t i = 0;
    for (; hex[i] != '\0' && i + 1 < sizeof(st->serial); i++)
      st->serial[i] = (char)(hex[i] >= 'A' && hex[i] <= 'F' ? hex[i] - 'A' + 'a' : hex[i]);
    st->serial[i] = '\0';
  }
  ASN1_TIME *at_now = leaf != NULL ? ASN1_TIME_set(NULL, now) : NULL;
  int days = 0, secs = 0;
  if (at_now != NULL && ASN1_TIME_diff(&days, &secs, at_now, X509_get0_notAfter(leaf)))
    st->ttl_s = (int64_t)days * SECONDS_PER_DAY + secs;
  ASN1_TIME_free(at_now);
  OPENSSL_free(hex);
  BN_free(bn);
  X509_free(leaf);
  BIO_free(bio);
  ERR_clear_error();
}

/* ---- replying ---------------------------------------------------------- */

/* The diagnostic line of an issuance; a node agent's names it and its node
 * (both checked by node_auth before anything was issued). */
static void log_issued(mt_ca_service *svc, const call_state *st) {
  const mt_grpc_request *req = st->req;
  mt_ca_log_count(svc->log, MT_CA_EV_CERTS_ISSUED);
  if (st->impersonated[0] == '\0') {
    mt_ca_log_info(svc->log, "issued serial %s to %s from %s, ttl %llds", st->serial, st->identity,
                   req->peer_address, (long long)st->ttl_s);
    return;
  }
  mt_ca_log_count(svc->log, MT_CA_EV_IMPERSONATED_CERTS_ISSUED);
  mt_ca_log_info(svc->log, "issued serial %s to %s for node agent %s on node %s from %s, ttl %llds",
                 st->serial, st->identity, st->auth.spiffe_id, st->auth.node_name,
                 req->peer_address, (long long)st->ttl_s);
}

/* Finishes the call with its outcome; logs, counts. */
static void conclude(mt_ca_service *svc, mt_grpc_stream *stream, call_state *st) {
  const mt_grpc_request *req = st->req;
  mt_grpc_stream_finish(stream, st->out.status,
                        st->out.status == MT_GRPC_OK ? NULL : st->out.message);
  if (st->out.status == MT_GRPC_OK) {
    log_issued(svc, st);
  } else {
    mt_ca_log_warn(svc->log, "CreateCertificate from %s (%s) refused: %s (%s): %s",
                   req->peer_address,
                   st->auth.spiffe_id[0] ? st->auth.spiffe_id : "unauthenticated",
                   mt_grpc_status_name((int)st->out.status), st->out.reason, st->out.message);
  }
  mt_ca_access_entry e = {
      .method = MT_CA_METHOD_CREATE_CERTIFICATE,
      .peer = req->peer_address,
      .caller = st->auth.spiffe_id,
      .identity = st->identity,
      .impersonated = st->impersonated,
      .node = st->auth.node_name,
      .status = st->out.status,
      .reason = st->out.reason,
      .message = st->out.status == MT_GRPC_OK ? "" : st->out.message,
      .serial = st->serial,
      .ttl_s = st->ttl_s,
      .duration_ms = mt_ca_log_clock_ms() - st->started_ms,
      .refused = st->out.status != MT_GRPC_OK,
  };
  mt_ca_log_access(svc->log, &e);
}

/* Encodes and queues the response; returns 1, or 0 with the outcome set. */
static int send_response(mt_ca_service *svc, mt_grpc_stream *stream, char **chain, size_t n,
                         call_state *st) {
  const mt_pem_certs *roots = mt_ca_issuer_roots(svc->issuer);
  Istio__V1__Auth__Roots root_cert = ISTIO__V1__AUTH__ROOTS__INIT;
  root_cert.n_ca_cert = roots->count;
  root_cert.ca_cert = roots->pems;
  Istio__V1__Auth__IstioCertificateResponse resp =
      ISTIO__V1__AUTH__ISTIO_CERTIFICATE_RESPONSE__INIT;
  resp.n_cert_chain = n;
  resp.cert_chain = chain;
  resp.root_cert = &root_cert;
  size_t len = istio__v1__auth__istio_certificate_response__get_packed_size(&resp);
  uint8_t *buf = malloc(len ? len : 1);
  if (buf == NULL) {
    mt_ca_outcome_set(&st->out, MT_GRPC_INTERNAL, "no_memory",
                      "out of memory encoding the response");
    return 0;
  }
  istio__v1__auth__istio_certificate_response__pack(&resp, buf);
  mt_grpc_send_result r = mt_grpc_stream_send(stream, buf, len);
  free(buf);
  if (r != MT_GRPC_SEND_OK) {
    mt_ca_outcome_set(&st->out, MT_GRPC_INTERNAL, "send_failed", "cannot queue the response");
    return 0;
  }
  mt_ca_outcome_set(&st->out, MT_GRPC_OK, "ok", "%s", "");
  return 1;
}

/* ---- signing ----------------------------------------------------------- */

static int is_internal_sign_error(const char *err) {
  for (size_t i = 0; i < sizeof(kInternalSignErrors) / sizeof(kInternalSignErrors[0]); i++)
    if (strncmp(err, kInternalSignErrors[i], strlen(kInternalSignErrors[i])) == 0) return 1;
  return 0;
}

/* requested > 0: that, capped at the maximum; otherwise the default. */
static int64_t pick_ttl(const mt_ca_service *svc, int64_t requested) {
  if (requested <= 0) return svc->default_ttl_s;
  return requested < svc->max_ttl_s ? requested : svc->max_ttl_s;
}

/* Signs |csr| for the caller; on success queues the response. */
static void sign_and_reply(mt_ca_service *svc, mt_grpc_stream *stream, const char *csr,
                           int64_t requested_ttl_s, call_state *st) {
  time_t now = time(NULL);
  if (now >= mt_ca_issuer_not_after(svc->issuer)) {
    mt_ca_outcome_set(&st->out, MT_GRPC_UNAVAILABLE, "issuer_expired",
                      "the issuing CA has expired; it must be rotated (SIGHUP after replacing it)");
    return;
  }
  char err[SIGN_ERR_MAX] = "";
  char *chain_pem = NULL;
  if (!mt_signer_sign_csr(mt_ca_issuer_signer(svc->issuer), csr, strlen(csr), st->identity,
                          pick_ttl(svc, requested_ttl_s), svc->max_ttl_s, now, &chain_pem, err,
                          sizeof(err))) {
    if (is_internal_sign_error(err))
      mt_ca_outcome_set(&st->out, MT_GRPC_INTERNAL, "sign_failed", "cannot sign: %s", err);
    else
      mt_ca_outcome_set(&st->out, MT_GRPC_INVALID_ARGUMENT, "bad_csr", "bad CSR: %s", err);
    return;
  }
  char **chain = NULL;
  size_t n = split_pem_chain(chain_pem, &chain);
  if (n == 0) {
    mt_ca_outcome_set(&st->out, MT_GRPC_INTERNAL, "no_memory", "out of memory splitting the chain");
  } else {
    describe_leaf(chain[0], now, st);
    send_response(svc, stream, chain, n, st);
  }
  free_list(chain, n);
  free(chain_pem);
}

/* ---- who the certificate is for --------------------------------------- */

void mt_ca_service_decide_identity(const mt_ca_service *svc, const mt_ca_auth_result *caller,
                                   const char *impersonated, mt_node_auth_decision *out) {
  mt_node_auth_policy policy = svc->node_policy;
  policy.workloads = svc->registry != NULL ? mt_workload_registry_current(svc->registry) : NULL;
  policy.cluster = svc->cluster;
  policy.cluster_not_synced = !svc->cluster_synced;
  mt_node_auth_request request = {caller->spiffe_id, caller->node_name, impersonated};
  mt_node_auth_decide(&policy, &request, out);
}

/* The request's ImpersonatedIdentity: |*id| NULL when the metadata has none.
 * A key given twice or a value that is not a string is refused rather than
 * guessed at. Returns 1, or 0 with the outcome set. */
static int find_impersonation(const Istio__V1__Auth__IstioCertificateRequest *r, const char **id,
                              call_state *st) {
  *id = NULL;
  const Google__Protobuf__Struct *md = r->metadata;
  for (size_t i = 0; md != NULL && i < md->n_fields; i++) {
    const Google__Protobuf__Struct__FieldsEntry *f = md->fields[i];
    if (f == NULL || f->key == NULL || strcmp(f->key, MT_NODE_AUTH_IMPERSONATION_KEY) != 0)
      continue;
    if (*id != NULL) {
      mt_ca_outcome_set(&st->out, MT_GRPC_INVALID_ARGUMENT, "bad_metadata",
                        "metadata \"%s\" is given more than once", MT_NODE_AUTH_IMPERSONATION_KEY);
      return 0;
    }
    if (f->value == NULL || f->value->kind_case != GOOGLE__PROTOBUF__VALUE__KIND_STRING_VALUE) {
      mt_ca_outcome_set(&st->out, MT_GRPC_INVALID_ARGUMENT, "bad_metadata",
                        "metadata \"%s\" must be a string (a SPIFFE ID)",
                        MT_NODE_AUTH_IMPERSONATION_KEY);
      return 0;
    }
    *id = f->value->string_value;
  }
  return 1;
}

/* Decides the identity to certify (node_auth.h). Returns 1 with
 * st->identity set, or 0 with the outcome set. */
static int authorize(const mt_ca_service *svc, const Istio__V1__Auth__IstioCertificateRequest *r,
                     call_state *st) {
  const char *impersonated = NULL;
  int ok = find_impersonation(r, &impersonated, st);
  if (impersonated != NULL)
    snprintf(st->impersonated, sizeof(st->impersonated), "%s", impersonated);
  if (ok) {
    mt_node_auth_decision d;
    mt_ca_service_decide_identity(svc, &st->auth, impersonated, &d);
    ok = d.status == MT_GRPC_OK;
    if (ok)
      snprintf(st->identity, sizeof(st->identity), "%s", d.identity);
    else
      mt_ca_outcome_set(&st->out, d.status, d.reason, "%s", d.message);
  }
  if (!ok) st->identity[0] = '\0';
  return ok;
}

/* Authenticated caller: decode the request, decide whom it is for, sign. */
static void handle_request(mt_ca_service *svc, mt_grpc_stream *stream, call_state *st) {
  const mt_grpc_request *req = st->req;
  Istio__V1__Auth__IstioCertificateRequest *r =
      istio__v1__auth__istio_certificate_request__unpack(NULL, req->message_len, req->message);
  if (r == NULL) {
    mt_ca_outcome_set(&st->out, MT_GRPC_INVALID_ARGUMENT, "bad_request",
                      "the request is not an IstioCertificateRequest message");
    return;
  }
  if (authorize(svc, r, st)) {
    if (r->csr == NULL || r->csr[0] == '\0')
      mt_ca_outcome_set(&st->out, MT_GRPC_INVALID_ARGUMENT, "bad_csr", "csr is empty");
    else
      sign_and_reply(svc, stream, r->csr, r->validity_duration, st);
  }
  istio__v1__auth__istio_certificate_request__free_unpacked(r, NULL);
}

static void on_create_certificate(void *arg, mt_grpc_stream *stream, const mt_grpc_request *req) {
  mt_ca_service *svc = arg;
  call_state st;
  memset(&st, 0, sizeof(st));
  st.req = req;
  st.started_ms = mt_ca_log_clock_ms();
  mt_ca_auth_check(svc->auth, req, (int64_t)time(NULL), &st.auth);
  if (st.auth.status != MT_GRPC_OK) {
    mt_ca_outcome_set(&st.out, st.auth.status, st.auth.reason, "%s", st.auth.message);
  } else {
    snprintf(st.identity, sizeof(st.identity), "%s", st.auth.spiffe_id);
    handle_request(svc, stream, &st);
  }
  conclude(svc, stream, &st);
}

int mt_ca_service_register(mt_ca_service *svc, mt_grpc_server *server) {
  return mt_grpc_server_handle(server, mt_ca_method_path(MT_CA_METHOD_CREATE_CERTIFICATE),
                               on_create_certificate, svc);
}
