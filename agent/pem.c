#include "agent/pem.h"

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/pem.h>

size_t mt_pem_append_certs(const char *pem, size_t len, STACK_OF(X509) * out) {
  if (len > INT32_MAX) return 0;
  BIO *bio = BIO_new_mem_buf(pem, (int)len);
  size_t added = 0;
  X509 *x;
  while (bio != NULL && (x = PEM_read_bio_X509(bio, NULL, NULL, NULL)) != NULL) {
    if (!sk_X509_push(out, x)) {
      X509_free(x);
      break;
    }
    added++;
  }
  BIO_free(bio);
  ERR_clear_error(); /* the loop always ends on "no start line" */
  return added;
}

STACK_OF(X509) * mt_pem_dup_certs(const STACK_OF(X509) * certs) {
  STACK_OF(X509) *copy = sk_X509_new_null();
  for (size_t i = 0; copy != NULL && i < sk_X509_num(certs); i++) {
    X509 *x = sk_X509_value(certs, i);
    X509_up_ref(x);
    if (!sk_X509_push(copy, x)) {
      X509_free(x);
      sk_X509_pop_free(copy, X509_free);
      return NULL;
    }
  }
  return copy;
}
