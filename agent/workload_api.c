/* workload_api.c: the Workload API server: attestation, calls, streams. */
#include "agent/workload_api.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/mem.h>
#include <openssl/sha.h>

#include "agent/json_struct.h"
#include "agent/jwt_svid.h"
#include "agent/log.h"
#include "agent/svid.h"
#include "agent/workload_attest.h"
#include "agent/workload_api_encode.h"
#include "grpc/server.h"

enum {
  SOCKET_MODE = 0666,            /* anyone may connect; attestation decides per call */
  MAX_REQUEST_BYTES = 64 * 1024, /* the requests are tiny; a token is at most 16 KiB */
  /* Limits per caller (sidecar: a uid; node mode: a pod's network
   * namespace), taken before attestation: one local user or one pod can
   * hold its share, never the others'. Then limits for the whole agent. */
  MAX_CONNECTIONS_PER_CALLER = 16,
  MAX_STREAMS_PER_CALLER = 64,
  MAX_CONNECTIONS = 1024,
  MAX_STREAMS_PER_CONNECTION = 16,
  /* Unread responses one stream may hold: several full SVID responses.
   * Beyond it the client is not reading; it is cut off. */
  MAX_UNREAD_BYTES = 128 * 1024,
  MAX_OPEN_STREAMS = 2048,
  WHY_MAX = 512,
};

typedef struct wl_stream wl_stream;
typedef struct wl_jwt_call wl_jwt_call;

struct mt_workload_api {
  struct ev_loop *loop;
  mt_config *config; /* owned reference */
  mt_cert_manager *manager;
  mt_grpc_server *server;
  mt_identity *identity;        /* sidecar: what the agent serves (owned reference) */
  mt_workloads *workloads;      /* node mode: the pods (owned reference) */
  mt_attest_selector *selector; /* sidecar: workload_api.allowed_uids/gids */
  mt_netns_id agent_netns;      /* node mode: callers here are the host, not a pod */
  mt_jwt_svid_source *jwt;      /* JWT-SVIDs and JWT bundles from the control plane */
  wl_stream *streams;
  wl_jwt_call *jwt_calls; /* FetchJWTSVID calls waiting for the control plane */
  mt_workload_api_stats stats;
};

/* One FetchJWTSVID waiting for its token. */
struct wl_jwt_call {
  mt_workload_api *api;
  mt_grpc_stream *stream;
  mt_jwt_svid_fetch *fetch;
  char caller[64];
  wl_jwt_call *prev, *next;
};

/* One open streaming call. */
struct wl_stream {
  mt_workload_api *api;
  mt_grpc_stream *stream;
  mt_wl_method method;
  uint64_t caller_key; /* whose share of the streams it uses */
  /* Node mode: the caller's process and its namespace's addresses, as
   * attested, so the stream ends when its pod leaves the node. */
  pid_t pid;
  int has_addresses;
  mt_netns_addresses addresses;
  char spiffe_id[MT_SPIFFE_ID_MAX_LEN + 1]; /* the caller's, as attested */
  char caller[64];                          /* "pid P uid U gid G", for logs */
  uint8_t last_sent[SHA256_DIGEST_LENGTH];  /* digest of the last message sent */
  int sent_any;
  wl_stream *prev, *next;
};

/* ---- attestation --------------------------------------------------------- */

static mt_peer_cred peer_cred(const mt_grpc_peer_cred *c) {
  mt_peer_cred cred = {.pid = c->pid, .uid = c->uid, .gid = c->gid};
  return cred;
}

/* Sidecar: the pod's identity, for the configured local users only. */
static int attest_sidecar(const mt_workload_api *api, const mt_grpc_peer_cred *c, char *spiffe_id,
                          size_t id_len, char *why, size_t why_len) {
  mt_peer_cred cred = peer_cred(c);
  if (!mt_attest_selector_admits(api->selector, &cred, why, why_len)) return 0;
  snprintf(spiffe_id, id_len, "%s", api->config->spiffe_id);
  return 1;
}

/* Node mode: the identity of the pod whose network namespace the caller
 * runs in (its addresses in |addresses|). */
