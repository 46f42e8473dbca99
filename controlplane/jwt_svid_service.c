/* jwt_svid_service.c: SignJwtSvid and WatchJwtBundles. See jwt_svid_service.h. */
#include "controlplane/jwt_svid_service.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "proto/mtlsd/jwt.pb-c.h"

enum {
  PEER_MAX = 64,
  SIGN_ERR_MAX = 256,
  MS_PER_SECOND = 1000,
};

static const char kSpiffeScheme[] = "spiffe://";

typedef struct bundle_watcher bundle_watcher;

struct mt_jwt_svid_service {
  struct ev_loop *loop;
  const mt_ca_auth *auth;
  const mt_ca_service *ca;
  mt_ca_log *log;
  mt_jwt_signer *signer;
  char *trust_domain_id; /* "spiffe://<trust domain>": the bundles' map key */
  char *key_file;        /* NULL: the key is never reloaded */
  int64_t default_ttl_s, max_ttl_s;
  ev_timer tick;              /* key file and key expiry */
  uint64_t pushed_generation; /* the key set the watchers were last sent */
  bundle_watcher *watchers;
};

/* One open WatchJwtBundles stream. */
struct bundle_watcher {
  mt_jwt_svid_service *svc;
  mt_grpc_stream *stream;
  bundle_watcher *prev, *next;
  int64_t opened_ms;
  char peer[PEER_MAX];
  mt_ca_auth_result auth;
};

/* Everything one SignJwtSvid call produces for its reply and its log line. */
typedef struct {
  const mt_grpc_request *req;
  int64_t started_ms;
  mt_ca_auth_result auth;
  char identity[MT_SPIFFE_ID_MAX_LEN + 1];     /* whom the token is for, once decided */
  char impersonated[MT_SPIFFE_ID_MAX_LEN + 1]; /* as asked for (cut if longer), or "" */
  mt_ca_outcome out;
  int64_t ttl_s;
} sign_call;

/* ---- SignJwtSvid ---------------------------------------------------------- */

/* The workload a node agent asks for: |*id| NULL when none. The header given
 * twice is refused rather than one of them picked. Returns 1, or 0 with the
 * outcome set. */
static int find_impersonation(const mt_grpc_request *req, const char **id, sign_call *c) {
  *id = NULL;
  for (size_t i = 0; i < req->metadata_count; i++) {
    if (strcmp(req->metadata[i].name, MT_JWT_SVID_IMPERSONATION_HEADER) != 0) continue;
    if (*id != NULL) {
      mt_ca_outcome_set(&c->out, MT_GRPC_INVALID_ARGUMENT, "bad_metadata",
                        "metadata \"%s\" is given more than once",
                        MT_JWT_SVID_IMPERSONATION_HEADER);
      return 0;
    }
    *id = req->metadata[i].value;
  }
  if (*id != NULL) snprintf(c->impersonated, sizeof(c->impersonated), "%s", *id);
  return 1;
}

static int authorize(const mt_jwt_svid_service *svc, sign_call *c) {
  const char *impersonated = NULL;
  if (!find_impersonation(c->req, &impersonated, c)) return 0;
  mt_node_auth_decision d;
  mt_ca_service_decide_identity(svc->ca, &c->auth, impersonated, &d);
  if (d.status != MT_GRPC_OK) {
    mt_ca_outcome_set(&c->out, d.status, d.reason, "%s", d.message);
    return 0;
  }
  snprintf(c->identity, sizeof(c->identity), "%s", d.identity);
  return 1;
}

static int audiences_valid(const Mtlsd__Jwt__V1__SignJwtSvidRequest *r, sign_call *c) {
  if (r->n_audience == 0) {
    mt_ca_outcome_set(&c->out, MT_GRPC_INVALID_ARGUMENT, "no_audience",
                      "at least one audience is required");
    return 0;
  }
  if (r->n_audience > MT_JWT_SIGNER_MAX_AUDIENCES) {
    mt_ca_outcome_set(&c->out, MT_GRPC_INVALID_ARGUMENT, "too_many_audiences",
                      "%zu audiences; at most %d are accepted", r->n_audience,
                      MT_JWT_SIGNER_MAX_AUDIENCES);
    return 0;
  }
  for (size_t i = 0; i < r->n_audience; i++) {
    if (r->audience[i] == NULL || r->audience[i][0] == '\0') {
      mt_ca_outcome_set(&c->out, MT_GRPC_INVALID_ARGUMENT, "empty_audience",
                        "audience %zu is empty", i);
      return 0;
    }
  }
  return 1;
}

