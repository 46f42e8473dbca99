/* peer_auth: whether a workload admits peers without mesh TLS, port by
 * port, as the control plane resolved it from Istio's PeerAuthentication
 * (mesh.proto PeerAuthentication). Immutable once built; shared by the
 * worker threads through the mesh view that carries it. A workload without
 * one follows the agent's static inbound.permissive_ports. */
#ifndef MT_PEER_AUTH_H
#define MT_PEER_AUTH_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
  MT_MTLS_STRICT,     /* mesh TLS only: plaintext is refused before policy */
  MT_MTLS_PERMISSIVE, /* mesh TLS, or plaintext as an unauthenticated peer */
  MT_MTLS_DISABLE,    /* plaintext expected; mtlsd still accepts mesh TLS (as PERMISSIVE) */
} mt_mtls_mode;

typedef struct mt_peer_auth mt_peer_auth;

/* |source| names where |mode| came from ("ns/name" or "default"); copied.
 * Returns NULL when out of memory. */
mt_peer_auth *mt_peer_auth_new(mt_mtls_mode mode, const char *source);
void mt_peer_auth_free(mt_peer_auth *pa); /* accepts NULL */

/* A port's own mode (portLevelMtls). Returns 1, or 0 with the reason in
 * |err| (port 0, a port given twice, out of memory). */
int mt_peer_auth_add_port(mt_peer_auth *pa, uint16_t port, mt_mtls_mode mode, const char *source,
                          char *err, size_t err_len);

/* The mode for |port|, and where it came from (borrowed) in |*source|
 * when |source| is not NULL. */
mt_mtls_mode mt_peer_auth_mode(const mt_peer_auth *pa, uint16_t port, const char **source);

/* 1 when |port| admits plaintext (PERMISSIVE or DISABLE). */
int mt_peer_auth_admits_plaintext(const mt_peer_auth *pa, uint16_t port);

size_t mt_peer_auth_num_ports(const mt_peer_auth *pa);
/* The |i|th port entry, in the order added. */
void mt_peer_auth_port(const mt_peer_auth *pa, size_t i, uint16_t *port, mt_mtls_mode *mode,
                       const char **source);

const char *mt_mtls_mode_str(mt_mtls_mode mode); /* "STRICT", "PERMISSIVE", "DISABLE" */

#ifdef __cplusplus
}
#endif

#endif /* MT_PEER_AUTH_H */
