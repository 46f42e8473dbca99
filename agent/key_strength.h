/* key_strength: which public keys and certificate signatures mtlsd trusts.
 *
 * One rule for every place a key or a signature is judged: the chains peers
 * present on both sides of a handshake (tls.c), the agent's own certificate
 * (identity.c) and the CSRs mtls-ca signs (controlplane/signer.c).
 *
 *   keys:       RSA of at least 2048 bits; EC on P-256 or P-384; Ed25519.
 *               Anything else (RSA-1024, P-521, P-224, DSA, ...) is weak.
 *   signatures: made with SHA-256, SHA-384 or SHA-512 (RSA PKCS#1 v1.5,
 *               ECDSA), RSA-PSS (BoringSSL verifies it only with SHA-2),
 *               Ed25519. SHA-1, MD5 and unknown algorithms are weak.
 *
 * Pure functions over borrowed objects; nothing is kept, logged or counted
 * here (callers own the reason code, the counter and the log line). |why|
 * receives a NUL-terminated sentence naming what was refused. */
#ifndef MT_KEY_STRENGTH_H
#define MT_KEY_STRENGTH_H

#include <stddef.h>

#include <openssl/base.h>
#include <openssl/x509.h> /* STACK_OF(X509) */

#ifdef __cplusplus
extern "C" {
#endif

enum { MT_MIN_RSA_BITS = 2048 };

typedef enum {
  MT_STRENGTH_OK = 0,
  MT_STRENGTH_WEAK_KEY,
  MT_STRENGTH_WEAK_SIGNATURE,
} mt_strength;

/* |key|'s type and size. */
mt_strength mt_key_strength(const EVP_PKEY *key, char *why, size_t why_len);

/* The signature algorithm |sig_nid| (X509_get_signature_nid and friends). */
mt_strength mt_signature_strength(int sig_nid, char *why, size_t why_len);

/* One certificate: its public key, and its signature unless |is_anchor| (a
 * trust anchor's self-signature protects nothing: it is trusted because the
 * bundle names it). */
mt_strength mt_cert_strength(X509 *cert, int is_anchor, char *why, size_t why_len);

/* A verified path, leaf first and the trust anchor last (as
 * X509_STORE_CTX_get0_chain returns it): every key, every signature but the
 * anchor's own. |why| names the certificate's position ("leaf",
 * "intermediate 1", "root"). */
mt_strength mt_chain_strength(const STACK_OF(X509) * chain, char *why, size_t why_len);

/* A CSR: its public key and the algorithm of its self-signature. */
mt_strength mt_csr_strength(X509_REQ *req, char *why, size_t why_len);

#ifdef __cplusplus
}
#endif

#endif /* MT_KEY_STRENGTH_H */