/* requested > 0: that, capped at the maximum; otherwise the default. */
static int64_t token_ttl(const mt_jwt_svid_service *svc, int64_t requested) {
  if (requested <= 0) return svc->default_ttl_s;
  return requested < svc->max_ttl_s ? requested : svc->max_ttl_s;
}

static void sign_and_reply(mt_jwt_svid_service *svc, mt_grpc_stream *stream,
                           const Mtlsd__Jwt__V1__SignJwtSvidRequest *r, sign_call *c) {
  int64_t now = (int64_t)time(NULL);
  c->ttl_s = token_ttl(svc, r->ttl_seconds);
  mt_jwt_svid_claims claims = {c->identity, (const char *const *)r->audience, r->n_audience, now,
                               now + c->ttl_s};
  char err[SIGN_ERR_MAX];
  char *token = mt_jwt_signer_sign(svc->signer, &claims, err, sizeof(err));
  if (token == NULL) {
    mt_ca_outcome_set(&c->out, MT_GRPC_INTERNAL, "sign_failed", "cannot sign: %s", err);
    return;
  }
  Mtlsd__Jwt__V1__SignJwtSvidResponse resp = MTLSD__JWT__V1__SIGN_JWT_SVID_RESPONSE__INIT;
  resp.token = token;
  resp.spiffe_id = c->identity;
  resp.expires_at = claims.expires_at_s;
  size_t len = mtlsd__jwt__v1__sign_jwt_svid_response__get_packed_size(&resp);
  uint8_t *buf = malloc(len ? len : 1);
  if (buf != NULL) mtlsd__jwt__v1__sign_jwt_svid_response__pack(&resp, buf);
  if (buf == NULL || mt_grpc_stream_send(stream, buf, len) != MT_GRPC_SEND_OK)
    mt_ca_outcome_set(&c->out, MT_GRPC_INTERNAL, "send_failed", "cannot queue the response");
  else
    mt_ca_outcome_set(&c->out, MT_GRPC_OK, "ok", "%s", "");
  free(buf);
  free(token);
}

static void handle_sign(mt_jwt_svid_service *svc, mt_grpc_stream *stream, sign_call *c) {
  Mtlsd__Jwt__V1__SignJwtSvidRequest *r =
      mtlsd__jwt__v1__sign_jwt_svid_request__unpack(NULL, c->req->message_len, c->req->message);
  if (r == NULL) {
    mt_ca_outcome_set(&c->out, MT_GRPC_INVALID_ARGUMENT, "bad_request",
                      "the request is not a SignJwtSvidRequest message");
    return;
  }
  if (authorize(svc, c) && audiences_valid(r, c)) sign_and_reply(svc, stream, r, c);
  mtlsd__jwt__v1__sign_jwt_svid_request__free_unpacked(r, NULL);
}

/* The diagnostic line, the counters and the access-log line of one call. */
static void log_sign(mt_jwt_svid_service *svc, const sign_call *c) {
  const mt_grpc_request *req = c->req;
  if (c->out.status == MT_GRPC_OK) {
    mt_ca_log_count(svc->log, MT_CA_EV_JWT_SVIDS_SIGNED);
    if (c->impersonated[0] != '\0')
      mt_ca_log_count(svc->log, MT_CA_EV_IMPERSONATED_JWT_SVIDS_SIGNED);
    mt_ca_log_info(svc->log, "signed a JWT-SVID for %s%s%s from %s, ttl %llds, key %s", c->identity,
                   c->impersonated[0] ? " for node agent " : "",
                   c->impersonated[0] ? c->auth.spiffe_id : "", req->peer_address,
                   (long long)c->ttl_s, mt_jwt_signer_kid(svc->signer));
  } else {
    mt_ca_log_count(svc->log, MT_CA_EV_JWT_SVID_REFUSALS);
    mt_ca_log_warn(svc->log, "SignJwtSvid from %s (%s) refused: %s (%s): %s", req->peer_address,
                   c->auth.spiffe_id[0] ? c->auth.spiffe_id : "unauthenticated",
                   mt_grpc_status_name((int)c->out.status), c->out.reason, c->out.message);
  }
  mt_ca_access_entry e = {
      .method = MT_CA_METHOD_SIGN_JWT_SVID,
      .peer = req->peer_address,
      .caller = c->auth.spiffe_id,
      .identity = c->identity,
      .impersonated = c->impersonated,
      .node = c->auth.node_name,
      .status = c->out.status,
      .reason = c->out.reason,
      .message = c->out.status == MT_GRPC_OK ? "" : c->out.message,
      .ttl_s = c->out.status == MT_GRPC_OK ? c->ttl_s : 0,
      .duration_ms = mt_ca_log_clock_ms() - c->started_ms,
      .refused = c->out.status != MT_GRPC_OK,
  };
  mt_ca_log_access(svc->log, &e);
}

