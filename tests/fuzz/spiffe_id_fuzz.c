/* libFuzzer target: mt_spiffe_id_parse and mt_trust_domain_validate on
 * arbitrary bytes.
 *
 * Oracles, besides "never crashes" (ASan/UBSan):
 *  - on MT_SPIFFE_OK the view lies inside the input and splits it exactly as
 *    "spiffe://" + trust domain + path; the trust domain is 1..255 bytes of
 *    [a-z0-9._-]; the path is "" or "/seg/seg" with every segment non-empty,
 *    not "." / "..", and of [A-Za-z0-9._-]; the whole ID is <= 2048 bytes;
 *  - an independent reference validator (written from SPIFFE-ID.md, not from
 *    agent/svid.c) agrees on accept/reject, and on the error code where the
 *    spec fixes it (empty, too long, bad scheme);
 *  - the result does not depend on whether a view is requested;
 *  - every error code has a static message. */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent/svid.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                              \
  do {                                                                           \
    if (!(cond)) {                                                               \
      fprintf(stderr, "spiffe_id_fuzz: invariant failed at %s:%d: %s\n", __FILE__, \
              __LINE__, #cond);                                                  \
      abort();                                                                   \
    }                                                                            \
  } while (0)

static const char kScheme[] = "spiffe://";
#define SCHEME_LEN (sizeof(kScheme) - 1)

static int ref_td_char(uint8_t c) {
  return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '-' || c == '_';
}

static int ref_path_char(uint8_t c) {
  return ref_td_char(c) || (c >= 'A' && c <= 'Z');
}

static int ref_trust_domain_ok(const uint8_t *td, size_t len) {
  if (len == 0 || len > MT_TRUST_DOMAIN_MAX_LEN) return 0;
  for (size_t i = 0; i < len; i++) {
    if (!ref_td_char(td[i])) return 0;
  }
  return 1;
}

/* |p| is "" or starts with '/'. */
static int ref_path_ok(const uint8_t *p, size_t len) {
  size_t i = 0;
  while (i < len) {
    if (p[i] != '/') return 0;
    size_t start = ++i;
    while (i < len && p[i] != '/') {
      if (!ref_path_char(p[i])) return 0;
      i++;
    }
    size_t seg = i - start;
    if (seg == 0) return 0;
    if (seg == 1 && p[start] == '.') return 0;
    if (seg == 2 && p[start] == '.' && p[start + 1] == '.') return 0;
  }
  return 1;
}

static int ref_id_ok(const uint8_t *id, size_t len) {
  if (len == 0 || len > MT_SPIFFE_ID_MAX_LEN) return 0;
  if (len < SCHEME_LEN || memcmp(id, kScheme, SCHEME_LEN) != 0) return 0;
  const uint8_t *td = id + SCHEME_LEN;
  const uint8_t *end = id + len;
  const uint8_t *slash = memchr(td, '/', (size_t)(end - td));
  size_t td_len = slash ? (size_t)(slash - td) : (size_t)(end - td);
  if (!ref_trust_domain_ok(td, td_len)) return 0;
  return slash == NULL || ref_path_ok(slash, (size_t)(end - slash));
}

static int inside(const uint8_t *base, size_t size, const char *p, size_t len) {
  const uint8_t *q = (const uint8_t *)p;
  return q >= base && len <= size && q - base <= (ptrdiff_t)(size - len);
}

static void check_err_str(mt_spiffe_err err) {
  const char *s = mt_spiffe_err_str(err);
  CHECK(s != NULL && s[0] != '\0');
}

static void check_id(const uint8_t *data, size_t size) {
  mt_spiffe_id_view view;
  memset(&view, 0xA5, sizeof(view)); /* garbage, so an unset field shows */
  mt_spiffe_err err = mt_spiffe_id_parse((const char *)data, size, &view);
  CHECK(err >= MT_SPIFFE_OK && err <= MT_SPIFFE_BAD_PATH_CHAR);
  check_err_str(err);
  CHECK(mt_spiffe_id_parse((const char *)data, size, NULL) == err);

  int ref_ok = ref_id_ok(data, size);
  CHECK((err == MT_SPIFFE_OK) == ref_ok);
  if (size == 0) CHECK(err == MT_SPIFFE_EMPTY);
  else if (size > MT_SPIFFE_ID_MAX_LEN) CHECK(err == MT_SPIFFE_TOO_LONG);
  else if (size < SCHEME_LEN || memcmp(data, kScheme, SCHEME_LEN) != 0)
    CHECK(err == MT_SPIFFE_BAD_SCHEME);
  if (err != MT_SPIFFE_OK) return;

  CHECK(size <= MT_SPIFFE_ID_MAX_LEN);
  /* Trust domain: inside the input, right after the scheme. */
  CHECK(view.trust_domain != NULL);
  CHECK(view.trust_domain_len >= 1 && view.trust_domain_len <= MT_TRUST_DOMAIN_MAX_LEN);
  CHECK(inside(data, size, view.trust_domain, view.trust_domain_len));
  CHECK((const uint8_t *)view.trust_domain == data + SCHEME_LEN);
  for (size_t i = 0; i < view.trust_domain_len; i++) {
    CHECK(ref_td_char((uint8_t)view.trust_domain[i]));
  }
  /* Path: "" or inside the input, directly after the trust domain, to the end. */
  CHECK(view.path != NULL);
  CHECK(SCHEME_LEN + view.trust_domain_len + view.path_len == size);
  if (view.path_len == 0) {
    CHECK(view.path[0] == '\0');
  } else {
    CHECK(inside(data, size, view.path, view.path_len));
    CHECK(view.path == view.trust_domain + view.trust_domain_len);
    CHECK(view.path[0] == '/');
    CHECK(view.path[view.path_len - 1] != '/');
    CHECK(ref_path_ok((const uint8_t *)view.path, view.path_len));
  }
  /* The trust domain alone is a valid bare trust domain. */
  CHECK(mt_trust_domain_validate(view.trust_domain, view.trust_domain_len) == MT_SPIFFE_OK);
}

static void check_trust_domain(const uint8_t *data, size_t size) {
  mt_spiffe_err err = mt_trust_domain_validate((const char *)data, size);
  check_err_str(err);
  CHECK((err == MT_SPIFFE_OK) == ref_trust_domain_ok(data, size));
  if (size == 0) CHECK(err == MT_SPIFFE_EMPTY_TRUST_DOMAIN);
  else if (size > MT_TRUST_DOMAIN_MAX_LEN) CHECK(err == MT_SPIFFE_TRUST_DOMAIN_TOO_LONG);
  else if (err != MT_SPIFFE_OK) CHECK(err == MT_SPIFFE_BAD_TRUST_DOMAIN_CHAR);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  check_id(data, size);
  check_trust_domain(data, size);
  /* The same bytes behind the scheme, so that trust domain and path rules get
   * exercised without the fuzzer having to find "spiffe://" first. */
  uint8_t *prefixed = malloc(SCHEME_LEN + size);
  if (prefixed == NULL) return 0;
  memcpy(prefixed, kScheme, SCHEME_LEN);
  if (size > 0) memcpy(prefixed + SCHEME_LEN, data, size);
  check_id(prefixed, SCHEME_LEN + size);
  free(prefixed);
  return 0;
}
