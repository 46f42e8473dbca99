/* k8s_client_internal.h: what k8s_client.c (requests, token, server,
 * public API) and k8s_conn.c (one TLS + HTTP/2 connection and its streams)
 * share; private to those two files.
 *
 * Ownership: the client owns its connections and the requests waiting for
 * one; a connection owns the requests whose stream it carries. A request is
 * in exactly one list at a time (queued, a connection's, or a list of
 * requests being ended), and is freed right after its on_done returns.
 * nghttp2 holds a borrowed pointer to a request as stream user data; it is
 * cleared whenever the request leaves before its stream closes (cancel,
 * timeout, free), so a late nghttp2 callback finds nothing. */
#ifndef MT_CP_K8S_CLIENT_INTERNAL_H
#define MT_CP_K8S_CLIENT_INTERNAL_H

#include <sys/socket.h>

#include "controlplane/file_stamp.h"
#include "controlplane/k8s_client.h"
#include "grpc/h2_transport.h"

enum { MT_K8S_MS_PER_SECOND = 1000 };

typedef enum {
  MT_K8S_CONN_CONNECTING,
  MT_K8S_CONN_HANDSHAKING,
  MT_K8S_CONN_READY,
  MT_K8S_CONN_FAILED
} mt_k8s_conn_state;

typedef enum {
  MT_K8S_REQ_QUEUED,  /* waiting for a ready connection */
  MT_K8S_REQ_SENT,    /* its stream is open */
  MT_K8S_REQ_ABORTED, /* on_data said stop: the stream is being reset */
} mt_k8s_req_state;

typedef struct mt_k8s_conn mt_k8s_conn;

typedef struct {
  mt_k8s_request *head;
} mt_k8s_req_list;

struct mt_k8s_request {
  mt_k8s_client *client;
  mt_k8s_conn *conn;     /* while MT_K8S_REQ_SENT or MT_K8S_REQ_ABORTED */
  mt_k8s_req_list *list; /* the list holding it */
  mt_k8s_request *prev, *next;
  mt_k8s_req_state state;
  int32_t stream_id;
  long status;
  int ended; /* END_STREAM arrived: the whole body is here */
  mt_k8s_request_callbacks cb;
  void *ctx;
  ev_timer timeout;
  int64_t timeout_ms;
  char *path; /* until submitted */
  char *auth; /* "Bearer <token>" until submitted; zeroed when freed */
};

struct mt_k8s_conn {
  mt_k8s_client *client;
  mt_h2_transport t;
  mt_k8s_conn_state state;
  int goaway;     /* the server is done with it: no new streams */
  ev_timer phase; /* connect + handshake deadline, or a deferred failure */
  char why[MT_K8S_ERROR_MAX];
  mt_k8s_req_list requests;
  mt_k8s_conn *prev, *next;
};

struct mt_k8s_client {
  struct ev_loop *loop;
  char server[MT_K8S_URL_MAX];
  char host[MT_K8S_URL_MAX];      /* for SNI and the certificate check */
  char authority[MT_K8S_URL_MAX]; /* host:port as in the URL */
  int host_is_ip;
  struct sockaddr_storage target;
  socklen_t target_len;
  char *token_file;
  char *ca_file;
  int64_t connect_timeout_ms;
  mt_file_stamp token_stamp;
  char token[MT_K8S_TOKEN_MAX_BYTES + 1];
  mt_k8s_req_list queued;
  mt_k8s_conn *conns;
  mt_k8s_conn *current; /* where new requests go; NULL: start one */
};

/* --- k8s_client.c --- */

void mt_k8s_req_list_push(mt_k8s_req_list *l, mt_k8s_request *r);
void mt_k8s_req_list_remove(mt_k8s_request *r);
/* Frees |r| (out of its list, timer stopped) without a callback. */
void mt_k8s_req_free(mt_k8s_request *r);
/* Drops (and zeroes) the path and token once nghttp2 has copied them. */
void mt_k8s_req_forget_headers(mt_k8s_request *r);
/* Frees |r|, then calls its on_done with its status and |error|. */
void mt_k8s_req_finish(mt_k8s_request *r, const char *error);

/* --- k8s_conn.c --- */

/* Opens a connection, which becomes the client's current one; failures
 * are reported on the next loop iteration. NULL when out of memory. */
mt_k8s_conn *mt_k8s_conn_start(mt_k8s_client *c);
/* Opens |r|'s stream on a ready |conn|. Returns 1, or 0 when refused. */
int mt_k8s_conn_submit(mt_k8s_conn *conn, mt_k8s_request *r);
/* Takes |r| off its stream; with |reset| the server gets RST_STREAM. */
void mt_k8s_req_detach(mt_k8s_request *r, int reset);
/* Frees |conn| and its requests without callbacks, after a best-effort
 * GOAWAY. */
void mt_k8s_conn_close(mt_k8s_conn *conn);

#endif /* MT_CP_K8S_CLIENT_INTERNAL_H */