static int attest_node(const mt_workload_api *api, const mt_grpc_peer_cred *c, char *spiffe_id,
                       size_t id_len, mt_netns_addresses *addresses, char *why, size_t why_len) {
  size_t index = 0;
  if (!mt_attest_read_netns(c->pid, c->pidfd, &api->agent_netns, addresses, why, why_len) ||
      !mt_attest_pick_workload(api->workloads, c->pid, addresses, &index, why, why_len))
    return 0;
  snprintf(spiffe_id, id_len, "%s", mt_workloads_spiffe_id_at(api->workloads, index));
  return 1;
}

/* Who a caller is, as attested. */
typedef struct {
  char spiffe_id[MT_SPIFFE_ID_MAX_LEN + 1];
  pid_t pid;
  int has_addresses; /* node mode */
  mt_netns_addresses addresses;
} wl_caller;

/* Who the caller is: 1 with |out| filled, or 0 with why not. */
static int attest(const mt_workload_api *api, const mt_grpc_request *req, wl_caller *out, char *why,
                  size_t why_len) {
  memset(out, 0, sizeof(*out));
  if (req->peer_cred == NULL) {
    snprintf(why, why_len, "the caller's credentials are unknown");
    return 0;
  }
  out->pid = req->peer_cred->pid;
  if (!api->config->node_mode)
    return attest_sidecar(api, req->peer_cred, out->spiffe_id, sizeof(out->spiffe_id), why,
                          why_len);
  out->has_addresses = 1;
  return attest_node(api, req->peer_cred, out->spiffe_id, sizeof(out->spiffe_id), &out->addresses,
                     why, why_len);
}

/* ---- what callers are sent ---------------------------------------------- */

/* The trust bundles the agent uses for |spiffe_id| now (borrowed), or NULL
 * before it has any. */
static const mt_trust *trust_for(const mt_workload_api *api, const char *spiffe_id) {
  if (!api->config->node_mode) return api->identity ? mt_identity_trust(api->identity) : NULL;
  for (size_t i = 0; api->workloads != NULL && i < mt_workloads_count(api->workloads); i++) {
    mt_identity *id = mt_workloads_identity_at(api->workloads, i);
    if (id != NULL && strcmp(mt_workloads_spiffe_id_at(api->workloads, i), spiffe_id) == 0)
      return mt_identity_trust(id);
  }
  return NULL;
}

static void count_call(mt_workload_api *api, mt_wl_method method, mt_grpc_status status) {
  if (method < MT_WL_NUM_METHODS && (int)status >= 0 && status <= MT_GRPC_STATUS_MAX)
    api->stats.calls[method][status]++;
}

static void stream_unlink(wl_stream *s) {
  mt_workload_api *api = s->api;
  if (s->prev) s->prev->next = s->next;
  if (s->next) s->next->prev = s->prev;
  if (api->streams == s) api->streams = s->next;
  api->stats.streams--;
}

/* Ends a stream from our side and forgets it. */
static void stream_finish(wl_stream *s, mt_grpc_status status, const char *message) {
  count_call(s->api, s->method, status);
  mt_grpc_stream_finish(s->stream, status, message);
  stream_unlink(s);
  free(s);
}

/* Sends |msg| unless it is what the stream was last sent. A client that
 * has let MAX_UNREAD_BYTES pile up is not reading: cut it off. */
static void stream_send(wl_stream *s, uint8_t *msg, size_t len) {
  uint8_t digest[SHA256_DIGEST_LENGTH];
  SHA256(msg, len, digest);
  if (s->sent_any && memcmp(digest, s->last_sent, sizeof(digest)) == 0) return;
  mt_grpc_send_result r = mt_grpc_stream_send(s->stream, msg, len);
  if (r == MT_GRPC_SEND_OK) {
    memcpy(s->last_sent, digest, sizeof(digest));
    s->sent_any = 1;
    if (s->method == MT_WL_FETCH_X509_SVID)
      s->api->stats.x509_svid_updates++;
    else
      s->api->stats.bundle_updates++;
    return;
  }
  if (r == MT_GRPC_SEND_QUEUE_FULL) {
    s->api->stats.slow_readers++;
    MT_LOG_W("workload api: %s from %s: the client is not reading its stream; closing it",
             mt_wl_method_name(s->method), s->caller);
    stream_finish(s, MT_GRPC_RESOURCE_EXHAUSTED, "the client is not reading its stream");
    return;
  }
  stream_finish(s, MT_GRPC_INTERNAL, "cannot queue the response");
}

