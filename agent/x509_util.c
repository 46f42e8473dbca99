#include "agent/x509_util.h"

#include <openssl/bio.h>
#include <stdlib.h>
#include <string.h>

GENERAL_NAMES *mt_x509_uri_names(const char *uri) {
  GENERAL_NAMES *names = GENERAL_NAMES_new();
  GENERAL_NAME *name = GENERAL_NAME_new();
  ASN1_IA5STRING *value = ASN1_IA5STRING_new();
  if (names != NULL && name != NULL && value != NULL &&
      ASN1_STRING_set(value, uri, (int)strlen(uri))) {
    GENERAL_NAME_set0_value(name, GEN_URI, value);
    value = NULL; /* owned by |name| */
    if (sk_GENERAL_NAME_push(names, name)) return names;
  }
  ASN1_IA5STRING_free(value);
  GENERAL_NAME_free(name);
  GENERAL_NAMES_free(names);
  return NULL;
}

char *mt_x509_bio_to_string(const BIO *bio) {
  const uint8_t *data;
  size_t len;
  if (!BIO_mem_contents(bio, &data, &len)) return NULL;
  char *out = malloc(len + 1);
  if (out != NULL) {
    if (len > 0) memcpy(out, data, len); /* an empty BIO has no data pointer at all */
    out[len] = '\0';
  }
  return out;
}

time_t mt_x509_time(const ASN1_TIME *t, time_t now) {
  int days = 0, secs = 0;
  ASN1_TIME *from = ASN1_TIME_set(NULL, now);
  int ok = from != NULL && ASN1_TIME_diff(&days, &secs, from, t);
  ASN1_TIME_free(from);
  return ok ? now + (time_t)days * 86400 + secs : 0;
}
