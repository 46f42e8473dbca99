/* workload_api_source.c: identity snapshots from a SPIFFE Workload API
 * server.
 *
 * Each of the two streams runs the same small state machine:
 *   CONNECTING --message--> STREAMING --call ends--> RETRYING
 *        |                                 ^   |  (backoff timer: call again,
 *        +------------call ends------------+   |   state stays RETRYING)
 *                                              +--message--> STREAMING
 * Expiry is a separate timer on the served SVID's notAfter. */
#include "agent/workload_api_source.h"

#include <openssl/evp.h>
#include <openssl/x509.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent/jitter.h"
#include "agent/log.h"
#include "agent/x509_util.h"
#include "grpc/client.h"

enum {
  ERR_MAX = 512,
  BACKOFF_JITTER_PERCENT = 20, /* retries: +-20% of the delay */
  DETAIL_SHOWN_MAX = 150,      /* of a reason quoted in /ready */
};

static const mt_grpc_metadata SECURITY_HEADER = {"workload.spiffe.io", "true"};

typedef struct {
  mt_workload_api_source *src;
  mt_wlapi_stream which;
  const char *path;
  const char *name; /* for log lines */
  mt_grpc_call *call;
  int backoff_ms;
  ev_timer retry_timer;
} wl_stream;

struct mt_workload_api_source {
  struct ev_loop *loop;
  mt_config *config; /* owned reference */
  mt_workload_api_source_sink sink;
  mt_grpc_client *grpc;
  wl_stream streams[MT_WLAPI_NUM_STREAMS];

  /* The served SVID's parts (NULL until the first good one). */
  EVP_PKEY *key;
  X509 *leaf;
  STACK_OF(X509) * chain; /* intermediates; may be empty */
  time_t not_after;
  /* Trust: what each stream's last good message named, and the two merged
   * when the later one came (per trust domain, the later message that named
   * it wins; a domain goes when neither stream's last message names it). */
  mt_wlapi_bundles svid_said; /* the SVID's own domain (when sent) + federated */
  mt_wlapi_bundles bundles_said;
  mt_wlapi_bundles trust;
  mt_identity *identity; /* the last snapshot built (owned) */
  int serving;           /* |identity| is published */
  ev_timer expiry_timer;

  mt_workload_api_source_stats stats;
};

static void start_call(wl_stream *s);

/* ---- helpers ---- */

const char *mt_wlapi_stream_str(mt_wlapi_stream stream) {
  return stream == MT_WLAPI_STREAM_X509_BUNDLES ? "x509_bundles" : "x509_svid";
}

const char *mt_wlapi_state_str(mt_wlapi_state state) {
  switch (state) {
    case MT_WLAPI_STATE_CONNECTING: return "connecting";
    case MT_WLAPI_STATE_STREAMING: return "streaming";
    case MT_WLAPI_STATE_RETRYING: return "retrying";
    case MT_WLAPI_STATE_UNSUPPORTED: return "unsupported";
    case MT_WLAPI_NUM_STATES: break;
  }
  return "unknown";
}

static void set_timer(mt_workload_api_source *src, ev_timer *t, double seconds) {
  ev_timer_stop(src->loop, t);
  ev_timer_set(t, seconds < 0 ? 0 : seconds, 0.0);
  ev_timer_start(src->loop, t);
}

static void set_state(wl_stream *s, mt_wlapi_state state) {
  mt_workload_api_source_stats *st = &s->src->stats;
  if (st->state[s->which] == state) return;
  st->state[s->which] = state;
  st->state_changes[s->which]++;
}

/* Counts and remembers a refusal; the caller logs it (once per event). */
static void note_refusal(mt_workload_api_source *src, mt_wlapi_stream which, mt_wlapi_refusal why,
                         const char *detail) {
  src->stats.refusals[which][why]++;
  src->stats.refusals_total++;
  src->stats.last_error_at = time(NULL);
  snprintf(src->stats.last_error, sizeof(src->stats.last_error), "%s (%s): %.*s",
           mt_wlapi_stream_str(which), mt_wlapi_refusal_str(why), (int)DETAIL_SHOWN_MAX, detail);
}

static mt_trust *trust_of(const mt_wlapi_bundles *bundles) {
  mt_trust *trust = mt_trust_new();
  for (size_t i = 0; trust != NULL && i < bundles->count; i++) {
    if (!mt_trust_add(trust, bundles->items[i].trust_domain, bundles->items[i].roots)) {
      mt_trust_free(trust);
      trust = NULL;
    }
  }
  return trust;
}

/* A snapshot of |key|, |leaf|, |chain| (borrowed) trusting |bundles|, with
 * the config's policy and destinations; NULL with the reason in |err|. */