/* Sends what the stream's method has for its caller now, if anything. */
static void stream_refresh(wl_stream *s) {
  mt_workload_api *api = s->api;
  uint8_t *msg = NULL;
  size_t len = 0;
  int ok = 0;
  if (s->method == MT_WL_FETCH_X509_SVID) {
    mt_identity *svid = mt_cert_manager_app_svid(api->manager, s->spiffe_id);
    if (svid == NULL) return; /* not issued yet (or expired): the stream waits */
    ok = mt_wl_encode_x509_svid(svid, &msg, &len);
  } else if (s->method == MT_WL_FETCH_X509_BUNDLES) {
    const mt_trust *trust = trust_for(api, s->spiffe_id);
    if (trust == NULL) return;
    ok = mt_wl_encode_x509_bundles(trust, &msg, &len);
  } else if (s->method == MT_WL_FETCH_JWT_BUNDLES) {
    const mt_jwt_bundles *bundles = mt_jwt_svid_bundles(api->jwt);
    if (bundles == NULL) return; /* none from the control plane yet */
    ok = mt_wl_encode_jwt_bundles(bundles, &msg, &len);
  } else {
    return;
  }
  if (!ok) {
    stream_finish(s, MT_GRPC_INTERNAL, "cannot encode the response");
    return;
  }
  stream_send(s, msg, len); /* may free |s| */
  OPENSSL_cleanse(msg, len);
  free(msg);
}

static void refresh_streams(mt_workload_api *api, mt_wl_method method, const char *spiffe_id) {
  for (wl_stream *s = api->streams, *next; s != NULL; s = next) {
    next = s->next; /* refresh may end |s| */
    if (s->method == method && (spiffe_id == NULL || strcmp(s->spiffe_id, spiffe_id) == 0))
      stream_refresh(s);
  }
}

/* ---- calls --------------------------------------------------------------- */

static void on_stream_closed(void *arg, mt_grpc_status why) {
  wl_stream *s = arg;
  count_call(s->api, s->method, why);
  stream_unlink(s);
  free(s);
}

static void refuse(mt_workload_api *api, mt_grpc_stream *stream, const mt_grpc_request *req,
                   mt_wl_method method, mt_grpc_status status, const char *why) {
  if (status == MT_GRPC_PERMISSION_DENIED) api->stats.attestation_failures++;
  MT_LOG_W("workload api: %s from %s refused (%s): %s", mt_wl_method_name(method),
           req->peer_address, mt_grpc_status_name(status), why);
  count_call(api, method, status);
  mt_grpc_stream_finish(stream, status, why);
}

static void open_stream(mt_workload_api *api, mt_grpc_stream *stream, const mt_grpc_request *req,
                        mt_wl_method method, const wl_caller *caller) {
  const char *spiffe_id = caller->spiffe_id;
  size_t mine = 0;
  for (const wl_stream *o = api->streams; o != NULL; o = o->next)
    mine += o->caller_key == req->peer_key;
  if (mine >= MAX_STREAMS_PER_CALLER) {
    refuse(api, stream, req, method, MT_GRPC_RESOURCE_EXHAUSTED,
           "too many open streams from this caller (64)");
    return;
  }
  if (api->stats.streams >= MAX_OPEN_STREAMS) {
    refuse(api, stream, req, method, MT_GRPC_RESOURCE_EXHAUSTED, "too many open streams");
    return;
  }
  wl_stream *s = calloc(1, sizeof(*s));
  if (s == NULL) {
    refuse(api, stream, req, method, MT_GRPC_RESOURCE_EXHAUSTED, "out of memory");
    return;
  }
  s->api = api;
  s->stream = stream;
  s->method = method;
  s->caller_key = req->peer_key;
  s->pid = caller->pid;
  s->has_addresses = caller->has_addresses;
  s->addresses = caller->addresses;
  snprintf(s->spiffe_id, sizeof(s->spiffe_id), "%s", spiffe_id);
  snprintf(s->caller, sizeof(s->caller), "%s", req->peer_address);
  s->next = api->streams;
  if (api->streams) api->streams->prev = s;
  api->streams = s;
  api->stats.streams++;
  mt_grpc_stream_set_on_closed(stream, on_stream_closed, s);
  MT_LOG_D("workload api: %s from %s as %s", mt_wl_method_name(method), req->peer_address,
           spiffe_id);
  stream_refresh(s);
}

