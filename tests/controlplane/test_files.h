// Helpers for the mtls-ca unit tests: a scratch directory with files, and
// certificates made in memory with BoringSSL (no openssl CLI, no network).
#ifndef MT_TESTS_CONTROLPLANE_TEST_FILES_H
#define MT_TESTS_CONTROLPLANE_TEST_FILES_H

#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fstream>
#include <string>

#include <gtest/gtest.h>
#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/ec_key.h>
#include <openssl/evp.h>
#include <openssl/nid.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

namespace mt_test {

// A fresh directory under TEST_TMPDIR (or /tmp), removed at destruction.
class ScratchDir {
 public:
  ScratchDir() {
    const char *base = getenv("TEST_TMPDIR");
    std::string templ = std::string(base ? base : "/tmp") + "/mtca.XXXXXX";
    char buf[512];
    snprintf(buf, sizeof(buf), "%s", templ.c_str());
    path_ = mkdtemp(buf) ? buf : "";
  }
  ~ScratchDir() {
    if (!path_.empty()) nftw(path_.c_str(), RemoveOne, 16, FTW_DEPTH | FTW_PHYS);
  }
  const std::string &path() const { return path_; }
  // Writes |text| to |name| in the directory; returns the full path.
  std::string Write(const std::string &name, const std::string &text) const {
    std::string p = path_ + "/" + name;
    std::ofstream out(p, std::ios::binary | std::ios::trunc);
    out << text;
    return p;
  }

 private:
  static int RemoveOne(const char *path, const struct stat *, int, struct FTW *) {
    return remove(path);
  }
  std::string path_;
};

inline EVP_PKEY *NewP256Key() {
  EC_KEY *ec = EC_KEY_new_by_curve_name(NID_X9_62_prime256v1);
  EVP_PKEY *key = EVP_PKEY_new();
  EC_KEY_generate_key(ec);
  EVP_PKEY_assign_EC_KEY(key, ec);
  return key;
}

inline void AddExt(X509 *cert, int nid, const char *value) {
  X509V3_CTX ctx;
  X509V3_set_ctx(&ctx, cert, cert, nullptr, nullptr, 0);
  X509_EXTENSION *ext = X509V3_EXT_nconf_nid(nullptr, &ctx, nid, value);
  X509_add_ext(cert, ext, -1);
  X509_EXTENSION_free(ext);
}

// A self-signed certificate named |cn| as PEM: a CA (keyCertSign) when
// |is_ca|, otherwise a leaf.
inline std::string SelfSignedPem(const std::string &cn, bool is_ca) {
  EVP_PKEY *key = NewP256Key();
  X509 *cert = X509_new();
  X509_set_version(cert, X509_VERSION_3);
  ASN1_INTEGER_set(X509_get_serialNumber(cert), 1);
  X509_gmtime_adj(X509_getm_notBefore(cert), -60);
  X509_gmtime_adj(X509_getm_notAfter(cert), 3600);
  X509_NAME *name = X509_get_subject_name(cert);
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8,
                             reinterpret_cast<const unsigned char *>(cn.c_str()), -1, -1, 0);
  X509_set_issuer_name(cert, name);
  X509_set_pubkey(cert, key);
  AddExt(cert, NID_basic_constraints, is_ca ? "critical,CA:TRUE" : "critical,CA:FALSE");
  AddExt(cert, NID_key_usage, is_ca ? "critical,keyCertSign,cRLSign" : "critical,digitalSignature");
  X509_sign(cert, key, EVP_sha256());
  BIO *bio = BIO_new(BIO_s_mem());
  PEM_write_bio_X509(bio, cert);
  const uint8_t *data;
  size_t len;
  BIO_mem_contents(bio, &data, &len);
  std::string pem(reinterpret_cast<const char *>(data), len);
  BIO_free(bio);
  X509_free(cert);
  EVP_PKEY_free(key);
  return pem;
}

inline std::string PrivateKeyPem() {
  EVP_PKEY *key = NewP256Key();
  BIO *bio = BIO_new(BIO_s_mem());
  PEM_write_bio_PrivateKey(bio, key, nullptr, nullptr, 0, nullptr, nullptr);
  const uint8_t *data;
  size_t len;
  BIO_mem_contents(bio, &data, &len);
  std::string pem(reinterpret_cast<const char *>(data), len);
  BIO_free(bio);
  EVP_PKEY_free(key);
  return pem;
}

}  // namespace mt_test

#endif  // MT_TESTS_CONTROLPLANE_TEST_FILES_H
