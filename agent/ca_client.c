/* ca_client.c: CreateCertificate request/response over the gRPC client. */
#include "agent/ca_client.h"

#include <errno.h>
#include <openssl/mem.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent/csr.h"
#include "agent/pem.h"
#include "proto/istio/ca.pb-c.h"

enum { AUTH_HEADER_MAX = MT_CA_AUTH_HEADER_MAX };

struct mt_ca_request {
  mt_grpc_call *call;
  mt_ca_done_fn done;
  void *done_arg;
  mt_ca_result result;
  int messages;
  int bad_response;
};

/* Reads the token afresh: kubelet rotates projected tokens in place. */
static int read_token(const char *path, char *out, size_t out_len, char *err, size_t err_len) {
  FILE *f = fopen(path, "rb");
  if (f == NULL) {
    snprintf(err, err_len, "%s: cannot open token: %s", path, strerror(errno));
    return 0;
  }
  size_t n = fread(out, 1, out_len - 1, f);
  int too_big = n == out_len - 1 && fgetc(f) != EOF;
  fclose(f);
  while (n > 0 && (out[n - 1] == '\n' || out[n - 1] == '\r' || out[n - 1] == ' ')) n--;
  out[n] = '\0';
  if (too_big || n == 0) {
    snprintf(err, err_len, "%s: token is %s", path, too_big ? "larger than 16 KiB" : "empty");
    return 0;
  }
  return 1;
}

/* cert_chain entries may each hold several PEM blocks; when root_cert is
 * absent, the last entry carries the root(s) (PROTOCOL.md §1). */
int mt_ca_decode_response(const uint8_t *msg, size_t len, mt_ca_result *r) {
  Istio__V1__Auth__IstioCertificateResponse *resp =
      istio__v1__auth__istio_certificate_response__unpack(NULL, len, msg);
  if (resp == NULL) {
    snprintf(r->message, sizeof(r->message), "malformed IstioCertificateResponse");
    return 0;
  }
  r->chain = sk_X509_new_null();
  r->roots = sk_X509_new_null();
  int roots_in_chain = resp->root_cert == NULL && resp->n_cert_chain > 1;
  size_t chain_entries = resp->n_cert_chain - (roots_in_chain ? 1 : 0);
  int ok = r->chain != NULL && r->roots != NULL;
  for (size_t i = 0; ok && i < chain_entries; i++)
    ok = mt_pem_append_certs(resp->cert_chain[i], strlen(resp->cert_chain[i]), r->chain) > 0;
  if (ok && roots_in_chain) {
    const char *last = resp->cert_chain[resp->n_cert_chain - 1];
    ok = mt_pem_append_certs(last, strlen(last), r->roots) > 0;
  }
  for (size_t i = 0; ok && resp->root_cert != NULL && i < resp->root_cert->n_ca_cert; i++) {
    const char *pem = resp->root_cert->ca_cert[i];
    ok = mt_pem_append_certs(pem, strlen(pem), r->roots) > 0;
  }
  if (ok && sk_X509_num(r->chain) == 0) ok = 0;
  if (!ok) snprintf(r->message, sizeof(r->message), "response holds no or unparsable certificates");
  istio__v1__auth__istio_certificate_response__free_unpacked(resp, NULL);
  return ok;
}

static void result_clear(mt_ca_result *r) {
  sk_X509_pop_free(r->chain, X509_free);
  sk_X509_pop_free(r->roots, X509_free);
  r->chain = r->roots = NULL;
}

/* A unary call: exactly one response message is expected before OK. */
static void on_message(void *arg, const uint8_t *msg, size_t len) {
  mt_ca_request *req = arg;
  if (req->messages++ > 0 || !mt_ca_decode_response(msg, len, &req->result)) req->bad_response = 1;
}

static void on_close(void *arg, mt_grpc_status status, const char *message) {
  mt_ca_request *req = arg;
  mt_ca_result *r = &req->result;
  r->status = status;
  if (status != MT_GRPC_OK) {
    snprintf(r->message, sizeof(r->message), "%s: %s", mt_grpc_status_name(status), message);
  } else if (req->bad_response || req->messages != 1) {
    r->status = MT_GRPC_INTERNAL;
    r->refused = 1;
    if (req->messages != 1)
      snprintf(r->message, sizeof(r->message), "expected one response message, got %d",
               req->messages);
  }
  if (r->status != MT_GRPC_OK) result_clear(r);
  req->done(req->done_arg, r);
  result_clear(r); /* whatever the callee did not take */
  free(req);
}