static mt_identity *build_identity(mt_workload_api_source *src, EVP_PKEY *key, X509 *leaf,
                                   const STACK_OF(X509) * chain, const mt_wlapi_bundles *bundles,
                                   char *err, size_t err_len) {
  time_t now = time(NULL);
  if (mt_x509_time(X509_get0_notAfter(leaf), now) <= now) {
    snprintf(err, err_len, "the SVID has already expired");
    return NULL;
  }
  mt_trust *trust = trust_of(bundles);
  STACK_OF(X509) *copy = sk_X509_num(chain) > 0 ? X509_chain_up_ref((STACK_OF(X509) *)chain) : NULL;
  if (trust == NULL || (sk_X509_num(chain) > 0 && copy == NULL)) {
    mt_trust_free(trust);
    sk_X509_pop_free(copy, X509_free);
    snprintf(err, err_len, "out of memory assembling the identity");
    return NULL;
  }
  EVP_PKEY_up_ref(key);
  X509_up_ref(leaf);
  return mt_identity_new(src->config, key, leaf, copy, trust, src->config->mesh, err, err_len);
}

/* Makes |id| (taken) the served snapshot and hands it to the workers. */
static void install(mt_workload_api_source *src, mt_identity *id) {
  mt_identity_unref(src->identity);
  src->identity = id;
  src->serving = 1;
  src->sink.publish(src->sink.arg, mt_identity_ref(id));
}

/* ---- expiry ---- */

static void on_expiry(struct ev_loop *loop, ev_timer *t, int revents) {
  (void)loop;
  (void)revents;
  mt_workload_api_source *src = t->data;
  time_t now = time(NULL);
  if (!src->serving) return;
  if (src->not_after > now) { /* replaced meanwhile, or the timer ran early */
    set_timer(src, &src->expiry_timer, difftime(src->not_after, now));
    return;
  }
  const mt_workload_api_source_stats *st = &src->stats;
  MT_LOG_E(
      "workload API: the SVID %s (serial %s) expired without a replacement (X509-SVID stream "
      "%s%s%s); refusing new connections until the SPIRE agent sends a valid one",
      mt_identity_spiffe_id(src->identity), mt_identity_serial(src->identity),
      mt_wlapi_state_str(st->state[MT_WLAPI_STREAM_X509_SVID]),
      st->last_error[0] ? "; last error: " : "", st->last_error);
  src->serving = 0;
  src->sink.publish(src->sink.arg, NULL);
}

/* ---- messages ---- */

/* Refuses a message of stream |s|: counted, logged, the last good identity
 * and trust stay. */
static void refuse(wl_stream *s, mt_wlapi_refusal why, const char *detail) {
  note_refusal(s->src, s->which, why, detail);
  MT_LOG_E(
      "workload API: refused a message on the %s (%s): %s; keeping the current identity and "
      "trust",
      s->name, mt_wlapi_refusal_str(why), detail);
}

static void message_taken(wl_stream *s) {
  mt_workload_api_source *src = s->src;
  src->stats.updates_taken++;
  s->backoff_ms = src->config->workload_api_source_retry_initial_ms;
  if (src->stats.state[s->which] != MT_WLAPI_STATE_STREAMING) {
    MT_LOG_I("workload API: %s %s", s->name,
             src->stats.state[s->which] == MT_WLAPI_STATE_CONNECTING ? "open" : "restored");
    set_state(s, MT_WLAPI_STATE_STREAMING);
  }
}

/* The domains an X509SVIDResponse names: its SVID's own (when it carries
 * a bundle) and the federated ones. */
static int svid_names(const mt_wlapi_svid_update *u, mt_wlapi_bundles *out) {
  memset(out, 0, sizeof(*out));
  int ok = u->bundle == NULL || mt_wlapi_bundles_set(out, u->trust_domain, u->bundle);
  for (size_t i = 0; ok && i < u->federated.count; i++)
    ok = mt_wlapi_bundles_set(out, u->federated.items[i].trust_domain, u->federated.items[i].roots);
  if (!ok) mt_wlapi_bundles_clear(out);
  return ok;
}

/* Replaces |*slot| with |*from| (taken). */
static void move_bundles(mt_wlapi_bundles *slot, mt_wlapi_bundles *from) {
  mt_wlapi_bundles_clear(slot);
  *slot = *from;
  memset(from, 0, sizeof(*from));
}

/* Takes a checked SVID message: its parts, what it named, the merged trust
 * and the snapshot |id| built from them. A repeat of what is served (the
 * server resends everything on any change) is neither published nor
 * logged. */
