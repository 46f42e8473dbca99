/* reason: why a connection ended or was refused, as stable codes.
 *
 * The codes are a public interface: they appear in the access log ("reason")
 * and operators alert on them, so they never change meaning. */
#ifndef MT_REASON_H
#define MT_REASON_H

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
  MT_REASON_OK = 0,        /* relayed and closed normally */
  MT_REASON_POLICY_DENIED, /* peer verified, policy said no */
  MT_REASON_UNKNOWN_TRUST_DOMAIN,
  MT_REASON_CERT_EXPIRED,
  MT_REASON_CERT_NOT_YET_VALID,
  MT_REASON_NO_CLIENT_CERT,
  MT_REASON_NO_URI_SAN,
  MT_REASON_MULTIPLE_URI_SANS,
  MT_REASON_BAD_SPIFFE_ID,
  MT_REASON_LEAF_IS_CA,
  MT_REASON_BAD_KEY_USAGE,
  MT_REASON_UNKNOWN_CA, /* chain does not end at a root of the bundle */
  MT_REASON_BAD_CERT,   /* any other X.509 path validation failure */
  MT_REASON_UNEXPECTED_SERVER_ID,
  MT_REASON_PEER_DENIED,         /* the peer's policy refused us (TLS access_denied alert) */
  MT_REASON_PEER_REJECTED_CERT,  /* the peer refused our certificate (TLS alert) */
  MT_REASON_UNKNOWN_DESTINATION, /* outbound: no expected ID and fallback is deny */
  MT_REASON_PLAINTEXT_ON_STRICT_PORT,
  MT_REASON_HANDSHAKE_FAILED, /* TLS protocol failure not covered above */
  MT_REASON_HANDSHAKE_TIMEOUT,
  MT_REASON_CONNECT_FAILED,
  MT_REASON_CONNECT_TIMEOUT,
  MT_REASON_IDLE_TIMEOUT,
  MT_REASON_NO_ORIGINAL_DST, /* redirected listener, but no SO_ORIGINAL_DST */
  MT_REASON_CONNECTION_LIMIT,
  MT_REASON_NO_IDENTITY,      /* no usable certificate (expired or not loaded) */
  MT_REASON_DOWNSTREAM_ERROR, /* the accepted side failed mid-stream */
  MT_REASON_UPSTREAM_ERROR,   /* the connected side failed mid-stream */
  MT_REASON_SHUTDOWN,         /* agent stopped before the connection ended */
  MT_REASON_OUT_OF_MEMORY,    /* no relay buffer could be had (pool limit or malloc) */
  MT_REASON_DESTINATION_UNRESOLVED, /* destinations on demand: no answer in time */
  MT_REASON_WEAK_KEY,       /* a certificate in the peer's chain has a key too weak to trust */
  MT_REASON_WEAK_SIGNATURE, /* a certificate in the peer's chain is signed with SHA-1 or weaker */
  MT_REASON_SOURCE_LIMIT,   /* this source address already has its share of handshakes */
  MT_REASON_INTERNAL,
} mt_reason;

/* "policy_denied", "cert_expired", ... */
const char *mt_reason_str(mt_reason reason);

#ifdef __cplusplus
}
#endif

#endif /* MT_REASON_H */
