/* resolver: "host:port" -> socket addresses, without blocking the loop.
 *
 * A numeric address ("10.0.0.1:15012", "[fd00::1]:15012") is answered
 * without any lookup. A name ("mtls-ca.mtls-system.svc:15012") is looked up
 * with getaddrinfo on a short-lived thread of its own (the system resolver:
 * /etc/hosts, /etc/resolv.conf search domains, as every other program of
 * the pod sees them), and the answer comes back on the loop. Nothing is
 * cached: each lookup asks again, so a Service that moved is found.
 *
 * Promises: on_done runs exactly once per lookup that start returned,
 * always from the loop (never inside mt_resolve_start), unless the lookup
 * is cancelled first; nothing runs after a cancel. A thread whose lookup was
 * cancelled finishes on its own and frees what it used. */
#ifndef MT_GRPC_RESOLVER_H
#define MT_GRPC_RESOLVER_H

#include <ev.h>
#include <stddef.h>
#include <sys/socket.h>

#include "grpc/target.h"

#ifdef __cplusplus
extern "C" {
#endif

enum {
  MT_RESOLVE_MAX_ADDRESSES = 8,
  MT_RESOLVE_ERROR_MAX = 160,
};

typedef struct {
  struct sockaddr_storage addresses[MT_RESOLVE_MAX_ADDRESSES];
  socklen_t lengths[MT_RESOLVE_MAX_ADDRESSES];
  size_t count;                     /* 0: failed, see |error| */
  char error[MT_RESOLVE_ERROR_MAX]; /* e.g. "cannot resolve 'x': Name or service not known" */
} mt_resolve_result;

typedef void (*mt_resolve_done)(void *arg, const mt_resolve_result *result);

typedef struct mt_resolve mt_resolve;

/* Starts looking |target| up. Returns NULL when out of memory or when no
 * thread can be started (nothing will run then). */
mt_resolve *mt_resolve_start(struct ev_loop *loop, const mt_resolve_target *target,
                             mt_resolve_done on_done, void *arg);

/* Forgets a lookup whose on_done has not run; NULL is fine. */
void mt_resolve_cancel(mt_resolve *lookup);

#ifdef __cplusplus
}
#endif

#endif /* MT_GRPC_RESOLVER_H */
