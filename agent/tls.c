/* tls.c: SSL_CTX construction and the in-handshake SVID verifier. */
#include "agent/tls.h"

#include "agent/socket_bio.h"

#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/pool.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "agent/chain_cache.h"
#include "agent/key_strength.h"
#include "agent/tls_resume.h"

/* TLS 1.2 suites, used only when tls.min_version is "1.2": ECDHE + AEAD. */
static const char kTls12Ciphers[] =
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-AES128-GCM-SHA256:"
    "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-RSA-CHACHA20-POLY1305";
static const char kCurves[] = "X25519:P-256";
/* What a peer may sign the handshake with: SHA-2 and Ed25519 only, so a
 * TLS 1.2 peer (where configured) cannot fall back to SHA-1 signatures.
 * P-521 is listed although its keys are refused (key_strength.h): a peer
 * holding one then sends its certificate, and is told "weak_key", instead
 * of failing the handshake for want of a common algorithm. */
static const uint16_t kVerifyAlgorithms[] = {
    SSL_SIGN_ECDSA_SECP256R1_SHA256, SSL_SIGN_RSA_PSS_RSAE_SHA256, SSL_SIGN_RSA_PKCS1_SHA256,
    SSL_SIGN_ECDSA_SECP384R1_SHA384, SSL_SIGN_RSA_PSS_RSAE_SHA384, SSL_SIGN_RSA_PKCS1_SHA384,
    SSL_SIGN_RSA_PSS_RSAE_SHA512,    SSL_SIGN_RSA_PKCS1_SHA512,    SSL_SIGN_ED25519,
    SSL_SIGN_ECDSA_SECP521R1_SHA512,
};
static const uint8_t kAlpnWire[] = {5, 'm', 't', 'l', 's', 'd'};

static int g_peer_index = -1;
static int g_ctx_identity_index = -1;

static int peer_index(void) {
  /* Called first from the main thread while building contexts, before any
   * worker runs, so the lazy initialisation is not racy. */
  if (g_peer_index < 0) g_peer_index = SSL_get_ex_new_index(0, NULL, NULL, NULL, NULL);
  return g_peer_index;
}

/* The identity whose trust bundles judge a client context's peers (the
 * custom verifier has no argument of its own). Same initialisation rule. */
static int ctx_identity_index(void) {
  if (g_ctx_identity_index < 0)
    g_ctx_identity_index = SSL_CTX_get_ex_new_index(0, NULL, NULL, NULL, NULL);
  return g_ctx_identity_index;
}

void mt_tls_serial_hex(X509 *cert, char *out, size_t out_len) {
  out[0] = '\0';
  BIGNUM *bn = ASN1_INTEGER_to_BN(X509_get_serialNumber(cert), NULL);
  char *hex = bn ? BN_bn2hex(bn) : NULL;
  if (hex) {
    size_t i = 0;
    for (; hex[i] && i + 1 < out_len; i++)
      out[i] = (char)((hex[i] >= 'A' && hex[i] <= 'F') ? hex[i] + 32 : hex[i]);
    out[i] = '\0';
  }
  OPENSSL_free(hex);
  BN_free(bn);
}

static mt_reason reason_from_svid(mt_svid_err e) {
  switch (e) {
    case MT_SVID_NO_URI_SAN: return MT_REASON_NO_URI_SAN;
    case MT_SVID_MULTIPLE_URI_SANS: return MT_REASON_MULTIPLE_URI_SANS;
    case MT_SVID_BAD_SPIFFE_ID: return MT_REASON_BAD_SPIFFE_ID;
    case MT_SVID_LEAF_IS_CA: return MT_REASON_LEAF_IS_CA;
    case MT_SVID_BAD_KEY_USAGE:
    case MT_SVID_BAD_EXT_KEY_USAGE: return MT_REASON_BAD_KEY_USAGE;
    default: return MT_REASON_BAD_CERT;
  }
}

