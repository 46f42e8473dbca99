/* tls_resume: TLS 1.3 session resumption that weakens nothing.
 *
 * What travels with a session is a "session record": the peer's SPIFFE ID
 * and serial as verified in the full handshake, when that was (auth_time),
 * the earliest notAfter of the peer's verified chain, the session's expiry
 * (min of auth_time + tls.session_lifetime_s, that notAfter and our own
 * certificate's notAfter; a renewed ticket keeps the original expiry), and
 * two fingerprints: SHA-256 of our own leaf and of the trust bundle that
 * judged the peer. A record is honoured only while both fingerprints equal
 * the current identity's (so our SVID rotating or the bundle changing drops
 * every session) and before its expiry; the peer's ID then goes through the
 * same policy / expected-ID check as a full handshake's (inbound.c,
 * outbound.c run it on every connection).
 *
 * Server side: the record and BoringSSL's serialised session are sealed
 * together into the ticket with a process-local AES-256-GCM key
 * (SSL_CTX_set_ticket_aead_method); keys come from RAND_bytes, never leave
 * the process, rotate every MT_TICKET_KEY_PERIOD_S and the previous key is
 * still accepted for one more period. Client side: sessions are kept in
 * process memory per (dialled address, expected IDs, our own ID), each used
 * once (RFC 8446 C.4), in a bounded table; the record rides on the
 * SSL_SESSION as ex_data. BoringSSL resumes TLS 1.3 only with psk_dhe_ke,
 * so every resumed connection still has an ECDHE exchange (forward secrecy).
 *
 * Fail closed: a ticket whose record is missing, unparsable, stale or from
 * another identity is ignored (full handshake); a connection that resumed
 * without a record to vouch for its peer is refused. */
#ifndef MT_TLS_RESUME_H
#define MT_TLS_RESUME_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <time.h>

#include <openssl/base.h>

#include "agent/config.h"
#include "agent/identity.h"
#include "agent/text.h"
#include "agent/tls.h"

#ifdef __cplusplus
extern "C" {
#endif

enum {
  MT_TICKET_KEY_PERIOD_S = 3600, /* a new ticket key every hour */
  MT_TICKET_KEY_NAME_LEN = 16,
  MT_TICKET_KEY_LEN = 32,
  MT_TICKET_NONCE_LEN = 12,
  MT_TICKET_TAG_LEN = 16,
  MT_TICKET_OVERHEAD = MT_TICKET_KEY_NAME_LEN + MT_TICKET_NONCE_LEN + MT_TICKET_TAG_LEN,
};

/* ---- ticket keys (process-local; exposed for unit tests) ---- */

typedef struct mt_ticket_keys mt_ticket_keys;

/* A key ring rotating every |period_s|, its first key made at |now|. */
mt_ticket_keys *mt_ticket_keys_new(time_t period_s, time_t now);
void mt_ticket_keys_free(mt_ticket_keys *keys); /* accepts NULL; zeroes the keys */

/* Seals |in| with the current key (rotating first if its period is over):
 * key name || nonce || ciphertext || tag, MT_TICKET_OVERHEAD more bytes than
 * |in|. Returns 1, or 0 when |out_cap| is too small or sealing failed. */
int mt_ticket_keys_seal(mt_ticket_keys *keys, time_t now, uint8_t *out, size_t *out_len,
                        size_t out_cap, const uint8_t *in, size_t in_len);

/* Opens what mt_ticket_keys_seal made, with the current key or the previous
 * one (accepted for one period after it was replaced). Returns 1, or 0 for
 * an unknown or retired key, a forged or truncated ticket, or no room. */
int mt_ticket_keys_open(mt_ticket_keys *keys, time_t now, uint8_t *out, size_t *out_len,
                        size_t out_cap, const uint8_t *in, size_t in_len);

/* ---- session records (exposed for unit tests) ---- */

typedef struct {
  int64_t auth_time;      /* the full handshake that verified the peer */
  int64_t expires;        /* never honoured at or after this time */
  int64_t peer_not_after; /* earliest notAfter in the peer's verified chain */
  uint8_t own_fp[32];     /* SHA-256 of our leaf's DER */
  uint8_t trust_fp[32];   /* SHA-256 of the trust bundle */
  char serial[MT_SERIAL_HEX_MAX + 1];
  char spiffe_id[MT_SPIFFE_ID_MAX_LEN + 1];
} mt_session_record;

/* Encoded size of |rec|, and encode/decode (decode: 1, or 0 on any defect). */
size_t mt_session_record_size(const mt_session_record *rec);
size_t mt_session_record_encode(const mt_session_record *rec, uint8_t *out, size_t cap);
int mt_session_record_decode(mt_session_record *rec, const uint8_t *in, size_t len,
                             size_t *consumed);

/* Why a record is not honoured now (NULL: it is). */
const char *mt_session_record_refusal(const mt_session_record *rec, time_t now,
                                      const uint8_t own_fp[32], const uint8_t trust_fp[32]);

/* ---- hooks for tls.c, conn.c, outbound.c ---- */

/* tls.c, while building a context for |identity| (|leaf| / |chain| are what
 * we present): switches tickets and the session machinery on when
 * tls.session_resumption is true, off otherwise. Returns 1 or 0. */
int mt_tls_resume_configure(SSL_CTX *ctx, int is_server, const mt_config *config, X509 *leaf,
                            const STACK_OF(X509) * chain, const mt_identity *identity);

/* outbound.c, before the first handshake step: offers a cached session for
 * the destination (|dest|), the IDs expected there (|expected|, |count|;
 * none = trust-domain fallback) and our identity, if one is fresh. */
void mt_tls_resume_offer(SSL *ssl, const struct sockaddr *dest, const char *const *expected,
                         size_t count, const mt_identity *identity);

/* conn.c, when a mesh-side handshake has completed: on a resumed session,
 * fills |peer| from the session's record (ID, serial, notAfter) after
 * checking it once more; sets peer->resumed. Returns 1, or 0 when a
 * resumed session has no honourable record (refuse the connection). */
int mt_tls_resume_established(SSL *ssl, mt_tls_peer *peer);

/* The earliest notAfter in |chain| (0 when it cannot be read). */
int64_t mt_tls_chain_not_after(const STACK_OF(X509) * chain, time_t now);

/* Process-wide counters for /metrics, appended as Prometheus text. */
void mt_tls_resume_render_metrics(mt_text *out);

/* Drops every cached client session (tests, shutdown). */
void mt_tls_resume_flush_client_cache(void);

#ifdef __cplusplus
}
#endif

#endif /* MT_TLS_RESUME_H */
