/* identity.c: refcounted identity snapshots and per-trust-domain stores. */
#include "agent/identity.h"

#include <openssl/asn1.h>
#include <openssl/bytestring.h>
#include <openssl/evp.h>
#include <openssl/mem.h>
#include <openssl/rand.h>
#include <openssl/sha.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent/tls.h"
#include "agent/x509_util.h"

typedef struct {
  char *trust_domain;
  X509_STORE *store;
  STACK_OF(X509) * roots; /* the same certificates, for reporting */
} trust_entry;

struct mt_trust {
  trust_entry *entries;
  size_t count;
  uint8_t fingerprint[32]; /* chained over every mt_trust_add */
};

struct mt_identity {
  atomic_int refs;
  EVP_PKEY *key;
  X509 *leaf;
  STACK_OF(X509) * chain;
  mt_trust *trust;
  mt_mesh *mesh;
  SSL_CTX *server_ctx;
  SSL_CTX *client_ctx;
  char spiffe_id[MT_SPIFFE_ID_MAX_LEN + 1];
  char serial[MT_SERIAL_HEX_MAX + 1];
  time_t not_after;
  int key_exportable; /* an application SVID's: the Workload API may hand it out */
};

mt_trust *mt_trust_new(void) { return calloc(1, sizeof(mt_trust)); }

void mt_trust_free(mt_trust *trust) {
  if (trust == NULL) return;
  for (size_t i = 0; i < trust->count; i++) {
    free(trust->entries[i].trust_domain);
    X509_STORE_free(trust->entries[i].store);
    sk_X509_pop_free(trust->entries[i].roots, X509_free);
  }
  free(trust->entries);
  free(trust);
}

int mt_trust_add(mt_trust *trust, const char *trust_domain, STACK_OF(X509) * roots) {
  trust_entry *grown = realloc(trust->entries, (trust->count + 1) * sizeof(*grown));
  if (grown == NULL) return 0;
  trust->entries = grown;
  trust_entry *e = &trust->entries[trust->count];
  e->trust_domain = strdup(trust_domain);
  e->store = X509_STORE_new();
  e->roots = sk_X509_new_null();
  int ok = e->trust_domain != NULL && e->store != NULL && e->roots != NULL;
  for (size_t i = 0; ok && i < sk_X509_num(roots); i++) {
    X509 *root = sk_X509_value(roots, i);
    ok = X509_STORE_add_cert(e->store, root) && sk_X509_push(e->roots, root);
    if (ok) X509_up_ref(root);
  }
  if (!ok) {
    free(e->trust_domain);
    X509_STORE_free(e->store);
    sk_X509_pop_free(e->roots, X509_free);
    return 0;
  }
  trust->count++;
  /* fingerprint' = SHA-256(fingerprint || domain || NUL || SHA-256(root DER)...) */
  SHA256_CTX sha;
  SHA256_Init(&sha);
  SHA256_Update(&sha, trust->fingerprint, sizeof(trust->fingerprint));
  SHA256_Update(&sha, trust_domain, strlen(trust_domain) + 1);
  for (size_t i = 0; i < sk_X509_num(e->roots); i++) {
    uint8_t *der = NULL, digest[32];
    int len = i2d_X509(sk_X509_value(e->roots, i), &der);
    if (len <= 0)
      RAND_bytes(digest, sizeof(digest)); /* unreadable: matches nothing */
    else
      SHA256(der, (size_t)len, digest);
    OPENSSL_free(der);
    SHA256_Update(&sha, digest, sizeof(digest));
  }
  SHA256_Final(trust->fingerprint, &sha);
  return 1;
}

const uint8_t *mt_trust_fingerprint(const mt_trust *trust) { return trust->fingerprint; }

X509_STORE *mt_trust_store(const mt_trust *trust, const char *td, size_t len) {
  for (size_t i = 0; i < trust->count; i++) {
    const char *name = trust->entries[i].trust_domain;
    if (strlen(name) == len && memcmp(name, td, len) == 0) return trust->entries[i].store;
  }
  return NULL;
}

size_t mt_trust_num_domains(const mt_trust *trust) { return trust->count; }
const char *mt_trust_domain_at(const mt_trust *trust, size_t i) {
  return trust->entries[i].trust_domain;
}
const STACK_OF(X509) * mt_trust_roots_at(const mt_trust *trust, size_t i) {
  return trust->entries[i].roots;
}

