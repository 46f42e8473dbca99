/* csr: workload key generation and CSR construction. See csr.h. */
#include "agent/csr.h"

#include "agent/errmsg.h"
#include "agent/x509_util.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/bio.h>
#include <openssl/ec_key.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/nid.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "agent/svid.h"

enum { MT_CSR_MIN_RSA_BITS = 2048 };

static const char kMtCsrOrganization[] = "mtlsd";

EVP_PKEY *mt_csr_generate_key(void) {
  EC_KEY *ec = EC_KEY_new_by_curve_name(NID_X9_62_prime256v1);
  EVP_PKEY *pkey = EVP_PKEY_new();
  if (ec == NULL || pkey == NULL || !EC_KEY_generate_key(ec) || !EVP_PKEY_assign_EC_KEY(pkey, ec)) {
    EC_KEY_free(ec);
    EVP_PKEY_free(pkey);
    return NULL;
  }
  return pkey; /* |pkey| owns |ec| now */
}

/* The CA refuses anything weaker, so refusing it here gives the clearer error
 * (and never sends a doomed request). */
static int mt_csr_key_acceptable(const EVP_PKEY *key, char *err, size_t err_len) {
  if (EVP_PKEY_id(key) == EVP_PKEY_EC) {
    const EC_GROUP *group = EC_KEY_get0_group(EVP_PKEY_get0_EC_KEY(key));
    if (group != NULL && EC_GROUP_get_curve_name(group) == NID_X9_62_prime256v1) {
      return 1;
    }
    mt_errmsg_set(err, err_len, "EC key is not on curve P-256");
    return 0;
  }
  if (EVP_PKEY_id(key) == EVP_PKEY_RSA) {
    if (EVP_PKEY_bits(key) >= MT_CSR_MIN_RSA_BITS) {
      return 1;
    }
    mt_errmsg_set(err, err_len, "RSA key has %d bits, fewer than %d", EVP_PKEY_bits(key),
                  MT_CSR_MIN_RSA_BITS);
    return 0;
  }
  mt_errmsg_set(err, err_len, "key type is neither EC P-256 nor RSA");
  return 0;
}

static int mt_csr_check_id(const char *spiffe_id, char *err, size_t err_len) {
  if (spiffe_id == NULL) {
    mt_errmsg_set(err, err_len, "no SPIFFE ID given");
    return 0;
  }
  mt_spiffe_id_view view;
  mt_spiffe_err id_err = mt_spiffe_id_parse(spiffe_id, strlen(spiffe_id), &view);
  if (id_err != MT_SPIFFE_OK) {
    mt_errmsg_set(err, err_len, "SPIFFE ID \"%.*s\": %s", MT_SPIFFE_ID_MAX_LEN, spiffe_id,
                  mt_spiffe_err_str(id_err));
    return 0;
  }
  if (view.path_len == 0) {
    mt_errmsg_set(err, err_len, "SPIFFE ID \"%s\" has no path: a workload ID needs one", spiffe_id);
    return 0;
  }
  return 1;
}

/* The subjectAltName the CSR asks for, carried in an extensionRequest
 * attribute: exactly one URI name. */
static int mt_csr_add_san(X509_REQ *req, const char *spiffe_id) {
  GENERAL_NAMES *names = mt_x509_uri_names(spiffe_id);
  STACK_OF(X509_EXTENSION) *exts = NULL;
  int ok = names != NULL &&
           X509V3_add1_i2d(&exts, NID_subject_alt_name, names, 0, X509V3_ADD_DEFAULT) == 1 &&
           X509_REQ_add_extensions(req, exts);
  sk_X509_EXTENSION_pop_free(exts, X509_EXTENSION_free);
  GENERAL_NAMES_free(names);
  return ok;
}

/* An empty subject would be legal, but O=mtlsd tells an operator reading a
 * CA's log which software asked. The CA ignores it either way. */
static int mt_csr_set_subject(X509_REQ *req) {
  X509_NAME *subject = X509_REQ_get_subject_name(req);
  return X509_NAME_add_entry_by_NID(subject, NID_organizationName, MBSTRING_UTF8,
                                    (const uint8_t *)kMtCsrOrganization,
                                    (int)strlen(kMtCsrOrganization), -1, 0);
}

static X509_REQ *mt_csr_build(EVP_PKEY *key, const char *spiffe_id) {
  X509_REQ *req = X509_REQ_new();
  if (req == NULL || !X509_REQ_set_version(req, X509_REQ_VERSION_1) || !mt_csr_set_subject(req) ||
      !X509_REQ_set_pubkey(req, key) || !mt_csr_add_san(req, spiffe_id) ||
      !X509_REQ_sign(req, key, EVP_sha256())) {
    X509_REQ_free(req);
    return NULL;
  }
  return req;
}

char *mt_csr_create_pem(EVP_PKEY *key, const char *spiffe_id, char *err, size_t err_len) {
  if (key == NULL) {
    mt_errmsg_set(err, err_len, "no key given");
    return NULL;
  }
  if (!mt_csr_check_id(spiffe_id, err, err_len) || !mt_csr_key_acceptable(key, err, err_len)) {
    return NULL;
  }
  X509_REQ *req = mt_csr_build(key, spiffe_id);
  BIO *bio = BIO_new(BIO_s_mem());
  char *pem = NULL;
  if (req != NULL && bio != NULL && PEM_write_bio_X509_REQ(bio, req)) {
    pem = mt_x509_bio_to_string(bio);
  }
  if (pem == NULL) {
    mt_errmsg_set(err, err_len, "cannot build the CSR: %s", mt_errmsg_ssl_reason());
  }
  ERR_clear_error();
  BIO_free(bio);
  X509_REQ_free(req);
  return pem;
}
