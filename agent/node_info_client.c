/* node_info_client.c: NodeInfo/Get with retries on a private loop. See
 * node_info_client.h. */
#include "agent/node_info_client.h"

#include <ev.h>
#include <openssl/mem.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent/ca_client.h"
#include "agent/cp_tls.h"
#include "grpc/client.h"
#include "proto/mtlsd/node.pb-c.h"

enum {
  WHY_MAX = 512,
  MS_PER_S = 1000,
};

/* One fetch: the loop, the client, where we are and what happened last. */
typedef struct {
  const mt_config *config;
  struct ev_loop *loop;
  mt_grpc_client *grpc;
  mt_grpc_call *call;
  ev_timer retry, deadline;
  int64_t backoff_ms;
  double give_up_at; /* loop time */
  mt_node_info_retry_fn on_retry;
  void *ctx;
  int attempts, messages, bad_answer, done, ok;
  mt_node_info *out;
  char last[WHY_MAX]; /* why the last attempt failed */
  char *err;
  size_t err_len;
} fetch;

static void set_text(char *buf, size_t len, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void set_text(char *buf, size_t len, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, len, fmt, ap);
  va_end(ap);
}

int mt_node_info_decode(const uint8_t *msg, size_t len, mt_node_info *out, char *why,
                        size_t why_len) {
  memset(out, 0, sizeof(*out));
  Mtlsd__Node__V1__NodeInfoResponse *r =
      mtlsd__node__v1__node_info_response__unpack(NULL, len, msg);
  if (r == NULL) {
    set_text(why, why_len, "the answer is not a NodeInfoResponse message");
    return 0;
  }
  int ok = 0;
  char one[WHY_MAX];
  if (r->node_name == NULL || r->node_name[0] == '\0' ||
      strlen(r->node_name) > MT_NODE_INFO_NAME_MAX) {
    set_text(why, why_len, "the answer names no node");
  } else if (r->n_pod_cidrs == 0) {
    set_text(why, why_len, "the answer for node %s lists no pod CIDR", r->node_name);
  } else if (r->n_pod_cidrs > MT_NODE_INFO_MAX_CIDRS) {
    set_text(why, why_len, "the answer for node %s lists %zu pod CIDRs (at most %d)", r->node_name,
             r->n_pod_cidrs, MT_NODE_INFO_MAX_CIDRS);
  } else {
    ok = 1;
    snprintf(out->node_name, sizeof(out->node_name), "%s", r->node_name);
    for (size_t i = 0; ok && i < r->n_pod_cidrs; i++) {
      mt_cidr *c = &out->cidrs[i];
      ok = mt_cidr_parse(r->pod_cidrs[i], c, one, sizeof(one));
      if (!ok) set_text(why, why_len, "pod CIDR of node %s: %s", r->node_name, one);
      if (ok && c->prefix_len == 0) {
        set_text(why, why_len, "pod CIDR '%s' of node %s is everything", r->pod_cidrs[i],
                 r->node_name);
        ok = 0;
      }
      for (size_t j = 0; ok && j < i; j++) {
        if (memcmp(&out->cidrs[j], c, sizeof(*c)) == 0) {
          set_text(why, why_len, "pod CIDR '%s' of node %s is listed twice", r->pod_cidrs[i],
                   r->node_name);
          ok = 0;
        }
      }
      out->num_cidrs = i + 1;
    }
  }
  mtlsd__node__v1__node_info_response__free_unpacked(r, NULL);
  if (!ok) memset(out, 0, sizeof(*out));
  return ok;
}

static int retryable(mt_grpc_status status) {
  return status == MT_GRPC_UNAVAILABLE || status == MT_GRPC_DEADLINE_EXCEEDED ||
         status == MT_GRPC_RESOURCE_EXHAUSTED || status == MT_GRPC_ABORTED;
}

static void finish(fetch *f, int ok, const char *why) {
  f->done = 1;
  f->ok = ok;
  if (!ok) snprintf(f->err, f->err_len, "%s", why);
  ev_break(f->loop, EVBREAK_ALL);
}

static void on_message(void *arg, const uint8_t *msg, size_t len) {
  fetch *f = arg;
  if (f->messages++ > 0) {
    set_text(f->last, sizeof(f->last), "the answer carried more than one message");
    f->bad_answer = 1;
  } else if (!mt_node_info_decode(msg, len, f->out, f->last, sizeof(f->last))) {
    f->bad_answer = 1;
  }
}

static void schedule_retry(fetch *f) {
  double left = f->give_up_at - ev_now(f->loop);
  int64_t delay_ms = f->backoff_ms;
  if ((double)delay_ms / MS_PER_S > left) delay_ms = left > 0 ? (int64_t)(left * MS_PER_S) : 0;
  if (f->on_retry) f->on_retry(f->ctx, f->last, delay_ms);
  f->backoff_ms *= 2;
  if (f->backoff_ms > f->config->cp_retry_max_ms) f->backoff_ms = f->config->cp_retry_max_ms;
  ev_timer_set(&f->retry, (double)delay_ms / MS_PER_S, 0.0);
  ev_timer_start(f->loop, &f->retry);
}

/* A hint for refusals the operator must act on. */
static const char *hint_for(mt_grpc_status status) {
  switch (status) {
    case MT_GRPC_UNIMPLEMENTED:
      return " (the control plane does not serve NodeInfo: istiod, or mtls-ca without "
             "kubernetes:; list the node's pod CIDRs in interception.node_pod_cidrs)";
    case MT_GRPC_PERMISSION_DENIED:
      return " (mtls-ca must list this agent's identity in node_agents, and its token must be "
             "bound to a pod on the node)";
    default: return "";
  }
}

