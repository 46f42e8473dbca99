/* signer: issues X509-SVID leaves from CSRs. See signer.h. */
#include "controlplane/signer.h"

#include "agent/errmsg.h"
#include "agent/key_strength.h"
#include "agent/x509_util.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/bytestring.h>
#include <openssl/digest.h>
#include <openssl/ec_key.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/mem.h>
#include <openssl/nid.h>
#include <openssl/obj.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/sha.h>
#include <openssl/x509v3.h>

#include "agent/svid.h"

enum {
  MT_SIGNER_SERIAL_BYTES = 16, /* 128 random bits (RFC 5280 allows up to 20 octets) */
  MT_SIGNER_MAX_RSA_BITS = 8192, /* bounds the cost of checking a CSR */
  MT_SIGNER_SECONDS_PER_DAY = 86400,
};

/* RFC 5280 keyUsage bit numbers. */
enum { MT_KU_BIT_DIGITAL_SIGNATURE = 0, MT_KU_BIT_KEY_ENCIPHERMENT = 2 };

struct mt_signer {
  X509 *issuer;
  EVP_PKEY *key;
  STACK_OF(X509) * chain;
  ASN1_OCTET_STRING *issuer_key_id; /* becomes every leaf's authorityKeyIdentifier */
  char *chain_pem;                  /* issuer + chain without self-signed roots */
};

void mt_signer_free(mt_signer *signer) {
  if (signer == NULL) {
    return;
  }
  X509_free(signer->issuer);
  EVP_PKEY_free(signer->key);
  sk_X509_pop_free(signer->chain, X509_free);
  ASN1_OCTET_STRING_free(signer->issuer_key_id);
  free(signer->chain_pem);
  free(signer);
}

/* ---- Shared helpers ------------------------------------------------------ */

/* RFC 5280 4.2.1.2 method 1: SHA-1 of the subjectPublicKey BIT STRING value. */
static ASN1_OCTET_STRING *mt_signer_key_id(const X509 *cert) {
  const ASN1_BIT_STRING *spk = X509_get0_pubkey_bitstr(cert);
  uint8_t digest[SHA_DIGEST_LENGTH];
  ASN1_OCTET_STRING *id = ASN1_OCTET_STRING_new();
  if (spk == NULL || id == NULL) {
    ASN1_OCTET_STRING_free(id);
    return NULL;
  }
  SHA1(ASN1_STRING_get0_data(spk), (size_t)ASN1_STRING_length(spk), digest);
  if (!ASN1_OCTET_STRING_set(id, digest, sizeof(digest))) {
    ASN1_OCTET_STRING_free(id);
    return NULL;
  }
  return id;
}

/* A signature by itself on its own name: a root, which peers must already
 * trust and which is therefore never sent. */
static int mt_signer_is_self_signed(X509 *cert) {
  if (X509_NAME_cmp(X509_get_subject_name(cert), X509_get_issuer_name(cert)) != 0) {
    return 0;
  }
  EVP_PKEY *pub = X509_get_pubkey(cert);
  int self = pub != NULL && X509_verify(cert, pub) == 1;
  EVP_PKEY_free(pub);
  ERR_clear_error();
  return self;
}

/* ---- Construction -------------------------------------------------------- */

/* The issuer must be allowed to sign certificates, or every leaf it makes
 * would fail path validation at the peers. */
static int mt_signer_check_issuer(X509 *issuer, EVP_PKEY *key, char *err, size_t err_len) {
  int type = EVP_PKEY_id(key);
  if (type != EVP_PKEY_EC && type != EVP_PKEY_RSA) {
    mt_errmsg_set(err, err_len, "issuer key is neither EC nor RSA");
    return 0;
  }
  if (!X509_check_private_key(issuer, key)) {
    ERR_clear_error();
    mt_errmsg_set(err, err_len, "issuer key does not match the issuer certificate");
    return 0;
  }
  char why[200];
  if (mt_cert_strength(issuer, mt_signer_is_self_signed(issuer), why, sizeof(why)) !=
      MT_STRENGTH_OK) {
    mt_errmsg_set(err, err_len, "issuer certificate: %s (agents would refuse what it signs)", why);
    return 0;
  }
  uint32_t flags = X509_get_extension_flags(issuer);
  if ((flags & EXFLAG_INVALID) || !(flags & EXFLAG_BCONS) || !(flags & EXFLAG_CA)) {
    mt_errmsg_set(err, err_len, "issuer certificate is not a CA (basicConstraints cA)");
    return 0;
  }
  if ((flags & EXFLAG_KUSAGE) && !(X509_get_key_usage(issuer) & KU_KEY_CERT_SIGN)) {
    mt_errmsg_set(err, err_len, "issuer certificate's keyUsage lacks keyCertSign");
    return 0;
  }
  return 1;
}

