/* libFuzzer target: d2i_X509 on arbitrary bytes, then mt_svid_check_leaf for
 * both TLS roles.
 *
 * Oracles, besides "never crashes" (ASan/UBSan):
 *  - the result is a known mt_svid_err with a static message;
 *  - on MT_SVID_OK the out ID is NUL-terminated inside the 2049-byte buffer,
 *    re-parses as a valid SPIFFE ID, and *out_id_err is MT_SPIFFE_OK;
 *  - *out_id_err is set (not OK) exactly when the result is
 *    MT_SVID_BAD_SPIFFE_ID;
 *  - the result does not depend on whether an output buffer is given, and a
 *    buffer one byte too small (or a NULL leaf) is refused as
 *    MT_SVID_UNPARSABLE;
 *  - on MT_SVID_OK the ID is byte for byte the certificate's only URI SAN;
 *  - only the extendedKeyUsage rule depends on the role: unless one role got
 *    MT_SVID_BAD_EXT_KEY_USAGE both roles agree, and when both are OK they
 *    yield the same ID. */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "agent/svid.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                        \
  do {                                                                                     \
    if (!(cond)) {                                                                         \
      fprintf(stderr, "svid_fuzz: invariant failed at %s:%d: %s\n", __FILE__, __LINE__, \
              #cond);                                                                      \
      abort();                                                                             \
    }                                                                                      \
  } while (0)

enum { ID_BUF = MT_SPIFFE_ID_MAX_LEN + 1 };

typedef struct {
  mt_svid_err err;
  mt_spiffe_err id_err;
  char id[ID_BUF];
} leaf_result;

/* The ID must be exactly the one URI SAN, read independently here. */
static void check_id_is_uri_san(X509 *leaf, const char *id) {
  GENERAL_NAMES *names = X509_get_ext_d2i(leaf, NID_subject_alt_name, NULL, NULL);
  CHECK(names != NULL);
  const ASN1_STRING *uri = NULL;
  size_t uris = 0;
  for (size_t i = 0; i < sk_GENERAL_NAME_num(names); i++) {
    const GENERAL_NAME *name = sk_GENERAL_NAME_value(names, i);
    if (name->type == GEN_URI) {
      uri = name->d.uniformResourceIdentifier;
      uris++;
    }
  }
  CHECK(uris == 1);
  CHECK((size_t)ASN1_STRING_length(uri) == strlen(id));
  CHECK(memcmp(ASN1_STRING_get0_data(uri), id, strlen(id)) == 0);
  GENERAL_NAMES_free(names);
}

static void check_role(X509 *leaf, mt_svid_role role, leaf_result *r) {
  memset(r->id, 0x5A, sizeof(r->id)); /* no NUL unless the callee writes one */
  r->id_err = (mt_spiffe_err)-1;
  r->err = mt_svid_check_leaf(leaf, role, r->id, sizeof(r->id), &r->id_err);
  CHECK(r->err >= MT_SVID_OK && r->err <= MT_SVID_UNPARSABLE);
  const char *msg = mt_svid_err_str(r->err);
  CHECK(msg != NULL && msg[0] != '\0');

  if (r->err == MT_SVID_BAD_SPIFFE_ID) {
    CHECK(r->id_err > MT_SPIFFE_OK && r->id_err <= MT_SPIFFE_BAD_PATH_CHAR);
    CHECK(mt_spiffe_err_str(r->id_err) != NULL);
  } else {
    CHECK(r->id_err == MT_SPIFFE_OK);
  }
  if (r->err == MT_SVID_OK) {
    const char *nul = memchr(r->id, '\0', sizeof(r->id));
    CHECK(nul != NULL);
    size_t len = (size_t)(nul - r->id);
    CHECK(len <= MT_SPIFFE_ID_MAX_LEN);
    mt_spiffe_id_view view;
    CHECK(mt_spiffe_id_parse(r->id, len, &view) == MT_SPIFFE_OK);
    check_id_is_uri_san(leaf, r->id);
  }

  /* Same verdict without an output buffer. */
  mt_spiffe_err id_err2 = (mt_spiffe_err)-1;
  CHECK(mt_svid_check_leaf(leaf, role, NULL, 0, &id_err2) == r->err);
  CHECK(id_err2 == r->id_err);
  CHECK(mt_svid_check_leaf(leaf, role, NULL, 0, NULL) == r->err);

  /* A buffer that cannot hold every valid ID is refused up front, and so is
   * a missing leaf. */
  char small[ID_BUF - 1];
  CHECK(mt_svid_check_leaf(leaf, role, small, sizeof(small), NULL) == MT_SVID_UNPARSABLE);
  CHECK(mt_svid_check_leaf(leaf, role, small, 0, NULL) == MT_SVID_UNPARSABLE);
  CHECK(mt_svid_check_leaf(NULL, role, r->id, sizeof(r->id), NULL) == MT_SVID_UNPARSABLE);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  const uint8_t *p = data;
  X509 *leaf = d2i_X509(NULL, &p, (long)size);
  if (leaf == NULL) return 0;
  CHECK(p > data && p <= data + size);

  static leaf_result client, server; /* 2 x 2 KiB: keep them off the stack */
  check_role(leaf, MT_SVID_ROLE_CLIENT, &client);
  check_role(leaf, MT_SVID_ROLE_SERVER, &server);
  if (client.err != MT_SVID_BAD_EXT_KEY_USAGE && server.err != MT_SVID_BAD_EXT_KEY_USAGE) {
    CHECK(client.err == server.err);
    CHECK(client.id_err == server.id_err);
  }
  if (client.err == MT_SVID_OK && server.err == MT_SVID_OK) {
    CHECK(strcmp(client.id, server.id) == 0);
  }
  X509_free(leaf);
  return 0;
}
