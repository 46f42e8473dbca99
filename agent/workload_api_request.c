/* workload_api_request.c: Workload API requests, decoded and checked. */
#include "agent/workload_api_request.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent/svid.h"
#include "proto/spiffe/workload.pb-c.h"

static const struct {
  const char *name;
  const char *path;
  int streams;
} kMethods[MT_WL_NUM_METHODS] = {
    [MT_WL_FETCH_X509_SVID] = {"FetchX509SVID", "/SpiffeWorkloadAPI/FetchX509SVID", 1},
    [MT_WL_FETCH_X509_BUNDLES] = {"FetchX509Bundles", "/SpiffeWorkloadAPI/FetchX509Bundles", 1},
    [MT_WL_FETCH_JWT_SVID] = {"FetchJWTSVID", "/SpiffeWorkloadAPI/FetchJWTSVID", 0},
    [MT_WL_FETCH_JWT_BUNDLES] = {"FetchJWTBundles", "/SpiffeWorkloadAPI/FetchJWTBundles", 1},
    [MT_WL_VALIDATE_JWT_SVID] = {"ValidateJWTSVID", "/SpiffeWorkloadAPI/ValidateJWTSVID", 0},
};

const char *mt_wl_method_name(mt_wl_method method) {
  return method < MT_WL_NUM_METHODS ? kMethods[method].name : "unknown";
}

const char *mt_wl_method_path(mt_wl_method method) {
  return method < MT_WL_NUM_METHODS ? kMethods[method].path : "";
}

int mt_wl_method_streams(mt_wl_method method) {
  return method < MT_WL_NUM_METHODS && kMethods[method].streams;
}

static mt_grpc_status invalid(char why[MT_WL_WHY_MAX], const char *fmt, const char *arg) {
  snprintf(why, MT_WL_WHY_MAX, fmt, arg);
  return MT_GRPC_INVALID_ARGUMENT;
}

/* An audience is compared byte for byte with a token's "aud": keep it to
 * printable ASCII so logs and JSON carry it unchanged. */
static int audience_ok(const char *aud) {
  size_t len = strlen(aud);
  if (len == 0 || len > MT_WL_MAX_AUDIENCE_LEN) return 0;
  for (const char *p = aud; *p; p++)
    if (*p < 0x21 || *p > 0x7e) return 0;
  return 1;
}

static int copy_string(char **out, const char *in) {
  *out = strdup(in);
  return *out != NULL;
}

static mt_grpc_status decode_fetch_jwt(const uint8_t *msg, size_t len, mt_wl_request *out,
                                       char why[MT_WL_WHY_MAX]) {
  JWTSVIDRequest *req = jwtsvidrequest__unpack(NULL, len, msg);
  if (req == NULL) return invalid(why, "%s", "JWTSVIDRequest does not decode");
  mt_grpc_status status = MT_GRPC_OK;
  if (req->n_audience == 0) {
    status = invalid(why, "%s", "audience must be specified");
  } else if (req->n_audience > MT_WL_MAX_AUDIENCES) {
    status = invalid(why, "%s", "too many audiences (at most 16)");
  } else if (req->spiffe_id[0] != '\0' &&
             mt_spiffe_id_parse(req->spiffe_id, strlen(req->spiffe_id), NULL) != MT_SPIFFE_OK) {
    status = invalid(why, "%s", "spiffe_id is not a valid SPIFFE ID");
  }
  for (size_t i = 0; status == MT_GRPC_OK && i < req->n_audience; i++)
    if (!audience_ok(req->audience[i]))
      status =
          invalid(why, "%s", "an audience is empty, longer than 256 bytes or not printable ASCII");
  for (size_t i = 0; status == MT_GRPC_OK && i < req->n_audience; i++) {
    if (!copy_string(&out->audiences[i], req->audience[i])) status = MT_GRPC_RESOURCE_EXHAUSTED;
    out->num_audiences = i + 1;
  }
  if (status == MT_GRPC_OK && req->spiffe_id[0] != '\0' &&
      !copy_string(&out->spiffe_id, req->spiffe_id))
    status = MT_GRPC_RESOURCE_EXHAUSTED;
  if (status == MT_GRPC_RESOURCE_EXHAUSTED) snprintf(why, MT_WL_WHY_MAX, "out of memory");
  jwtsvidrequest__free_unpacked(req, NULL);
  return status;
}