static mt_reason reason_from_x509(int err) {
  switch (err) {
    case X509_V_ERR_CERT_HAS_EXPIRED: return MT_REASON_CERT_EXPIRED;
    case X509_V_ERR_CERT_NOT_YET_VALID: return MT_REASON_CERT_NOT_YET_VALID;
    case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT:
    case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY:
    case X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN:
    case X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT:
    case X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE:
    case X509_V_ERR_CERT_SIGNATURE_FAILURE: return MT_REASON_UNKNOWN_CA;
    default: return MT_REASON_BAD_CERT;
  }
}

/* A verified path is still refused when a key or a signature in it is weak
 * (key_strength.h): the reason says which, the detail names the certificate. */
static int strong_enough(mt_strength s, const char *why, mt_tls_peer *peer) {
  if (s == MT_STRENGTH_OK) return 1;
  peer->failure = s == MT_STRENGTH_WEAK_KEY ? MT_REASON_WEAK_KEY : MT_REASON_WEAK_SIGNATURE;
  snprintf(peer->detail, sizeof(peer->detail), "%s", why);
  return 0;
}

/* X.509 path validation of |leaf| against one trust domain's roots
 * (|trust_key| names them, chain_cache.h): by a remembered intermediate
 * when the chain cache may answer, else in full. Only strong paths are
 * remembered, so a cached answer leaves just the leaf to judge. */
static int verify_chain(X509_STORE *store, const uint8_t trust_key[32], X509 *leaf,
                        STACK_OF(X509) * untrusted, mt_svid_role role, int purpose,
                        mt_tls_peer *peer) {
  time_t now = time(NULL);
  char why[sizeof(peer->detail)];
  if (mt_chain_cache_verify(mt_chain_cache_global(), trust_key, leaf, untrusted, purpose, now,
                            &peer->not_after)) {
    char what[sizeof(why) - 8];
    mt_strength s = mt_cert_strength(leaf, 0, what, sizeof(what));
    if (s != MT_STRENGTH_OK) snprintf(why, sizeof(why), "leaf: %s", what);
    return strong_enough(s, why, peer);
  }
  X509_STORE_CTX *ctx = X509_STORE_CTX_new();
  int ok =
      ctx != NULL && X509_STORE_CTX_init(ctx, store, leaf, untrusted) &&
      X509_STORE_CTX_set_default(ctx, role == MT_SVID_ROLE_CLIENT ? "ssl_client" : "ssl_server");
  if (ok) ok = X509_verify_cert(ctx) == 1;
  if (!ok) {
    int err = ctx ? X509_STORE_CTX_get_error(ctx) : X509_V_ERR_OUT_OF_MEM;
    peer->failure = reason_from_x509(err);
    snprintf(peer->detail, sizeof(peer->detail), "certificate chain: %s",
             X509_verify_cert_error_string(err));
  }
  STACK_OF(X509) *path = ok ? X509_STORE_CTX_get0_chain(ctx) : NULL;
  if (ok) ok = strong_enough(mt_chain_strength(path, why, sizeof(why)), why, peer);
  /* What a resumed session may rely on: the whole path's earliest expiry. */
  if (ok) {
    peer->not_after = mt_tls_chain_not_after(path, now);
    mt_chain_cache_remember(mt_chain_cache_global(), trust_key, path, now);
  }
  X509_STORE_CTX_free(ctx);
  return ok;
}

