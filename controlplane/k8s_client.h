/* k8s_client: GET requests to the Kubernetes API server over HTTP/2 on TLS
 * (nghttp2 + BoringSSL, the project's own h2 transport), driven on a libev
 * loop without ever blocking it. kube-apiserver (Go net/http) speaks
 * HTTP/2 with ALPN "h2", as client-go uses it.
 *
 * Owns: the server address, the CA file, the bearer token (re-read whenever
 * the token file changes, because projected tokens are rotated), one TLS
 * connection at a time (a new one after the old one failed or was told to
 * go away) and the requests in flight, each an HTTP/2 stream on it. Every
 * request carries `authorization: Bearer` and `accept: application/json`;
 * the server is verified against the CA file (re-read for each connection,
 * so a rotated ca.crt is picked up) and against the host of the server URL
 * (SNI and a DNS-name SAN, or an IP SAN for an address); HTTPS only, no
 * redirect is followed.
 *
 * In a pod no setting is needed: the server is
 * https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT and token and
 * CA are the service account's (MT_K8S_SA_DIR). Outside, give them. A host
 * name (not an address) is resolved once, by mt_k8s_client_new, before the
 * loop runs: resolving later would block the loop.
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
  const char *server;     /* https://host:port (no path) */
  const char *token_file; /* default MT_K8S_SA_DIR/token */
  const char *ca_file;    /* default MT_K8S_SA_DIR/ca.crt */
  int64_t connect_timeout_ms;
} mt_k8s_client_config;

typedef struct mt_k8s_client mt_k8s_client;
typedef struct mt_k8s_request mt_k8s_request;

typedef struct {
  /* Body bytes as they arrive (a watch's DATA frames, in order). Return 0
   * to abort the transfer (on_done follows with an error). */
  int (*on_data)(void *ctx, const char *data, size_t len);
  /* The transfer ended; |http_status| is 0 when there was no response,
   * |error| is "" when the whole body arrived. The request is freed when
   * this returns; new requests may be started, and other requests
   * cancelled, from here. */
  void (*on_done)(void *ctx, long http_status, const char *error);
  /* Optional: the response headers arrived (|http_status| is 0 when the
   * server sent none usable). A watch learns here that the server answers,
   * before any event. Must not cancel the request. */
  void (*on_response)(void *ctx, long http_status);
} mt_k8s_request_callbacks;

/* Resolves the defaults and the server's address, checks the token and CA
 * files can be read. Returns NULL with the reason in |err|. */
mt_k8s_client *mt_k8s_client_new(struct ev_loop *loop, const mt_k8s_client_config *config,
                                 char *err, size_t err_len);

/* Aborts every transfer (no callbacks), closes the connection and frees;
 * accepts NULL. */
void mt_k8s_client_free(mt_k8s_client *client);

/* The server URL in use (borrowed). */
const char *mt_k8s_client_server(const mt_k8s_client *client);

/* Starts GET |path_and_query| (which begins with "/"); |total_timeout_ms|
 * 0 means none (watches time out by their own rule). Returns NULL with the
 * reason in |err| (token unreadable, bad path, out of memory); no callback
 * then. A failure to connect is reported through on_done, never from inside
 * this call. */
mt_k8s_request *mt_k8s_client_get(mt_k8s_client *client, const char *path_and_query,
                                  int64_t total_timeout_ms, const mt_k8s_request_callbacks *cb,
                                  void *ctx, char *err, size_t err_len);

/* The HTTP status received so far (0 before the response headers); usable
 * from on_data, e.g. to tell a watch stream from an error body. */
long mt_k8s_request_status(const mt_k8s_request *request);

/* Aborts a transfer (its stream is reset with CANCEL); none of its
 * callbacks runs afterwards. Not from inside that request's own on_data.
 * Accepts NULL. */
void mt_k8s_request_cancel(mt_k8s_request *request);

#ifdef __cplusplus
}
#endif

#endif /* MT_CP_K8S_CLIENT_H */
