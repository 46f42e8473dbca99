/* identity: one immutable snapshot of "who we are, whom we trust, whom we
 * admit and whom we expect".
 *
 * A snapshot holds the workload's key and certificate chain, the trust
 * bundles (one X509_STORE per trust domain), the TLS contexts built from
 * them, and the mesh view (policy + expected destination IDs, mesh.h), so a
 * connection is judged against one consistent version of all of them. It is reference counted: each
 * worker holds a reference to its current snapshot and each connection holds one for its lifetime,
 * so swapping in a new snapshot never touches live connections. Sources (certificate files today,
 * the control plane's CA client later) produce snapshots; they never mutate one. Private keys are
 * owned here and freed (BoringSSL zeroes freed memory) when the last reference goes. */
#ifndef MT_IDENTITY_H
#define MT_IDENTITY_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include <openssl/base.h>
#include <openssl/x509.h>

#include "agent/config.h"
#include "agent/mesh.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct mt_trust mt_trust;
typedef struct mt_identity mt_identity;

/* ---- trust bundles ---- */
mt_trust *mt_trust_new(void);
void mt_trust_free(mt_trust *trust); /* accepts NULL */
/* Adds the roots in |certs| (borrowed) for |trust_domain|. Returns 1 or 0. */
int mt_trust_add(mt_trust *trust, const char *trust_domain, STACK_OF(X509) * roots);
/* The store for |trust_domain| (|len| bytes), or NULL if the domain is unknown. */
X509_STORE *mt_trust_store(const mt_trust *trust, const char *trust_domain, size_t len);
size_t mt_trust_num_domains(const mt_trust *trust);
/* SHA-256 over every domain's name and roots, in order: equal bundles, equal
 * fingerprints. What session resumption and the chain cache are bound to. */
const uint8_t *mt_trust_fingerprint(const mt_trust *trust);
/* The |i|th trust domain (i < mt_trust_num_domains) and its roots (borrowed). */
const char *mt_trust_domain_at(const mt_trust *trust, size_t i);
const STACK_OF(X509) * mt_trust_roots_at(const mt_trust *trust, size_t i);

/* ---- snapshots ---- */

/* Builds a snapshot. Takes ownership of |key|, |leaf|, |chain| (intermediates,
 * may be NULL) and |trust| in every case, success or not; takes its own
 * reference to |mesh|. Checks that the key
 * matches the leaf, that the leaf is a valid X509-SVID of the configured trust
 * domain, that it chains to our bundle and is currently valid. Returns NULL
 * with a reason in |err|. */
mt_identity *mt_identity_new(const mt_config *config, EVP_PKEY *key, X509 *leaf,
                             STACK_OF(X509) * chain, mt_trust *trust, mt_mesh *mesh, char *err,
                             size_t err_len);

mt_identity *mt_identity_ref(mt_identity *id);
void mt_identity_unref(mt_identity *id); /* accepts NULL */

SSL_CTX *mt_identity_server_ctx(const mt_identity *id);
SSL_CTX *mt_identity_client_ctx(const mt_identity *id);
const mt_trust *mt_identity_trust(const mt_identity *id);
const mt_mesh *mt_identity_mesh(const mt_identity *id);
const char *mt_identity_spiffe_id(const mt_identity *id);
const char *mt_identity_serial(const mt_identity *id); /* lowercase hex */
time_t mt_identity_not_after(const mt_identity *id);
/* The certificates we present (borrowed; the chain may be NULL). Never the key. */
X509 *mt_identity_leaf(const mt_identity *id);
const STACK_OF(X509) * mt_identity_chain(const mt_identity *id);

/* ---- application SVIDs (the SPIFFE Workload API) ----
 * The agent's own key never leaves the process. A snapshot built for an
 * application (its own key, issued for it: cert_manager's application
 * SVIDs) is marked exportable by its builder before it is shared; only such
 * a snapshot's key can be exported. */
void mt_identity_allow_key_export(mt_identity *id);
/* The private key as unencrypted PKCS#8 DER into |*der| (the caller
 * OPENSSL_free()s it, after OPENSSL_cleanse). Returns 1, or 0 (nothing
 * allocated) for a snapshot not marked exportable or when out of memory. */
int mt_identity_export_key(const mt_identity *id, uint8_t **der, size_t *len);

#ifdef __cplusplus
}
#endif

#endif /* MT_IDENTITY_H */