/* Each certificate must be signed by the next one: a misordered or foreign
 * chain file is caught at start-up, not by every peer afterwards. */
static int mt_signer_check_chain(X509 *issuer, STACK_OF(X509) * chain, char *err, size_t err_len) {
  X509 *child = issuer;
  for (size_t i = 0; i < sk_X509_num(chain); i++) {
    X509 *parent = sk_X509_value(chain, i);
    EVP_PKEY *pub = X509_get_pubkey(parent);
    int ok = pub != NULL && X509_verify(child, pub) == 1;
    EVP_PKEY_free(pub);
    ERR_clear_error();
    if (!ok) {
      mt_errmsg_set(err, err_len, "chain certificate %zu did not sign the one before it", i + 1);
      return 0;
    }
    char why[200];
    if (mt_cert_strength(parent, mt_signer_is_self_signed(parent), why, sizeof(why)) !=
        MT_STRENGTH_OK) {
      mt_errmsg_set(err, err_len, "chain certificate %zu: %s (agents would refuse the chain)",
                    i + 1, why);
      return 0;
    }
    child = parent;
  }
  return 1;
}

/* The part of every response after the leaf, written once. */
static char *mt_signer_chain_pem(X509 *issuer, STACK_OF(X509) * chain) {
  BIO *bio = BIO_new(BIO_s_mem());
  int ok = bio != NULL;
  for (size_t i = 0; ok && i <= sk_X509_num(chain); i++) {
    X509 *cert = i == 0 ? issuer : sk_X509_value(chain, i - 1);
    if (!mt_signer_is_self_signed(cert)) {
      ok = PEM_write_bio_X509(bio, cert);
    }
  }
  char *pem = ok ? mt_x509_bio_to_string(bio) : NULL;
  BIO_free(bio);
  return pem;
}

static int mt_signer_init(mt_signer *s, char *err, size_t err_len) {
  if (!mt_signer_check_issuer(s->issuer, s->key, err, err_len) ||
      !mt_signer_check_chain(s->issuer, s->chain, err, err_len)) {
    return 0;
  }
  const ASN1_OCTET_STRING *ski = X509_get0_subject_key_id(s->issuer);
  s->issuer_key_id = ski != NULL ? ASN1_OCTET_STRING_dup(ski) : mt_signer_key_id(s->issuer);
  s->chain_pem = mt_signer_chain_pem(s->issuer, s->chain);
  if (s->issuer_key_id == NULL || s->chain_pem == NULL) {
    mt_errmsg_set(err, err_len, "out of memory");
    return 0;
  }
  return 1;
}

mt_signer *mt_signer_new(X509 *issuer_cert, EVP_PKEY *issuer_key, STACK_OF(X509) * chain_to_root,
                         char *err, size_t err_len) {
  mt_signer *s = calloc(1, sizeof(*s));
  if (s == NULL) {
    X509_free(issuer_cert);
    EVP_PKEY_free(issuer_key);
    sk_X509_pop_free(chain_to_root, X509_free);
    mt_errmsg_set(err, err_len, "out of memory");
    return NULL;
  }
  s->issuer = issuer_cert;
  s->key = issuer_key;
  s->chain = chain_to_root != NULL ? chain_to_root : sk_X509_new_null();
  if (s->issuer == NULL || s->key == NULL || s->chain == NULL) {
    mt_errmsg_set(err, err_len, "no issuer certificate or key (or out of memory)");
    mt_signer_free(s);
    return NULL;
  }
  if (!mt_signer_init(s, err, err_len)) {
    mt_signer_free(s);
    return NULL;
  }
  return s;
}

