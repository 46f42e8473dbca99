/* csr: the workload key pair and the certificate signing request that asks
 * the control plane (mtls-ca, or any Istio-compatible CA) for an X509-SVID.
 *
 * The key is generated in this process's memory and never leaves it: only the
 * CSR, which carries the public key and proves possession by its signature, is
 * sent. The CA decides the identity it signs; the URI SAN we ask for is only a
 * hint that lets an Istio CA check it against the caller's credentials. */
#ifndef MT_CSR_H
#define MT_CSR_H

#include <stddef.h>

#include <openssl/base.h>

#ifdef __cplusplus
extern "C" {
#endif

/* A fresh ECDSA P-256 key pair. Returns NULL only when BoringSSL cannot
 * allocate or draw randomness. Free with EVP_PKEY_free (BoringSSL zeroes the
 * private scalar). */
EVP_PKEY *mt_csr_generate_key(void);

/* Builds a PEM "CERTIFICATE REQUEST" for |key| (borrowed; EC P-256 or
 * RSA >= 2048 bits) signed with SHA-256: subject O=mtlsd, and a
 * subjectAltName extension request whose only name is the URI |spiffe_id|,
 * which must be a valid SPIFFE ID with a path (a leaf never carries the bare
 * trust domain ID). Returns a NUL-terminated malloc'd string the caller frees
 * with free(), or NULL with the reason in |err|. */
char *mt_csr_create_pem(EVP_PKEY *key, const char *spiffe_id, char *err, size_t err_len);

#ifdef __cplusplus
}
#endif

#endif /* MT_CSR_H */
