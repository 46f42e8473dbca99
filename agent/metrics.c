/* metrics.c: per-worker counters and their Prometheus rendering. */
#include "agent/metrics.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent/chain_cache.h"
#include "agent/tls_resume.h"

/* ---- counters ---- */

typedef _Atomic uint64_t counter;

/* Single writer: a relaxed load and store, no read-modify-write. */
static inline void bump(counter *c, uint64_t by) {
  atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + by,
                        memory_order_relaxed);
}
static inline uint64_t peek(counter *c) { return atomic_load_explicit(c, memory_order_relaxed); }

enum {
  NUM_DIRS = 2,
  NUM_ACTIONS = 2,
  NUM_REASONS = MT_REASON_INTERNAL + 1,
  TABLE_SLOTS = 64, /* distinct rules / TLS parameter sets per worker */
  MAX_BUCKETS = 16,
};

const double mt_handshake_buckets[] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                       0.1,    0.25,  0.5,    1.0,   2.5,  5.0,   10.0};
const size_t mt_num_handshake_buckets = sizeof(mt_handshake_buckets) / sizeof(double);

/* Append-only string-keyed counters; the key is published after it is written. */
typedef struct {
  _Atomic(char *) key[TABLE_SLOTS];
  counter count[TABLE_SLOTS];
  counter other; /* keys that did not fit */
} keyed_table;

static void keyed_bump(keyed_table *t, const char *key) {
  for (size_t i = 0; i < TABLE_SLOTS; i++) {
    char *k = atomic_load_explicit(&t->key[i], memory_order_relaxed); /* we are its only writer */
    if (k == NULL) {
      k = strdup(key);
      if (k == NULL) break;
      bump(&t->count[i], 1); /* counted before it becomes visible */
      atomic_store_explicit(&t->key[i], k, memory_order_release);
      return;
    }
    if (strcmp(k, key) == 0) {
      bump(&t->count[i], 1);
      return;
    }
  }
  bump(&t->other, 1);
}

static void keyed_free(keyed_table *t) {
  for (size_t i = 0; i < TABLE_SLOTS; i++) free(atomic_load(&t->key[i]));
}

struct mt_worker_metrics {
  counter opened[NUM_DIRS];
  counter closed[NUM_DIRS][NUM_REASONS];
  counter bytes[NUM_DIRS][2];                   /* [0] toward upstream, [1] toward downstream */
  counter handshakes[NUM_DIRS][2];              /* [0] failure, [1] success */
  counter hs_bucket[NUM_DIRS][MAX_BUCKETS + 1]; /* last = above every bound */
  counter hs_sum_us[NUM_DIRS];
  counter hs_mode[NUM_DIRS][2];                   /* [0] full, [1] resumed */
  counter holds[NUM_DIRS];                        /* began */
  counter holds_ended[NUM_DIRS][2];               /* [0] closed while held, [1] resumed */
  counter hold_bucket[NUM_DIRS][MAX_BUCKETS + 1]; /* wait time, handshake buckets */
  counter hold_sum_us[NUM_DIRS];
  counter accept_pauses;    /* episodes begun */
  counter accept_paused_us; /* summed when an episode ends */
  keyed_table decisions[NUM_DIRS][NUM_ACTIONS];
  keyed_table tls[NUM_DIRS]; /* key "version cipher" */
};

mt_worker_metrics *mt_worker_metrics_new(void) { return calloc(1, sizeof(mt_worker_metrics)); }

void mt_worker_metrics_free(mt_worker_metrics *m) {
  if (m == NULL) return;
  for (int d = 0; d < NUM_DIRS; d++) {
    for (int a = 0; a < NUM_ACTIONS; a++) keyed_free(&m->decisions[d][a]);
    keyed_free(&m->tls[d]);
  }
  free(m);
}

void mt_metrics_conn_opened(mt_worker_metrics *m, mt_direction dir) { bump(&m->opened[dir], 1); }

void mt_metrics_conn_closed(mt_worker_metrics *m, mt_direction dir, mt_reason reason,
                            uint64_t bytes_to_upstream, uint64_t bytes_to_downstream) {
  if ((int)reason < 0 || (int)reason >= NUM_REASONS) reason = MT_REASON_INTERNAL;
  bump(&m->closed[dir][reason], 1);
  bump(&m->bytes[dir][0], bytes_to_upstream);
  bump(&m->bytes[dir][1], bytes_to_downstream);
}