/* ---- JWT-SVIDs ------------------------------------------------------------ */

static void jwt_call_forget(wl_jwt_call *call) {
  mt_workload_api *api = call->api;
  if (call->prev) call->prev->next = call->next;
  if (call->next) call->next->prev = call->prev;
  if (api->jwt_calls == call) api->jwt_calls = call->next;
  free(call);
}

static void on_jwt_call_closed(void *arg, mt_grpc_status why) {
  wl_jwt_call *call = arg;
  mt_jwt_svid_fetch_cancel(call->fetch);
  count_call(call->api, MT_WL_FETCH_JWT_SVID, why);
  jwt_call_forget(call);
}

static void on_jwt_fetched(void *arg, const mt_jwt_svid_result *r) {
  wl_jwt_call *call = arg;
  mt_workload_api *api = call->api;
  mt_grpc_status status = r->status;
  const char *message = r->message;
  if (status == MT_GRPC_OK) {
    uint8_t *msg = NULL;
    size_t len = 0;
    if (mt_wl_encode_jwt_svid(r->spiffe_id, r->token, &msg, &len)) {
      if (mt_grpc_stream_send(call->stream, msg, len) != MT_GRPC_SEND_OK) {
        status = MT_GRPC_INTERNAL;
        message = "cannot queue the response";
      }
      OPENSSL_cleanse(msg, len); /* a bearer token */
    } else {
      status = MT_GRPC_RESOURCE_EXHAUSTED;
      message = "out of memory";
    }
    free(msg);
  } else {
    MT_LOG_W("workload api: FetchJWTSVID from %s: the control plane did not sign (%s): %s",
             call->caller, mt_grpc_status_name(status), message);
    /* The control plane's outage is not the caller's fault: UNAVAILABLE
     * tells SPIFFE libraries to retry. */
    if (status != MT_GRPC_PERMISSION_DENIED && status != MT_GRPC_INVALID_ARGUMENT)
      status = MT_GRPC_UNAVAILABLE;
  }
  count_call(api, MT_WL_FETCH_JWT_SVID, status);
  mt_grpc_stream_finish(call->stream, status, status == MT_GRPC_OK ? NULL : message);
  jwt_call_forget(call);
}

static void fetch_jwt_svid(mt_workload_api *api, mt_grpc_stream *stream, const mt_grpc_request *req,
                           const mt_wl_request *decoded, const char *spiffe_id) {
  char why[WHY_MAX];
  if (decoded->spiffe_id != NULL && strcmp(decoded->spiffe_id, spiffe_id) != 0) {
    snprintf(why, sizeof(why), "the caller's identity is not %.400s", decoded->spiffe_id);
    refuse(api, stream, req, MT_WL_FETCH_JWT_SVID, MT_GRPC_PERMISSION_DENIED, why);
    return;
  }
  wl_jwt_call *call = calloc(1, sizeof(*call));
  if (call == NULL) {
    refuse(api, stream, req, MT_WL_FETCH_JWT_SVID, MT_GRPC_RESOURCE_EXHAUSTED, "out of memory");
    return;
  }
  call->api = api;
  call->stream = stream;
  snprintf(call->caller, sizeof(call->caller), "%s", req->peer_address);
  call->fetch = mt_jwt_svid_fetch_start(
      api->jwt, spiffe_id, api->config->node_mode, (const char *const *)decoded->audiences,
      decoded->num_audiences, on_jwt_fetched, call, why, sizeof(why));
  if (call->fetch == NULL) {
    free(call);
    refuse(api, stream, req, MT_WL_FETCH_JWT_SVID, MT_GRPC_INVALID_ARGUMENT, why);
    return;
  }
  call->next = api->jwt_calls;
  if (api->jwt_calls) api->jwt_calls->prev = call;
  api->jwt_calls = call;
  mt_grpc_stream_set_on_closed(stream, on_jwt_call_closed, call);
}

