/* identity_files.c: PEM / DER / PKCS#12 loading for the file identity source. */
#include "agent/identity_files.h"

#include <errno.h>
#include <openssl/bio.h>
#include <openssl/bytestring.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/mem.h>
#include <openssl/pem.h>
#include <openssl/pkcs8.h>
#include <openssl/x509.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

enum { MAX_CREDENTIAL_FILE_BYTES = 1024 * 1024 };

typedef struct {
  uint8_t *data;
  size_t len;
} file_bytes;

/* Reads a whole (small) file. Returns 1 or 0 with "path: reason" in |err|. */
static int read_file(const char *path, file_bytes *out, char *err, size_t err_len) {
  out->data = NULL;
  out->len = 0;
  FILE *f = fopen(path, "rb");
  if (f == NULL) {
    snprintf(err, err_len, "%s: cannot open: %s", path, strerror(errno));
    return 0;
  }
  uint8_t *buf = malloc(MAX_CREDENTIAL_FILE_BYTES);
  size_t n = buf ? fread(buf, 1, MAX_CREDENTIAL_FILE_BYTES, f) : 0;
  int too_big = buf && n == MAX_CREDENTIAL_FILE_BYTES;
  int bad = buf == NULL || ferror(f) || too_big || n == 0;
  fclose(f);
  if (bad) {
    snprintf(err, err_len, "%s: %s", path,
             buf == NULL ? "out of memory"
             : too_big   ? "file is larger than 1 MiB"
             : n == 0    ? "file is empty"
                         : "read error");
    OPENSSL_cleanse(buf, MAX_CREDENTIAL_FILE_BYTES);
    free(buf);
    return 0;
  }
  out->data = buf;
  out->len = n;
  return 1;
}

static void file_bytes_wipe(file_bytes *fb) {
  if (fb->data) OPENSSL_cleanse(fb->data, fb->len);
  free(fb->data);
  fb->data = NULL;
}

static int is_pem(const file_bytes *fb) {
  static const char marker[] = "-----BEGIN ";
  return memmem(fb->data, fb->len, marker, sizeof(marker) - 1) != NULL;
}

static const char *ssl_error_text(void) {
  unsigned long e = ERR_get_error();
  ERR_clear_error();
  const char *s = e ? ERR_reason_error_string(e) : NULL;
  return s ? s : "malformed data";
}

/* Parses one or more certificates (PEM blocks, or concatenated DER). */
static STACK_OF(X509) *
    parse_certs(const char *path, const file_bytes *fb, char *err, size_t err_len) {
  STACK_OF(X509) *certs = sk_X509_new_null();
  if (certs == NULL) return NULL;
  if (is_pem(fb)) {
    BIO *bio = BIO_new_mem_buf(fb->data, (int)fb->len);
    X509 *x;
    while (bio && (x = PEM_read_bio_X509(bio, NULL, NULL, NULL)) != NULL) {
      if (!sk_X509_push(certs, x)) X509_free(x);
    }
    BIO_free(bio);
    ERR_clear_error(); /* the loop always ends on a "no start line" error */
  } else {
    CBS cbs;
    CBS_init(&cbs, fb->data, fb->len);
    while (CBS_len(&cbs) > 0) {
      const uint8_t *p = CBS_data(&cbs);
      X509 *x = d2i_X509(NULL, &p, (long)CBS_len(&cbs));
      if (x == NULL) {
        snprintf(err, err_len, "%s: not a PEM or DER certificate: %s", path, ssl_error_text());
        sk_X509_pop_free(certs, X509_free);
        return NULL;
      }
      CBS_skip(&cbs, (size_t)(p - CBS_data(&cbs)));
      if (!sk_X509_push(certs, x)) X509_free(x);
    }
  }
  if (sk_X509_num(certs) == 0) {
    snprintf(err, err_len, "%s: no certificate found", path);
    sk_X509_free(certs);
    return NULL;
  }
  return certs;
}

static EVP_PKEY *parse_key(const char *path, const file_bytes *fb, char *err, size_t err_len) {
  EVP_PKEY *key = NULL;
  if (is_pem(fb)) {
    BIO *bio = BIO_new_mem_buf(fb->data, (int)fb->len);
    key = bio ? PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL) : NULL;
    BIO_free(bio);
  } else {
    CBS cbs;
    CBS_init(&cbs, fb->data, fb->len);
    key = EVP_parse_private_key(&cbs); /* PKCS#8 */
    if (key == NULL) {
      const uint8_t *p = fb->data;
      ERR_clear_error();
      key = d2i_AutoPrivateKey(NULL, &p, (int)fb->len); /* SEC1 / PKCS#1 */
    }
  }
  if (key == NULL)
    snprintf(err, err_len, "%s: not a PEM or DER private key: %s", path, ssl_error_text());
  return key;
}

/* Splits a certificate list into the leaf (first) and its intermediates. */
static X509 *take_leaf(STACK_OF(X509) * certs) { return sk_X509_shift(certs); }

static int load_pair(const mt_config *c, EVP_PKEY **key, X509 **leaf, STACK_OF(X509) * *chain,
                     char *err, size_t err_len) {
  file_bytes cert_bytes, key_bytes;
  if (!read_file(c->cert_file, &cert_bytes, err, err_len)) return 0;
  *chain = parse_certs(c->cert_file, &cert_bytes, err, err_len);
  file_bytes_wipe(&cert_bytes);
  if (*chain == NULL) return 0;
  *leaf = take_leaf(*chain);
  if (!read_file(c->key_file, &key_bytes, err, err_len)) return 0;
  *key = parse_key(c->key_file, &key_bytes, err, err_len);
  file_bytes_wipe(&key_bytes);
  return *key != NULL;
}

