/* signer: the CA core of mtls-ca. It turns a workload's CSR into a
 * short-lived X509-SVID leaf for the identity the caller was authenticated
 * as (see jwt.h), never for an identity the CSR asks for.
 *
 * Owns the issuing certificate, its private key and the intermediates above
 * it; immutable after mt_signer_new, so one signer may serve many threads.
 * Everything the CSR says except its public key and its self-signature is
 * ignored (PROTOCOL.md 1: "the CA takes the public key from it and may
 * overwrite everything else"). Nothing here logs. */
#ifndef MT_SIGNER_H
#define MT_SIGNER_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include <openssl/base.h>
#include <openssl/x509.h>

#ifdef __cplusplus
extern "C" {
#endif

enum {
  MT_SIGNER_MAX_CSR_LEN = 64 * 1024, /* bytes of CSR PEM accepted */
  MT_SIGNER_CLOCK_SKEW_S = 60,       /* notBefore is backdated by this much */
};

typedef struct mt_signer mt_signer;

/* Takes ownership of |issuer_cert|, |issuer_key| and |chain_to_root| (the
 * certificates above the issuer, nearest first; NULL or empty when the issuer
 * is itself trusted as a root), whether it succeeds or not. Refuses, with the
 * reason in |err|: a key that does not match the certificate, a key that is
 * neither EC nor RSA, an issuer that is not a CA allowed to sign
 * certificates, and a chain in which a certificate is not signed by the next. */
mt_signer *mt_signer_new(X509 *issuer_cert, EVP_PKEY *issuer_key, STACK_OF(X509) * chain_to_root,
                         char *err, size_t err_len);

/* Loads |cert_chain_file| (PEM: the issuer certificate first, then the
 * certificates above it) and |key_file| (PEM private key, unencrypted) and
 * builds a signer. Returns NULL with "path: what is wrong" in |err|. */
mt_signer *mt_signer_load_pem_files(const char *cert_chain_file, const char *key_file, char *err,
                                    size_t err_len);

void mt_signer_free(mt_signer *signer); /* accepts NULL */

/* Issues a leaf for the public key of |csr_pem| (|len| bytes, at most
 * MT_SIGNER_MAX_CSR_LEN; one PEM "CERTIFICATE REQUEST"). The CSR's signature
 * must verify with its own key (proof of possession) and that key must be EC
 * P-256 or RSA of 2048..8192 bits. The leaf has an empty subject and exactly
 * one name, the URI SAN |spiffe_id| (a valid SPIFFE ID with a path: the
 * identity the caller is entitled to), whatever the CSR requests;
 * basicConstraints CA:FALSE and keyUsage digitalSignature (plus
 * keyEncipherment for RSA), both critical; extendedKeyUsage serverAuth +
 * clientAuth; subject and authority key identifiers; a random 128-bit
 * serial; notBefore = now - MT_SIGNER_CLOCK_SKEW_S; notAfter = now + TTL,
 * where TTL is |requested_ttl_s| (<= 0: |max_ttl_s|) capped at |max_ttl_s|
 * (> 0), and never later than the issuer's own notAfter. Signed with SHA-256.
 *
 * On success returns 1 and sets |*out_chain_pem| to a malloc'd,
 * NUL-terminated PEM chain the caller frees with free(): the leaf, then the
 * issuer and the chain above it, leaving out any self-signed root (a peer
 * must already hold the root; sending it proves nothing). Otherwise returns
 * 0, |*out_chain_pem| is NULL and |err| says what was wrong. */
int mt_signer_sign_csr(const mt_signer *signer, const char *csr_pem, size_t len,
                       const char *spiffe_id, int64_t requested_ttl_s, int64_t max_ttl_s,
                       time_t now, char **out_chain_pem, char *err, size_t err_len);

#ifdef __cplusplus
}
#endif

#endif /* MT_SIGNER_H */
