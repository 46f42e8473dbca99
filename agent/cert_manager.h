/* cert_manager: the control-plane identity source.
 *
 * Owns the agent's relationship with mtls-ca (or istiod): a gRPC client over
 * TLS that verifies the control plane's own SVID, the certificate lifecycle
 * (fresh ECDSA P-256 key and CSR per request, renewal at about half of the
 * certificate's life with jitter, exponential backoff with jitter when the
 * CA fails, expiry), and the mesh config stream (trust bundles, policy,
 * destination identities). Whenever any of these changes it assembles a new
 * identity snapshot and hands it to |publish|; a certificate that expires
 * without renewal is replaced by "no identity" (fail closed) until the CA
 * answers again. Runs on the main thread's loop; never blocks it on the
 * network. */
#ifndef MT_CERT_MANAGER_H
#define MT_CERT_MANAGER_H

#include <ev.h>
#include <stddef.h>

#include "agent/config.h"
#include "agent/identity.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Receives one reference to |identity| (NULL = no usable identity). */
typedef void (*mt_publish_fn)(void *arg, mt_identity *identity);

typedef struct mt_cert_manager mt_cert_manager;

/* Validates the control-plane settings (root file, expected ID) and starts
 * the first certificate request and the Watch stream on |loop|. |config|
 * must outlive the manager. Returns NULL with a reason in |err|. */
mt_cert_manager *mt_cert_manager_start(struct ev_loop *loop, const mt_config *config,
                                       mt_publish_fn publish, void *arg, char *err, size_t err_len);

void mt_cert_manager_free(mt_cert_manager *manager); /* accepts NULL */

/* 1 while a valid certificate is being served. */
int mt_cert_manager_ready(const mt_cert_manager *manager);

#ifdef __cplusplus
}
#endif

#endif /* MT_CERT_MANAGER_H */
