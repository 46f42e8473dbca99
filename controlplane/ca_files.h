/* ca_files: the certificate and key material mtls-ca reads from files: PEM
 * certificate lists (roots, chains), the issuing CA (signer + roots, checked
 * against each other), the token-signing public keys, and the TLS identity
 * of the server itself.
 *
 * Every loader reads the whole file (bounded), refuses anything it does not
 * understand rather than skipping it, and returns 0/NULL with "path: what is
 * wrong" in |err|. Nothing here logs. Loaded values are immutable and owned
 * by the caller; a reload builds a new one and the caller swaps it in. */
#ifndef MT_CP_CA_FILES_H
#define MT_CP_CA_FILES_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include <openssl/base.h>
#include <openssl/x509.h>

#include "controlplane/jwt.h"
#include "controlplane/signer.h"

#ifdef __cplusplus
extern "C" {
#endif

enum {
  MT_CA_FILE_MAX_BYTES = 1024 * 1024, /* any certificate or key file */
};

/* Reads |path| (at most |max_bytes|) into a malloc'd, NUL-terminated buffer.
 * Returns 1, or 0 with "path: reason" in |err|. */
int mt_ca_read_file(const char *path, size_t max_bytes, char **out, size_t *out_len, char *err,
                    size_t err_len);

/* Certificates from one PEM file, in file order, each also re-encoded as its
 * own PEM text (so callers can hand them out one per entry). */
typedef struct {
  STACK_OF(X509) * certs;
  char **pems;
  size_t count;
} mt_pem_certs;

/* Every block of |path| must be a "CERTIFICATE"; at least one is required. */
int mt_pem_certs_read(const char *path, mt_pem_certs *out, char *err, size_t err_len);
/* As above, and every certificate must be a CA (basicConstraints CA:TRUE). */
int mt_pem_roots_read(const char *path, mt_pem_certs *out, char *err, size_t err_len);
void mt_pem_certs_clear(mt_pem_certs *certs); /* safe on a zeroed value */

/* ---- the issuing CA ---------------------------------------------------- */

/* The signer together with the roots it chains to: loaded, checked and
 * swapped as one unit so a rotation can never pair an intermediate with
 * roots it does not chain to. */
typedef struct mt_ca_issuer mt_ca_issuer;

/* Loads the signer (|cert_file|: issuing CA first, then the chain up to but
 * excluding the root; |key_file|) and |roots_file|, and checks that the
 * issuing CA validates to one of the roots now and, when it carries a URI
 * SAN, that it is spiffe://|trust_domain|. */
mt_ca_issuer *mt_ca_issuer_load(const char *cert_file, const char *key_file, const char *roots_file,
                                const char *trust_domain, char *err, size_t err_len);
void mt_ca_issuer_free(mt_ca_issuer *issuer); /* accepts NULL */
const mt_signer *mt_ca_issuer_signer(const mt_ca_issuer *issuer);
const mt_pem_certs *mt_ca_issuer_roots(const mt_ca_issuer *issuer);
time_t mt_ca_issuer_not_after(const mt_ca_issuer *issuer);
/* One-line description for logs: subject and expiry of the issuing CA. */
const char *mt_ca_issuer_describe(const mt_ca_issuer *issuer);

/* ---- token keys -------------------------------------------------------- */

/* "PUBLIC KEY" PEM blocks (ES256 / RS256) from |path|. */
mt_jwt_keys *mt_ca_token_keys_load(const char *path, char *err, size_t err_len);

/* ---- the server's TLS identity ----------------------------------------- */

/* A TLS server context: |min_version| (TLS1_2_VERSION or TLS1_3_VERSION),
 * ECDHE + AEAD only, no client certificate requested (callers authenticate
 * with bearer tokens). Returns NULL when out of memory. */
SSL_CTX *mt_ca_tls_ctx_new(int min_version);

/* Loads the chain (leaf first) and key and installs them in |ctx|; the
 * context is untouched unless both load and match. New connections use the
 * new identity; established ones keep theirs. */
int mt_ca_tls_use_files(SSL_CTX *ctx, const char *cert_file, const char *key_file, char *err,
                        size_t err_len);

#ifdef __cplusplus
}
#endif

#endif /* MT_CP_CA_FILES_H */
