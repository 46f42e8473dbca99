// The OpenID provider configuration kube-apiserver serves at
// /.well-known/openid-configuration, and every document mtls-ca refuses to
// take a token issuer from.
#include "controlplane/oidc_discovery.h"

#include <string>

#include <gtest/gtest.h>

namespace {

struct Parsed {
  bool ok = false;
  std::string issuer;
  std::string error;
};

Parsed Parse(const std::string &doc) {
  char issuer[MT_OIDC_ISSUER_MAX_LEN + 1] = "";
  char err[512] = "";
  Parsed p;
  p.ok = mt_oidc_discovery_issuer(doc.data(), doc.size(), issuer, sizeof(issuer), err,
                                  sizeof(err)) == 1;
  p.issuer = issuer;
  p.error = err;
  return p;
}

std::string Document(const std::string &issuer_member) {
  return "{" + issuer_member +
         ",\"jwks_uri\":\"https://10.0.0.1:6443/openid/v1/jwks\","
         "\"response_types_supported\":[\"id_token\"],"
         "\"subject_types_supported\":[\"public\"],"
         "\"id_token_signing_alg_values_supported\":[\"RS256\"]}\n";
}

TEST(OidcDiscovery, TakesTheIssuerOfKubeApiserversDocument) {
  Parsed p = Parse(Document("\"issuer\":\"https://kubernetes.default.svc.cluster.local\""));
  ASSERT_TRUE(p.ok) << p.error;
  EXPECT_EQ(p.issuer, "https://kubernetes.default.svc.cluster.local");
}

TEST(OidcDiscovery, ManagedClusterIssuersWithPathsAndPortsAreTaken) {
  for (const char *url : {"https://oidc.eks.eu-west-1.amazonaws.com/id/0123456789ABCDEF",
                          "https://container.googleapis.com/v1/projects/p/locations/l/clusters/c",
                          "https://127.0.0.1:6443", "https://[fd00::1]:6443/issuer"}) {
    Parsed p = Parse(Document(std::string("\"issuer\":\"") + url + "\""));
    ASSERT_TRUE(p.ok) << url << ": " << p.error;
    EXPECT_EQ(p.issuer, url);
  }
}

TEST(OidcDiscovery, MembersOtherThanTheIssuerAreNotLookedAt) {
  Parsed p = Parse("{\"issuer\":\"https://i.example\",\"jwks_uri\":7,\"extra\":{\"a\":[]}}");
  ASSERT_TRUE(p.ok) << p.error;
  EXPECT_EQ(p.issuer, "https://i.example");
}

struct BadCase {
  const char *name;
  std::string doc;
  const char *expected;  // substring of the error
};

void PrintTo(const BadCase &b, std::ostream *os) { *os << b.name; }

class OidcDiscoveryRefuses : public ::testing::TestWithParam<BadCase> {};

TEST_P(OidcDiscoveryRefuses, NamingWhatWasWrong) {
  Parsed p = Parse(GetParam().doc);
  EXPECT_FALSE(p.ok) << "took " << p.issuer;
  EXPECT_EQ(p.issuer, "");
  EXPECT_NE(p.error.find(GetParam().expected), std::string::npos) << "got: " << p.error;
}

INSTANTIATE_TEST_SUITE_P(
    Documents, OidcDiscoveryRefuses,
    ::testing::Values(
        BadCase{"Empty", "", "discovery document is not JSON"},
        BadCase{"Html", "<html>502 Bad Gateway</html>", "discovery document is not JSON"},
        BadCase{"Truncated", "{\"issuer\":\"https://a", "discovery document is not JSON"},
        BadCase{"AnArray", "[\"https://a.example\"]", "is not a JSON object"},
        BadCase{"NoIssuer", "{\"jwks_uri\":\"https://a.example/openid/v1/jwks\"}",
                "has no \"issuer\""},
        BadCase{"IssuerNotAString", "{\"issuer\":42}", "\"issuer\" is not a string"},
        BadCase{"IssuerNull", "{\"issuer\":null}", "\"issuer\" is not a string"},
        BadCase{"DuplicateIssuer", "{\"issuer\":\"https://a.example\",\"issuer\":\"https://b\"}",
                "discovery document is not JSON"},
        BadCase{"PlainHttp", Document("\"issuer\":\"http://kubernetes.default.svc\""),
                "issuer \"http://kubernetes.default.svc\" is not an https:// URL"},
        BadCase{"NotAUrl", Document("\"issuer\":\"kubernetes/serviceaccount\""),
                "is not an https:// URL"},
        BadCase{"UppercaseScheme", Document("\"issuer\":\"HTTPS://a.example\""),
                "is not an https:// URL"},
        BadCase{"NoHost", Document("\"issuer\":\"https:///path\""), "has no host"},
        BadCase{"EmptyIssuer", Document("\"issuer\":\"\""), "is not an https:// URL"},
        BadCase{"Query", Document("\"issuer\":\"https://a.example/?x=1\""),
                "has a query or fragment"},
        BadCase{"Fragment", Document("\"issuer\":\"https://a.example/#f\""),
                "has a query or fragment"},
        BadCase{"Space", Document("\"issuer\":\"https://a.example/ x\""),
                "space, control or non-ASCII"},
        BadCase{"ControlCharacter", Document("\"issuer\":\"https://a.example/\\u0007\""),
                "space, control or non-ASCII"},
        BadCase{"EmbeddedNul", Document("\"issuer\":\"https://a.example/\\u0000x\""),
                "discovery document is not JSON"},
        BadCase{"NonAscii", Document("\"issuer\":\"https://b\\u00fccher.example\""),
                "space, control or non-ASCII"},
        BadCase{"LongerThanAnIssClaim",
                Document("\"issuer\":\"https://a.example/" + std::string(1100, 'x') + "\""),
                "issuer is longer than 1024 bytes"},
        BadCase{"Oversized",
                "{\"issuer\":\"https://a.example\",\"pad\":\"" + std::string(70000, ' ') + "\"}",
                "discovery document larger than 65536 bytes"}),
    [](const ::testing::TestParamInfo<BadCase> &info) { return std::string(info.param.name); });

}  // namespace
