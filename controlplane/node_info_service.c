/* node_info_service.c: NodeInfo/Get. See node_info_service.h. */
#include "controlplane/node_info_service.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "controlplane/node_auth.h"
#include "proto/mtlsd/node.pb-c.h"

enum {
  PEER_MAX = 64,
  CIDR_LIST_MAX = MT_K8S_MAX_POD_CIDRS * (MT_K8S_CIDR_MAX + 2),
};

typedef struct node_call node_call;

struct mt_node_info_service {
  const mt_ca_auth *auth;
  mt_ca_log *log;
  mt_node_source *nodes;
  mt_node_auth_policy policy;
  node_call *waiting; /* calls whose Node is being read */
};

/* One call, from its arrival to its access-log line. Heap-held only while
 * it waits for the API. */
struct node_call {
  mt_node_info_service *svc;
  mt_grpc_stream *stream;
  mt_node_lookup *lookup;
  node_call *prev, *next;
  int64_t started_ms;
  char peer[PEER_MAX];
  mt_ca_auth_result auth;
  char node[MT_K8S_NAME_MAX + 1]; /* the node its token names, once allowed */
  mt_ca_outcome out;
};

static void join_cidrs(const mt_k8s_node *node, char *out, size_t len) {
  out[0] = '\0';
  size_t used = 0;
  for (size_t i = 0; i < node->num_pod_cidrs && used < len; i++)
    used += (size_t)snprintf(out + used, len - used, "%s%s", i ? ", " : "", node->pod_cidrs[i]);
}

/* The access-log line and the counters; a refusal also goes to stderr. */
static void log_call(mt_node_info_service *svc, const node_call *c) {
  if (c->out.status != MT_GRPC_OK)
    mt_ca_log_warn(svc->log, "NodeInfo from %s (%s) refused: %s (%s): %s", c->peer,
                   c->auth.spiffe_id[0] ? c->auth.spiffe_id : "unauthenticated",
                   mt_grpc_status_name((int)c->out.status), c->out.reason, c->out.message);
  mt_ca_access_entry e = {
      .method = MT_CA_METHOD_NODE_INFO,
      .peer = c->peer,
      .caller = c->auth.spiffe_id,
      .identity = c->auth.spiffe_id,
      .node = c->auth.node_name,
      .status = c->out.status,
      .reason = c->out.reason,
      .message = c->out.status == MT_GRPC_OK ? "" : c->out.message,
      .duration_ms = mt_ca_log_clock_ms() - c->started_ms,
      .refused = c->out.status != MT_GRPC_OK,
  };
  mt_ca_log_access(svc->log, &e);
}

/* Encodes and queues the answer; 1, or 0 with the outcome set. */
static int send_node(node_call *c, const mt_k8s_node *node) {
  Mtlsd__Node__V1__NodeInfoResponse resp = MTLSD__NODE__V1__NODE_INFO_RESPONSE__INIT;
  char *cidrs[MT_K8S_MAX_POD_CIDRS];
  for (size_t i = 0; i < node->num_pod_cidrs; i++) cidrs[i] = (char *)node->pod_cidrs[i];
  resp.node_name = (char *)node->name;
  resp.n_pod_cidrs = node->num_pod_cidrs;
  resp.pod_cidrs = cidrs;
  uint8_t buf[MT_K8S_NAME_MAX + CIDR_LIST_MAX + 64];
  size_t len = mtlsd__node__v1__node_info_response__get_packed_size(&resp);
  if (len > sizeof(buf)) {
    mt_ca_outcome_set(&c->out, MT_GRPC_INTERNAL, "no_memory", "the answer does not fit");
    return 0;
  }
  mtlsd__node__v1__node_info_response__pack(&resp, buf);
  if (mt_grpc_stream_send(c->stream, buf, len) != MT_GRPC_SEND_OK) {
    mt_ca_outcome_set(&c->out, MT_GRPC_INTERNAL, "send_failed", "cannot queue the response");
    return 0;
  }
  mt_ca_outcome_set(&c->out, MT_GRPC_OK, "ok", "%s", "");
  return 1;
}

/* What the Node says, for the caller. */
static void answer_from(mt_node_info_service *svc, node_call *c, const mt_node_answer *a) {
  if (a->outcome == MT_NODE_NOT_FOUND) {
    mt_ca_outcome_set(&c->out, MT_GRPC_NOT_FOUND, "no_such_node", "%s", a->error);
  } else if (a->outcome == MT_NODE_UNAVAILABLE) {
    mt_ca_outcome_set(&c->out, MT_GRPC_UNAVAILABLE, "api_unavailable",
                      "cannot read node %s from the Kubernetes API: %s; retry", c->node, a->error);
  } else if (a->node->num_pod_cidrs == 0) {
    mt_ca_outcome_set(
        &c->out, MT_GRPC_FAILED_PRECONDITION, "no_pod_cidrs",
        "node %s has no spec.podCIDRs: the cluster's CNI does not allocate per-node pod "
        "CIDRs (kube-controller-manager --allocate-node-cidrs), so the operator must set "
        "interception.node_pod_cidrs by hand in the node agent's config",
        c->node);
  } else if (send_node(c, a->node)) {
    char list[CIDR_LIST_MAX];
    join_cidrs(a->node, list, sizeof(list));
    mt_ca_log_info(svc->log, "NodeInfo: node %s has pod CIDRs %s (told %s from %s%s)", c->node,
                   list, c->auth.spiffe_id, c->peer, a->from_cache ? ", cached" : "");
  }
}

