// The Workload API's request checks (agent/workload_api_request.h): the
// security header, each method's message, and the limits, with the status
// the SPIFFE specification gives each failure.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "agent/workload_api_request.h"
#include "proto/spiffe/workload.pb-c.h"

namespace {

const mt_grpc_metadata kHeader[] = {{"workload.spiffe.io", "true"}};

std::string Pack(const ProtobufCMessage *m) {
  std::string out(protobuf_c_message_get_packed_size(m), '\0');
  protobuf_c_message_pack(m, reinterpret_cast<uint8_t *>(out.data()));
  return out;
}

std::string JwtRequest(std::vector<const char *> audiences, const char *spiffe_id = "") {
  JWTSVIDRequest r = JWTSVIDREQUEST__INIT;
  r.n_audience = audiences.size();
  r.audience = const_cast<char **>(audiences.data());
  r.spiffe_id = const_cast<char *>(spiffe_id);
  return Pack(&r.base);
}

std::string ValidateRequest(const char *audience, const std::string &token) {
  ValidateJWTSVIDRequest r = VALIDATE_JWTSVIDREQUEST__INIT;
  r.audience = const_cast<char *>(audience);
  r.svid = const_cast<char *>(token.c_str());
  return Pack(&r.base);
}

struct Decoded {
  mt_grpc_status status;
  std::string why;
  mt_wl_request req;
};

Decoded Decode(mt_wl_method method, const std::string &msg, const mt_grpc_metadata *md = kHeader,
               size_t n = 1) {
  Decoded d;
  char why[MT_WL_WHY_MAX];
  d.status = mt_wl_request_decode(method, md, n, reinterpret_cast<const uint8_t *>(msg.data()),
                                  msg.size(), &d.req, why);
  d.why = why;
  return d;
}

TEST(WorkloadApiRequest, EveryMethodRefusesACallWithoutTheSecurityHeader) {
  const mt_grpc_metadata wrong[] = {{"workload.spiffe.io", "false"}};
  const mt_grpc_metadata other[] = {{"authorization", "Bearer x"}};
  for (int m = 0; m < MT_WL_NUM_METHODS; m++) {
    for (auto [md, n] : {std::pair{(const mt_grpc_metadata *)nullptr, size_t{0}},
                         std::pair{(const mt_grpc_metadata *)wrong, size_t{1}},
                         std::pair{(const mt_grpc_metadata *)other, size_t{1}}}) {
      Decoded d = Decode(static_cast<mt_wl_method>(m), JwtRequest({"a"}), md, n);
      EXPECT_EQ(d.status, MT_GRPC_INVALID_ARGUMENT) << mt_wl_method_name((mt_wl_method)m);
      EXPECT_EQ(d.why, "security header missing from request");
    }
  }
}

TEST(WorkloadApiRequest, EmptyRequestsDecodeAndGarbageDoesNot) {
  for (mt_wl_method m :
       {MT_WL_FETCH_X509_SVID, MT_WL_FETCH_X509_BUNDLES, MT_WL_FETCH_JWT_BUNDLES}) {
    Decoded ok = Decode(m, "");
    EXPECT_EQ(ok.status, MT_GRPC_OK) << ok.why;
    mt_wl_request_clear(&ok.req);
    // A truncated varint is not an empty message.
    Decoded bad = Decode(m, std::string("\x08\xff", 2));
    EXPECT_EQ(bad.status, MT_GRPC_INVALID_ARGUMENT);
    EXPECT_NE(bad.why.find("does not decode"), std::string::npos) << bad.why;
  }
}

TEST(WorkloadApiRequest, FetchJwtSvidTakesAudiencesAndAnOptionalSpiffeId) {
  Decoded d = Decode(MT_WL_FETCH_JWT_SVID,
                     JwtRequest({"spiffe://example.org/db", "orders"}, "spiffe://example.org/app"));
  ASSERT_EQ(d.status, MT_GRPC_OK) << d.why;
  ASSERT_EQ(d.req.num_audiences, 2u);
  EXPECT_STREQ(d.req.audiences[0], "spiffe://example.org/db");
  EXPECT_STREQ(d.req.audiences[1], "orders");
  EXPECT_STREQ(d.req.spiffe_id, "spiffe://example.org/app");
  mt_wl_request_clear(&d.req);
  Decoded any = Decode(MT_WL_FETCH_JWT_SVID, JwtRequest({"orders"}));
  ASSERT_EQ(any.status, MT_GRPC_OK);
  EXPECT_EQ(any.req.spiffe_id, nullptr);
  mt_wl_request_clear(&any.req);
}

TEST(WorkloadApiRequest, FetchJwtSvidRefusesBadAudiencesAndIds) {
  std::string long_aud(MT_WL_MAX_AUDIENCE_LEN + 1, 'a');
  std::vector<const char *> many(MT_WL_MAX_AUDIENCES + 1, "a");
  struct Case {
    std::string msg, why_part;
  } cases[] = {
      {JwtRequest({}), "audience must be specified"},
      {JwtRequest({""}), "an audience is empty"},
      {JwtRequest({"has space"}), "not printable ASCII"},
      {JwtRequest({"tab\there"}), "not printable ASCII"},
      {JwtRequest({long_aud.c_str()}), "longer than 256"},
      {JwtRequest(many), "too many audiences"},
      {JwtRequest({"a"}, "spiffe://Example.org/x"), "not a valid SPIFFE ID"},
      {JwtRequest({"a"}, "http://example.org/x"), "not a valid SPIFFE ID"},
      {std::string("\x0a\x05"
                   "ab",
                   4),
       "does not decode"},
  };
  for (const Case &c : cases) {
    Decoded d = Decode(MT_WL_FETCH_JWT_SVID, c.msg);
    EXPECT_EQ(d.status, MT_GRPC_INVALID_ARGUMENT) << c.why_part;
    EXPECT_NE(d.why.find(c.why_part), std::string::npos) << d.why;
    EXPECT_EQ(d.req.num_audiences, 0u);  // nothing left to free
  }
}

TEST(WorkloadApiRequest, ValidateNeedsAnAudienceAndABoundedToken) {
  Decoded ok = Decode(MT_WL_VALIDATE_JWT_SVID, ValidateRequest("orders", "a.b.c"));
  ASSERT_EQ(ok.status, MT_GRPC_OK) << ok.why;
  EXPECT_STREQ(ok.req.audiences[0], "orders");
  EXPECT_STREQ(ok.req.token, "a.b.c");
  mt_wl_request_clear(&ok.req);
  EXPECT_EQ(Decode(MT_WL_VALIDATE_JWT_SVID, ValidateRequest("", "a.b.c")).why,
            "audience must be specified");
  EXPECT_EQ(Decode(MT_WL_VALIDATE_JWT_SVID, ValidateRequest("orders", "")).why,
            "svid must be specified");
  std::string huge(MT_WL_MAX_TOKEN_LEN + 1, 'x');
  EXPECT_EQ(Decode(MT_WL_VALIDATE_JWT_SVID, ValidateRequest("orders", huge)).status,
            MT_GRPC_INVALID_ARGUMENT);
}

TEST(WorkloadApiRequest, MethodNamesAndPathsAreTheSpecifications) {
  EXPECT_STREQ(mt_wl_method_path(MT_WL_FETCH_X509_SVID), "/SpiffeWorkloadAPI/FetchX509SVID");
  EXPECT_STREQ(mt_wl_method_path(MT_WL_VALIDATE_JWT_SVID), "/SpiffeWorkloadAPI/ValidateJWTSVID");
  EXPECT_TRUE(mt_wl_method_streams(MT_WL_FETCH_JWT_BUNDLES));
  EXPECT_FALSE(mt_wl_method_streams(MT_WL_FETCH_JWT_SVID));
  EXPECT_STREQ(mt_wl_method_name(MT_WL_NUM_METHODS), "unknown");
}

}  // namespace