static void validate_jwt_svid(mt_workload_api *api, mt_grpc_stream *stream,
                              const mt_grpc_request *req, const mt_wl_request *decoded) {
  char why[WHY_MAX];
  mt_jwt_svid_valid valid;
  if (!mt_jwt_svid_validate(api->jwt, decoded->token, strlen(decoded->token), decoded->audiences[0],
                            &valid, why, sizeof(why))) {
    refuse(api, stream, req, MT_WL_VALIDATE_JWT_SVID, MT_GRPC_INVALID_ARGUMENT, why);
    return;
  }
  Google__Protobuf__Struct *claims =
      mt_json_struct_from_text(valid.claims_json, valid.claims_json_len);
  uint8_t *msg = NULL;
  size_t len = 0;
  mt_grpc_status status = MT_GRPC_RESOURCE_EXHAUSTED;
  if (claims != NULL && mt_wl_encode_validated(valid.spiffe_id, claims, &msg, &len))
    status =
        mt_grpc_stream_send(stream, msg, len) == MT_GRPC_SEND_OK ? MT_GRPC_OK : MT_GRPC_INTERNAL;
  free(msg);
  count_call(api, MT_WL_VALIDATE_JWT_SVID, status);
  mt_grpc_stream_finish(stream, status, status == MT_GRPC_OK ? NULL : "cannot build the response");
  mt_json_struct_free(claims);
  mt_jwt_svid_valid_dispose(&valid);
}

static void on_jwt_bundles(void *arg, const mt_jwt_bundles *bundles) {
  (void)bundles;
  refresh_streams(arg, MT_WL_FETCH_JWT_BUNDLES, NULL);
}

static void handle(mt_workload_api *api, mt_grpc_stream *stream, const mt_grpc_request *req,
                   mt_wl_method method) {
  char why[WHY_MAX];
  mt_wl_request decoded;
  mt_grpc_status status = mt_wl_request_decode(method, req->metadata, req->metadata_count,
                                               req->message, req->message_len, &decoded, why);
  if (status != MT_GRPC_OK) {
    refuse(api, stream, req, method, status, why);
    return;
  }
  wl_caller *caller = malloc(sizeof(*caller)); /* ~1 KiB: not on the stack */
  if (caller == NULL) {
    refuse(api, stream, req, method, MT_GRPC_RESOURCE_EXHAUSTED, "out of memory");
    mt_wl_request_clear(&decoded);
    return;
  }
  if (!attest(api, req, caller, why, sizeof(why))) {
    refuse(api, stream, req, method, MT_GRPC_PERMISSION_DENIED, why);
    mt_wl_request_clear(&decoded);
    free(caller);
    return;
  }
  const char *spiffe_id = caller->spiffe_id;
  switch (method) {
    case MT_WL_FETCH_X509_SVID:
      if (!mt_cert_manager_want_app_svid(api->manager, spiffe_id)) {
        snprintf(why, sizeof(why), "no identity for %.400s on this agent", spiffe_id);
        refuse(api, stream, req, method, MT_GRPC_PERMISSION_DENIED, why);
        break;
      }
      open_stream(api, stream, req, method, caller);
      break;
    case MT_WL_FETCH_X509_BUNDLES:
    case MT_WL_FETCH_JWT_BUNDLES: open_stream(api, stream, req, method, caller); break;
    case MT_WL_FETCH_JWT_SVID: fetch_jwt_svid(api, stream, req, &decoded, spiffe_id); break;
    case MT_WL_VALIDATE_JWT_SVID: validate_jwt_svid(api, stream, req, &decoded); break;
    case MT_WL_NUM_METHODS: break;
  }
  mt_wl_request_clear(&decoded);
  free(caller);
}

#define HANDLER(fn, method)                                                       \
  static void fn(void *arg, mt_grpc_stream *stream, const mt_grpc_request *req) { \
    handle(arg, stream, req, method);                                             \
  }
HANDLER(on_fetch_x509_svid, MT_WL_FETCH_X509_SVID)
HANDLER(on_fetch_x509_bundles, MT_WL_FETCH_X509_BUNDLES)
HANDLER(on_fetch_jwt_svid, MT_WL_FETCH_JWT_SVID)
HANDLER(on_fetch_jwt_bundles, MT_WL_FETCH_JWT_BUNDLES)
HANDLER(on_validate_jwt_svid, MT_WL_VALIDATE_JWT_SVID)
#undef HANDLER

