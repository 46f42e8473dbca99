/* x509_util: small X.509 building blocks shared by the CSR builder
 * (agent/csr.c) and the CA's signer (controlplane/signer.c), so a SPIFFE
 * URI SAN is encoded the same way on both sides of issuance. */
#ifndef MT_X509_UTIL_H
#define MT_X509_UTIL_H

#include <openssl/base.h>
#include <openssl/x509v3.h>
#include <time.h>

#ifdef __cplusplus
extern "C" {
#endif

/* A GeneralNames holding exactly one URI name (|uri| is copied); the caller
 * frees it with GENERAL_NAMES_free. NULL when out of memory. */
GENERAL_NAMES *mt_x509_uri_names(const char *uri);

/* Copies a memory BIO's bytes into a NUL-terminated malloc'd string, so the
 * caller owns plain memory and frees it with free(). NULL on failure. */
char *mt_x509_bio_to_string(const BIO *bio);

/* |t| as seconds since the epoch (0 when it cannot be read). Computed as a
 * difference from |now|, which BoringSSL can do for any ASN1_TIME. */
time_t mt_x509_time(const ASN1_TIME *t, time_t now);

#ifdef __cplusplus
}
#endif

#endif /* MT_X509_UTIL_H */