static void take_svid(mt_workload_api_source *src, mt_wlapi_svid_update *u, mt_wlapi_bundles *said,
                      mt_wlapi_bundles *trust, mt_identity *id) {
  int new_svid =
      !src->serving || strcmp(mt_identity_serial(src->identity), mt_identity_serial(id)) != 0;
  int new_trust = !mt_wlapi_bundles_equal(&src->trust, trust);
  move_bundles(&src->svid_said, said);
  if (!new_svid && !new_trust) {
    mt_wlapi_bundles_clear(trust);
    mt_identity_unref(id);
    return;
  }
  /* The server decides who we are; with identity.spiffe_id unset, say so
   * when it changes its mind. */
  if (src->identity != NULL &&
      strcmp(mt_identity_spiffe_id(src->identity), mt_identity_spiffe_id(id)) != 0)
    MT_LOG_W("workload API: the served identity changes from %s to %s",
             mt_identity_spiffe_id(src->identity), mt_identity_spiffe_id(id));
  EVP_PKEY_free(src->key);
  X509_free(src->leaf);
  sk_X509_pop_free(src->chain, X509_free);
  src->key = u->key;
  src->leaf = u->leaf;
  src->chain = u->intermediates;
  u->key = NULL;
  u->leaf = NULL;
  u->intermediates = NULL;
  move_bundles(&src->trust, trust);
  src->not_after = mt_identity_not_after(id);
  install(src, id);
  time_t now = time(NULL);
  if (new_svid) {
    src->stats.svids_served++;
    src->stats.last_served_at = now;
    MT_LOG_I(
        "identity ready: %s serial %s, expires in %lld s (from the workload API; %zu trust "
        "domains)",
        mt_identity_spiffe_id(id), mt_identity_serial(id), (long long)(src->not_after - now),
        src->trust.count);
  } else {
    MT_LOG_I("workload API: trust updated for %s (%zu trust domains)", mt_identity_spiffe_id(id),
             src->trust.count);
  }
  set_timer(src, &src->expiry_timer, difftime(src->not_after, now));
}

static void on_svid_message(void *arg, const uint8_t *msg, size_t len) {
  wl_stream *s = arg;
  mt_workload_api_source *src = s->src;
  char err[ERR_MAX];
  mt_wlapi_svid_update u;
  mt_wlapi_refusal why;
  if (!mt_wlapi_decode_svid_response(msg, len, src->config->spiffe_id, &u, &why, err,
                                     sizeof(err))) {
    refuse(s, why, err);
    return;
  }
  mt_wlapi_bundles said, trust;
  if (!svid_names(&u, &said)) {
    mt_wlapi_svid_update_clear(&u);
    refuse(s, MT_WLAPI_REFUSAL_MALFORMED, "out of memory");
    return;
  }
  if (!mt_wlapi_bundles_merge(&src->bundles_said, &said, &trust)) {
    mt_wlapi_bundles_clear(&said);
    mt_wlapi_svid_update_clear(&u);
    refuse(s, MT_WLAPI_REFUSAL_MALFORMED, "out of memory");
    return;
  }
  mt_identity *id = build_identity(src, u.key, u.leaf, u.intermediates, &trust, err, sizeof(err));
  if (id != NULL && strcmp(mt_identity_spiffe_id(id), u.spiffe_id) != 0) {
    snprintf(err, sizeof(err), "the SVID's certificate is for %.*s, the response says %.*s",
             (int)DETAIL_SHOWN_MAX, mt_identity_spiffe_id(id), (int)DETAIL_SHOWN_MAX, u.spiffe_id);
    mt_identity_unref(id);
    id = NULL;
  }
  if (id == NULL) {
    mt_wlapi_bundles_clear(&said);
    mt_wlapi_bundles_clear(&trust);
    mt_wlapi_svid_update_clear(&u);
    refuse(s, MT_WLAPI_REFUSAL_INVALID_CERTIFICATE, err);
    return;
  }
  take_svid(src, &u, &said, &trust, id);
  mt_wlapi_svid_update_clear(&u);
  message_taken(s);
}

/* While an SVID is served, new trust must still verify it, or every peer
 * would refuse us (and we them) until a new SVID comes: such bundles are
 * refused. Without one (none yet, or expired) they are kept for the next. */