static mt_grpc_status decode_validate(const uint8_t *msg, size_t len, mt_wl_request *out,
                                      char why[MT_WL_WHY_MAX]) {
  ValidateJWTSVIDRequest *req = validate_jwtsvidrequest__unpack(NULL, len, msg);
  if (req == NULL) return invalid(why, "%s", "ValidateJWTSVIDRequest does not decode");
  mt_grpc_status status = MT_GRPC_OK;
  if (req->audience[0] == '\0')
    status = invalid(why, "%s", "audience must be specified");
  else if (!audience_ok(req->audience))
    status = invalid(why, "%s", "the audience is longer than 256 bytes or not printable ASCII");
  else if (req->svid[0] == '\0')
    status = invalid(why, "%s", "svid must be specified");
  else if (strlen(req->svid) > MT_WL_MAX_TOKEN_LEN)
    status = invalid(why, "%s", "svid is longer than 16384 bytes");
  if (status == MT_GRPC_OK) {
    out->num_audiences = 1;
    if (!copy_string(&out->audiences[0], req->audience) || !copy_string(&out->token, req->svid)) {
      status = MT_GRPC_RESOURCE_EXHAUSTED;
      snprintf(why, MT_WL_WHY_MAX, "out of memory");
    }
  }
  validate_jwtsvidrequest__free_unpacked(req, NULL);
  return status;
}

/* The empty requests still have to decode: garbage is not an empty message. */
static mt_grpc_status decode_empty(mt_wl_method method, const uint8_t *msg, size_t len,
                                   char why[MT_WL_WHY_MAX]) {
  ProtobufCMessage *m = NULL;
  const char *name = "";
  switch (method) {
    case MT_WL_FETCH_X509_SVID:
      m = (ProtobufCMessage *)x509_svidrequest__unpack(NULL, len, msg);
      name = "X509SVIDRequest";
      break;
    case MT_WL_FETCH_X509_BUNDLES:
      m = (ProtobufCMessage *)x509_bundles_request__unpack(NULL, len, msg);
      name = "X509BundlesRequest";
      break;
    default:
      m = (ProtobufCMessage *)jwtbundles_request__unpack(NULL, len, msg);
      name = "JWTBundlesRequest";
      break;
  }
  if (m == NULL) return invalid(why, "%s does not decode", name);
  protobuf_c_message_free_unpacked(m, NULL);
  return MT_GRPC_OK;
}

mt_grpc_status mt_wl_request_decode(mt_wl_method method, const mt_grpc_metadata *metadata,
                                    size_t metadata_count, const uint8_t *msg, size_t len,
                                    mt_wl_request *out, char why[MT_WL_WHY_MAX]) {
  memset(out, 0, sizeof(*out));
  why[0] = '\0';
  out->method = method;
  int header = 0;
  for (size_t i = 0; i < metadata_count; i++)
    if (strcmp(metadata[i].name, "workload.spiffe.io") == 0)
      header = strcmp(metadata[i].value, "true") == 0;
  if (!header) return invalid(why, "%s", "security header missing from request");
  mt_grpc_status status;
  switch (method) {
    case MT_WL_FETCH_JWT_SVID: status = decode_fetch_jwt(msg, len, out, why); break;
    case MT_WL_VALIDATE_JWT_SVID: status = decode_validate(msg, len, out, why); break;
    case MT_WL_FETCH_X509_SVID:
    case MT_WL_FETCH_X509_BUNDLES:
    case MT_WL_FETCH_JWT_BUNDLES: status = decode_empty(method, msg, len, why); break;
    default: return invalid(why, "%s", "unknown method");
  }
  if (status != MT_GRPC_OK) mt_wl_request_clear(out);
  return status;
}

void mt_wl_request_clear(mt_wl_request *request) {
  for (size_t i = 0; i < request->num_audiences; i++) free(request->audiences[i]);
  free(request->spiffe_id);
  free(request->token);
  mt_wl_method method = request->method;
  memset(request, 0, sizeof(*request));
  request->method = method;
}