/* Whose share of connections and streams a caller uses: its uid (sidecar),
 * or its network namespace, i.e. its pod (node mode: as the inode of
 * /proc/<pid>/net/fib_trie tells namespaces apart; workload_attest.h).
 * Callers whose namespace cannot be read share one key; attestation
 * refuses them anyway. */
static uint64_t caller_key(void *arg, const mt_grpc_peer_cred *cred) {
  const mt_workload_api *api = arg;
  if (!api->config->node_mode) return (uint64_t)cred->uid + 1;
  mt_netns_id netns;
  char err[128];
  if (!mt_attest_netns_of(cred->pid, &netns, err, sizeof(err))) return 1;
  return ((uint64_t)netns.dev << 40) ^ (uint64_t)netns.ino ^ (1ull << 63);
}

static void on_connection_error(void *arg, const char *peer, const char *what) {
  (void)arg;
  MT_LOG_W("workload api: connection from %s: %s", peer, what);
}

static void on_call_refused(void *arg, const char *peer, const char *path, mt_grpc_status status,
                            const char *message) {
  (void)arg;
  MT_LOG_W("workload api: call %s from %s refused (%s): %s", path, peer,
           mt_grpc_status_name(status), message);
}

/* ---- public API ---------------------------------------------------------- */

mt_workload_api *mt_workload_api_start(struct ev_loop *loop, mt_config *config,
                                       mt_cert_manager *manager, char *err, size_t err_len) {
  mt_workload_api *api = calloc(1, sizeof(*api));
  if (api == NULL) {
    snprintf(err, err_len, "out of memory");
    return NULL;
  }
  api->loop = loop;
  api->config = mt_config_ref(config);
  api->manager = manager;
  if (config->node_mode) {
    if (!mt_attest_agent_netns(&api->agent_netns, err, err_len)) {
      mt_workload_api_free(api);
      return NULL;
    }
  } else {
    uid_t uids[config->num_workload_api_uids + 1];
    gid_t gids[config->num_workload_api_gids + 1];
    for (size_t i = 0; i < config->num_workload_api_uids; i++)
      uids[i] = (uid_t)config->workload_api_uids[i];
    for (size_t i = 0; i < config->num_workload_api_gids; i++)
      gids[i] = (gid_t)config->workload_api_gids[i];
    api->selector = mt_attest_selector_new(uids, config->num_workload_api_uids, gids,
                                           config->num_workload_api_gids);
    if (api->selector == NULL) {
      snprintf(err, err_len, "out of memory");
      mt_workload_api_free(api);
      return NULL;
    }
  }
  mt_jwt_svid_options jo = {
      .token_file = config->cp_token_file,
      .cluster_id = config->cp_cluster_id,
      .request_timeout_ms = config->cp_request_timeout_ms,
      .retry_initial_ms = config->cp_retry_initial_ms,
      .retry_max_ms = config->cp_retry_max_ms,
  };
  mt_jwt_svid_sink sink = {on_jwt_bundles, api};
  api->jwt = mt_jwt_svid_source_new(loop, mt_cert_manager_grpc(manager), &jo, &sink, err, err_len);
  if (api->jwt == NULL) {
    mt_workload_api_free(api);
    return NULL;
  }
  char listen[sizeof("unix:") + 108];
  snprintf(listen, sizeof(listen), "unix:%s", config->workload_api_socket);
  mt_grpc_server_options o;
  memset(&o, 0, sizeof(o));
  o.listen = listen;
  o.unix_socket_mode = SOCKET_MODE;
  o.max_message_bytes = MAX_REQUEST_BYTES;
  o.max_connections = MAX_CONNECTIONS;
  o.peer_key = caller_key;
  o.peer_key_arg = api;
  o.max_connections_per_key = MAX_CONNECTIONS_PER_CALLER;
  o.max_concurrent_streams = MAX_STREAMS_PER_CONNECTION;
  o.max_send_queue_bytes = MAX_UNREAD_BYTES;
  o.on_connection_error = on_connection_error;
  o.on_call_refused = on_call_refused;
  api->server = mt_grpc_server_new(loop, &o);
  if (api->server == NULL) {
    snprintf(err, err_len, "workload_api.socket %s: %s", config->workload_api_socket,
             errno == EADDRINUSE ? "another process is serving there" : strerror(errno));
    mt_workload_api_free(api);
    return NULL;
  }
  static const struct {
    mt_wl_method method;
    mt_grpc_handler_fn fn;
  } routes[] = {
      {MT_WL_FETCH_X509_SVID, on_fetch_x509_svid},
      {MT_WL_FETCH_X509_BUNDLES, on_fetch_x509_bundles},
      {MT_WL_FETCH_JWT_SVID, on_fetch_jwt_svid},
      {MT_WL_FETCH_JWT_BUNDLES, on_fetch_jwt_bundles},
      {MT_WL_VALIDATE_JWT_SVID, on_validate_jwt_svid},
  };
  for (size_t i = 0; i < sizeof(routes) / sizeof(routes[0]); i++)
    if (!mt_grpc_server_handle(api->server, mt_wl_method_path(routes[i].method), routes[i].fn,
                               api)) {
      snprintf(err, err_len, "out of memory");
      mt_workload_api_free(api);
      return NULL;
    }
  MT_LOG_I("workload api: serving the SPIFFE Workload API on %s (%s)", config->workload_api_socket,
           config->node_mode ? "callers identified by their pod's network namespace"
                             : "callers identified by uid/gid");
  return api;
}