static void on_bundles_message(void *arg, const uint8_t *msg, size_t len) {
  wl_stream *s = arg;
  mt_workload_api_source *src = s->src;
  char err[ERR_MAX];
  mt_wlapi_bundles said, trust;
  if (!mt_wlapi_decode_bundles_response(msg, len, &said, err, sizeof(err))) {
    refuse(
        s,
        len > MT_WLAPI_MAX_MESSAGE_BYTES ? MT_WLAPI_REFUSAL_TOO_LARGE : MT_WLAPI_REFUSAL_MALFORMED,
        err);
    return;
  }
  if (!mt_wlapi_bundles_merge(&src->svid_said, &said, &trust)) {
    mt_wlapi_bundles_clear(&said);
    refuse(s, MT_WLAPI_REFUSAL_MALFORMED, "out of memory");
    return;
  }
  int changed = !mt_wlapi_bundles_equal(&src->trust, &trust);
  mt_identity *id = NULL;
  if (changed && src->serving) {
    id = build_identity(src, src->key, src->leaf, src->chain, &trust, err, sizeof(err));
    if (id == NULL) {
      mt_wlapi_bundles_clear(&said);
      mt_wlapi_bundles_clear(&trust);
      char detail[ERR_MAX + 64];
      snprintf(detail, sizeof(detail), "the bundles no longer verify the served SVID: %s", err);
      refuse(s, MT_WLAPI_REFUSAL_ROOT_REMOVED, detail);
      return;
    }
  }
  move_bundles(&src->bundles_said, &said);
  move_bundles(&src->trust, &trust);
  if (id != NULL) {
    install(src, id);
    MT_LOG_I("workload API: trust bundles updated (%zu trust domains)", src->trust.count);
  }
  message_taken(s);
}

/* ---- calls ---- */

static void on_call_end(void *arg, mt_grpc_status status, const char *message) {
  wl_stream *s = arg;
  mt_workload_api_source *src = s->src;
  s->call = NULL;
  mt_wlapi_state was = src->stats.state[s->which];
  if (status == MT_GRPC_UNIMPLEMENTED && s->which == MT_WLAPI_STREAM_X509_BUNDLES) {
    MT_LOG_W(
        "workload API: the server does not implement FetchX509Bundles (%s); trust comes from "
        "the X509-SVID stream alone",
        message);
    set_state(s, MT_WLAPI_STATE_UNSUPPORTED);
    return;
  }
  /* A stream the server ends, even with OK, is gone as much as a lost one. */
  mt_wlapi_refusal why =
      status == MT_GRPC_UNAVAILABLE || status == MT_GRPC_OK     ? MT_WLAPI_REFUSAL_UNAVAILABLE
      : status == MT_GRPC_RESOURCE_EXHAUSTED                    ? MT_WLAPI_REFUSAL_TOO_LARGE
      : status == MT_GRPC_INTERNAL || status == MT_GRPC_UNKNOWN ? MT_WLAPI_REFUSAL_MALFORMED
                                                                : MT_WLAPI_REFUSAL_ERROR_STATUS;
  char detail[ERR_MAX];
  snprintf(detail, sizeof(detail), "%s: %s", mt_grpc_status_name(status), message);
  note_refusal(src, s->which, why, detail);
  double delay_s = mt_jitter(s->backoff_ms / 1000.0, BACKOFF_JITTER_PERCENT);
  if (was == MT_WLAPI_STATE_RETRYING) {
    MT_LOG_D("workload API: %s: call failed again (%s); next attempt in %.1f s", s->name, detail,
             delay_s);
  } else if (was == MT_WLAPI_STATE_CONNECTING) {
    MT_LOG_W(
        "workload API: cannot reach the server at %s for the %s (%s); retrying with backoff "
        "up to %d ms",
        src->config->workload_api_source_socket, s->name, detail,
        src->config->workload_api_source_retry_max_ms);
  } else {
    MT_LOG_W(
        "workload API: %s ended (%s); keeping the current identity and trust, reconnecting "
        "with backoff up to %d ms",
        s->name, detail, src->config->workload_api_source_retry_max_ms);
  }
  set_state(s, MT_WLAPI_STATE_RETRYING);
  set_timer(src, &s->retry_timer, delay_s);
  s->backoff_ms *= 2;
  if (s->backoff_ms > src->config->workload_api_source_retry_max_ms)
    s->backoff_ms = src->config->workload_api_source_retry_max_ms;
}

static void start_call(wl_stream *s) {
  static const mt_grpc_call_handlers svid_handlers = {on_svid_message, on_call_end};
  static const mt_grpc_call_handlers bundles_handlers = {on_bundles_message, on_call_end};
  const mt_grpc_call_handlers *h =
      s->which == MT_WLAPI_STREAM_X509_SVID ? &svid_handlers : &bundles_handlers;
  s->src->stats.calls_started[s->which]++;
  /* Both requests are empty messages: zero bytes on the wire. */
  static const uint8_t empty_request[1] = {0};
  s->call = mt_grpc_client_start_call(s->src->grpc, s->path, &SECURITY_HEADER, 1, empty_request, 0,
                                      0, h, s);
  if (s->call == NULL) on_call_end(s, MT_GRPC_INTERNAL, "cannot start the call");
}

