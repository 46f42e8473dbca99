/* k8s_watch: follows one resource type of the Kubernetes API (pods,
 * services, ...) with LIST then WATCH, and hands its owner a stream of
 * ADDED / MODIFIED / DELETED events that is exactly the API's state: no
 * event lost, none repeated, even across 410s, dropped connections and
 * API server restarts.
 *
 * The rules (PROTOCOL.md 9), as a state machine:
 *   LISTING   GET path?limit=L, then &continue=TOKEN for each further
 *             page (the API serves every page from the first one's
 *             snapshot); an expired token (410) lists again from the
 *             first page. Once the last page is in, every item is compared
 *             with what is held, by
 *             metadata.resourceVersion; new ones are ADDED, changed ones
 *             MODIFIED, held ones missing from the list DELETED (the diff
 *             that makes a relist lose and repeat nothing). Then WATCHING
 *             from the list's resourceVersion; on_synced is called.
 *   WATCHING  GET path?watch=1&resourceVersion=RV&allowWatchBookmarks=true
 *             &timeoutSeconds=T; each event moves RV on (BOOKMARK only moves
 *             it). The server ending the watch at its timeout -> WATCHING
 *             again from RV. HTTP 410 or an ERROR event with code 410 ->
 *             LISTING. Nothing received for T seconds plus a grace ->
 *             the watch is dropped and re-established from RV.
 *   BACKOFF   any other failure (connection, TLS, HTTP status, a malformed
 *             event): wait, with exponential backoff and full jitter,
 *             then WATCHING from RV (LISTING when there is none yet).
 * Objects are the API's JSON (jansson), passed borrowed to on_event; of
 * each, only its name, namespace and resourceVersion are held (what a
 * relist is diffed by). A DELETED from a relist carries just those.
 *
 * One loop, no threads; callbacks run on it. Do not free a watch from its
 * own callbacks. */
#ifndef MT_CP_K8S_WATCH_H
#define MT_CP_K8S_WATCH_H

#include <ev.h>
#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "controlplane/k8s_client.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
  MT_K8S_EVENT_ADDED,
  MT_K8S_EVENT_MODIFIED,
  MT_K8S_EVENT_DELETED,
} mt_k8s_event_type;

/* "ADDED", "MODIFIED", "DELETED", as the API spells them. */
const char *mt_k8s_event_type_str(mt_k8s_event_type type);

typedef enum {
  MT_K8S_WATCH_IDLE,
  MT_K8S_WATCH_LISTING,
  MT_K8S_WATCH_WATCHING,
  MT_K8S_WATCH_BACKOFF,
} mt_k8s_watch_state;

typedef struct {
  void (*on_event)(void *ctx, mt_k8s_event_type type, const json_t *object);
  /* A LIST has been reconciled: the events so far are the API's state. */
  void (*on_synced)(void *ctx);
  /* Something failed and will be retried (for the log and the counters). */
  void (*on_problem)(void *ctx, const char *what);
  /* A BOOKMARK moved the version on (optional; for the log). */
  void (*on_bookmark)(void *ctx, const char *resource_version);
  /* Optional, for the log: the API failed this watch for the first time
   * since it last answered (|answering| 0, right after the on_problem that
   * says why), or answered again after such failures (|answering| 1: a
   * LIST completed, or a WATCH got its 200 response headers). */
  void (*on_health)(void *ctx, int answering);
  /* Optional, for the log: the version is too old for the server (410),
   * so the resource is listed again and diffed; |why| is the server's. */
  void (*on_relist)(void *ctx, const char *why);
} mt_k8s_watch_callbacks;

/* Zero fields take the defaults below. Borrowed for _new. */
typedef struct {
  const char *path;           /* required: "/api/v1/pods" etc. */
  int64_t watch_timeout_s;    /* timeoutSeconds asked of the server; default 300 */
  int64_t idle_grace_ms;      /* silence beyond the timeout before giving up; default 10000 */
  int64_t list_timeout_ms;    /* a whole LIST; default 60000 */
  int64_t backoff_initial_ms; /* default 200 */
  int64_t backoff_max_ms;     /* default 30000 */
  size_t max_list_bytes;      /* one LIST page; default 256 MiB */
  size_t list_page_size;      /* items per LIST page (limit=); default 500 */
  size_t max_event_bytes;     /* one watch line; default 16 MiB */
} mt_k8s_watch_config;

typedef struct {
  uint64_t lists;        /* LISTs completed */
  uint64_t list_pages;   /* pages received (a LIST has one or more) */
  uint64_t relists_gone; /* of those, after a 410 */
  uint64_t watches;      /* WATCH requests started */
  uint64_t events;       /* events handed to on_event */
  uint64_t bookmarks;
  uint64_t idle_restarts; /* watches dropped for silence */
  uint64_t failures;      /* retries after a failure */
} mt_k8s_watch_stats;

typedef struct mt_k8s_watch mt_k8s_watch;

/* Does not start; |client| is borrowed and must outlive the watch. */
mt_k8s_watch *mt_k8s_watch_new(struct ev_loop *loop, mt_k8s_client *client,
                               const mt_k8s_watch_config *config,
                               const mt_k8s_watch_callbacks *callbacks, void *ctx);
void mt_k8s_watch_free(mt_k8s_watch *watch);

/* Starts with a LIST. */
void mt_k8s_watch_start(mt_k8s_watch *watch);

mt_k8s_watch_state mt_k8s_watch_get_state(const mt_k8s_watch *watch);
/* The last resourceVersion seen ("" before the first LIST). */
const char *mt_k8s_watch_resource_version(const mt_k8s_watch *watch);
size_t mt_k8s_watch_num_held(const mt_k8s_watch *watch);
void mt_k8s_watch_get_stats(const mt_k8s_watch *watch, mt_k8s_watch_stats *out);

#ifdef __cplusplus
}
#endif

#endif /* MT_CP_K8S_WATCH_H */