static void identity_destroy(mt_identity *id) {
  SSL_CTX_free(id->server_ctx);
  SSL_CTX_free(id->client_ctx);
  EVP_PKEY_free(id->key); /* BoringSSL cleanses freed memory: the key is zeroed */
  X509_free(id->leaf);
  sk_X509_pop_free(id->chain, X509_free);
  mt_trust_free(id->trust);
  mt_mesh_unref(id->mesh);
  free(id);
}

/* Our own certificate must pass the same checks we apply to peers: if we
 * would refuse it, so will everyone else. */
static int check_own_leaf(mt_identity *id, const mt_config *config, char *err, size_t err_len) {
  mt_tls_peer self;
  memset(&self, 0, sizeof(self));
  if (!mt_tls_verify_svid(id->trust, id->leaf, id->chain, MT_SVID_ROLE_SERVER, &self)) {
    snprintf(err, err_len, "own certificate rejected (%s): %s", mt_reason_str(self.failure),
             self.detail);
    return 0;
  }
  mt_spiffe_id_view view;
  mt_spiffe_id_parse(self.spiffe_id, strlen(self.spiffe_id), &view);
  if (view.trust_domain_len != strlen(config->trust_domain) ||
      memcmp(view.trust_domain, config->trust_domain, view.trust_domain_len) != 0) {
    snprintf(err, err_len, "own certificate %s is not in trust domain '%s'", self.spiffe_id,
             config->trust_domain);
    return 0;
  }
  memcpy(id->spiffe_id, self.spiffe_id, sizeof(id->spiffe_id));
  memcpy(id->serial, self.serial, sizeof(id->serial));
  return 1;
}

mt_identity *mt_identity_new(const mt_config *config, EVP_PKEY *key, X509 *leaf,
                             STACK_OF(X509) * chain, mt_trust *trust, mt_mesh *mesh, char *err,
                             size_t err_len) {
  mt_identity *id = calloc(1, sizeof(*id));
  if (id == NULL) {
    snprintf(err, err_len, "out of memory");
    EVP_PKEY_free(key);
    X509_free(leaf);
    sk_X509_pop_free(chain, X509_free);
    mt_trust_free(trust);
    return NULL;
  }
  atomic_init(&id->refs, 1);
  id->key = key;
  id->leaf = leaf;
  id->chain = chain;
  id->trust = trust;
  id->mesh = mt_mesh_ref(mesh);
  int ok = check_own_leaf(id, config, err, err_len);
  if (ok) {
    id->server_ctx = mt_tls_ctx_new(config, 1, key, leaf, chain, id, err, err_len);
    ok = id->server_ctx != NULL;
  }
  if (ok) {
    id->client_ctx = mt_tls_ctx_new(config, 0, key, leaf, chain, id, err, err_len);
    ok = id->client_ctx != NULL;
  }
  if (!ok) {
    identity_destroy(id);
    return NULL;
  }
  id->not_after = mt_x509_time(X509_get0_notAfter(leaf), time(NULL));
  return id;
}

mt_identity *mt_identity_ref(mt_identity *id) {
  atomic_fetch_add_explicit(&id->refs, 1, memory_order_relaxed);
  return id;
}

void mt_identity_unref(mt_identity *id) {
  if (id == NULL) return;
  if (atomic_fetch_sub_explicit(&id->refs, 1, memory_order_acq_rel) == 1) identity_destroy(id);
}

SSL_CTX *mt_identity_server_ctx(const mt_identity *id) { return id->server_ctx; }
SSL_CTX *mt_identity_client_ctx(const mt_identity *id) { return id->client_ctx; }
const mt_trust *mt_identity_trust(const mt_identity *id) { return id->trust; }
const mt_mesh *mt_identity_mesh(const mt_identity *id) { return id->mesh; }
const char *mt_identity_spiffe_id(const mt_identity *id) { return id->spiffe_id; }
const char *mt_identity_serial(const mt_identity *id) { return id->serial; }
time_t mt_identity_not_after(const mt_identity *id) { return id->not_after; }
void mt_identity_allow_key_export(mt_identity *id) { id->key_exportable = 1; }

int mt_identity_export_key(const mt_identity *id, uint8_t **der, size_t *len) {
  *der = NULL;
  *len = 0;
  if (!id->key_exportable) return 0;
  CBB cbb;
  if (!CBB_init(&cbb, 0) || !EVP_marshal_private_key(&cbb, id->key) ||
      !CBB_finish(&cbb, der, len)) {
    CBB_cleanup(&cbb);
    return 0;
  }
  return 1;
}

X509 *mt_identity_leaf(const mt_identity *id) { return id->leaf; }
const STACK_OF(X509) * mt_identity_chain(const mt_identity *id) { return id->chain; }