void mt_workload_api_free(mt_workload_api *api) {
  if (api == NULL) return;
  /* Streams hear UNAVAILABLE through on_closed while the server goes. */
  mt_grpc_server_free(api->server);
  while (api->jwt_calls) { /* on_closed has run for each; belt and braces */
    mt_jwt_svid_fetch_cancel(api->jwt_calls->fetch);
    jwt_call_forget(api->jwt_calls);
  }
  mt_jwt_svid_source_free(api->jwt);
  while (api->streams) {
    wl_stream *s = api->streams;
    stream_unlink(s);
    free(s);
  }
  mt_identity_unref(api->identity);
  mt_workloads_unref(api->workloads);
  mt_attest_selector_free(api->selector);
  mt_config_free(api->config);
  free(api);
}

void mt_workload_api_set_identity(mt_workload_api *api, mt_identity *identity) {
  if (identity != NULL) mt_identity_ref(identity);
  mt_identity_unref(api->identity);
  api->identity = identity;
  refresh_streams(api, MT_WL_FETCH_X509_BUNDLES, NULL);
}

/* Node mode: a stream belongs to the pod that opened it. A pod that left
 * the node (or whose addresses now name another identity) has no identity
 * here any more: its streams end as a refused caller's would. */
static void end_streams_of_departed_pods(mt_workload_api *api) {
  for (wl_stream *s = api->streams, *next; s != NULL; s = next) {
    next = s->next;
    if (!s->has_addresses) continue;
    size_t index = 0;
    char why[WHY_MAX] = "";
    if (mt_attest_pick_workload(api->workloads, s->pid, &s->addresses, &index, why, sizeof(why)) &&
        strcmp(mt_workloads_spiffe_id_at(api->workloads, index), s->spiffe_id) == 0)
      continue;
    if (why[0] == '\0' || strstr(why, "caller pid") == NULL)
      snprintf(why, sizeof(why), "the caller's pod no longer has the identity %.300s",
               s->spiffe_id);
    api->stats.attestation_failures++;
    MT_LOG_W("workload api: %s from %s ended (PERMISSION_DENIED): %s", mt_wl_method_name(s->method),
             s->caller, why);
    stream_finish(s, MT_GRPC_PERMISSION_DENIED, why);
  }
}

void mt_workload_api_set_workloads(mt_workload_api *api, mt_workloads *table) {
  if (table != NULL) mt_workloads_ref(table);
  mt_workloads_unref(api->workloads);
  api->workloads = table;
  end_streams_of_departed_pods(api);
  refresh_streams(api, MT_WL_FETCH_X509_BUNDLES, NULL);
}

void mt_workload_api_app_svid(mt_workload_api *api, const char *spiffe_id, mt_identity *svid) {
  if (svid == NULL)
    MT_LOG_W("workload api: no valid application certificate for %s; its streams wait", spiffe_id);
  refresh_streams(api, MT_WL_FETCH_X509_SVID, spiffe_id);
}

void mt_workload_api_get_stats(const mt_workload_api *api, mt_workload_api_stats *out) {
  *out = api->stats;
}