static void finish(mt_node_info_service *svc, node_call *c) {
  mt_grpc_stream_finish(c->stream, c->out.status,
                        c->out.status == MT_GRPC_OK ? NULL : c->out.message);
  log_call(svc, c);
}

static void call_unlink(node_call *c) {
  if (c->prev != NULL)
    c->prev->next = c->next;
  else
    c->svc->waiting = c->next;
  if (c->next != NULL) c->next->prev = c->prev;
}

static void on_node(void *ctx, const mt_node_answer *answer) {
  node_call *c = ctx;
  c->lookup = NULL;
  call_unlink(c);
  answer_from(c->svc, c, answer);
  finish(c->svc, c);
  free(c);
}

/* The caller went away (or the server is stopping) while the API was read. */
static void on_closed(void *arg, mt_grpc_status why) {
  node_call *c = arg;
  mt_node_lookup_cancel(c->lookup);
  call_unlink(c);
  mt_ca_outcome_set(&c->out, why, "cancelled", "the call ended while the node was read (%s)",
                    mt_grpc_status_name((int)why));
  log_call(c->svc, c);
  free(c);
}

/* Authenticated: an empty request, a node agent, its own node. Returns 1
 * with c->node set, or 0 with the outcome set. */
static int authorize(mt_node_info_service *svc, const mt_grpc_request *req, node_call *c) {
  Mtlsd__Node__V1__NodeInfoRequest *r =
      mtlsd__node__v1__node_info_request__unpack(NULL, req->message_len, req->message);
  if (r == NULL) {
    mt_ca_outcome_set(&c->out, MT_GRPC_INVALID_ARGUMENT, "bad_request",
                      "the request is not a NodeInfoRequest message");
    return 0;
  }
  mtlsd__node__v1__node_info_request__free_unpacked(r, NULL);
  mt_node_auth_request request = {c->auth.spiffe_id, c->auth.node_name, NULL};
  mt_node_auth_decision d;
  mt_node_auth_node_of(&svc->policy, &request, &d);
  if (d.status != MT_GRPC_OK) {
    mt_ca_outcome_set(&c->out, d.status, d.reason, "%s", d.message);
    return 0;
  }
  snprintf(c->node, sizeof(c->node), "%s", d.identity);
  return 1;
}

static void on_get(void *arg, mt_grpc_stream *stream, const mt_grpc_request *req) {
  mt_node_info_service *svc = arg;
  node_call *c = calloc(1, sizeof(*c));
  if (c == NULL) {
    mt_grpc_stream_finish(stream, MT_GRPC_RESOURCE_EXHAUSTED, "out of memory");
    return;
  }
  c->svc = svc;
  c->stream = stream;
  c->started_ms = mt_ca_log_clock_ms();
  snprintf(c->peer, sizeof(c->peer), "%s", req->peer_address);
  mt_ca_auth_check(svc->auth, req, (int64_t)time(NULL), &c->auth);
  int ok = c->auth.status == MT_GRPC_OK;
  if (!ok) mt_ca_outcome_set(&c->out, c->auth.status, c->auth.reason, "%s", c->auth.message);
  ok = ok && authorize(svc, req, c);
  if (ok) {
    c->lookup = mt_node_source_lookup(svc->nodes, c->node, on_node, c);
    ok = c->lookup != NULL;
    if (!ok) mt_ca_outcome_set(&c->out, MT_GRPC_RESOURCE_EXHAUSTED, "no_memory", "out of memory");
  }
  if (!ok) {
    finish(svc, c);
    free(c);
    return;
  }
  c->next = svc->waiting;
  if (c->next != NULL) c->next->prev = c;
  svc->waiting = c;
  mt_grpc_stream_set_on_closed(stream, on_closed, c);
}

mt_node_info_service *mt_node_info_service_new(const mt_ca_auth *auth, mt_ca_log *log,
                                               mt_node_source *nodes,
                                               const char *const *node_agents, size_t count) {
  mt_node_info_service *svc = calloc(1, sizeof(*svc));
  if (svc == NULL) return NULL;
  svc->auth = auth;
  svc->log = log;
  svc->nodes = nodes;
  svc->policy.node_agents = node_agents;
  svc->policy.num_node_agents = count;
  return svc;
}

void mt_node_info_service_free(mt_node_info_service *svc) {
  if (svc == NULL) return;
  while (svc->waiting != NULL) {
    node_call *c = svc->waiting;
    svc->waiting = c->next;
    mt_node_lookup_cancel(c->lookup);
    free(c);
  }
  free(svc);
}

int mt_node_info_service_register(mt_node_info_service *svc, mt_grpc_server *server) {
  return mt_grpc_server_handle(server, mt_ca_method_path(MT_CA_METHOD_NODE_INFO), on_get, svc);
}
