/* workload_api_request: what a SPIFFE Workload API call asks, decoded and
 * checked before anything acts on it.
 *
 * Pure: no I/O, no state, nothing logged; the server (workload_api.c) and
 * the fuzzer (tests/fuzz/workload_api_request_fuzz.c) call the same code.
 * Checks, in order, with the status the specification gives each failure:
 *   - the security header "workload.spiffe.io: true" is present (any other
 *     value or none: INVALID_ARGUMENT, "security header missing from request");
 *   - the message decodes as the method's request (else INVALID_ARGUMENT);
 *   - FetchJWTSVID: 1..MT_WL_MAX_AUDIENCES audiences, each non-empty and at
 *     most MT_WL_MAX_AUDIENCE_LEN bytes of printable ASCII; an optional
 *     spiffe_id that is a valid SPIFFE ID;
 *   - ValidateJWTSVID: a non-empty audience (same rules) and a non-empty
 *     token of at most MT_WL_MAX_TOKEN_LEN bytes.
 * The request never says who the caller is: that comes from the socket
 * (workload_api.c). */
#ifndef MT_WORKLOAD_API_REQUEST_H
#define MT_WORKLOAD_API_REQUEST_H

#include <stddef.h>
#include <stdint.h>

#include "grpc/frame.h"

#ifdef __cplusplus
extern "C" {
#endif

enum {
  MT_WL_MAX_AUDIENCES = 16,
  MT_WL_MAX_AUDIENCE_LEN = 256,
  MT_WL_MAX_TOKEN_LEN = 16 * 1024,
  MT_WL_WHY_MAX = 256,
};

typedef enum {
  MT_WL_FETCH_X509_SVID,
  MT_WL_FETCH_X509_BUNDLES,
  MT_WL_FETCH_JWT_SVID,
  MT_WL_FETCH_JWT_BUNDLES,
  MT_WL_VALIDATE_JWT_SVID,
  MT_WL_NUM_METHODS
} mt_wl_method;

/* "FetchX509SVID", ...; and the gRPC path "/SpiffeWorkloadAPI/FetchX509SVID". */
const char *mt_wl_method_name(mt_wl_method method);
const char *mt_wl_method_path(mt_wl_method method);
/* 1 for the server-streaming methods. */
int mt_wl_method_streams(mt_wl_method method);

/* A decoded request. Strings are owned (mt_wl_request_clear frees them). */
typedef struct {
  mt_wl_method method;
  char *audiences[MT_WL_MAX_AUDIENCES]; /* FetchJWTSVID; ValidateJWTSVID: [0] */
  size_t num_audiences;
  char *spiffe_id; /* FetchJWTSVID: NULL = every identity of the caller */
  char *token;     /* ValidateJWTSVID */
} mt_wl_request;

/* Decodes the call of |method| with |metadata| and the request message
 * |msg|. Returns MT_GRPC_OK with |out| filled, or the status to answer with
 * and why in |why| (|out| then holds nothing to free). */
mt_grpc_status mt_wl_request_decode(mt_wl_method method, const mt_grpc_metadata *metadata,
                                    size_t metadata_count, const uint8_t *msg, size_t len,
                                    mt_wl_request *out, char why[MT_WL_WHY_MAX]);

void mt_wl_request_clear(mt_wl_request *request);

#ifdef __cplusplus
}
#endif

#endif /* MT_WORKLOAD_API_REQUEST_H */
