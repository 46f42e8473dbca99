/* ca_files.c: certificate, key and token-key files for mtls-ca. */
#include "controlplane/ca_files.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "agent/svid.h"

enum {
  DESCRIBE_MAX = 512,
  SUBJECT_MAX = 256,
  REASON_MAX = 128,
  SECONDS_PER_DAY = 24 * 3600,
};

static const char kPemCertificate[] = "CERTIFICATE";
static const char kSpiffeScheme[] = "spiffe://";

struct mt_ca_issuer {
  mt_signer *signer;
  mt_pem_certs roots;
  time_t not_after;
  char description[DESCRIBE_MAX];
};

static int set_err(char *err, size_t err_len, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Formats |err| and returns 0. */
static int set_err(char *err, size_t err_len, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  if (err != NULL && err_len > 0) vsnprintf(err, err_len, fmt, ap);
  va_end(ap);
  return 0;
}

/* The last BoringSSL error as text (the queue is cleared). */
static const char *ssl_reason(char *buf, size_t len) {
  uint32_t e = ERR_peek_last_error();
  if (e == 0) {
    snprintf(buf, len, "unknown error");
  } else {
    ERR_error_string_n(e, buf, len);
  }
  ERR_clear_error();
  return buf;
}

int mt_ca_read_file(const char *path, size_t max_bytes, char **out, size_t *out_len, char *err,
                    size_t err_len) {
  *out = NULL;
  *out_len = 0;
  FILE *f = fopen(path, "rb");
  if (f == NULL) return set_err(err, err_len, "%s: cannot open: %s", path, strerror(errno));
  char *buf = malloc(max_bytes + 1);
  if (buf == NULL) {
    fclose(f);
    return set_err(err, err_len, "%s: out of memory", path);
  }
  /* One byte more than allowed tells "too large" from "exactly full". */
  size_t n = fread(buf, 1, max_bytes + 1, f);
  int failed = ferror(f);
  fclose(f);
  if (failed || n > max_bytes) {
    free(buf);
    return failed ? set_err(err, err_len, "%s: read error", path)
                  : set_err(err, err_len, "%s: larger than %zu bytes", path, max_bytes);
  }
  buf[n] = '\0';
  *out = buf;
  *out_len = n;
  return 1;
}

/* ---- PEM certificate lists --------------------------------------------- */

void mt_pem_certs_clear(mt_pem_certs *c) {
  if (c == NULL) return;
  sk_X509_pop_free(c->certs, X509_free);
  for (size_t i = 0; i < c->count; i++) free(c->pems[i]);
  free(c->pems);
  memset(c, 0, sizeof(*c));
}

/* |cert| as PEM text, malloc'd. */
static char *cert_to_pem(X509 *cert) {
  BIO *bio = BIO_new(BIO_s_mem());
  const uint8_t *data = NULL;
  size_t len = 0;
  char *out = NULL;
  if (bio != NULL && PEM_write_bio_X509(bio, cert) && BIO_mem_contents(bio, &data, &len) &&
      (out = malloc(len + 1)) != NULL) {
    memcpy(out, data, len);
    out[len] = '\0';
  }
  BIO_free(bio);
  return out;
}

static int append_cert(mt_pem_certs *c, X509 *cert) {
  char **pems = realloc(c->pems, (c->count + 1) * sizeof(*pems));
  if (pems == NULL) return 0;
  c->pems = pems;
  char *pem = cert_to_pem(cert);
  if (pem == NULL) return 0;
  if (!sk_X509_push(c->certs, cert)) {
    free(pem);
    return 0;
  }
  c->pems[c->count++] = pem;
  return 1;
}

/* One PEM block that must be a certificate, DER fully consumed. */
static X509 *parse_block(const char *name, const uint8_t *data, long len, size_t index,
                         const char *path, char *err, size_t err_len) {
  if (strcmp(name, kPemCertificate) != 0) {
    set_err(err, err_len, "%s: PEM block %zu is \"%.40s\", not a CERTIFICATE", path, index, name);
    return NULL;
  }
  const uint8_t *p = data;
  X509 *cert = d2i_X509(NULL, &p, len);
  if (cert == NULL || p != data + len) {
    X509_free(cert);
    ERR_clear_error();
    set_err(err, err_len, "%s: PEM block %zu is not a valid X.509 certificate", path, index);
    return NULL;
  }
  return cert;
}

/* Walks every PEM block of |pem|; stops at the end of the blocks. */
static int parse_pem_certs(const char *path, const char *pem, size_t len, mt_pem_certs *out,
                           char *err, size_t err_len) {
  BIO *bio = BIO_new_mem_buf(pem, (int)len);
  int ok = bio != NULL;
  if (!ok) set_err(err, err_len, "%s: out of memory", path);
  while (ok) {
    char *name = NULL, *header = NULL;
    uint8_t *data = NULL;
    long data_len = 0;
    if (!PEM_read_bio(bio, &name, &header, &data, &data_len)) {
      uint32_t e = ERR_peek_last_error();
      ERR_clear_error();
      /* "no start line" after at least one block is the end of the file. */
      if (ERR_GET_LIB(e) != ERR_LIB_PEM || ERR_GET_REASON(e) != PEM_R_NO_START_LINE)
        ok = set_err(err, err_len, "%s: PEM block %zu is malformed", path, out->count + 1);
      break;
    }
    X509 *cert = parse_block(name, data, data_len, out->count + 1, path, err, err_len);
    OPENSSL_free(name);
    OPENSSL_free(header);
    OPENSSL_free(data);
    if (cert == NULL) {
      ok = 0;
    } else if (!append_cert(out, cert)) {
      X509_free(cert);
      ok = set_err(err, err_len, "%s: out of memory", path);
    }
  }
  BIO_free(bio);
  if (ok && out->count == 0) ok = set_err(err, err_len, "%s: no PEM certificate found", path);
  return ok;
}

int mt_pem_certs_read(const char *path, mt_pem_certs *out, char *err, size_t err_len) {
  memset(out, 0, sizeof(*out));
  char *pem = NULL;
  size_t len = 0;
  if (!mt_ca_read_file(path, MT_CA_FILE_MAX_BYTES, &pem, &len, err, err_len)) return 0;
  out->certs = sk_X509_new_null();
  int ok = out->certs != NULL ? parse_pem_certs(path, pem, len, out, err, err_len)
                              : set_err(err, err_len, "%s: out of memory", path);
  free(pem);
  if (!ok) mt_pem_certs_clear(out);
  return ok;
}

int mt_pem_roots_read(const char *path, mt_pem_certs *out, char *err, size_t err_len) {
  if (!mt_pem_certs_read(path, out, err, err_len)) return 0;
  for (size_t i = 0; i < out->count; i++) {
    if (!X509_check_ca(sk_X509_value(out->certs, i))) {
      mt_pem_certs_clear(out);
      ERR_clear_error();
      return set_err(err, err_len, "%s: certificate %zu is not a CA (basicConstraints CA:TRUE)",
                     path, i + 1);
    }
  }
  return 1;
}

/* ---- the issuing CA ---------------------------------------------------- */

/* The issuing CA must validate, with the certificates above it, to one of
 * the roots, at the current time. */
static int check_chains_to_roots(const mt_pem_certs *chain, const mt_pem_certs *roots, char *err,
                                 size_t err_len) {
  X509_STORE *store = X509_STORE_new();
  X509_STORE_CTX *ctx = X509_STORE_CTX_new();
  STACK_OF(X509) *untrusted = sk_X509_new_null();
  int ok = store != NULL && ctx != NULL && untrusted != NULL;
  for (size_t i = 0; ok && i < roots->count; i++)
    ok = X509_STORE_add_cert(store, sk_X509_value(roots->certs, i));
  for (size_t i = 1; ok && i < chain->count; i++)
    ok = sk_X509_push(untrusted, sk_X509_value(chain->certs, i)) != 0;
  if (!ok) {
    set_err(err, err_len, "out of memory");
  } else if (!X509_STORE_CTX_init(ctx, store, sk_X509_value(chain->certs, 0), untrusted)) {
    ok = set_err(err, err_len, "out of memory");
  } else if (X509_verify_cert(ctx) != 1) {
    ok = set_err(err, err_len, "the issuing CA does not validate to a root of roots_file: %s",
                 X509_verify_cert_error_string(X509_STORE_CTX_get_error(ctx)));
  }
  ERR_clear_error();
  sk_X509_free(untrusted); /* the certificates stay owned by |chain| */
  X509_STORE_CTX_free(ctx);
  X509_STORE_free(store);
  return ok;
}

/* A CA certificate's URI SAN, when present, names its trust domain
 * (X509-SVID: "spiffe://<td>" without a path). */
static int check_issuer_trust_domain(X509 *issuer, const char *trust_domain, char *err,
                                     size_t err_len) {
  GENERAL_NAMES *names = X509_get_ext_d2i(issuer, NID_subject_alt_name, NULL, NULL);
  int ok = 1;
  for (size_t i = 0; ok && names != NULL && i < sk_GENERAL_NAME_num(names); i++) {
    const GENERAL_NAME *gn = sk_GENERAL_NAME_value(names, i);
    if (gn->type != GEN_URI) continue;
    const ASN1_STRING *uri = gn->d.uniformResourceIdentifier;
    size_t len = (size_t)ASN1_STRING_length(uri);
    const char *text = (const char *)ASN1_STRING_get0_data(uri);
    size_t scheme = sizeof(kSpiffeScheme) - 1;
    if (len != scheme + strlen(trust_domain) || memcmp(text, kSpiffeScheme, scheme) != 0 ||
        memcmp(text + scheme, trust_domain, len - scheme) != 0)
      ok = set_err(err, err_len, "the issuing CA's URI SAN \"%.*s\" is not spiffe://%s",
                   (int)(len > 200 ? 200 : len), text, trust_domain);
  }
  GENERAL_NAMES_free(names);
  ERR_clear_error();
  return ok;
}

/* notAfter as Unix seconds. */
static int not_after_posix(X509 *cert, time_t *out) {
  ASN1_TIME *epoch = ASN1_TIME_set(NULL, 0);
  int days = 0, secs = 0;
  int ok = epoch != NULL && ASN1_TIME_diff(&days, &secs, epoch, X509_get0_notAfter(cert));
  ASN1_TIME_free(epoch);
  if (ok) *out = (time_t)days * SECONDS_PER_DAY + secs;
  return ok;
}

static void describe(mt_ca_issuer *issuer, X509 *cert) {
  char subject[SUBJECT_MAX];
  X509_NAME_oneline(X509_get_subject_name(cert), subject, sizeof(subject));
  struct tm tm;
  char when[32] = "?";
  if (gmtime_r(&issuer->not_after, &tm) != NULL)
    strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%SZ", &tm);
  snprintf(issuer->description, sizeof(issuer->description), "%s (expires %s, %zu root%s)", subject,
           when, issuer->roots.count, issuer->roots.count == 1 ? "" : "s");
}

/* Checks the pair before the signer is built, so messages name the file. */
static int check_issuer(mt_ca_issuer *issuer, const char *cert_file, const char *roots_file,
                        const char *trust_domain, char *err, size_t err_len) {
  char why[DESCRIBE_MAX];
  mt_pem_certs chain;
  if (!mt_pem_roots_read(roots_file, &issuer->roots, err, err_len)) return 0;
  if (!mt_pem_certs_read(cert_file, &chain, err, err_len)) return 0;
  X509 *top = sk_X509_value(chain.certs, 0);
  int ok = check_issuer_trust_domain(top, trust_domain, why, sizeof(why)) &&
           check_chains_to_roots(&chain, &issuer->roots, why, sizeof(why));
  if (!ok) set_err(err, err_len, "%s: %s", cert_file, why);
  if (ok && !not_after_posix(top, &issuer->not_after))
    ok = set_err(err, err_len, "%s: cannot read notAfter", cert_file);
  if (ok) describe(issuer, top);
  mt_pem_certs_clear(&chain);
  return ok;
}

mt_ca_issuer *mt_ca_issuer_load(const char *cert_file, const char *key_file, const char *roots_file,
                                const char *trust_domain, char *err, size_t err_len) {
  mt_ca_issuer *issuer = calloc(1, sizeof(*issuer));
  if (issuer == NULL) {
    set_err(err, err_len, "out of memory");
    return NULL;
  }
  if (!check_issuer(issuer, cert_file, roots_file, trust_domain, err, err_len) ||
      (issuer->signer = mt_signer_load_pem_files(cert_file, key_file, err, err_len)) == NULL) {
    mt_ca_issuer_free(issuer);
    return NULL;
  }
  return issuer;
}

void mt_ca_issuer_free(mt_ca_issuer *issuer) {
  if (issuer == NULL) return;
  mt_signer_free(issuer->signer);
  mt_pem_certs_clear(&issuer->roots);
  free(issuer);
}

const mt_signer *mt_ca_issuer_signer(const mt_ca_issuer *issuer) { return issuer->signer; }
const mt_pem_certs *mt_ca_issuer_roots(const mt_ca_issuer *issuer) { return &issuer->roots; }
time_t mt_ca_issuer_not_after(const mt_ca_issuer *issuer) { return issuer->not_after; }
const char *mt_ca_issuer_describe(const mt_ca_issuer *issuer) { return issuer->description; }

/* ---- token keys -------------------------------------------------------- */

mt_jwt_keys *mt_ca_token_keys_load(const char *path, char *err, size_t err_len) {
  char *pem = NULL;
  size_t len = 0;
  char why[MT_JWT_ERROR_MAX_LEN];
  if (!mt_ca_read_file(path, MT_CA_FILE_MAX_BYTES, &pem, &len, err, err_len)) return NULL;
  mt_jwt_keys *keys = mt_jwt_keys_load_pem(pem, len, why, sizeof(why));
  free(pem);
  if (keys == NULL) set_err(err, err_len, "%s: %s", path, why);
  return keys;
}

/* ---- TLS --------------------------------------------------------------- */

SSL_CTX *mt_ca_tls_ctx_new(int min_version) {
  SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
  if (ctx == NULL) return NULL;
  /* TLS 1.2 is limited to ECDHE with AEAD; TLS 1.3 suites are all AEAD. */
  static const char kTls12Ciphers[] =
      "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
      "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
      "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305";
  if (!SSL_CTX_set_min_proto_version(ctx, (uint16_t)min_version) ||
      !SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION) ||
      !SSL_CTX_set_strict_cipher_list(ctx, kTls12Ciphers)) {
    SSL_CTX_free(ctx);
    ERR_clear_error();
    return NULL;
  }
  SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
  SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
  SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET);
  return ctx;
}

