/* tls: TLS context construction and peer verification for mesh mTLS.
 *
 * Contexts: TLS 1.3 by default (1.2 when configured, AEAD + ECDHE only),
 * X25519 and P-256, ALPN "mtlsd", TLS 1.3 session resumption when
 * tls.session_resumption is on (tls_resume.h: a resumed session carries the
 * identity its full handshake verified, re-judged against the current
 * bundle, our SVID and policy). Verification runs inside the
 * handshake: the peer's leaf must be an X509-SVID (svid.c), its trust domain
 * must have a bundle, and the chain must validate to one of that domain's
 * roots. Failures abort the handshake and are reported through the
 * connection's mt_tls_peer. */
#ifndef MT_TLS_H
#define MT_TLS_H

#include <stddef.h>
#include <stdint.h>

#include <openssl/base.h>
#include <openssl/x509.h>

#include "agent/buffer_pool.h"
#include "agent/config.h"
#include "agent/identity.h"
#include "agent/reason.h"
#include "agent/svid.h"

#ifdef __cplusplus
extern "C" {
#endif

#define MT_ALPN_MESH "mtlsd"

enum { MT_SERIAL_HEX_MAX = 64, MT_TLS_DETAIL_MAX = 160 };

/* What we learnt about the peer; embedded in each connection. */
typedef struct {
  char spiffe_id[MT_SPIFFE_ID_MAX_LEN + 1]; /* "" until verified */
  char serial[MT_SERIAL_HEX_MAX + 1];
  mt_reason failure; /* MT_REASON_OK unless verification refused the peer */
  char detail[MT_TLS_DETAIL_MAX];
  int64_t not_after; /* earliest notAfter in the peer's verified chain; 0 unknown */
  int resumed;       /* the session was resumed (tls_resume.h), not verified anew */
} mt_tls_peer;

/* Builds the server or client context for an identity snapshot. |verify_arg|
 * (the snapshot) must outlive every SSL made from the context. */
SSL_CTX *mt_tls_ctx_new(const mt_config *config, int is_server, EVP_PKEY *key, X509 *leaf,
                        STACK_OF(X509) * chain, const mt_identity *verify_arg, char *err,
                        size_t err_len);

/* Creates an SSL for |fd| from |ctx| and attaches |peer| (borrowed, must
 * outlive the SSL) to receive the verification result. The SSL reads
 * through a socket_bio that reads ahead into buffers of |read_ahead| (the
 * worker's pool, which must outlive the SSL; NULL: no read-ahead). */
SSL *mt_tls_new_session(SSL_CTX *ctx, int fd, mt_buffer_pool *read_ahead, mt_tls_peer *peer);

/* 1 when a read on |ssl| could only return WANT_READ until the socket becomes
 * readable: no decrypted byte pending, no byte read ahead, and the last recv
 * found the socket empty. 0 when unsure. */
int mt_tls_read_drained(const SSL *ssl);

/* 1 when a read on |ssl| can return bytes without a recv: decrypted bytes
 * pending, or bytes read ahead from the socket. */
int mt_tls_read_ready(const SSL *ssl);

/* The mt_tls_peer attached to |ssl| by mt_tls_new_session, or NULL. */
mt_tls_peer *mt_tls_peer_of(const SSL *ssl);

/* After a failed handshake: the reason, preferring what the verifier recorded. */
mt_reason mt_tls_failure_reason(SSL *ssl, mt_tls_peer *peer);

/* After a failed read or write on an established session: the reason
 * (|fallback| unless the peer sent an alert that says more) and a detail. */
mt_reason mt_tls_io_failure(SSL *ssl, mt_reason fallback, char *detail, size_t detail_len);

/* Verifies |leaf| + |untrusted| as an SVID for |role| against |trust|; fills
 * |peer|. Used by the handshake and by identity loading. Returns 1 or 0. */
int mt_tls_verify_svid(const mt_trust *trust, X509 *leaf, STACK_OF(X509) * untrusted,
                       mt_svid_role role, mt_tls_peer *peer);

/* Formats a certificate serial as lowercase hex. */
void mt_tls_serial_hex(X509 *cert, char *out, size_t out_len);

#ifdef __cplusplus
}
#endif

#endif /* MT_TLS_H */