int mt_tls_verify_svid(const mt_trust *trust, X509 *leaf, STACK_OF(X509) * untrusted,
                       mt_svid_role role, mt_tls_peer *peer) {
  char id[MT_SPIFFE_ID_MAX_LEN + 1];
  mt_spiffe_err id_err = MT_SPIFFE_OK;
  mt_tls_serial_hex(leaf, peer->serial, sizeof(peer->serial));
  mt_svid_err e = mt_svid_check_leaf(leaf, role, id, sizeof(id), &id_err);
  if (e != MT_SVID_OK) {
    peer->failure = reason_from_svid(e);
    snprintf(peer->detail, sizeof(peer->detail), "%s%s%s", mt_svid_err_str(e),
             e == MT_SVID_BAD_SPIFFE_ID ? ": " : "",
             e == MT_SVID_BAD_SPIFFE_ID ? mt_spiffe_err_str(id_err) : "");
    return 0;
  }
  mt_spiffe_id_view view;
  mt_spiffe_id_parse(id, strlen(id), &view);
  X509_STORE *store = mt_trust_store(trust, view.trust_domain, view.trust_domain_len);
  if (store == NULL) {
    peer->failure = MT_REASON_UNKNOWN_TRUST_DOMAIN;
    snprintf(peer->detail, sizeof(peer->detail), "no trust bundle for trust domain '%.*s'",
             (int)(view.trust_domain_len > 100 ? 100 : view.trust_domain_len), view.trust_domain);
    /* Report the claimed ID: operators need to see who was refused. */
    snprintf(peer->spiffe_id, sizeof(peer->spiffe_id), "%s", id);
    return 0;
  }
  uint8_t trust_key[32];
  int purpose = role == MT_SVID_ROLE_CLIENT ? X509_PURPOSE_SSL_CLIENT : X509_PURPOSE_SSL_SERVER;
  mt_chain_cache_trust_key(mt_trust_fingerprint(trust), view.trust_domain, view.trust_domain_len,
                           purpose, trust_key);
  if (!verify_chain(store, trust_key, leaf, untrusted, role, purpose, peer)) {
    snprintf(peer->spiffe_id, sizeof(peer->spiffe_id), "%s", id);
    return 0;
  }
  snprintf(peer->spiffe_id, sizeof(peer->spiffe_id), "%s", id);
  peer->failure = MT_REASON_OK;
  return 1;
}

/* Replaces OpenSSL-style verification: the peer's trust domain picks the
 * store, so one handshake can only ever be judged by its own domain's roots. */
static int on_cert_verify(X509_STORE_CTX *store_ctx, void *arg) {
  const mt_identity *id = arg;
  SSL *ssl = X509_STORE_CTX_get_ex_data(store_ctx, SSL_get_ex_data_X509_STORE_CTX_idx());
  mt_tls_peer *peer = ssl ? SSL_get_ex_data(ssl, peer_index()) : NULL;
  mt_tls_peer scratch;
  if (peer == NULL) {
    memset(&scratch, 0, sizeof(scratch));
    peer = &scratch;
  }
  X509 *leaf = X509_STORE_CTX_get0_cert(store_ctx);
  mt_svid_role role = SSL_is_server(ssl) ? MT_SVID_ROLE_CLIENT : MT_SVID_ROLE_SERVER;
  if (leaf == NULL) {
    peer->failure = MT_REASON_BAD_CERT;
    X509_STORE_CTX_set_error(store_ctx, X509_V_ERR_UNSPECIFIED);
    return 0;
  }
  if (!mt_tls_verify_svid(mt_identity_trust(id), leaf, X509_STORE_CTX_get0_untrusted(store_ctx),
                          role, peer)) {
    X509_STORE_CTX_set_error(store_ctx, X509_V_ERR_APPLICATION_VERIFICATION);
    return 0;
  }
  return 1;
}

/* The outbound (client) side's verifier. Its context uses the buffers
 * method, so BoringSSL keeps the server's chain only as DER for the
 * connection's life; the parsed certificates live only for this call. */