/* ---- Loading from files -------------------------------------------------- */

/* Every certificate of a PEM file, in order; NULL (with |err|) when the
 * file cannot be read, a block is broken, or there is none. */
static STACK_OF(X509) * mt_signer_read_certs(const char *path, char *err, size_t err_len) {
  BIO *bio = BIO_new_file(path, "r");
  STACK_OF(X509) *certs = sk_X509_new_null();
  X509 *cert;
  if (bio == NULL || certs == NULL) {
    mt_errmsg_set(err, err_len, "%s: cannot open", path);
    goto fail;
  }
  while ((cert = PEM_read_bio_X509(bio, NULL, NULL, NULL)) != NULL) {
    if (!sk_X509_push(certs, cert)) {
      X509_free(cert);
      mt_errmsg_set(err, err_len, "%s: out of memory", path);
      goto fail;
    }
  }
  uint32_t e = ERR_peek_last_error();
  if (ERR_GET_LIB(e) != ERR_LIB_PEM || ERR_GET_REASON(e) != PEM_R_NO_START_LINE ||
      sk_X509_num(certs) == 0) {
    mt_errmsg_set(err, err_len, "%s: no PEM certificate, or a broken one: %s", path,
                  mt_errmsg_ssl_reason());
    goto fail;
  }
  ERR_clear_error();
  BIO_free(bio);
  return certs;
fail:
  ERR_clear_error();
  BIO_free(bio);
  sk_X509_pop_free(certs, X509_free);
  return NULL;
}

static EVP_PKEY *mt_signer_read_key(const char *path, char *err, size_t err_len) {
  BIO *bio = BIO_new_file(path, "r");
  EVP_PKEY *key = bio != NULL ? PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL) : NULL;
  if (key == NULL) {
    mt_errmsg_set(err, err_len, "%s: cannot read an unencrypted PEM private key: %s", path,
                  mt_errmsg_ssl_reason());
  }
  ERR_clear_error();
  BIO_free(bio);
  return key;
}

mt_signer *mt_signer_load_pem_files(const char *cert_chain_file, const char *key_file, char *err,
                                    size_t err_len) {
  if (cert_chain_file == NULL || key_file == NULL) {
    mt_errmsg_set(err, err_len, "no certificate or key file given");
    return NULL;
  }
  STACK_OF(X509) *certs = mt_signer_read_certs(cert_chain_file, err, err_len);
  if (certs == NULL) {
    return NULL;
  }
  EVP_PKEY *key = mt_signer_read_key(key_file, err, err_len);
  if (key == NULL) {
    sk_X509_pop_free(certs, X509_free);
    return NULL;
  }
  X509 *issuer = sk_X509_shift(certs); /* what is left is the chain above it */
  char why[256];
  mt_signer *s = mt_signer_new(issuer, key, certs, why, sizeof(why));
  if (s == NULL) {
    mt_errmsg_set(err, err_len, "%s: %s", cert_chain_file, why);
  }
  return s;
}

/* ---- The request --------------------------------------------------------- */

/* One PEM CSR whose DER is exactly one SEQUENCE: the DER is framed with CBS
 * before the ASN.1 decoder sees it, so trailing bytes cannot hide in it. */
static X509_REQ *mt_signer_parse_csr(const char *pem, size_t len, char *err, size_t err_len) {
  BIO *bio = BIO_new_mem_buf(pem, (int)len);
  uint8_t *der = NULL;
  long der_len = 0;
  X509_REQ *req = NULL;
  if (bio == NULL ||
      !PEM_bytes_read_bio(&der, &der_len, NULL, PEM_STRING_X509_REQ, bio, NULL, NULL)) {
    mt_errmsg_set(err, err_len, "CSR is not a PEM \"CERTIFICATE REQUEST\"");
    goto done;
  }
  CBS cbs, seq;
  CBS_init(&cbs, der, (size_t)der_len);
  if (!CBS_get_asn1_element(&cbs, &seq, CBS_ASN1_SEQUENCE) || CBS_len(&cbs) != 0) {
    mt_errmsg_set(err, err_len, "CSR is not one DER SEQUENCE");
    goto done;
  }
  const uint8_t *p = CBS_data(&seq);
  req = d2i_X509_REQ(NULL, &p, (long)CBS_len(&seq));
  if (req == NULL || p != CBS_data(&seq) + CBS_len(&seq)) {
    mt_errmsg_set(err, err_len, "CSR cannot be decoded: %s", mt_errmsg_ssl_reason());
    X509_REQ_free(req);
    req = NULL;
  }
done:
  ERR_clear_error();
  OPENSSL_free(der);
  BIO_free(bio);
  return req;
}

