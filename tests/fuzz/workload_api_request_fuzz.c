/* libFuzzer target: mt_wl_request_decode (agent/workload_api_request.h), the
 * first code that reads a Workload API caller's bytes.
 *
 * Input: byte 0 picks the method, byte 1 the security header (absent,
 * "true", or another value), the rest is the request message.
 * Oracles, besides "never crashes, never leaks" (ASan/UBSan/LSan):
 *  - without the header "true" every call is INVALID_ARGUMENT;
 *  - a decoded FetchJWTSVID has 1..16 audiences of 1..256 printable ASCII
 *    bytes, and a spiffe_id that is NULL or parses as a SPIFFE ID;
 *  - a decoded ValidateJWTSVID has one such audience and a token of
 *    1..16384 bytes;
 *  - a refusal leaves nothing allocated and carries a reason;
 *  - decoding is deterministic. */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent/svid.h"
#include "agent/workload_api_request.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                          \
  do {                                                                                       \
    if (!(cond)) {                                                                           \
      fprintf(stderr, "workload_api_request_fuzz: invariant failed at %s:%d: %s\n", __FILE__, \
              __LINE__, #cond);                                                              \
      abort();                                                                               \
    }                                                                                        \
  } while (0)

static int audience_ok(const char *a) {
  size_t len = strlen(a);
  if (len < 1 || len > MT_WL_MAX_AUDIENCE_LEN) return 0;
  for (size_t i = 0; i < len; i++)
    if (a[i] < 0x21 || a[i] > 0x7e) return 0;
  return 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 2) return 0;
  mt_wl_method method = (mt_wl_method)(data[0] % (MT_WL_NUM_METHODS + 1));
  const mt_grpc_metadata with[] = {{"workload.spiffe.io", "true"}};
  const mt_grpc_metadata other[] = {{"workload.spiffe.io", "TRUE"}};
  const mt_grpc_metadata *md = data[1] % 3 == 0 ? NULL : data[1] % 3 == 1 ? with : other;
  size_t n = md ? 1 : 0;
  const uint8_t *msg = data + 2;
  size_t len = size - 2;

  mt_wl_request req, again;
  char why[MT_WL_WHY_MAX], why2[MT_WL_WHY_MAX];
  mt_grpc_status st = mt_wl_request_decode(method, md, n, msg, len, &req, why);
  mt_grpc_status st2 = mt_wl_request_decode(method, md, n, msg, len, &again, why2);
  CHECK(st == st2);
  if (md != with) CHECK(st == MT_GRPC_INVALID_ARGUMENT);
  if (method == MT_WL_NUM_METHODS) CHECK(st != MT_GRPC_OK);
  if (st != MT_GRPC_OK) {
    CHECK(why[0] != '\0' && strcmp(why, why2) == 0);
    CHECK(req.num_audiences == 0 && req.spiffe_id == NULL && req.token == NULL);
    return 0;
  }
  CHECK(req.num_audiences == again.num_audiences);
  if (method == MT_WL_FETCH_JWT_SVID) {
    CHECK(req.num_audiences >= 1 && req.num_audiences <= MT_WL_MAX_AUDIENCES);
    for (size_t i = 0; i < req.num_audiences; i++) {
      CHECK(audience_ok(req.audiences[i]));
      CHECK(strcmp(req.audiences[i], again.audiences[i]) == 0);
    }
    if (req.spiffe_id != NULL)
      CHECK(mt_spiffe_id_parse(req.spiffe_id, strlen(req.spiffe_id), NULL) == MT_SPIFFE_OK);
  } else if (method == MT_WL_VALIDATE_JWT_SVID) {
    CHECK(req.num_audiences == 1 && audience_ok(req.audiences[0]));
    CHECK(req.token != NULL && strlen(req.token) >= 1 &&
          strlen(req.token) <= MT_WL_MAX_TOKEN_LEN);
  } else {
    CHECK(req.num_audiences == 0 && req.token == NULL && req.spiffe_id == NULL);
  }
  mt_wl_request_clear(&req);
  mt_wl_request_clear(&again);
  CHECK(req.num_audiences == 0 && req.token == NULL);
  return 0;
}
