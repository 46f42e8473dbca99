/* istio_source: Istio's AuthorizationPolicy and PeerAuthentication objects
 * (security.istio.io), followed through the Kubernetes API for mtls-ca and
 * held, as the compiler takes them, in an mt_istio_policies
 * (istio_policy.h).
 *
 * Per kind, the version is found first: a LIST of one item at
 * security.istio.io/v1; an HTTP 404 there tries v1beta1 (the same schema,
 * served alone by Istio before 1.22); 404 for both means the CRD is not
 * installed, which is said plainly and retried with backoff (1 s doubling
 * to 60 s). Any other failure is retried the same way. Then one
 * LIST+WATCH (k8s_watch.h, all namespaces) on the version that answered;
 * a relist after a 410 reconciles by k8s_watch's diff, so the policies
 * never lose or repeat an object.
 *
 * Fail closed: synced is reported only once both kinds have been listed;
 * until then the owner must not compile anything from the policies (an
 * empty set would allow everything). An object the compiler refuses is
 * held as refused (it denies, see istio_policy.h) and reported.
 *
 * The owner hears of every change (on_change), of the first complete
 * listing (on_synced), of every object whose status is new or changed
 * (on_status: applied, reduced or refused, with the compiler's detail) or
 * that went away (on_status with |removed|), and gets one line per event,
 * sync, problem and version choice (on_log, in k8s_source's words: lines
 * starting "event " are routine, "problem " and "refused " are failures).
 * One loop, no threads. */
#ifndef MT_CP_ISTIO_SOURCE_H
#define MT_CP_ISTIO_SOURCE_H

#include <ev.h>
#include <stddef.h>
#include <stdint.h>

#include "controlplane/istio_policy.h"
#include "controlplane/k8s_client.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
  mt_istio_options options;   /* root namespace, default mode; copied */
  int64_t watch_timeout_s;    /* 0: k8s_watch's default */
  int64_t backoff_initial_ms; /* 0: 1000, for the version probe and the watches */
  int64_t backoff_max_ms;     /* 0: 60000 */
  size_t list_page_size;      /* 0: default */
} mt_istio_source_config;

typedef struct {
  void (*on_change)(void *ctx);
  void (*on_synced)(void *ctx);
  void (*on_log)(void *ctx, const char *line);
  /* Optional. |removed|: the object is gone (|status| and |detail| are
   * its last). Strings borrowed for the call. */
  void (*on_status)(void *ctx, mt_istio_kind kind, const char *ns, const char *name,
                    mt_istio_status status, const char *detail, int removed);
} mt_istio_source_callbacks;

typedef struct mt_istio_source mt_istio_source;

/* Borrows |client| (it must outlive the source); starts at once. Returns
 * NULL when out of memory. */
mt_istio_source *mt_istio_source_new(struct ev_loop *loop, mt_k8s_client *client,
                                     const mt_istio_source_config *config,
                                     const mt_istio_source_callbacks *callbacks, void *ctx);
void mt_istio_source_free(mt_istio_source *source); /* accepts NULL */

/* Borrowed; changes on the loop. Compile from it only once synced. */
const mt_istio_policies *mt_istio_source_policies(const mt_istio_source *source);

/* 1 once both kinds have been listed. */
int mt_istio_source_synced(const mt_istio_source *source);

/* The API version a kind is followed at ("v1", "v1beta1"), or "" while
 * none answered yet. */
const char *mt_istio_source_version(const mt_istio_source *source, mt_istio_kind kind);

/* "authorization policy" / "peer authentication", for log lines. */
const char *mt_istio_kind_words(mt_istio_kind kind);

#ifdef __cplusplus
}
#endif

#endif /* MT_CP_ISTIO_SOURCE_H */