static enum ssl_verify_result_t on_custom_verify(SSL *ssl, uint8_t *out_alert) {
  const mt_identity *id = SSL_CTX_get_ex_data(SSL_get_SSL_CTX(ssl), ctx_identity_index());
  mt_tls_peer *peer = SSL_get_ex_data(ssl, peer_index());
  mt_tls_peer scratch;
  if (peer == NULL) {
    memset(&scratch, 0, sizeof(scratch));
    peer = &scratch;
  }
  const STACK_OF(CRYPTO_BUFFER) *der = SSL_get0_peer_certificates(ssl);
  X509 *leaf = NULL;
  STACK_OF(X509) *untrusted = sk_X509_new_null();
  int ok = der != NULL && sk_CRYPTO_BUFFER_num(der) > 0 && untrusted != NULL;
  for (size_t i = 0; ok && i < sk_CRYPTO_BUFFER_num(der); i++) {
    X509 *cert = X509_parse_from_buffer(sk_CRYPTO_BUFFER_value(der, i));
    if (cert == NULL) {
      ok = 0;
    } else if (i == 0) {
      leaf = cert;
    } else if (!sk_X509_push(untrusted, cert)) {
      X509_free(cert);
      ok = 0;
    }
  }
  if (!ok) {
    peer->failure = MT_REASON_BAD_CERT;
    snprintf(peer->detail, sizeof(peer->detail), "unparsable server certificate chain");
  } else {
    ok = mt_tls_verify_svid(mt_identity_trust(id), leaf, untrusted, MT_SVID_ROLE_SERVER, peer);
  }
  X509_free(leaf);
  sk_X509_pop_free(untrusted, X509_free);
  if (ok) return ssl_verify_ok;
  /* The alert the X509-based verifier sent for the same refusal. */
  *out_alert = (uint8_t)SSL_alert_from_verify_result(X509_V_ERR_APPLICATION_VERIFICATION);
  return ssl_verify_invalid;
}

static int on_alpn_select(SSL *ssl, const uint8_t **out, uint8_t *out_len, const uint8_t *in,
                          unsigned in_len, void *arg) {
  (void)ssl;
  (void)arg;
  uint8_t *selected = NULL;
  if (SSL_select_next_proto(&selected, out_len, kAlpnWire, sizeof(kAlpnWire), in, in_len) ==
      OPENSSL_NPN_NEGOTIATED) {
    *out = selected;
    return SSL_TLSEXT_ERR_OK;
  }
  /* A peer that offers no mesh token still gets a chance: policy decides. */
  return SSL_TLSEXT_ERR_NOACK;
}

/* The largest handshake message a peer may send, its certificate chain
 * included (BoringSSL's default is 100 KiB whenever the peer's chain is
 * asked for, ClientHello included). A peer is unauthenticated until its
 * chain is verified, and the agent buffers a message until it is whole: with
 * 100 KiB an unauthenticated connection could hold ~400 KiB of the agent's
 * memory for the whole handshake deadline. 16 KiB is BoringSSL's limit for
 * every other handshake message and holds a chain of several RSA-4096
 * certificates; a longer one fails as handshake_failed
 * (EXCESSIVE_MESSAGE_SIZE). */
enum { MAX_PEER_HANDSHAKE_MESSAGE_BYTES = 16 * 1024 };

static int configure_protocol(SSL_CTX *ctx, const mt_config *config) {
  SSL_CTX_set_max_cert_list(ctx, MAX_PEER_HANDSHAKE_MESSAGE_BYTES);
  if (!SSL_CTX_set_min_proto_version(ctx, (uint16_t)config->tls_min_version) ||
      !SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION) ||
      !SSL_CTX_set1_curves_list(ctx, kCurves) ||
      !SSL_CTX_set_verify_algorithm_prefs(ctx, kVerifyAlgorithms,
                                          sizeof(kVerifyAlgorithms) / sizeof(kVerifyAlgorithms[0])) ||
      !SSL_CTX_set_strict_cipher_list(ctx, kTls12Ciphers))
    return 0;
  SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
                            SSL_MODE_RELEASE_BUFFERS);
  /* 0-RTT data could be replayed and reaches us before the peer is
   * authenticated: never accepted (BoringSSL's default, stated here). A
   * BoringSSL server never renegotiates and a client's default is
   * ssl_renegotiate_never, so TLS 1.2 (where configured) cannot either. */
  SSL_CTX_set_early_data_enabled(ctx, 0);
  return 1;
}

