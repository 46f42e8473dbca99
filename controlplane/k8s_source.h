/* k8s_source: the cluster as the Kubernetes API describes it, kept current
 * for mtls-ca. Owns one API client (k8s_client.h), one LIST+WATCH per
 * resource mtls-ca reads (pods, services, discovery.k8s.io/v1
 * EndpointSlices, namespaces; k8s_watch.h) and the state derived from them
 * (cluster_state.h), fed one event at a time; with |istio_policies|, also
 * Istio's AuthorizationPolicy and PeerAuthentication objects
 * (istio_source.h), whose first complete listing is reported apart
 * (on_istio_synced): certificates depend on the cluster state alone, while
 * what is compiled from the policies must wait for both (fail closed).
 *
 * The owner hears of every change (on_change), of the moment every
 * resource has been listed once (on_synced: before it, the state is
 * partial and must not be used to refuse anyone), and gets one line per
 * event, sync, refused object, retried failure and 410 relist (on_log), to
 * log and count at the edge, plus one line when the API stops answering
 * ("lost the API server ...") and one when every watch has an answer again
 * ("regained the API server after S s ..."). One loop, no threads. */
#ifndef MT_CP_K8S_SOURCE_H
#define MT_CP_K8S_SOURCE_H

#include <ev.h>
#include <stddef.h>
#include <stdint.h>

#include "controlplane/cluster_state.h"
#include "controlplane/istio_source.h"
#include "controlplane/k8s_client.h"
#include "controlplane/k8s_watch.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
  mt_k8s_client_config client;
  const char *trust_domain;
  int64_t watch_timeout_s;    /* 0: k8s_watch's default */
  int64_t idle_grace_ms;      /* 0: default */
  int64_t backoff_initial_ms; /* 0: default */
  int64_t backoff_max_ms;     /* 0: default */
  size_t list_page_size;      /* 0: default */
  int istio_policies;         /* follow security.istio.io objects too */
  mt_istio_options istio;     /* their root namespace and default mode */
} mt_k8s_source_config;

typedef struct {
  void (*on_change)(void *ctx);
  void (*on_synced)(void *ctx);
  void (*on_log)(void *ctx, const char *line);
  /* Optional: an Istio object's status is new or changed, or it went
   * away (istio_source.h, on_status). */
  void (*on_istio_status)(void *ctx, mt_istio_kind kind, const char *ns, const char *name,
                          mt_istio_status status, const char *detail, int removed);
  /* Optional: both Istio kinds have been listed once. */
  void (*on_istio_synced)(void *ctx);
} mt_k8s_source_callbacks;

typedef struct mt_k8s_source mt_k8s_source;

/* Starts listing at once. Returns NULL with the reason in |err|. */
mt_k8s_source *mt_k8s_source_new(struct ev_loop *loop, const mt_k8s_source_config *config,
                                 const mt_k8s_source_callbacks *callbacks, void *ctx, char *err,
                                 size_t err_len);
void mt_k8s_source_free(mt_k8s_source *source);

/* Borrowed; changes on the loop. */
const mt_cluster_state *mt_k8s_source_state(const mt_k8s_source *source);

/* The API client the watches use, for other GETs on the same connection
 * (jwks_source.h). Borrowed; lives as long as the source. */
mt_k8s_client *mt_k8s_source_client(mt_k8s_source *source);

/* The Istio objects (borrowed; changes on the loop), or NULL without
 * |istio_policies|. */
const mt_istio_policies *mt_k8s_source_istio(const mt_k8s_source *source);

/* 1 once every resource of the cluster state has been listed. */
int mt_k8s_source_synced(const mt_k8s_source *source);

/* 1 once the Istio objects have been listed (1 without istio_policies). */
int mt_k8s_source_istio_synced(const mt_k8s_source *source);

/* The counters of one resource's watch. */
void mt_k8s_source_watch_stats(const mt_k8s_source *source, mt_k8s_kind kind,
                               mt_k8s_watch_stats *out);

#ifdef __cplusplus
}
#endif

#endif /* MT_CP_K8S_SOURCE_H */
