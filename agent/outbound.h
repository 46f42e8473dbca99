/* outbound: the client side of the mesh (default port 15001).
 *
 * accept the application's plain connection -> original destination
 * (SO_ORIGINAL_DST, or the listener's fixed mapping) -> TCP connect to it ->
 * TLS client handshake presenting our SVID, verifying the server's chain ->
 * its SPIFFE ID must be the one expected for that destination (or, when none
 * is configured and the fallback allows it, any ID of our trust domain) ->
 * relay. */
#ifndef MT_OUTBOUND_H
#define MT_OUTBOUND_H

#include <sys/socket.h>

#include "agent/config.h"
#include "agent/worker.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Takes accepted socket |fd| (ownership passes in every case). */
void mt_outbound_accept(mt_worker *worker, const mt_listener_config *listener, int fd,
                        const struct sockaddr *source);

#ifdef __cplusplus
}
#endif

#endif /* MT_OUTBOUND_H */