/* One observation of a histogram over the handshake buckets. */
static void observe(counter *buckets, counter *sum_us, double seconds) {
  if (seconds < 0) seconds = 0;
  size_t b = 0;
  while (b < mt_num_handshake_buckets && seconds > mt_handshake_buckets[b]) b++;
  bump(&buckets[b], 1);
  bump(sum_us, (uint64_t)(seconds * 1e6));
}

void mt_metrics_handshake(mt_worker_metrics *m, mt_direction dir, int ok, double seconds,
                          const char *version, const char *cipher) {
  bump(&m->handshakes[dir][ok ? 1 : 0], 1);
  if (!ok) return;
  observe(m->hs_bucket[dir], &m->hs_sum_us[dir], seconds);
  char key[128];
  snprintf(key, sizeof(key), "%s %s", version ? version : "", cipher ? cipher : "");
  keyed_bump(&m->tls[dir], key);
}

void mt_metrics_handshake_mode(mt_worker_metrics *m, mt_direction dir, int resumed) {
  bump(&m->hs_mode[dir][resumed ? 1 : 0], 1);
}

void mt_metrics_decision(mt_worker_metrics *m, mt_direction dir, mt_action action,
                         const char *rule) {
  keyed_bump(&m->decisions[dir][action == MT_ACTION_ALLOW ? 0 : 1], rule ? rule : "");
}

void mt_metrics_hold_began(mt_worker_metrics *m, mt_direction dir) { bump(&m->holds[dir], 1); }

void mt_metrics_hold_ended(mt_worker_metrics *m, mt_direction dir, int resumed, double seconds) {
  bump(&m->holds_ended[dir][resumed ? 1 : 0], 1);
  observe(m->hold_bucket[dir], &m->hold_sum_us[dir], seconds);
}

/* ---- rendering ---- */

static const char *const dir_names[NUM_DIRS] = {"inbound", "outbound"};

/* The label value of keys that did not fit (and of a key spelled the same). */
#define OTHER_KEY "other"

/* Sums one keyed table over the workers into parallel arrays of distinct
 * keys (borrowed from the tables, which never free them while running). */
typedef struct {
  const char *key[TABLE_SLOTS * 4];
  uint64_t count[TABLE_SLOTS * 4];
  size_t n;
  uint64_t other;
} keyed_sum;

static void keyed_collect(keyed_sum *s, keyed_table *t) {
  for (size_t i = 0; i < TABLE_SLOTS; i++) {
    const char *k = atomic_load_explicit(&t->key[i], memory_order_acquire);
    if (k == NULL) break;
    if (strcmp(k, OTHER_KEY) == 0) { /* a rule really named "other": one series, never two */
      s->other += peek(&t->count[i]);
      continue;
    }
    size_t j = 0;
    while (j < s->n && strcmp(s->key[j], k) != 0) j++;
    if (j == s->n) {
      if (s->n == sizeof(s->key) / sizeof(s->key[0])) {
        s->other += peek(&t->count[i]);
        continue;
      }
      s->key[s->n] = k;
      s->count[s->n++] = 0;
    }
    s->count[j] += peek(&t->count[i]);
  }
  s->other += peek(&t->other);
}

/* Plain sums over every worker, taken once per scrape. */
void mt_metrics_accept_paused(mt_worker_metrics *m) { bump(&m->accept_pauses, 1); }

void mt_metrics_accept_resumed(mt_worker_metrics *m, double seconds) {
  bump(&m->accept_paused_us, seconds > 0 ? (uint64_t)(seconds * 1e6) : 0);
}

typedef struct {
  uint64_t accept_pauses, accept_paused_us;
  uint64_t opened[NUM_DIRS];
  uint64_t closed[NUM_DIRS][NUM_REASONS];
  uint64_t bytes[NUM_DIRS][2];
  uint64_t handshakes[NUM_DIRS][2];
  uint64_t hs_bucket[NUM_DIRS][MAX_BUCKETS + 1];
  uint64_t hs_sum_us[NUM_DIRS];
  uint64_t hs_mode[NUM_DIRS][2];
  uint64_t holds[NUM_DIRS];
  uint64_t holds_ended[NUM_DIRS][2];
  uint64_t hold_bucket[NUM_DIRS][MAX_BUCKETS + 1];
  uint64_t hold_sum_us[NUM_DIRS];
} totals;

