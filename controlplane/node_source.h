/* node_source: Node objects of the Kubernetes API, fetched one at a time
 * when a node agent asks (GET /api/v1/nodes/NAME through the API client,
 * k8s_client.h; mtls-ca's ClusterRole needs `get` on nodes) and kept for a
 * short while.
 *
 * Why a GET and not a watch of every Node: what is read (spec.podCIDRs) is
 * set once when the node registers and never changes, and each agent asks
 * once per start of its init container, while Node objects are large (tens
 * of KB with their image lists) and their status is rewritten every few
 * minutes per node; a watch would stream every node's status churn to
 * mtls-ca for a fact it needs a handful of times per node lifetime
 * (controlplane/README.md, "Node info").
 *
 * Promises: concurrent lookups of one node share one GET; a node that was
 * read (with or without CIDRs) is answered from memory for |ttl_ms|, then
 * fetched again; a missing node (404) and a failure are not kept, so the
 * next lookup asks again; at most MT_NODE_SOURCE_MAX_ENTRIES nodes are held
 * (the least recently fetched answered ones are dropped first). Answers
 * arrive on the loop, never from inside mt_node_source_lookup. One loop, no
 * threads. */
#ifndef MT_CP_NODE_SOURCE_H
#define MT_CP_NODE_SOURCE_H

#include <ev.h>
#include <stdint.h>

#include "controlplane/k8s_client.h"
#include "controlplane/k8s_node.h"

#ifdef __cplusplus
extern "C" {
#endif

enum {
  MT_NODE_SOURCE_MAX_ENTRIES = 4096,
  MT_NODE_SOURCE_ERROR_MAX = 320,
};

typedef enum {
  MT_NODE_FOUND,       /* |node| is the object as read (possibly without CIDRs) */
  MT_NODE_NOT_FOUND,   /* the API has no such Node (404) */
  MT_NODE_UNAVAILABLE, /* the API could not be asked, refused, or answered nonsense */
} mt_node_outcome;

typedef struct {
  mt_node_outcome outcome;
  const mt_k8s_node *node;              /* FOUND: borrowed for the callback */
  char error[MT_NODE_SOURCE_ERROR_MAX]; /* otherwise: why, for the caller and the log */
  int from_cache;                       /* answered without a GET */
} mt_node_answer;

typedef void (*mt_node_answer_fn)(void *ctx, const mt_node_answer *answer);

typedef struct mt_node_source mt_node_source;
typedef struct mt_node_lookup mt_node_lookup;

/* Borrows |client| (it must outlive the source). Returns NULL when out of
 * memory. */
mt_node_source *mt_node_source_new(struct ev_loop *loop, mt_k8s_client *client, int64_t ttl_ms);
/* Cancels every GET; pending lookups get no answer. Accepts NULL. */
void mt_node_source_free(mt_node_source *source);

/* Asks for node |name| (a valid node name: it goes into the URL path).
 * |done| runs exactly once on the loop, unless the lookup is cancelled or
 * the source freed first. Returns NULL when out of memory (no callback). */
mt_node_lookup *mt_node_source_lookup(mt_node_source *source, const char *name,
                                      mt_node_answer_fn done, void *ctx);

/* Forgets a lookup whose answer has not arrived; the GET it may share
 * continues for the others (and the cache). Accepts NULL. */
void mt_node_lookup_cancel(mt_node_lookup *lookup);

typedef struct {
  uint64_t gets;       /* GETs started */
  uint64_t cache_hits; /* lookups answered from memory */
  uint64_t failures;   /* GETs that ended UNAVAILABLE */
} mt_node_source_stats;

void mt_node_source_get_stats(const mt_node_source *source, mt_node_source_stats *out);

#ifdef __cplusplus
}
#endif

#endif /* MT_CP_NODE_SOURCE_H */