static int configure_credentials(SSL_CTX *ctx, EVP_PKEY *key, X509 *leaf, STACK_OF(X509) * chain) {
  if (!SSL_CTX_use_certificate(ctx, leaf) || !SSL_CTX_use_PrivateKey(ctx, key) ||
      !SSL_CTX_check_private_key(ctx))
    return 0;
  return chain == NULL || SSL_CTX_set1_chain(ctx, chain);
}

static CRYPTO_BUFFER *cert_to_buffer(X509 *cert) {
  uint8_t *der = NULL;
  int len = i2d_X509(cert, &der);
  CRYPTO_BUFFER *buf = len > 0 ? CRYPTO_BUFFER_new(der, (size_t)len, NULL) : NULL;
  OPENSSL_free(der);
  return buf;
}

enum { MAX_CHAIN_CERTS = 16 }; /* leaf + intermediates we present */

/* The same credentials for a buffers-method context (no X509 objects):
 * SSL_CTX_set_chain_and_key also checks that |key| matches the leaf. */
static int configure_buffer_credentials(SSL_CTX *ctx, EVP_PKEY *key, X509 *leaf,
                                        STACK_OF(X509) * chain) {
  CRYPTO_BUFFER *certs[MAX_CHAIN_CERTS];
  size_t n = 0;
  int ok = 1;
  size_t extra = chain ? sk_X509_num(chain) : 0;
  if (extra + 1 > MAX_CHAIN_CERTS) return 0;
  for (size_t i = 0; ok && i <= extra; i++) {
    certs[n] = cert_to_buffer(i == 0 ? leaf : sk_X509_value(chain, i - 1));
    if (certs[n] == NULL)
      ok = 0;
    else
      n++;
  }
  ok = ok && SSL_CTX_set_chain_and_key(ctx, certs, n, key, NULL);
  for (size_t i = 0; i < n; i++) CRYPTO_BUFFER_free(certs[i]);
  return ok;
}

SSL_CTX *mt_tls_ctx_new(const mt_config *config, int is_server, EVP_PKEY *key, X509 *leaf,
                        STACK_OF(X509) * chain, const mt_identity *verify_arg, char *err,
                        size_t err_len) {
  peer_index();
  ctx_identity_index();
  /* The client side verifies with on_custom_verify and keeps no X509 objects
   * per connection (see there); the server side keeps only a hash instead. */
  SSL_CTX *ctx = SSL_CTX_new(is_server ? TLS_method() : TLS_with_buffers_method());
  if (ctx == NULL || !configure_protocol(ctx, config) ||
      !(is_server ? configure_credentials(ctx, key, leaf, chain)
                  : configure_buffer_credentials(ctx, key, leaf, chain)) ||
      (!is_server && !SSL_CTX_set_ex_data(ctx, ctx_identity_index(), (void *)verify_arg)) ||
      !mt_tls_resume_configure(ctx, is_server, config, leaf, chain, verify_arg)) {
    unsigned long e = ERR_get_error();
    snprintf(err, err_len, "building the TLS %s context: %s", is_server ? "server" : "client",
             e ? ERR_reason_error_string(e) : "out of memory");
    ERR_clear_error();
    SSL_CTX_free(ctx);
    return NULL;
  }
  if (is_server) {
    SSL_CTX_set_cert_verify_callback(ctx, on_cert_verify, (void *)verify_arg);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
    SSL_CTX_set_alpn_select_cb(ctx, on_alpn_select, NULL);
    /* The client's chain is judged in on_cert_verify and what the access log
     * needs is copied into mt_tls_peer; keeping the parsed chain for the
     * connection's life cost several KB per idle connection. */
    SSL_CTX_set_retain_only_sha256_of_client_certs(ctx, 1);
  } else {
    SSL_CTX_set_custom_verify(ctx, SSL_VERIFY_PEER, on_custom_verify);
    SSL_CTX_set_alpn_protos(ctx, kAlpnWire, sizeof(kAlpnWire));
  }
  return ctx;
}