static void on_sign(void *arg, mt_grpc_stream *stream, const mt_grpc_request *req) {
  mt_jwt_svid_service *svc = arg;
  sign_call c;
  memset(&c, 0, sizeof(c));
  c.req = req;
  c.started_ms = mt_ca_log_clock_ms();
  mt_ca_auth_check(svc->auth, req, (int64_t)time(NULL), &c.auth);
  if (c.auth.status != MT_GRPC_OK)
    mt_ca_outcome_set(&c.out, c.auth.status, c.auth.reason, "%s", c.auth.message);
  else
    handle_sign(svc, stream, &c);
  mt_grpc_stream_finish(stream, c.out.status, c.out.status == MT_GRPC_OK ? NULL : c.out.message);
  log_sign(svc, &c);
}

/* ---- WatchJwtBundles ------------------------------------------------------ */

/* The JwtBundles message in force, encoded (malloc'd), or NULL when out of
 * memory. */
static uint8_t *encode_bundles(mt_jwt_svid_service *svc, size_t *len) {
  size_t jwks_len = 0;
  const char *jwks = mt_jwt_signer_jwks(svc->signer, &jwks_len);
  if (jwks == NULL) return NULL;
  Mtlsd__Jwt__V1__JwtBundles__BundlesEntry entry = MTLSD__JWT__V1__JWT_BUNDLES__BUNDLES_ENTRY__INIT;
  Mtlsd__Jwt__V1__JwtBundles__BundlesEntry *entries[1] = {&entry};
  entry.key = svc->trust_domain_id;
  entry.value.data = (uint8_t *)jwks;
  entry.value.len = jwks_len;
  Mtlsd__Jwt__V1__JwtBundles msg = MTLSD__JWT__V1__JWT_BUNDLES__INIT;
  msg.n_bundles = 1;
  msg.bundles = entries;
  *len = mtlsd__jwt__v1__jwt_bundles__get_packed_size(&msg);
  uint8_t *buf = malloc(*len ? *len : 1);
  if (buf != NULL) mtlsd__jwt__v1__jwt_bundles__pack(&msg, buf);
  return buf;
}

static void unlink_watcher(bundle_watcher *w) {
  if (w->prev != NULL)
    w->prev->next = w->next;
  else
    w->svc->watchers = w->next;
  if (w->next != NULL) w->next->prev = w->prev;
}

/* The stream's access-log line, written when it ends. */
static void log_watch_end(const bundle_watcher *w, mt_grpc_status status, const char *reason,
                          const char *message, int refused) {
  mt_ca_access_entry e = {
      .method = MT_CA_METHOD_WATCH_JWT_BUNDLES,
      .peer = w->peer,
      .caller = w->auth.spiffe_id,
      .identity = w->auth.spiffe_id,
      .node = w->auth.node_name,
      .status = status,
      .reason = reason,
      .message = message,
      .duration_ms = mt_ca_log_clock_ms() - w->opened_ms,
      .refused = refused,
  };
  mt_ca_log_access(w->svc->log, &e);
}

static void finish_watcher(bundle_watcher *w, mt_grpc_status status, const char *reason,
                           const char *message) {
  mt_grpc_stream_finish(w->stream, status, message);
  log_watch_end(w, status, reason, message, status != MT_GRPC_OK);
  unlink_watcher(w);
  free(w);
}