static EVP_PKEY *read_key(const char *path, char *err, size_t err_len) {
  char *pem = NULL;
  size_t len = 0;
  if (!mt_ca_read_file(path, MT_CA_FILE_MAX_BYTES, &pem, &len, err, err_len)) return NULL;
  BIO *bio = BIO_new_mem_buf(pem, (int)len);
  EVP_PKEY *key = bio != NULL ? PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL) : NULL;
  BIO_free(bio);
  OPENSSL_cleanse(pem, len); /* key material */
  free(pem);
  if (key == NULL) {
    char why[REASON_MAX];
    set_err(err, err_len, "%s: no usable PEM private key (%s)", path, ssl_reason(why, sizeof(why)));
  }
  return key;
}

static int install(SSL_CTX *ctx, const mt_pem_certs *chain, EVP_PKEY *key) {
  if (!SSL_CTX_use_certificate(ctx, sk_X509_value(chain->certs, 0)) ||
      !SSL_CTX_clear_chain_certs(ctx))
    return 0;
  for (size_t i = 1; i < chain->count; i++)
    if (!SSL_CTX_add1_chain_cert(ctx, sk_X509_value(chain->certs, i))) return 0;
  return SSL_CTX_use_PrivateKey(ctx, key);
}

int mt_ca_tls_use_files(SSL_CTX *ctx, const char *cert_file, const char *key_file, char *err,
                        size_t err_len) {
  mt_pem_certs chain;
  if (!mt_pem_certs_read(cert_file, &chain, err, err_len)) return 0;
  EVP_PKEY *key = read_key(key_file, err, err_len);
  int ok = key != NULL;
  if (ok && !X509_check_private_key(sk_X509_value(chain.certs, 0), key))
    ok = set_err(err, err_len, "%s: the key does not match the first certificate of %s", key_file,
                 cert_file);
  char why[REASON_MAX];
  if (ok && !install(ctx, &chain, key))
    ok = set_err(err, err_len, "%s: cannot use the certificate (%s)", cert_file,
                 ssl_reason(why, sizeof(why)));
  ERR_clear_error();
  EVP_PKEY_free(key);
  mt_pem_certs_clear(&chain);
  return ok;
}