int mt_ca_read_bearer(const char *token_file, char *out, size_t out_len, char *err,
                      size_t err_len) {
  if (out_len < 8) return 0;
  memcpy(out, "Bearer ", 7);
  return read_token(token_file, out + 7, out_len - 7, err, err_len);
}

static uint8_t *pack_request(EVP_PKEY *key, const mt_ca_request_options *o, size_t *out_len,
                             char *err, size_t err_len) {
  char *csr = mt_csr_create_pem(key, o->spiffe_id, err, err_len);
  if (csr == NULL) return NULL;
  Istio__V1__Auth__IstioCertificateRequest req = ISTIO__V1__AUTH__ISTIO_CERTIFICATE_REQUEST__INIT;
  req.csr = csr;
  req.validity_duration = o->ttl_s;
  Google__Protobuf__Value who = GOOGLE__PROTOBUF__VALUE__INIT;
  Google__Protobuf__Struct__FieldsEntry entry = GOOGLE__PROTOBUF__STRUCT__FIELDS_ENTRY__INIT;
  Google__Protobuf__Struct__FieldsEntry *entries[1] = {&entry};
  Google__Protobuf__Struct metadata = GOOGLE__PROTOBUF__STRUCT__INIT;
  if (o->impersonate) {
    who.kind_case = GOOGLE__PROTOBUF__VALUE__KIND_STRING_VALUE;
    who.string_value = (char *)o->spiffe_id;
    entry.key = (char *)MT_CA_IMPERSONATED_IDENTITY;
    entry.value = &who;
    metadata.n_fields = 1;
    metadata.fields = entries;
    req.metadata = &metadata;
  }
  *out_len = istio__v1__auth__istio_certificate_request__get_packed_size(&req);
  uint8_t *buf = malloc(*out_len ? *out_len : 1);
  if (buf != NULL)
    istio__v1__auth__istio_certificate_request__pack(&req, buf);
  else
    snprintf(err, err_len, "out of memory");
  free(csr);
  return buf;
}

mt_ca_request *mt_ca_request_start(mt_grpc_client *grpc, EVP_PKEY *key,
                                   const mt_ca_request_options *o, mt_ca_done_fn done, void *arg,
                                   char *err, size_t err_len) {
  char *auth = NULL;
  mt_grpc_metadata md[2];
  size_t num_md = 0;
  if (o->token_file != NULL) {
    auth = malloc(AUTH_HEADER_MAX);
    if (auth == NULL) return NULL;
    if (!mt_ca_read_bearer(o->token_file, auth, AUTH_HEADER_MAX, err, err_len)) {
      OPENSSL_cleanse(auth, AUTH_HEADER_MAX);
      free(auth);
      return NULL;
    }
    md[num_md++] = (mt_grpc_metadata){"authorization", auth};
  }
  if (o->cluster_id != NULL) md[num_md++] = (mt_grpc_metadata){"clusterid", o->cluster_id};
  size_t len = 0;
  uint8_t *body = pack_request(key, o, &len, err, err_len);
  mt_ca_request *req = body ? calloc(1, sizeof(*req)) : NULL;
  if (req != NULL) {
    req->done = done;
    req->done_arg = arg;
    static const mt_grpc_call_handlers handlers = {on_message, on_close};
    req->call = mt_grpc_client_start_call(grpc, MT_CA_METHOD, md, num_md, body, len, o->deadline_ms,
                                          &handlers, req);
    if (req->call == NULL) {
      snprintf(err, err_len, "the gRPC call could not be started");
      free(req);
      req = NULL;
    }
  }
  if (auth != NULL) OPENSSL_cleanse(auth, AUTH_HEADER_MAX); /* the call copied it */
  free(auth);
  free(body);
  return req;
}

void mt_ca_request_cancel(mt_ca_request *req) {
  if (req == NULL) return;
  mt_grpc_call_cancel(req->call);
  result_clear(&req->result);
  free(req);
}
