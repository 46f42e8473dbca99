/* svid: SPIFFE ID syntax (SPIFFE-ID.md) and X509-SVID leaf rules (X509-SVID.md).
 *
 * Pure functions over borrowed inputs: nothing here keeps allocations, logs or
 * keeps state, so the verifier can call them on any thread. Chain building and
 * validity times are the X.509 verifier's job (tls.c); this module owns only
 * the SPIFFE-specific rules that ordinary path validation does not know. */
#ifndef MT_SVID_H
#define MT_SVID_H

#include <stddef.h>

#include <openssl/base.h>

#ifdef __cplusplus
extern "C" {
#endif

enum {
  MT_SPIFFE_ID_MAX_LEN = 2048,   /* whole ID, bytes */
  MT_TRUST_DOMAIN_MAX_LEN = 255, /* trust domain, bytes */
};

typedef enum {
  MT_SPIFFE_OK = 0,
  MT_SPIFFE_EMPTY,
  MT_SPIFFE_TOO_LONG,
  MT_SPIFFE_BAD_SCHEME, /* not exactly "spiffe://" */
  MT_SPIFFE_EMPTY_TRUST_DOMAIN,
  MT_SPIFFE_TRUST_DOMAIN_TOO_LONG,
  MT_SPIFFE_BAD_TRUST_DOMAIN_CHAR, /* uppercase, port, userinfo, %, ... */
  MT_SPIFFE_EMPTY_SEGMENT,         /* "//" or trailing "/" */
  MT_SPIFFE_DOT_SEGMENT,           /* "/." or "/.." */
  MT_SPIFFE_BAD_PATH_CHAR,         /* %, ?, #, or any char outside [A-Za-z0-9._-] */
} mt_spiffe_err;

/* A parsed ID: views into the caller's string, valid while it lives. */
typedef struct {
  const char *trust_domain;
  size_t trust_domain_len;
  const char *path; /* "" or "/seg/seg" */
  size_t path_len;
} mt_spiffe_id_view;

/* Parses |id| (|len| bytes, need not be NUL-terminated). On MT_SPIFFE_OK
 * fills |out| (may be NULL). */
mt_spiffe_err mt_spiffe_id_parse(const char *id, size_t len, mt_spiffe_id_view *out);

/* Validates a bare trust domain name ("example.org"). */
mt_spiffe_err mt_trust_domain_validate(const char *td, size_t len);

/* Static, human-readable text for |err|, e.g. "trust domain has a character
 * outside [a-z0-9._-]". */
const char *mt_spiffe_err_str(mt_spiffe_err err);

/* Which side of the handshake the leaf authenticates: the extendedKeyUsage,
 * when present, must allow that use. */
typedef enum { MT_SVID_ROLE_CLIENT, MT_SVID_ROLE_SERVER } mt_svid_role;

typedef enum {
  MT_SVID_OK = 0,
  MT_SVID_NO_URI_SAN,
  MT_SVID_MULTIPLE_URI_SANS,
  MT_SVID_BAD_SPIFFE_ID,     /* the single URI SAN is not a valid SPIFFE ID */
  MT_SVID_LEAF_IS_CA,        /* basicConstraints cA=TRUE */
  MT_SVID_BAD_KEY_USAGE,     /* lacks digitalSignature, or has keyCertSign/cRLSign */
  MT_SVID_BAD_EXT_KEY_USAGE, /* EKU present but lacks the role's purpose */
  MT_SVID_UNPARSABLE,        /* extensions could not be decoded */
} mt_svid_err;

const char *mt_svid_err_str(mt_svid_err err);

/* Applies the X509-SVID leaf rules to |leaf| (borrowed). On MT_SVID_OK copies
 * the SPIFFE ID, NUL-terminated, into |out_id| (may be NULL; otherwise
 * |out_size| must be at least MT_SPIFFE_ID_MAX_LEN + 1, or the leaf is refused
 * as MT_SVID_UNPARSABLE). On MT_SVID_BAD_SPIFFE_ID, |*out_id_err| (may be
 * NULL) says why the ID was refused. */
mt_svid_err mt_svid_check_leaf(X509 *leaf, mt_svid_role role, char *out_id, size_t out_size,
                               mt_spiffe_err *out_id_err);

#ifdef __cplusplus
}
#endif

#endif /* MT_SVID_H */