/* The agents' rule (key_strength.h) plus an upper bound on RSA, so that no
 * huge key is ever used for a verification here. */
static int mt_signer_check_csr_strength(X509_REQ *req, EVP_PKEY *pub, char *err, size_t err_len) {
  char why[200];
  if (mt_csr_strength(req, why, sizeof(why)) != MT_STRENGTH_OK) {
    mt_errmsg_set(err, err_len, "CSR refused: %s", why);
    return 0;
  }
  if (EVP_PKEY_id(pub) == EVP_PKEY_RSA && EVP_PKEY_bits(pub) > MT_SIGNER_MAX_RSA_BITS) {
    mt_errmsg_set(err, err_len, "CSR refused: RSA key of %d bits, more than %d",
                  EVP_PKEY_bits(pub), MT_SIGNER_MAX_RSA_BITS);
    return 0;
  }
  return 1;
}

/* The CSR's public key, once its type is acceptable and the CSR's signature
 * verifies with it: the caller holds the private key (proof of possession).
 * The type is checked first so no huge key is ever used for a verification. */
static EVP_PKEY *mt_signer_csr_key(X509_REQ *req, char *err, size_t err_len) {
  EVP_PKEY *pub = X509_REQ_get_pubkey(req);
  if (pub == NULL) {
    mt_errmsg_set(err, err_len, "CSR public key cannot be decoded");
  } else if (mt_signer_check_csr_strength(req, pub, err, err_len)) {
    if (X509_REQ_verify(req, pub) == 1) {
      ERR_clear_error();
      return pub;
    }
    mt_errmsg_set(err, err_len, "CSR signature does not verify with its own key");
  }
  ERR_clear_error();
  EVP_PKEY_free(pub);
  return NULL;
}

static int mt_signer_check_id(const char *spiffe_id, char *err, size_t err_len) {
  mt_spiffe_id_view view;
  mt_spiffe_err id_err =
      spiffe_id != NULL ? mt_spiffe_id_parse(spiffe_id, strlen(spiffe_id), &view) : MT_SPIFFE_EMPTY;
  if (id_err != MT_SPIFFE_OK) {
    mt_errmsg_set(err, err_len, "identity to sign: %s", mt_spiffe_err_str(id_err));
    return 0;
  }
  if (view.path_len == 0) {
    mt_errmsg_set(err, err_len, "identity to sign is a bare trust domain ID");
    return 0;
  }
  return 1;
}

/* ---- The leaf ------------------------------------------------------------ */

static int mt_signer_set_serial(X509 *leaf) {
  uint8_t bytes[MT_SIGNER_SERIAL_BYTES];
  RAND_bytes(bytes, sizeof(bytes)); /* BoringSSL aborts rather than return failure */
  BIGNUM *bn = BN_bin2bn(bytes, sizeof(bytes), NULL); /* unsigned: never negative */
  if (bn != NULL && BN_is_zero(bn) && !BN_one(bn)) {  /* RFC 5280 forbids 0 (p = 2^-128) */
    BN_free(bn);
    bn = NULL;
  }
  ASN1_INTEGER *serial = bn != NULL ? BN_to_ASN1_INTEGER(bn, NULL) : NULL;
  int ok = serial != NULL && X509_set_serialNumber(leaf, serial);
  ASN1_INTEGER_free(serial);
  BN_free(bn);
  return ok;
}

/* Seconds from |now| until the issuer expires (<= 0: already expired), so a
 * leaf never outlives the certificate that vouches for it. */