static void collect(totals *t, mt_worker_metrics *const *workers, size_t num_workers) {
  memset(t, 0, sizeof(*t));
  for (size_t w = 0; w < num_workers; w++) {
    mt_worker_metrics *m = workers[w];
    t->accept_pauses += peek(&m->accept_pauses);
    t->accept_paused_us += peek(&m->accept_paused_us);
    for (int d = 0; d < NUM_DIRS; d++) {
      /* Closed before opened: opened only grows, so active never reads negative. */
      for (int r = 0; r < NUM_REASONS; r++) t->closed[d][r] += peek(&m->closed[d][r]);
      t->opened[d] += peek(&m->opened[d]);
      for (int i = 0; i < 2; i++) {
        t->bytes[d][i] += peek(&m->bytes[d][i]);
        t->handshakes[d][i] += peek(&m->handshakes[d][i]);
        t->hs_mode[d][i] += peek(&m->hs_mode[d][i]);
      }
      for (size_t b = 0; b <= MAX_BUCKETS; b++) t->hs_bucket[d][b] += peek(&m->hs_bucket[d][b]);
      t->hs_sum_us[d] += peek(&m->hs_sum_us[d]);
      /* Ended before began, for the same reason as closed before opened. */
      for (int r = 0; r < 2; r++) t->holds_ended[d][r] += peek(&m->holds_ended[d][r]);
      t->holds[d] += peek(&m->holds[d]);
      for (size_t b = 0; b <= MAX_BUCKETS; b++) t->hold_bucket[d][b] += peek(&m->hold_bucket[d][b]);
      t->hold_sum_us[d] += peek(&m->hold_sum_us[d]);
    }
  }
}

static void render_connections(mt_text *out, const totals *t) {
  mt_text_printf(out,
                 "# HELP mtlsd_connections_total Connections accepted, by direction.\n"
                 "# TYPE mtlsd_connections_total counter\n");
  uint64_t closed[NUM_DIRS] = {0, 0};
  for (int d = 0; d < NUM_DIRS; d++) {
    for (int r = 0; r < NUM_REASONS; r++) closed[d] += t->closed[d][r];
    mt_text_printf(out, "mtlsd_connections_total{direction=\"%s\"} %llu\n", dir_names[d],
                   (unsigned long long)t->opened[d]);
  }
  mt_text_printf(out,
                 "# HELP mtlsd_connections_active Connections open now, by direction.\n"
                 "# TYPE mtlsd_connections_active gauge\n");
  for (int d = 0; d < NUM_DIRS; d++)
    mt_text_printf(out, "mtlsd_connections_active{direction=\"%s\"} %llu\n", dir_names[d],
                   (unsigned long long)(t->opened[d] - closed[d]));
  mt_text_printf(out,
                 "# HELP mtlsd_connections_closed_total Connections ended, by direction and "
                 "reason code (\"ok\" = normal end; every other code is a failure).\n"
                 "# TYPE mtlsd_connections_closed_total counter\n");
  for (int d = 0; d < NUM_DIRS; d++)
    for (int r = 0; r < NUM_REASONS; r++)
      mt_text_printf(out, "mtlsd_connections_closed_total{direction=\"%s\",reason=\"%s\"} %llu\n",
                     dir_names[d], mt_reason_str((mt_reason)r),
                     (unsigned long long)t->closed[d][r]);
  mt_text_printf(out,
                 "# HELP mtlsd_bytes_total Bytes relayed, by direction and flow (upstream = "
                 "from the accepted side to the connected side).\n"
                 "# TYPE mtlsd_bytes_total counter\n");
  for (int d = 0; d < NUM_DIRS; d++)
    for (int f = 0; f < 2; f++)
      mt_text_printf(out, "mtlsd_bytes_total{direction=\"%s\",flow=\"%s\"} %llu\n", dir_names[d],
                     f == 0 ? "upstream" : "downstream", (unsigned long long)t->bytes[d][f]);
}

/* One direction's series of a histogram over the handshake buckets. */
static void render_histogram(mt_text *out, const char *name, int d, const uint64_t *buckets,
                             uint64_t sum_us) {
  uint64_t cumulative = 0;
  for (size_t b = 0; b <= mt_num_handshake_buckets; b++) {
    cumulative += buckets[b];
    if (b < mt_num_handshake_buckets)
      mt_text_printf(out, "%s_bucket{direction=\"%s\",le=\"%g\"} %llu\n", name, dir_names[d],
                     mt_handshake_buckets[b], (unsigned long long)cumulative);
    else
      mt_text_printf(out, "%s_bucket{direction=\"%s\",le=\"+Inf\"} %llu\n", name, dir_names[d],
                     (unsigned long long)cumulative);
  }
  mt_text_printf(out, "%s_sum{direction=\"%s\"} %.6f\n", name, dir_names[d], sum_us / 1e6);
  mt_text_printf(out, "%s_count{direction=\"%s\"} %llu\n", name, dir_names[d],
                 (unsigned long long)cumulative);
}

