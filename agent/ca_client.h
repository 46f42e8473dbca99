/* ca_client: one certificate request to an Istio-compatible CA
 * (istio.v1.auth.IstioCertificateService/CreateCertificate) over gRPC.
 *
 * Builds the CSR for the caller's key, reads the bearer token file afresh
 * for every request (projected service-account tokens rotate), sends the
 * call on the caller's gRPC client, and hands back the decoded chain and
 * roots. It does not judge the certificate: the caller (cert_manager.c)
 * checks it against its key and the SVID rules before using it. */
#ifndef MT_CA_CLIENT_H
#define MT_CA_CLIENT_H

#include <stddef.h>
#include <stdint.h>

#include <openssl/base.h>
#include <openssl/x509.h>

#include "grpc/client.h"

#ifdef __cplusplus
extern "C" {
#endif

#define MT_CA_METHOD "/istio.v1.auth.IstioCertificateService/CreateCertificate"
#define MT_CA_IMPERSONATED_IDENTITY "ImpersonatedIdentity"

/* "Bearer " + a token of at most 16 KiB + NUL. */
enum { MT_CA_AUTH_HEADER_MAX = 16 * 1024 + 16 };

typedef struct {
  mt_grpc_status status;  /* MT_GRPC_OK, the CA's refusal, or a transport failure */
  char message[256];      /* why, when status != OK or the response was unusable */
  STACK_OF(X509) * chain; /* leaf first, then intermediates; the callee takes it */
  STACK_OF(X509) * roots; /* the CA's roots (may be empty); the callee takes it */
  int refused;            /* the call ended OK but its answer was unusable (status INTERNAL) */
} mt_ca_result;

/* Runs exactly once per started request (not after cancel). */
typedef void (*mt_ca_done_fn)(void *arg, mt_ca_result *result);

typedef struct mt_ca_request mt_ca_request;

typedef struct {
  const char *spiffe_id;  /* identity asked for (the CA may only grant its own view) */
  int64_t ttl_s;          /* requested validity_duration; 0 = CA default */
  const char *token_file; /* bearer token file, NULL = no authorization header */
  const char *cluster_id; /* "ClusterID" metadata, NULL = none */
  /* Node mode: ask for |spiffe_id| on behalf of a workload of this node
   * ("ImpersonatedIdentity" in the request's metadata, as Istio's ztunnel
   * does); the token is the node agent's own. 0 = for ourselves. */
  int impersonate;
  int64_t deadline_ms;
} mt_ca_request_options;

/* Starts a request signed with |key| (borrowed). Returns NULL with a reason
 * in |err| when it cannot even be sent (token unreadable, CSR failure). */
mt_ca_request *mt_ca_request_start(mt_grpc_client *grpc, EVP_PKEY *key,
                                   const mt_ca_request_options *options, mt_ca_done_fn done,
                                   void *arg, char *err, size_t err_len);

/* Abandons a request in flight; |done| will not run. NULL is fine. */
void mt_ca_request_cancel(mt_ca_request *request);

/* Reads a bearer token file into "Bearer <token>" (|out|, NUL-terminated).
 * Tokens are read afresh for every call: kubelet rotates them in place. */
int mt_ca_read_bearer(const char *token_file, char *out, size_t out_len, char *err, size_t err_len);

/* Decodes an IstioCertificateResponse into |result|. Exposed for tests. */
int mt_ca_decode_response(const uint8_t *msg, size_t len, mt_ca_result *result);

#ifdef __cplusplus
}
#endif

#endif /* MT_CA_CLIENT_H */
