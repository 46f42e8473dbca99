/* Fuzz target: the admin endpoint's request parser (agent/http_request.h)
 * and its query lookup, on arbitrary bytes from a hostile client.
 * Invariants: no out-of-bounds access (ASan); INCOMPLETE only below the
 * head limit; a refusal has a status the server knows and a printable
 * reason; an accepted head is no longer than the input, reparses alone to
 * the same result, was INCOMPLETE at every prefix tried (a valid request
 * that arrives in pieces is never refused), and has a path that starts with
 * "/" (or is "*"), a version of 1.0 or 1.1 and a body within the limit. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent/http_request.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                          \
  do {                                                                       \
    if (!(cond)) {                                                           \
      fprintf(stderr, "invariant failed at line %d: %s\n", __LINE__, #cond); \
      abort();                                                               \
    }                                                                        \
  } while (0)

static int known_status(int s) {
  static const int kStatuses[] = {400, 411, 413, 414, 417, 431, 501, 505};
  for (size_t i = 0; i < sizeof(kStatuses) / sizeof(kStatuses[0]); i++)
    if (kStatuses[i] == s) return 1;
  return 0;
}

static void check_query(const char *query) {
  static const char *const kNames[] = {"peer", "port", "plaintext", "workload", ""};
  char value[16];
  for (size_t i = 0; i < sizeof(kNames) / sizeof(kNames[0]); i++) {
    memset(value, 'x', sizeof(value));
    int r = mt_http_query_get(query, kNames[i], value, sizeof(value));
    CHECK(r >= -1 && r <= 1);
    if (r == 1) CHECK(memchr(value, '\0', sizeof(value)) != NULL);
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static mt_http_request req, again; /* ~8 KiB each */
  mt_http_parse_result r = mt_http_parse_request(data, size, &req);
  if (r == MT_HTTP_PARSE_INCOMPLETE) {
    CHECK(size < MT_HTTP_MAX_HEAD_BYTES);
    return 0;
  }
  if (r == MT_HTTP_PARSE_ERROR) {
    CHECK(known_status(req.status));
    CHECK(req.error != NULL && req.error[0] != '\0');
    for (const char *p = req.error; *p; p++) CHECK(*p >= ' ' && *p < 0x7f);
    return 0;
  }
  CHECK(r == MT_HTTP_PARSE_OK);
  CHECK(req.head_bytes > 0 && req.head_bytes <= size);
  CHECK(req.head_bytes <= MT_HTTP_MAX_HEAD_BYTES);
  CHECK(req.version_minor == 0 || req.version_minor == 1);
  CHECK(req.content_length <= MT_HTTP_MAX_BODY_BYTES);
  CHECK(req.path[0] == '/' || strcmp(req.path, "*") == 0);
  CHECK(strlen(req.path) <= MT_HTTP_MAX_TARGET_BYTES);
  CHECK(req.method[0] != '\0');
  CHECK(!req.expect_continue || req.content_length > 0);
  CHECK(mt_http_parse_request(data, req.head_bytes, &again) == MT_HTTP_PARSE_OK);
  CHECK(again.head_bytes == req.head_bytes && strcmp(again.path, req.path) == 0 &&
        strcmp(again.query, req.query) == 0 && again.keep_alive == req.keep_alive &&
        again.content_length == req.content_length);
  size_t prefixes[] = {req.head_bytes - 1, req.head_bytes / 2,
                       size > 0 ? data[0] % req.head_bytes : 0};
  for (size_t i = 0; i < sizeof(prefixes) / sizeof(prefixes[0]); i++)
    CHECK(mt_http_parse_request(data, prefixes[i], &again) == MT_HTTP_PARSE_INCOMPLETE);
  check_query(req.query);
  return 0;
}