static int mt_signer_issuer_remaining(const mt_signer *s, time_t now, int64_t *out) {
  ASN1_TIME *at_now = ASN1_TIME_set(NULL, now);
  int days = 0, secs = 0;
  int ok = at_now != NULL && ASN1_TIME_diff(&days, &secs, at_now, X509_get0_notAfter(s->issuer));
  ASN1_TIME_free(at_now);
  *out = (int64_t)days * MT_SIGNER_SECONDS_PER_DAY + secs;
  return ok;
}

static int mt_signer_set_validity(X509 *leaf, time_t now, int64_t ttl_s) {
  return ASN1_TIME_set(X509_getm_notBefore(leaf), now - MT_SIGNER_CLOCK_SKEW_S) != NULL &&
         ASN1_TIME_set(X509_getm_notAfter(leaf), now + (time_t)ttl_s) != NULL;
}

static int mt_signer_add_ext(X509 *leaf, int nid, void *value, int critical) {
  return value != NULL && X509_add1_ext_i2d(leaf, nid, value, critical, X509V3_ADD_DEFAULT) == 1;
}

/* The subject is empty, so RFC 5280 4.2.1.6 wants the SAN critical. */
static int mt_signer_add_san(X509 *leaf, const char *spiffe_id) {
  GENERAL_NAMES *names = mt_x509_uri_names(spiffe_id);
  int ok = mt_signer_add_ext(leaf, NID_subject_alt_name, names, 1);
  GENERAL_NAMES_free(names);
  return ok;
}

static int mt_signer_add_constraints(X509 *leaf, int is_rsa) {
  BASIC_CONSTRAINTS *bc = BASIC_CONSTRAINTS_new(); /* cA defaults to FALSE */
  ASN1_BIT_STRING *ku = ASN1_BIT_STRING_new();
  EXTENDED_KEY_USAGE *eku = sk_ASN1_OBJECT_new_null();
  int ok = bc != NULL && ku != NULL && eku != NULL &&
           ASN1_BIT_STRING_set_bit(ku, MT_KU_BIT_DIGITAL_SIGNATURE, 1) &&
           (!is_rsa || ASN1_BIT_STRING_set_bit(ku, MT_KU_BIT_KEY_ENCIPHERMENT, 1)) &&
           sk_ASN1_OBJECT_push(eku, OBJ_nid2obj(NID_server_auth)) &&
           sk_ASN1_OBJECT_push(eku, OBJ_nid2obj(NID_client_auth)) &&
           mt_signer_add_ext(leaf, NID_basic_constraints, bc, 1) &&
           mt_signer_add_ext(leaf, NID_key_usage, ku, 1) &&
           mt_signer_add_ext(leaf, NID_ext_key_usage, eku, 0);
  BASIC_CONSTRAINTS_free(bc);
  ASN1_BIT_STRING_free(ku);
  sk_ASN1_OBJECT_pop_free(eku, ASN1_OBJECT_free); /* built-in objects: frees nothing */
  return ok;
}

/* Key identifiers let verifiers pick the right issuer when a CA key rolls. */
static int mt_signer_add_key_ids(const mt_signer *s, X509 *leaf) {
  ASN1_OCTET_STRING *ski = mt_signer_key_id(leaf);
  AUTHORITY_KEYID *akid = AUTHORITY_KEYID_new();
  int ok = ski != NULL && akid != NULL &&
           (akid->keyid = ASN1_OCTET_STRING_dup(s->issuer_key_id)) != NULL &&
           mt_signer_add_ext(leaf, NID_subject_key_identifier, ski, 0) &&
           mt_signer_add_ext(leaf, NID_authority_key_identifier, akid, 0);
  ASN1_OCTET_STRING_free(ski);
  AUTHORITY_KEYID_free(akid);
  return ok;
}

