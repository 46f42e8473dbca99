/* destination_demand.c: workers' asks, collected for the main loop. */
#include "agent/destination_demand.h"

#include <netinet/in.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "agent/config.h"
#include "agent/log.h"

typedef struct {
  char text[MT_SOCKADDR_TEXT_MAX];
} address_text;

struct mt_demand {
  struct ev_loop *loop;
  ev_async wake;
  mt_demand_send_fn send;
  void *send_arg;
  /* Written by workers under |lock|, drained by the main loop. */
  pthread_mutex_t lock;
  address_text *inbox;
  size_t inbox_len, inbox_cap;
  /* Main thread only: every address asked, sorted (owned strings). */
  char **all;
  size_t num_all;
  uint64_t dropped;
  int warned_full;
};

static int compare_strings(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Adds |text| to the sorted set; 1 when it was new and was added. */
static int remember(mt_demand *d, const char *text) {
  const char *probe = text;
  if (d->num_all > 0 && bsearch(&probe, d->all, d->num_all, sizeof(char *), compare_strings))
    return 0;
  if (d->num_all >= MT_DEMAND_MAX) {
    d->dropped++;
    if (!d->warned_full)
      MT_LOG_W(
          "control plane: %d destinations asked for already; %s and later ones are not "
          "asked (their connections wait out the handshake deadline)",
          MT_DEMAND_MAX, text);
    d->warned_full = 1;
    return 0;
  }
  char *copy = strdup(text);
  char **grown = realloc(d->all, (d->num_all + 1) * sizeof(*grown));
  if (copy == NULL || grown == NULL) {
    free(copy);
    if (grown != NULL) d->all = grown;
    d->dropped++;
    return 0;
  }
  d->all = grown;
  size_t at = d->num_all;
  while (at > 0 && strcmp(d->all[at - 1], copy) > 0) at--;
  memmove(&d->all[at + 1], &d->all[at], (d->num_all - at) * sizeof(*d->all));
  d->all[at] = copy;
  d->num_all++;
  return 1;
}

/* The main loop's side: what workers asked since the last wake-up. */
static void on_wake(struct ev_loop *loop, ev_async *w, int revents) {
  (void)loop;
  (void)revents;
  mt_demand *d = w->data;
  pthread_mutex_lock(&d->lock);
  address_text *inbox = d->inbox;
  size_t n = d->inbox_len;
  d->inbox = NULL;
  d->inbox_len = d->inbox_cap = 0;
  pthread_mutex_unlock(&d->lock);
  const char **fresh = calloc(n + 1, sizeof(*fresh));
  size_t num_fresh = 0;
  for (size_t i = 0; fresh != NULL && i < n; i++)
    if (remember(d, inbox[i].text)) fresh[num_fresh++] = inbox[i].text;
  if (num_fresh > 0 && d->send != NULL) d->send(d->send_arg, fresh, num_fresh);
  free(fresh);
  free(inbox);
}

mt_demand *mt_demand_new(struct ev_loop *loop) {
  mt_demand *d = calloc(1, sizeof(*d));
  if (d == NULL) return NULL;
  d->loop = loop;
  pthread_mutex_init(&d->lock, NULL);
  ev_async_init(&d->wake, on_wake);
  d->wake.data = d;
  ev_async_start(loop, &d->wake);
  ev_unref(loop); /* it alone does not keep the loop running */
  return d;
}

void mt_demand_free(mt_demand *d) {
  if (d == NULL) return;
  ev_ref(d->loop);
  ev_async_stop(d->loop, &d->wake);
  pthread_mutex_destroy(&d->lock);
  free(d->inbox);
  for (size_t i = 0; i < d->num_all; i++) free(d->all[i]);
  free(d->all);
  free(d);
}

void mt_demand_set_sender(mt_demand *d, mt_demand_send_fn send, void *arg) {
  d->send = send;
  d->send_arg = arg;
}

void mt_demand_ask(mt_demand *d, const struct sockaddr *dest) {
  if (dest->sa_family != AF_INET && dest->sa_family != AF_INET6) return;
  address_text a;
  mt_sockaddr_format(dest, a.text, sizeof(a.text));
  pthread_mutex_lock(&d->lock);
  int ok = 1;
  if (d->inbox_len == d->inbox_cap) {
    /* Bounded: a worker asks once per held connection, and the main loop
     * drains at its next iteration. */
    size_t cap = d->inbox_cap ? 2 * d->inbox_cap : 16;
    address_text *grown = cap <= 4 * MT_DEMAND_MAX ? realloc(d->inbox, cap * sizeof(*grown)) : NULL;
    ok = grown != NULL;
    if (ok) {
      d->inbox = grown;
      d->inbox_cap = cap;
    }
  }
  if (ok) d->inbox[d->inbox_len++] = a;
  pthread_mutex_unlock(&d->lock);
  if (ok) ev_async_send(d->loop, &d->wake);
}

const char *const *mt_demand_all(const mt_demand *d, size_t *n) {
  *n = d->num_all;
  return (const char *const *)d->all;
}

uint64_t mt_demand_dropped(const mt_demand *d) { return d->dropped; }
