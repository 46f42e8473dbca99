/* cp_tls.c: verify the control plane's SVID. See cp_tls.h. */
#include "agent/cp_tls.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent/identity_files.h"
#include "agent/log.h"
#include "agent/reason.h"
#include "agent/svid.h"
#include "agent/tls.h"

struct mt_cp_tls {
  mt_trust *trust; /* roots that sign the control plane's certificate */
  SSL_CTX *ctx;
  char *spiffe_id; /* what it must present */
};

static int on_verify(X509_STORE_CTX *store_ctx, void *arg) {
  mt_cp_tls *t = arg;
  X509 *leaf = X509_STORE_CTX_get0_cert(store_ctx);
  mt_tls_peer peer;
  memset(&peer, 0, sizeof(peer));
  if (leaf == NULL || !mt_tls_verify_svid(t->trust, leaf, X509_STORE_CTX_get0_untrusted(store_ctx),
                                          MT_SVID_ROLE_SERVER, &peer)) {
    MT_LOG_E("control plane certificate refused (%s): %s", mt_reason_str(peer.failure),
             peer.detail);
    X509_STORE_CTX_set_error(store_ctx, X509_V_ERR_APPLICATION_VERIFICATION);
    return 0;
  }
  if (strcmp(peer.spiffe_id, t->spiffe_id) != 0) {
    MT_LOG_E("control plane presented %s, expected %s", peer.spiffe_id, t->spiffe_id);
    X509_STORE_CTX_set_error(store_ctx, X509_V_ERR_APPLICATION_VERIFICATION);
    return 0;
  }
  return 1;
}

mt_cp_tls *mt_cp_tls_new(const char *root_file, const char *spiffe_id, char *err, size_t err_len) {
  mt_cp_tls *t = calloc(1, sizeof(*t));
  if (t == NULL) {
    snprintf(err, err_len, "out of memory");
    return NULL;
  }
  t->spiffe_id = strdup(spiffe_id);
  STACK_OF(X509) *roots =
      t->spiffe_id != NULL ? mt_identity_files_load_certs(root_file, err, err_len) : NULL;
  if (roots == NULL) {
    if (t->spiffe_id == NULL) snprintf(err, err_len, "out of memory");
    mt_cp_tls_free(t);
    return NULL;
  }
  mt_spiffe_id_view view;
  mt_spiffe_id_parse(spiffe_id, strlen(spiffe_id), &view);
  char td[MT_TRUST_DOMAIN_MAX_LEN + 1];
  snprintf(td, sizeof(td), "%.*s", (int)view.trust_domain_len, view.trust_domain);
  t->trust = mt_trust_new();
  int ok = t->trust != NULL && mt_trust_add(t->trust, td, roots);
  sk_X509_pop_free(roots, X509_free);
  t->ctx = ok ? SSL_CTX_new(TLS_method()) : NULL;
  if (t->ctx == NULL || !SSL_CTX_set_min_proto_version(t->ctx, TLS1_2_VERSION)) {
    snprintf(err, err_len, "cannot build the control-plane TLS context");
    mt_cp_tls_free(t);
    return NULL;
  }
  SSL_CTX_set_verify(t->ctx, SSL_VERIFY_PEER, NULL);
  SSL_CTX_set_cert_verify_callback(t->ctx, on_verify, t);
  return t;
}

void mt_cp_tls_free(mt_cp_tls *t) {
  if (t == NULL) return;
  SSL_CTX_free(t->ctx);
  mt_trust_free(t->trust);
  free(t->spiffe_id);
  free(t);
}

SSL_CTX *mt_cp_tls_ctx(const mt_cp_tls *t) { return t->ctx; }