static int read_password(const char *path, char *out, size_t out_len, char *err, size_t err_len) {
  out[0] = '\0';
  if (path == NULL) return 1;
  file_bytes fb;
  if (!read_file(path, &fb, err, err_len)) return 0;
  size_t n = fb.len;
  while (n > 0 && (fb.data[n - 1] == '\n' || fb.data[n - 1] == '\r')) n--;
  int ok = n < out_len;
  if (ok) {
    memcpy(out, fb.data, n);
    out[n] = '\0';
  } else {
    snprintf(err, err_len, "%s: password is too long", path);
  }
  file_bytes_wipe(&fb);
  return ok;
}

static int load_pkcs12(const mt_config *c, EVP_PKEY **key, X509 **leaf, STACK_OF(X509) * *chain,
                       char *err, size_t err_len) {
  char password[1024];
  file_bytes fb;
  if (!read_password(c->pkcs12_password_file, password, sizeof(password), err, err_len)) return 0;
  if (!read_file(c->pkcs12_file, &fb, err, err_len)) return 0;
  *chain = sk_X509_new_null();
  CBS cbs;
  CBS_init(&cbs, fb.data, fb.len);
  int ok = *chain != NULL && PKCS12_get_key_and_certs(key, *chain, &cbs, password);
  OPENSSL_cleanse(password, sizeof(password));
  file_bytes_wipe(&fb);
  if (!ok) {
    snprintf(err, err_len, "%s: cannot read PKCS#12 (wrong password or malformed): %s",
             c->pkcs12_file, ssl_error_text());
    return 0;
  }
  /* PKCS#12 bags are unordered: the leaf is the certificate matching the key. */
  for (size_t i = 0; i < sk_X509_num(*chain); i++) {
    X509 *x = sk_X509_value(*chain, i);
    if (X509_check_private_key(x, *key)) {
      *leaf = sk_X509_delete(*chain, i);
      return 1;
    }
  }
  ERR_clear_error();
  snprintf(err, err_len, "%s: no certificate matches the private key", c->pkcs12_file);
  return 0;
}

STACK_OF(X509) * mt_identity_files_load_certs(const char *path, char *err, size_t err_len) {
  file_bytes fb;
  if (!read_file(path, &fb, err, err_len)) return NULL;
  STACK_OF(X509) *certs = parse_certs(path, &fb, err, err_len);
  file_bytes_wipe(&fb);
  return certs;
}

static mt_trust *load_trust(const mt_config *c, char *err, size_t err_len) {
  mt_trust *trust = mt_trust_new();
  for (size_t i = 0; trust && i < c->num_trust_bundles; i++) {
    const mt_trust_bundle_config *b = &c->trust_bundles[i];
    STACK_OF(X509) *roots = mt_identity_files_load_certs(b->file, err, err_len);
    int ok = roots != NULL && mt_trust_add(trust, b->trust_domain, roots);
    if (roots != NULL && !ok) snprintf(err, err_len, "%s: cannot build the store", b->file);
    sk_X509_pop_free(roots, X509_free);
    if (!ok) {
      mt_trust_free(trust);
      return NULL;
    }
  }
  return trust;
}

mt_identity *mt_identity_files_load(const mt_config *c, char *err, size_t err_len) {
  EVP_PKEY *key = NULL;
  X509 *leaf = NULL;
  STACK_OF(X509) *chain = NULL;
  int ok = c->pkcs12_file ? load_pkcs12(c, &key, &leaf, &chain, err, err_len)
                          : load_pair(c, &key, &leaf, &chain, err, err_len);
  mt_trust *trust = ok ? load_trust(c, err, err_len) : NULL;
  if (!ok || trust == NULL) {
    EVP_PKEY_free(key);
    X509_free(leaf);
    sk_X509_pop_free(chain, X509_free);
    return NULL;
  }
  if (sk_X509_num(chain) == 0) {
    sk_X509_free(chain);
    chain = NULL;
  }
  return mt_identity_new(c, key, leaf, chain, trust, c->mesh, err, err_len);
}

static uint64_t mix(uint64_t h, uint64_t v) {
  h ^= v + 0x9e3779b97f4a7c15ULL + (h << 6) + (h >> 2);
  return h;
}

static uint64_t stamp_file(uint64_t h, const char *path) {
  struct stat st;
  if (path == NULL) return mix(h, 1);
  if (stat(path, &st) != 0) return mix(h, 2);
  h = mix(h, (uint64_t)st.st_ino);
  h = mix(h, (uint64_t)st.st_size);
  h = mix(h, (uint64_t)st.st_mtim.tv_sec);
  return mix(h, (uint64_t)st.st_mtim.tv_nsec);
}

uint64_t mt_file_stamp(const char *path) { return stamp_file(0, path); }

uint64_t mt_identity_files_stamp(const mt_config *c) {
  uint64_t h = 0;
  h = stamp_file(h, c->cert_file);
  h = stamp_file(h, c->key_file);
  h = stamp_file(h, c->pkcs12_file);
  h = stamp_file(h, c->pkcs12_password_file);
  for (size_t i = 0; i < c->num_trust_bundles; i++) h = stamp_file(h, c->trust_bundles[i].file);
  return h;
}
