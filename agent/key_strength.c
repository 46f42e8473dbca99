/* key_strength.c: the key and signature rules of key_strength.h. */
#include "agent/key_strength.h"

#include <openssl/ec.h>
#include <openssl/ec_key.h>
#include <openssl/evp.h>
#include <openssl/nid.h>
#include <openssl/obj.h>
#include <openssl/x509.h>
#include <stdio.h>

static const char *curve_name(int nid) {
  const char *name = nid != NID_undef ? OBJ_nid2sn(nid) : NULL;
  return name ? name : "an unnamed curve";
}

mt_strength mt_key_strength(const EVP_PKEY *key, char *why, size_t why_len) {
  if (key == NULL) {
    snprintf(why, why_len, "no public key");
    return MT_STRENGTH_WEAK_KEY;
  }
  switch (EVP_PKEY_id(key)) {
    case EVP_PKEY_RSA: {
      int bits = EVP_PKEY_bits(key);
      if (bits >= MT_MIN_RSA_BITS) return MT_STRENGTH_OK;
      snprintf(why, why_len, "RSA key of %d bits, fewer than %d", bits, MT_MIN_RSA_BITS);
      return MT_STRENGTH_WEAK_KEY;
    }
    case EVP_PKEY_EC: {
      const EC_KEY *ec = EVP_PKEY_get0_EC_KEY(key);
      const EC_GROUP *group = ec ? EC_KEY_get0_group(ec) : NULL;
      int nid = group ? EC_GROUP_get_curve_name(group) : NID_undef;
      if (nid == NID_X9_62_prime256v1 || nid == NID_secp384r1) return MT_STRENGTH_OK;
      snprintf(why, why_len, "EC key on %s, not P-256 or P-384", curve_name(nid));
      return MT_STRENGTH_WEAK_KEY;
    }
    case EVP_PKEY_ED25519: return MT_STRENGTH_OK;
    default: {
      const char *name = OBJ_nid2sn(EVP_PKEY_id(key));
      snprintf(why, why_len, "%s key: only RSA, EC P-256/P-384 and Ed25519 are accepted",
               name ? name : "unknown");
      return MT_STRENGTH_WEAK_KEY;
    }
  }
}

mt_strength mt_signature_strength(int sig_nid, char *why, size_t why_len) {
  /* Neither names a digest of its own in the OID table: PSS carries it in
   * parameters BoringSSL restricts to SHA-2, Ed25519 has none. */
  if (sig_nid == NID_rsassaPss || sig_nid == NID_ED25519) return MT_STRENGTH_OK;
  int digest_nid = NID_undef, pkey_nid = NID_undef;
  if (OBJ_find_sigid_algs(sig_nid, &digest_nid, &pkey_nid) &&
      (digest_nid == NID_sha256 || digest_nid == NID_sha384 || digest_nid == NID_sha512))
    return MT_STRENGTH_OK;
  const char *name = sig_nid != NID_undef ? OBJ_nid2ln(sig_nid) : NULL;
  snprintf(why, why_len, "signed with %s: SHA-256 or stronger is required",
           name ? name : "an unknown algorithm");
  return MT_STRENGTH_WEAK_SIGNATURE;
}

mt_strength mt_cert_strength(X509 *cert, int is_anchor, char *why, size_t why_len) {
  EVP_PKEY *key = X509_get_pubkey(cert); /* a new reference, or NULL */
  mt_strength s = mt_key_strength(key, why, why_len);
  EVP_PKEY_free(key);
  if (s == MT_STRENGTH_OK && !is_anchor)
    s = mt_signature_strength(X509_get_signature_nid(cert), why, why_len);
  return s;
}

mt_strength mt_chain_strength(const STACK_OF(X509) * chain, char *why, size_t why_len) {
  size_t n = chain ? sk_X509_num(chain) : 0;
  for (size_t i = 0; i < n; i++) {
    int is_anchor = n > 1 && i == n - 1;
    char what[200];
    mt_strength s = mt_cert_strength(sk_X509_value(chain, i), is_anchor, what, sizeof(what));
    if (s == MT_STRENGTH_OK) continue;
    if (i == 0)
      snprintf(why, why_len, "leaf: %s", what);
    else if (is_anchor)
      snprintf(why, why_len, "root: %s", what);
    else
      snprintf(why, why_len, "intermediate %zu: %s", i, what);
    return s;
  }
  return MT_STRENGTH_OK;
}

mt_strength mt_csr_strength(X509_REQ *req, char *why, size_t why_len) {
  EVP_PKEY *key = X509_REQ_get_pubkey(req);
  mt_strength s = mt_key_strength(key, why, why_len);
  EVP_PKEY_free(key);
  if (s == MT_STRENGTH_OK) s = mt_signature_strength(X509_REQ_get_signature_nid(req), why, why_len);
  return s;
}