static void render_handshakes(mt_text *out, const totals *t) {
  mt_text_printf(out,
                 "# HELP mtlsd_handshakes_total Mesh-side TLS handshakes, by direction and "
                 "result.\n"
                 "# TYPE mtlsd_handshakes_total counter\n");
  for (int d = 0; d < NUM_DIRS; d++)
    for (int ok = 1; ok >= 0; ok--)
      mt_text_printf(out, "mtlsd_handshakes_total{direction=\"%s\",result=\"%s\"} %llu\n",
                     dir_names[d], ok ? "success" : "failure",
                     (unsigned long long)t->handshakes[d][ok]);
  mt_text_printf(out,
                 "# HELP mtlsd_handshake_mode_total Completed mesh-side handshakes, full or "
                 "resumed (TLS 1.3 session resumption).\n"
                 "# TYPE mtlsd_handshake_mode_total counter\n");
  for (int d = 0; d < NUM_DIRS; d++)
    for (int r = 0; r < 2; r++)
      mt_text_printf(out, "mtlsd_handshake_mode_total{direction=\"%s\",mode=\"%s\"} %llu\n",
                     dir_names[d], r ? "resumed" : "full", (unsigned long long)t->hs_mode[d][r]);
  mt_text_printf(out,
                 "# HELP mtlsd_handshake_duration_seconds Time from the first handshake step "
                 "to a verified peer.\n"
                 "# TYPE mtlsd_handshake_duration_seconds histogram\n");
  for (int d = 0; d < NUM_DIRS; d++)
    render_histogram(out, "mtlsd_handshake_duration_seconds", d, t->hs_bucket[d], t->hs_sum_us[d]);
}

/* Accepting stopped for want of file descriptors or memory (worker.c). */
static void render_accept_pauses(mt_text *out, const totals *t) {
  mt_text_printf(out,
                 "# HELP mtlsd_accept_pauses_total Times a listener stopped accepting because "
                 "the process had no file descriptor (EMFILE/ENFILE) or memory left; it "
                 "retries with a backoff by itself.\n"
                 "# TYPE mtlsd_accept_pauses_total counter\n"
                 "mtlsd_accept_pauses_total %llu\n"
                 "# HELP mtlsd_accept_paused_seconds_total Time listeners spent paused so "
                 "(counted when each pause ends).\n"
                 "# TYPE mtlsd_accept_paused_seconds_total counter\n"
                 "mtlsd_accept_paused_seconds_total %.6f\n",
                 (unsigned long long)t->accept_pauses, (double)t->accept_paused_us / 1e6);
}

/* Connections that arrived before a certificate for their workload. */
static void render_holds(mt_text *out, const totals *t) {
  mt_text_printf(out,
                 "# HELP mtlsd_connections_held_total Connections that had to wait for a "
                 "workload certificate (start-up, a new node-mode pod), by direction.\n"
                 "# TYPE mtlsd_connections_held_total counter\n");
  for (int d = 0; d < NUM_DIRS; d++)
    mt_text_printf(out, "mtlsd_connections_held_total{direction=\"%s\"} %llu\n", dir_names[d],
                   (unsigned long long)t->holds[d]);
  mt_text_printf(out,
                 "# HELP mtlsd_connections_awaiting_identity Connections waiting for a workload "
                 "certificate now, by direction.\n"
                 "# TYPE mtlsd_connections_awaiting_identity gauge\n");
  for (int d = 0; d < NUM_DIRS; d++)
    mt_text_printf(out, "mtlsd_connections_awaiting_identity{direction=\"%s\"} %llu\n",
                   dir_names[d],
                   (unsigned long long)(t->holds[d] - t->holds_ended[d][0] - t->holds_ended[d][1]));
  mt_text_printf(out,
                 "# HELP mtlsd_connection_holds_ended_total Waits for a certificate that ended, "
                 "by direction and result (resumed = the certificate came; refused = the "
                 "handshake deadline passed or the peer left first).\n"
                 "# TYPE mtlsd_connection_holds_ended_total counter\n");
  for (int d = 0; d < NUM_DIRS; d++)
    for (int r = 1; r >= 0; r--)
      mt_text_printf(
          out, "mtlsd_connection_holds_ended_total{direction=\"%s\",result=\"%s\"} %llu\n",
          dir_names[d], r ? "resumed" : "refused", (unsigned long long)t->holds_ended[d][r]);
  mt_text_printf(out,
                 "# HELP mtlsd_connection_hold_duration_seconds How long a connection waited "
                 "for a workload certificate.\n"
                 "# TYPE mtlsd_connection_hold_duration_seconds histogram\n");
  for (int d = 0; d < NUM_DIRS; d++)
    render_histogram(out, "mtlsd_connection_hold_duration_seconds", d, t->hold_bucket[d],
                     t->hold_sum_us[d]);
}