static void on_watcher_closed(void *arg, mt_grpc_status why) {
  bundle_watcher *w = arg;
  log_watch_end(w, why, why == MT_GRPC_CANCELLED ? "client_cancelled" : "connection_closed", "", 0);
  unlink_watcher(w);
  free(w);
}

/* Queues |msg| on |w|; a stream that cannot take it is ended (and freed). */
static void push_to(bundle_watcher *w, const uint8_t *msg, size_t len) {
  mt_grpc_send_result r = mt_grpc_stream_send(w->stream, msg, len);
  if (r == MT_GRPC_SEND_OK) {
    mt_ca_log_count(w->svc->log, MT_CA_EV_JWT_BUNDLES_SENT);
    return;
  }
  const char *why = r == MT_GRPC_SEND_QUEUE_FULL
                        ? "the previous bundles are still unread; reconnect for the current ones"
                        : "cannot queue the bundles";
  mt_ca_log_warn(w->svc->log, "WatchJwtBundles of %s from %s ended: %s", w->auth.spiffe_id, w->peer,
                 why);
  finish_watcher(w, MT_GRPC_RESOURCE_EXHAUSTED,
                 r == MT_GRPC_SEND_QUEUE_FULL ? "slow_reader" : "send_failed", why);
}

/* The key set changed: every open stream gets the new bundles. */
static void push_all(mt_jwt_svid_service *svc) {
  svc->pushed_generation = mt_jwt_signer_generation(svc->signer);
  size_t len = 0;
  uint8_t *msg = encode_bundles(svc, &len);
  bundle_watcher *w = svc->watchers;
  while (w != NULL) {
    bundle_watcher *next = w->next; /* |w| may be freed */
    if (msg != NULL)
      push_to(w, msg, len);
    else
      finish_watcher(w, MT_GRPC_RESOURCE_EXHAUSTED, "no_memory", "out of memory");
    w = next;
  }
  free(msg);
}

static void refuse_watch(mt_jwt_svid_service *svc, mt_grpc_stream *stream, bundle_watcher *w,
                         mt_grpc_status status, const char *reason, const char *message) {
  mt_ca_log_warn(svc->log, "WatchJwtBundles from %s (%s) refused: %s (%s): %s", w->peer,
                 w->auth.spiffe_id[0] ? w->auth.spiffe_id : "unauthenticated",
                 mt_grpc_status_name((int)status), reason, message);
  mt_grpc_stream_finish(stream, status, message);
  log_watch_end(w, status, reason, message, 1);
}

static void on_watch(void *arg, mt_grpc_stream *stream, const mt_grpc_request *req) {
  mt_jwt_svid_service *svc = arg;
  bundle_watcher *w = calloc(1, sizeof(*w));
  if (w == NULL) {
    mt_grpc_stream_finish(stream, MT_GRPC_RESOURCE_EXHAUSTED, "out of memory");
    return;
  }
  w->svc = svc;
  w->stream = stream;
  w->opened_ms = mt_ca_log_clock_ms();
  snprintf(w->peer, sizeof(w->peer), "%s", req->peer_address);
  mt_ca_auth_check(svc->auth, req, (int64_t)time(NULL), &w->auth);
  Mtlsd__Jwt__V1__WatchJwtBundlesRequest *r =
      w->auth.status == MT_GRPC_OK
          ? mtlsd__jwt__v1__watch_jwt_bundles_request__unpack(NULL, req->message_len, req->message)
          : NULL;
  if (w->auth.status != MT_GRPC_OK) {
    refuse_watch(svc, stream, w, w->auth.status, w->auth.reason, w->auth.message);
  } else if (r == NULL) {
    refuse_watch(svc, stream, w, MT_GRPC_INVALID_ARGUMENT, "bad_request",
                 "the request is not a WatchJwtBundlesRequest message");
  } else {
    mtlsd__jwt__v1__watch_jwt_bundles_request__free_unpacked(r, NULL);
    w->next = svc->watchers;
    if (w->next != NULL) w->next->prev = w;
    svc->watchers = w;
    mt_grpc_stream_set_on_closed(stream, on_watcher_closed, w);
    mt_ca_log_info(svc->log, "WatchJwtBundles of %s from %s opened", w->auth.spiffe_id, w->peer);
    size_t len = 0;
    uint8_t *msg = encode_bundles(svc, &len);
    if (msg != NULL)
      push_to(w, msg, len);
    else
      finish_watcher(w, MT_GRPC_RESOURCE_EXHAUSTED, "no_memory", "out of memory");
    free(msg);
    return;
  }
  free(w);
}

