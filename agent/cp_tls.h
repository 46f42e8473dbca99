/* cp_tls: the TLS client context for the control plane, shared by the
 * agent's certificate manager and `mtlsd init-iptables` (node_info_client.h).
 *
 * The control plane must prove the SPIFFE ID the config expects
 * (control_plane.spiffe_id) with a chain to control_plane.root_file, as an
 * X509-SVID server certificate: a bearer token must never go to an
 * impostor. A refused certificate is logged (log.h) with the reason and
 * fails the handshake. TLS 1.2 or later. */
#ifndef MT_CP_TLS_H
#define MT_CP_TLS_H

#include <stddef.h>

#include <openssl/ssl.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct mt_cp_tls mt_cp_tls;

/* Loads |root_file| (PEM roots) and expects |spiffe_id| (a valid SPIFFE ID,
 * copied). Returns NULL with the reason in |err|. */
mt_cp_tls *mt_cp_tls_new(const char *root_file, const char *spiffe_id, char *err, size_t err_len);
void mt_cp_tls_free(mt_cp_tls *tls); /* accepts NULL */

/* The context to hand to the gRPC client; borrowed, lives as long as |tls|. */
SSL_CTX *mt_cp_tls_ctx(const mt_cp_tls *tls);

#ifdef __cplusplus
}
#endif

#endif /* MT_CP_TLS_H */
