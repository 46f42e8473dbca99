/* k8s_client: HTTPS GET requests to the Kubernetes API server, driven on
 * a libev loop without ever blocking it (libcurl's multi interface, the
 * GnuTLS build, so no OpenSSL libssl meets BoringSSL in the process).
 *
 * Owns: the server URL, the CA file, the bearer token (re-read whenever
 * the token file changes, because projected tokens are rotated), and the
 * transfers in flight. Every request carries `Authorization: Bearer`,
 * verifies the server against the CA file (peer and host name), speaks
 * HTTPS only and follows no redirect.
 *
 * In a pod no setting is needed: the server is
 * https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT and token and
 * CA are the service account's (MT_K8S_SA_DIR). Outside, give them.
 *
 * Snag, measured: Debian's libcurl-gnutls links libssh2, which links
 * OpenSSL's libcrypto.so.3, so that library is loaded too (never libssl).
 * BoringSSL's libcrypto is a direct dependency of the binary and so comes
 * first in the lookup scope: mtls-ca's calls reach BoringSSL, but so would
 * many of OpenSSL's own internal calls. The one OpenSSL code path that
 * would run (libssh2's crypto init inside curl_global_init) is switched
 * off before libcurl is initialised (see k8s_client.c), and libssh2 is
 * otherwise only used for scp/sftp, which requests here never enable.
 *
 * One loop, no threads. A client must not be freed from inside one of its
 * requests' callbacks. */
#ifndef MT_CP_K8S_CLIENT_H
#define MT_CP_K8S_CLIENT_H

#include <ev.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define MT_K8S_SA_DIR "/var/run/secrets/kubernetes.io/serviceaccount"

enum {
  MT_K8S_URL_MAX = 512,
  MT_K8S_TOKEN_MAX_BYTES = 16384, /* a projected token is about 1 KiB */
  MT_K8S_ERROR_MAX = 256,
};

/* NULL or "" fields take the in-cluster defaults. Borrowed for _new. */
typedef struct {
  const char *server;     /* https://host:port */
  const char *token_file; /* default MT_K8S_SA_DIR/token */
  const char *ca_file;    /* default MT_K8S_SA_DIR/ca.crt */
  int64_t connect_timeout_ms;
} mt_k8s_client_config;

typedef struct mt_k8s_client mt_k8s_client;
typedef struct mt_k8s_request mt_k8s_request;

typedef struct {
  /* Body bytes as they arrive. Return 0 to abort the transfer (on_done
   * follows with an error). */
  int (*on_data)(void *ctx, const char *data, size_t len);
  /* The transfer ended; |http_status| is 0 when there was no response,
   * |error| is "" when the transfer completed. The request is freed when
   * this returns; new requests may be started from here. */
  void (*on_done)(void *ctx, long http_status, const char *error);
} mt_k8s_request_callbacks;

/* Resolves the defaults, checks the token and CA files can be read.
 * Returns NULL with the reason in |err|. */
mt_k8s_client *mt_k8s_client_new(struct ev_loop *loop, const mt_k8s_client_config *config,
                                 char *err, size_t err_len);

/* Aborts every transfer (no callbacks) and frees; accepts NULL. */
void mt_k8s_client_free(mt_k8s_client *client);

/* The server URL in use (borrowed). */
const char *mt_k8s_client_server(const mt_k8s_client *client);

/* Starts GET |path_and_query| (which begins with "/"); |total_timeout_ms|
 * 0 means none (watches time out by their own rule). Returns NULL with the
 * reason in |err| (token unreadable, out of memory); no callback then. */
mt_k8s_request *mt_k8s_client_get(mt_k8s_client *client, const char *path_and_query,
                                  int64_t total_timeout_ms, const mt_k8s_request_callbacks *cb,
                                  void *ctx, char *err, size_t err_len);

/* The HTTP status received so far (0 before the response headers); usable
 * from on_data, e.g. to tell a watch stream from an error body. */
long mt_k8s_request_status(const mt_k8s_request *request);

/* Aborts a transfer; none of its callbacks runs afterwards. Not from
 * inside that request's own on_data. Accepts NULL. */
void mt_k8s_request_cancel(mt_k8s_request *request);

#ifdef __cplusplus
}
#endif

#endif /* MT_CP_K8S_CLIENT_H */