/* ---- keys ---------------------------------------------------------------- */

/* The key file (when it changed) and retired keys past their time; the
 * watchers hear of any change. */
static void check_keys(mt_jwt_svid_service *svc) {
  int64_t now = (int64_t)time(NULL);
  if (svc->key_file != NULL) {
    char err[SIGN_ERR_MAX + 64];
    int r = mt_jwt_signer_reload_file(svc->signer, svc->key_file, now, err, sizeof(err));
    if (r < 0) {
      mt_ca_log_count(svc->log, MT_CA_EV_JWT_KEY_RELOAD_FAILURES);
      mt_ca_log_error(svc->log, "JWT-SVID signing key reload refused, the key in force stays: %s",
                      err);
    } else if (r > 0) {
      mt_ca_log_count(svc->log, MT_CA_EV_JWT_KEY_ROTATIONS);
      mt_ca_log_info(svc->log,
                     "JWT-SVID signing key rotated: now %s; the previous one stays in the bundle "
                     "until its tokens have expired",
                     mt_jwt_signer_kid(svc->signer));
    }
  }
  if (mt_jwt_signer_expire(svc->signer, now))
    mt_ca_log_info(svc->log, "JWT-SVID bundle: a retired signing key was dropped");
  if (mt_jwt_signer_generation(svc->signer) != svc->pushed_generation) push_all(svc);
}

static void on_tick(struct ev_loop *loop, ev_timer *t, int revents) {
  (void)loop;
  (void)revents;
  check_keys(t->data);
}

void mt_jwt_svid_service_reload(mt_jwt_svid_service *svc) { check_keys(svc); }

/* ---- lifetime ------------------------------------------------------------ */

mt_jwt_svid_service *mt_jwt_svid_service_new(struct ev_loop *loop, const mt_ca_auth *auth,
                                             const mt_ca_service *ca, mt_ca_log *log,
                                             mt_jwt_signer *signer,
                                             const mt_jwt_svid_service_options *o) {
  mt_jwt_svid_service *svc = calloc(1, sizeof(*svc));
  size_t id_len = strlen(kSpiffeScheme) + strlen(o->trust_domain) + 1;
  if (svc == NULL || (svc->trust_domain_id = malloc(id_len)) == NULL ||
      (o->signing_key_file != NULL && (svc->key_file = strdup(o->signing_key_file)) == NULL)) {
    if (svc != NULL) free(svc->trust_domain_id);
    free(svc);
    mt_jwt_signer_free(signer);
    return NULL;
  }
  snprintf(svc->trust_domain_id, id_len, "%s%s", kSpiffeScheme, o->trust_domain);
  svc->loop = loop;
  svc->auth = auth;
  svc->ca = ca;
  svc->log = log;
  svc->signer = signer;
  svc->default_ttl_s = o->default_ttl_s;
  svc->max_ttl_s = o->max_ttl_s;
  svc->pushed_generation = mt_jwt_signer_generation(signer);
  double every_s = (double)o->poll_ms / MS_PER_SECOND;
  ev_timer_init(&svc->tick, on_tick, every_s, every_s);
  svc->tick.data = svc;
  ev_timer_start(loop, &svc->tick);
  return svc;
}

void mt_jwt_svid_service_free(mt_jwt_svid_service *svc) {
  if (svc == NULL) return;
  while (svc->watchers != NULL)
    finish_watcher(svc->watchers, MT_GRPC_UNAVAILABLE, "shutdown", "the server is stopping");
  ev_timer_stop(svc->loop, &svc->tick);
  mt_jwt_signer_free(svc->signer);
  free(svc->key_file);
  free(svc->trust_domain_id);
  free(svc);
}

int mt_jwt_svid_service_register(mt_jwt_svid_service *svc, mt_grpc_server *server) {
  return mt_grpc_server_handle(server, mt_ca_method_path(MT_CA_METHOD_SIGN_JWT_SVID), on_sign,
                               svc) &&
         mt_grpc_server_handle(server, mt_ca_method_path(MT_CA_METHOD_WATCH_JWT_BUNDLES), on_watch,
                               svc);
}