static X509 *mt_signer_build_leaf(const mt_signer *s, EVP_PKEY *pub, const char *spiffe_id,
                                  time_t now, int64_t ttl_s) {
  X509 *leaf = X509_new();
  int ok = leaf != NULL && X509_set_version(leaf, X509_VERSION_3) && mt_signer_set_serial(leaf) &&
           X509_set_issuer_name(leaf, X509_get_subject_name(s->issuer)) &&
           mt_signer_set_validity(leaf, now, ttl_s) && X509_set_pubkey(leaf, pub) &&
           mt_signer_add_constraints(leaf, EVP_PKEY_id(pub) == EVP_PKEY_RSA) &&
           mt_signer_add_key_ids(s, leaf) && mt_signer_add_san(leaf, spiffe_id) &&
           X509_sign(leaf, s->key, EVP_sha256()) > 0;
  if (!ok) {
    X509_free(leaf);
    return NULL;
  }
  return leaf;
}

/* requested (or max when none) capped at max, then at the issuer's life. */
static int mt_signer_ttl(const mt_signer *s, int64_t requested_ttl_s, int64_t max_ttl_s, time_t now,
                         int64_t *ttl_s, char *err, size_t err_len) {
  int64_t remaining;
  if (max_ttl_s <= 0) {
    mt_errmsg_set(err, err_len, "maximum TTL must be positive");
    return 0;
  }
  if (!mt_signer_issuer_remaining(s, now, &remaining) || remaining <= 0) {
    mt_errmsg_set(err, err_len, "issuer certificate has expired");
    return 0;
  }
  int64_t ttl = requested_ttl_s > 0 && requested_ttl_s < max_ttl_s ? requested_ttl_s : max_ttl_s;
  *ttl_s = ttl < remaining ? ttl : remaining;
  return 1;
}

/* Leaf PEM followed by the precomputed chain. */
static char *mt_signer_response_pem(const mt_signer *s, X509 *leaf) {
  BIO *bio = BIO_new(BIO_s_mem());
  size_t chain_len = strlen(s->chain_pem);
  int ok = bio != NULL && PEM_write_bio_X509(bio, leaf) &&
           (chain_len == 0 || BIO_write(bio, s->chain_pem, (int)chain_len) == (int)chain_len);
  char *pem = ok ? mt_x509_bio_to_string(bio) : NULL;
  BIO_free(bio);
  return pem;
}

static int mt_signer_check_request(const mt_signer *s, const char *csr_pem, size_t len,
                                   char **out_chain_pem, char *err, size_t err_len) {
  if (s == NULL || csr_pem == NULL || out_chain_pem == NULL) {
    mt_errmsg_set(err, err_len, "no signer, CSR or output given");
    return 0;
  }
  if (len == 0 || len > MT_SIGNER_MAX_CSR_LEN) {
    mt_errmsg_set(err, err_len, "CSR is %zu bytes; 1 to %d are accepted", len,
                  MT_SIGNER_MAX_CSR_LEN);
    return 0;
  }
  return 1;
}

int mt_signer_sign_csr(const mt_signer *s, const char *csr_pem, size_t len, const char *spiffe_id,
                       int64_t requested_ttl_s, int64_t max_ttl_s, time_t now, char **out_chain_pem,
                       char *err, size_t err_len) {
  if (out_chain_pem != NULL) {
    *out_chain_pem = NULL;
  }
  int64_t ttl_s;
  if (!mt_signer_check_request(s, csr_pem, len, out_chain_pem, err, err_len) ||
      !mt_signer_check_id(spiffe_id, err, err_len) ||
      !mt_signer_ttl(s, requested_ttl_s, max_ttl_s, now, &ttl_s, err, err_len)) {
    return 0;
  }
  X509_REQ *req = mt_signer_parse_csr(csr_pem, len, err, err_len);
  EVP_PKEY *pub = req != NULL ? mt_signer_csr_key(req, err, err_len) : NULL;
  X509 *leaf = pub != NULL ? mt_signer_build_leaf(s, pub, spiffe_id, now, ttl_s) : NULL;
  if (pub != NULL && leaf == NULL) {
    mt_errmsg_set(err, err_len, "cannot build the certificate: %s", mt_errmsg_ssl_reason());
  }
  if (leaf != NULL && (*out_chain_pem = mt_signer_response_pem(s, leaf)) == NULL) {
    mt_errmsg_set(err, err_len, "out of memory");
  }
  ERR_clear_error();
  X509_free(leaf);
  EVP_PKEY_free(pub);
  X509_REQ_free(req);
  return *out_chain_pem != NULL;
}