static void on_close(void *arg, mt_grpc_status status, const char *message) {
  fetch *f = arg;
  f->call = NULL;
  if (status == MT_GRPC_OK && f->messages == 1 && !f->bad_answer) {
    finish(f, 1, "");
    return;
  }
  char why[WHY_MAX];
  if (status == MT_GRPC_OK) {
    if (f->messages == 0) set_text(f->last, sizeof(f->last), "the answer carried no message");
    finish(f, 0, f->last); /* a broken answer: never install a guess */
    return;
  }
  set_text(why, sizeof(why), "%s: %s%s", mt_grpc_status_name(status), message, hint_for(status));
  snprintf(f->last, sizeof(f->last), "%s", why);
  if (!retryable(status)) {
    finish(f, 0, why);
    return;
  }
  schedule_retry(f);
}

static void attempt(fetch *f) {
  static const mt_grpc_call_handlers handlers = {on_message, on_close};
  char *auth = malloc(MT_CA_AUTH_HEADER_MAX);
  char why[WHY_MAX];
  if (auth == NULL) {
    finish(f, 0, "out of memory");
    return;
  }
  if (!mt_ca_read_bearer(f->config->cp_token_file, auth, MT_CA_AUTH_HEADER_MAX, why, sizeof(why))) {
    free(auth);
    finish(f, 0, why);
    return;
  }
  mt_grpc_metadata md[1] = {{"authorization", auth}};
  Mtlsd__Node__V1__NodeInfoRequest req = MTLSD__NODE__V1__NODE_INFO_REQUEST__INIT;
  uint8_t body[16];
  size_t len = mtlsd__node__v1__node_info_request__pack(&req, body);
  double left = f->give_up_at - ev_now(f->loop);
  int64_t deadline_ms = f->config->cp_request_timeout_ms;
  if (left * MS_PER_S < (double)deadline_ms)
    deadline_ms = left > 0.001 ? (int64_t)(left * MS_PER_S) : 1;
  f->attempts++;
  f->messages = f->bad_answer = 0;
  f->call = mt_grpc_client_start_call(f->grpc, MT_NODE_INFO_METHOD, md, 1, body, len, deadline_ms,
                                      &handlers, f);
  OPENSSL_cleanse(auth, MT_CA_AUTH_HEADER_MAX);
  free(auth);
  if (f->call == NULL) finish(f, 0, "the gRPC call could not be started");
}

static void on_retry_timer(struct ev_loop *loop, ev_timer *w, int revents) {
  (void)loop;
  (void)revents;
  attempt(w->data);
}

static void on_deadline(struct ev_loop *loop, ev_timer *w, int revents) {
  (void)loop;
  (void)revents;
  fetch *f = w->data;
  char why[WHY_MAX + 128];
  snprintf(why, sizeof(why),
           "no answer from the control plane at %s after %d s (%d attempts); last: %s",
           f->config->cp_address, f->config->interception.node_pod_cidrs_wait_s, f->attempts,
           f->last[0] ? f->last : "none finished");
  mt_grpc_call_cancel(f->call);
  f->call = NULL;
  ev_timer_stop(f->loop, &f->retry);
  finish(f, 0, why);
}

static int run(fetch *f, mt_cp_tls *tls) {
  mt_grpc_client_options o;
  memset(&o, 0, sizeof(o));
  o.target = f->config->cp_address;
  o.ssl_ctx = mt_cp_tls_ctx(tls);
  o.connect_timeout_ms = f->config->cp_request_timeout_ms;
  f->grpc = mt_grpc_client_new(f->loop, &o);
  if (f->grpc == NULL) {
    set_text(f->err, f->err_len, "control_plane.address '%s' is not usable", f->config->cp_address);
    return 0;
  }
  int wait_s = f->config->interception.node_pod_cidrs_wait_s;
  f->give_up_at = ev_now(f->loop) + wait_s;
  ev_timer_init(&f->retry, on_retry_timer, 0.0, 0.0);
  ev_timer_init(&f->deadline, on_deadline, (double)wait_s, 0.0);
  f->retry.data = f->deadline.data = f;
  ev_timer_start(f->loop, &f->deadline);
  attempt(f);
  if (!f->done) ev_run(f->loop, 0);
  ev_timer_stop(f->loop, &f->retry);
  ev_timer_stop(f->loop, &f->deadline);
  mt_grpc_call_cancel(f->call);
  mt_grpc_client_free(f->grpc);
  return f->ok;
}

int mt_node_info_fetch(const mt_config *config, mt_node_info_retry_fn on_retry, void *ctx,
                       mt_node_info *out, char *err, size_t err_len) {
  memset(out, 0, sizeof(*out));
  if (!config->has_control_plane || config->cp_token_file == NULL) {
    set_text(err, err_len, "no control_plane with a token_file to ask");
    return 0;
  }
  mt_cp_tls *tls = mt_cp_tls_new(config->cp_root_file, config->cp_spiffe_id, err, err_len);
  if (tls == NULL) return 0;
  fetch f;
  memset(&f, 0, sizeof(f));
  f.config = config;
  f.on_retry = on_retry;
  f.ctx = ctx;
  f.out = out;
  f.err = err;
  f.err_len = err_len;
  f.backoff_ms = config->cp_retry_initial_ms;
  f.loop = ev_loop_new(EVFLAG_AUTO);
  int ok = 0;
  if (f.loop == NULL)
    set_text(err, err_len, "cannot create an event loop");
  else
    ok = run(&f, tls);
  if (f.loop != NULL) ev_loop_destroy(f.loop);
  mt_cp_tls_free(tls);
  if (!ok) memset(out, 0, sizeof(*out));
  return ok;
}