static void on_retry_timer(struct ev_loop *loop, ev_timer *t, int revents) {
  (void)loop;
  (void)revents;
  start_call(t->data);
}

/* ---- lifecycle ---- */

static void stream_init(mt_workload_api_source *src, mt_wlapi_stream which, const char *path,
                        const char *name) {
  wl_stream *s = &src->streams[which];
  s->src = src;
  s->which = which;
  s->path = path;
  s->name = name;
  s->backoff_ms = src->config->workload_api_source_retry_initial_ms;
  ev_init(&s->retry_timer, on_retry_timer);
  s->retry_timer.data = s;
  src->stats.state[which] = MT_WLAPI_STATE_CONNECTING;
}

mt_workload_api_source *mt_workload_api_source_start(struct ev_loop *loop, mt_config *config,
                                                     const mt_workload_api_source_sink *sink,
                                                     char *err, size_t err_len) {
  if (config->workload_api_source_socket == NULL) {
    snprintf(err, err_len, "identity.workload_api_socket is not set");
    return NULL;
  }
  mt_workload_api_source *src = calloc(1, sizeof(*src));
  if (src == NULL) {
    snprintf(err, err_len, "out of memory");
    return NULL;
  }
  src->loop = loop;
  src->config = mt_config_ref(config);
  src->sink = *sink;
  src->stats.socket = config->workload_api_source_socket;
  ev_init(&src->expiry_timer, on_expiry);
  src->expiry_timer.data = src;
  stream_init(src, MT_WLAPI_STREAM_X509_SVID, "/SpiffeWorkloadAPI/FetchX509SVID",
              "X509-SVID stream");
  stream_init(src, MT_WLAPI_STREAM_X509_BUNDLES, "/SpiffeWorkloadAPI/FetchX509Bundles",
              "X509 bundles stream");
  mt_grpc_client_options o;
  memset(&o, 0, sizeof(o));
  o.target = config->workload_api_source_socket; /* unix:/path or unix:///path */
  o.ssl_ctx = NULL;                              /* plaintext HTTP/2 on the local socket */
  o.max_message_bytes = MT_WLAPI_MAX_MESSAGE_BYTES;
  src->grpc = mt_grpc_client_new(loop, &o);
  if (src->grpc == NULL) {
    snprintf(err, err_len, "identity.workload_api_socket '%s' is not usable",
             config->workload_api_source_socket);
    mt_workload_api_source_free(src);
    return NULL;
  }
  MT_LOG_I("workload API: fetching the identity from %s", config->workload_api_source_socket);
  start_call(&src->streams[MT_WLAPI_STREAM_X509_SVID]);
  start_call(&src->streams[MT_WLAPI_STREAM_X509_BUNDLES]);
  return src;
}

void mt_workload_api_source_free(mt_workload_api_source *src) {
  if (src == NULL) return;
  for (int i = 0; i < MT_WLAPI_NUM_STREAMS; i++) {
    ev_timer_stop(src->loop, &src->streams[i].retry_timer);
    mt_grpc_call_cancel(src->streams[i].call);
  }
  ev_timer_stop(src->loop, &src->expiry_timer);
  mt_grpc_client_free(src->grpc);
  EVP_PKEY_free(src->key);
  X509_free(src->leaf);
  sk_X509_pop_free(src->chain, X509_free);
  mt_wlapi_bundles_clear(&src->svid_said);
  mt_wlapi_bundles_clear(&src->bundles_said);
  mt_wlapi_bundles_clear(&src->trust);
  mt_identity_unref(src->identity);
  mt_config_free(src->config);
  free(src);
}

void mt_workload_api_source_set_config(mt_workload_api_source *src, mt_config *config) {
  mt_config *previous = src->config;
  src->config = mt_config_ref(config);
  src->stats.socket = config->workload_api_source_socket;
  mt_config_free(previous);
  if (!src->serving) return;
  char err[ERR_MAX];
  mt_identity *id =
      build_identity(src, src->key, src->leaf, src->chain, &src->trust, err, sizeof(err));
  if (id == NULL) {
    MT_LOG_E(
        "workload API: cannot serve the SVID under the reloaded config: %s; keeping the "
        "current snapshot",
        err);
    return;
  }
  install(src, id);
}

void mt_workload_api_source_get_stats(const mt_workload_api_source *src,
                                      mt_workload_api_source_stats *out) {
  *out = src->stats;
}