SSL *mt_tls_new_session(SSL_CTX *ctx, int fd, mt_buffer_pool *read_ahead, mt_tls_peer *peer) {
  SSL *ssl = SSL_new(ctx);
  if (ssl == NULL) return NULL;
  BIO *bio = mt_socket_bio_new(fd, read_ahead);
  if (bio == NULL) {
    SSL_free(ssl);
    return NULL;
  }
  SSL_set_bio(ssl, bio, bio); /* one reference, now the SSL's */
  if (!SSL_set_ex_data(ssl, peer_index(), peer)) {
    SSL_free(ssl);
    return NULL;
  }
  return ssl;
}

int mt_tls_read_ready(const SSL *ssl) {
  return SSL_pending(ssl) > 0 || mt_socket_bio_buffered(SSL_get_rbio(ssl)) > 0;
}

int mt_tls_read_drained(const SSL *ssl) {
  return mt_socket_bio_drained(SSL_get_rbio(ssl)) && SSL_pending(ssl) == 0 &&
         !SSL_has_pending(ssl);
}

mt_tls_peer *mt_tls_peer_of(const SSL *ssl) { return SSL_get_ex_data(ssl, peer_index()); }

/* In TLS 1.3 the client finishes its handshake before the server has judged
 * the client certificate, so a refusal arrives as an alert on the first read. */
static mt_reason reason_from_alert(int lib_reason, mt_reason fallback) {
  switch (lib_reason) {
    case SSL_R_TLSV1_ALERT_ACCESS_DENIED: return MT_REASON_PEER_DENIED;
    case SSL_R_SSLV3_ALERT_BAD_CERTIFICATE:
    case SSL_R_SSLV3_ALERT_CERTIFICATE_UNKNOWN:
    case SSL_R_SSLV3_ALERT_CERTIFICATE_EXPIRED:
    case SSL_R_SSLV3_ALERT_UNSUPPORTED_CERTIFICATE:
    case SSL_R_TLSV1_ALERT_UNKNOWN_CA:
    case SSL_R_TLSV1_CERTIFICATE_REQUIRED: return MT_REASON_PEER_REJECTED_CERT;
    default: return fallback;
  }
}

mt_reason mt_tls_io_failure(SSL *ssl, mt_reason fallback, char *detail, size_t detail_len) {
  (void)ssl;
  unsigned long e = ERR_peek_error();
  mt_reason r = fallback;
  if (e != 0 && ERR_GET_LIB(e) == ERR_LIB_SSL) r = reason_from_alert(ERR_GET_REASON(e), fallback);
  if (e != 0) snprintf(detail, detail_len, "%s", ERR_reason_error_string(e));
  ERR_clear_error();
  return r;
}

mt_reason mt_tls_failure_reason(SSL *ssl, mt_tls_peer *peer) {
  (void)ssl;
  if (peer->failure != MT_REASON_OK) {
    ERR_clear_error();
    return peer->failure;
  }
  unsigned long e = ERR_peek_error();
  mt_reason r = MT_REASON_HANDSHAKE_FAILED;
  if (ERR_GET_LIB(e) == ERR_LIB_SSL) {
    int lib_reason = ERR_GET_REASON(e);
    if (lib_reason == SSL_R_PEER_DID_NOT_RETURN_A_CERTIFICATE) r = MT_REASON_NO_CLIENT_CERT;
    /* BoringSSL checks keyUsage against the handshake before our verifier runs. */
    else if (lib_reason == SSL_R_KEY_USAGE_BIT_INCORRECT)
      r = MT_REASON_BAD_KEY_USAGE;
    else
      r = reason_from_alert(lib_reason, MT_REASON_HANDSHAKE_FAILED);
  }
  if (e != 0 && peer->detail[0] == '\0')
    snprintf(peer->detail, sizeof(peer->detail), "%s", ERR_reason_error_string(e));
  ERR_clear_error();
  peer->failure = r;
  return r;
}
