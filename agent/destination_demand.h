/* destination_demand: destinations on demand, the agent's half
 * (proto/mtlsd/mesh.proto, WatchRequest.on_demand_destinations and Want).
 *
 * With `control_plane.destinations: on_demand` the Watch stream carries
 * only the destinations this agent asked for. A worker whose connection
 * goes to an address its mesh has no answer for calls mt_demand_ask (from
 * its own thread) and holds the connection; the main loop wakes, keeps
 * every address ever asked (a new Watch stream starts with all of them,
 * so a reconnect costs no round trips) and hands the new ones to |send|,
 * which asks the control plane with one Want call. The answer arrives on
 * the Watch stream like any change, and the held connection looks again.
 *
 * Addresses asked are kept while the agent runs (a pod dials a bounded set
 * of Services and pods); at most MT_DEMAND_MAX, the control plane's limit
 * per stream. Past it an ask is dropped, counted, logged once; the
 * connection waits out its handshake deadline (destination_unresolved). */
#ifndef MT_DESTINATION_DEMAND_H
#define MT_DESTINATION_DEMAND_H

#include <ev.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#ifdef __cplusplus
extern "C" {
#endif

enum { MT_DEMAND_MAX = 4096 };

typedef struct mt_demand mt_demand;

/* Called on the main loop with the addresses ("ip:port", brackets for
 * IPv6) asked since the last call, |n| >= 1; borrowed for the call. */
typedef void (*mt_demand_send_fn)(void *arg, const char *const *addresses, size_t n);

/* Runs on |loop| (the main thread's). Returns NULL when out of memory. */
mt_demand *mt_demand_new(struct ev_loop *loop);
void mt_demand_free(mt_demand *demand); /* accepts NULL; after the workers stopped */

/* Main thread, once, before anything is asked: where new addresses go. */
void mt_demand_set_sender(mt_demand *demand, mt_demand_send_fn send, void *arg);

/* Any thread: asks for |dest| (IPv4 or IPv6 with a port). Cheap when it
 * was asked already. */
void mt_demand_ask(mt_demand *demand, const struct sockaddr *dest);

/* Main thread: every address asked so far, sorted; borrowed until the
 * next main-loop iteration. */
const char *const *mt_demand_all(const mt_demand *demand, size_t *n);

/* Main thread: asks dropped because MT_DEMAND_MAX addresses are held. */
uint64_t mt_demand_dropped(const mt_demand *demand);

#ifdef __cplusplus
}
#endif

#endif /* MT_DESTINATION_DEMAND_H */
