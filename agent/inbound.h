/* inbound: the server side of the mesh (default port 15006).
 *
 * accept -> peek (a TLS ClientHello? plaintext is refused on strict ports)
 * -> TLS server handshake requiring a client certificate (verified as an
 * X509-SVID against the peer's trust-domain bundle) -> policy(peer ID,
 * destination port) -> plain TCP connect to the local application -> relay. */
#ifndef MT_INBOUND_H
#define MT_INBOUND_H

#include <sys/socket.h>

#include "agent/config.h"
#include "agent/worker.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Takes accepted socket |fd| (ownership passes in every case). */
void mt_inbound_accept(mt_worker *worker, const mt_listener_config *listener, int fd,
                       const struct sockaddr *source);

#ifdef __cplusplus
}
#endif

#endif /* MT_INBOUND_H */
