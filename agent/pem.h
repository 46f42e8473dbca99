/* pem: small helpers for PEM text arriving from the control plane. */
#ifndef MT_PEM_H
#define MT_PEM_H

#include <stddef.h>

#include <openssl/base.h>
#include <openssl/x509.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Appends every certificate in |pem| (|len| bytes) to |out|. Returns the
 * number appended (0 = none found or malformed). */
size_t mt_pem_append_certs(const char *pem, size_t len, STACK_OF(X509) * out);

/* A new stack holding references to the same certificates. */
STACK_OF(X509) * mt_pem_dup_certs(const STACK_OF(X509) * certs);

#ifdef __cplusplus
}
#endif

#endif /* MT_PEM_H */