static void render_keyed(mt_text *out, mt_worker_metrics *const *workers, size_t num_workers) {
  mt_text_printf(out,
                 "# HELP mtlsd_tls_handshakes_total Successful handshakes by negotiated TLS "
                 "version and cipher suite.\n"
                 "# TYPE mtlsd_tls_handshakes_total counter\n");
  for (int d = 0; d < NUM_DIRS; d++) {
    keyed_sum s = {.n = 0, .other = 0};
    for (size_t w = 0; w < num_workers; w++) keyed_collect(&s, &workers[w]->tls[d]);
    for (size_t i = 0; i < s.n; i++) {
      const char *space = strchr(s.key[i], ' ');
      int vlen = space ? (int)(space - s.key[i]) : (int)strlen(s.key[i]);
      mt_text_printf(out, "mtlsd_tls_handshakes_total{direction=\"%s\",version=\"%.*s\",cipher=\"",
                     dir_names[d], vlen, s.key[i]);
      mt_text_label_value(out, space ? space + 1 : "");
      mt_text_printf(out, "\"} %llu\n", (unsigned long long)s.count[i]);
    }
    if (s.other)
      mt_text_printf(out,
                     "mtlsd_tls_handshakes_total{direction=\"%s\","
                     "version=\"" OTHER_KEY "\",cipher=\"" OTHER_KEY "\"} %llu\n",
                     dir_names[d], (unsigned long long)s.other);
  }
  mt_text_printf(out,
                 "# HELP mtlsd_authz_decisions_total Authorization decisions, by direction, "
                 "decision and the rule that made it.\n"
                 "# TYPE mtlsd_authz_decisions_total counter\n");
  for (int d = 0; d < NUM_DIRS; d++)
    for (int a = 0; a < NUM_ACTIONS; a++) {
      keyed_sum s = {.n = 0, .other = 0};
      for (size_t w = 0; w < num_workers; w++) keyed_collect(&s, &workers[w]->decisions[d][a]);
      const char *decision = a == 0 ? "allow" : "deny";
      for (size_t i = 0; i < s.n; i++) {
        mt_text_printf(out, "mtlsd_authz_decisions_total{direction=\"%s\",decision=\"%s\",rule=\"",
                       dir_names[d], decision);
        mt_text_label_value(out, s.key[i]);
        mt_text_printf(out, "\"} %llu\n", (unsigned long long)s.count[i]);
      }
      if (s.other)
        mt_text_printf(out,
                       "mtlsd_authz_decisions_total{direction=\"%s\",decision=\"%s\","
                       "rule=\"" OTHER_KEY "\"} %llu\n",
                       dir_names[d], decision, (unsigned long long)s.other);
    }
}

void mt_metrics_render(mt_text *out, mt_worker_metrics *const *workers, size_t num_workers) {
  totals t;
  collect(&t, workers, num_workers);
  render_connections(out, &t);
  render_handshakes(out, &t);
  render_holds(out, &t);
  render_accept_pauses(out, &t);
  render_keyed(out, workers, num_workers);
  mt_tls_resume_render_metrics(out);
  mt_chain_cache *chains = mt_chain_cache_global();
  if (chains != NULL) {
    mt_text_printf(out,
                   "# HELP mtlsd_chain_cache_lookups_total Peer chains checked by a remembered "
                   "intermediate (hit) or verified in full (miss).\n"
                   "# TYPE mtlsd_chain_cache_lookups_total counter\n"
                   "mtlsd_chain_cache_lookups_total{result=\"hit\"} %llu\n"
                   "mtlsd_chain_cache_lookups_total{result=\"miss\"} %llu\n",
                   (unsigned long long)mt_chain_cache_hits(chains),
                   (unsigned long long)mt_chain_cache_misses(chains));
  }
}
