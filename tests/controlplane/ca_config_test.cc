// mtls-ca's configuration file: what it accepts, its defaults, and the
// "file:line: what is wrong" it gives for everything it refuses.
#include "controlplane/ca_config.h"

#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <openssl/ssl.h>

#include "tests/controlplane/test_files.h"

namespace {

const char kMinimal[] =
    "trust_domain: example.org\n"
    "tls: {cert_file: cp.pem, key_file: cp.key}\n"
    "signer: {cert_file: int.pem, key_file: int.key}\n"
    "roots_file: root.pem\n"
    "tokens: {issuer: https://kubernetes.default.svc, keys_file: sa.pub.pem}\n";

struct Loaded {
  mt_ca_config *config = nullptr;
  std::string error;
  ~Loaded() { mt_ca_config_free(config); }
};

void Load(const mt_test::ScratchDir &dir, const std::string &text, Loaded *out) {
  std::string path = dir.Write("ca.yaml", text);
  char err[1024] = "";
  out->config = mt_ca_config_load(path.c_str(), err, sizeof(err));
  out->error = err;
}

TEST(CaConfig, MinimalConfigGetsTheDocumentedDefaults) {
  mt_test::ScratchDir dir;
  Loaded l;
  Load(dir, kMinimal, &l);
  ASSERT_NE(l.config, nullptr) << l.error;
  const mt_ca_config *c = l.config;
  EXPECT_STREQ(c->trust_domain, "example.org");
  EXPECT_STREQ(c->listen, "0.0.0.0:15012");
  EXPECT_EQ(c->tls_min_version, TLS1_3_VERSION);
  EXPECT_EQ(c->default_cert_ttl_s, 3600);
  EXPECT_EQ(c->max_cert_ttl_s, 24 * 3600);
  EXPECT_STREQ(c->token_audience, "istio-ca");
  EXPECT_EQ(c->token_leeway_s, 60);
  EXPECT_EQ(c->mesh_file, nullptr);
  EXPECT_EQ(c->mesh_poll_ms, 500);
  EXPECT_STREQ(c->access_log, "-");
}

TEST(CaConfig, ReadsEveryKeyOfTheReferenceExample) {
  mt_test::ScratchDir dir;
  Loaded l;
  Load(dir,
       "trust_domain: example.org\n"
       "listen: 127.0.0.1:15012\n"
       "tls: {cert_file: /etc/mtls-ca/tls/chain.pem, key_file: /etc/mtls-ca/tls/key.pem,"
       " min_version: \"1.2\"}\n"
       "signer: {cert_file: intermediate.pem, key_file: intermediate.key}\n"
       "roots_file: root.pem\n"
       "max_cert_ttl_s: 7200\n"
       "default_cert_ttl_s: 1800\n"
       "tokens:\n"
       "  issuer: https://kubernetes.default.svc\n"
       "  audience: mesh-ca\n"
       "  keys_file: sa-signer.pub.pem\n"
       "  leeway_s: 5\n"
       "mesh_file: mesh.yaml\n"
       "mesh_poll_ms: 250\n"
       "access_log: /var/log/mtls-ca.log\n",
       &l);
  ASSERT_NE(l.config, nullptr) << l.error;
  const mt_ca_config *c = l.config;
  EXPECT_STREQ(c->listen, "127.0.0.1:15012");
  EXPECT_EQ(c->tls_min_version, TLS1_2_VERSION);
  EXPECT_STREQ(c->tls_cert_file, "/etc/mtls-ca/tls/chain.pem");
  EXPECT_EQ(c->max_cert_ttl_s, 7200);
  EXPECT_EQ(c->default_cert_ttl_s, 1800);
  EXPECT_STREQ(c->token_issuer, "https://kubernetes.default.svc");
  EXPECT_STREQ(c->token_audience, "mesh-ca");
  EXPECT_EQ(c->token_leeway_s, 5);
  EXPECT_EQ(c->mesh_poll_ms, 250);
  EXPECT_STREQ(c->access_log, "/var/log/mtls-ca.log");
  // Lines of the keys that name files, for errors found when reading them.
  EXPECT_EQ(c->tls_line, 3u);
  EXPECT_EQ(c->signer_line, 4u);
  EXPECT_EQ(c->roots_line, 5u);
  EXPECT_EQ(c->tokens_line, 8u);
  EXPECT_EQ(c->mesh_line, 13u);
}

TEST(CaConfig, RelativePathsAreTakenFromTheConfigFilesDirectory) {
  mt_test::ScratchDir dir;
  Loaded l;
  Load(dir, std::string(kMinimal) + "mesh_file: conf/mesh.yaml\n", &l);
  ASSERT_NE(l.config, nullptr) << l.error;
  EXPECT_EQ(std::string(l.config->signer_cert_file), dir.path() + "/int.pem");
  EXPECT_EQ(std::string(l.config->roots_file), dir.path() + "/root.pem");
  EXPECT_EQ(std::string(l.config->token_keys_file), dir.path() + "/sa.pub.pem");
  EXPECT_EQ(std::string(l.config->mesh_file), dir.path() + "/conf/mesh.yaml");
}

TEST(CaConfig, AbsolutePathsAreKept) {
  mt_test::ScratchDir dir;
  Loaded l;
  Load(dir, std::string(kMinimal) + "mesh_file: /srv/mesh.yaml\n", &l);
  ASSERT_NE(l.config, nullptr) << l.error;
  EXPECT_STREQ(l.config->mesh_file, "/srv/mesh.yaml");
}

TEST(CaConfig, PortZeroListensOnAnyFreePort) {
  mt_test::ScratchDir dir;
  Loaded l;
  Load(dir, std::string(kMinimal) + "listen: \"[::1]:0\"\n", &l);
  ASSERT_NE(l.config, nullptr) << l.error;
  EXPECT_STREQ(l.config->listen, "[::1]:0");
}

TEST(CaConfig, ASmallMaximumLowersTheDefaultTtl) {
  mt_test::ScratchDir dir;
  Loaded l;
  Load(dir, std::string(kMinimal) + "max_cert_ttl_s: 600\n", &l);
  ASSERT_NE(l.config, nullptr) << l.error;
  EXPECT_EQ(l.config->max_cert_ttl_s, 600);
  EXPECT_EQ(l.config->default_cert_ttl_s, 600);
}

TEST(CaConfig, ALargeDefaultRaisesTheUnsetMaximum) {
  mt_test::ScratchDir dir;
  Loaded l;
  Load(dir, std::string(kMinimal) + "default_cert_ttl_s: 172800\n", &l);
  ASSERT_NE(l.config, nullptr) << l.error;
  EXPECT_EQ(l.config->default_cert_ttl_s, 172800);
  EXPECT_EQ(l.config->max_cert_ttl_s, 172800);
}

TEST(CaConfig, JwtSvidsAreShortLivedWithAGeneratedKeyByDefault) {
  mt_test::ScratchDir dir;
  Loaded l;
  Load(dir, kMinimal, &l);
  ASSERT_NE(l.config, nullptr) << l.error;
  EXPECT_EQ(l.config->jwt_svid_ttl_s, 300);
  EXPECT_EQ(l.config->jwt_svid_max_ttl_s, 3600);
  EXPECT_EQ(l.config->jwt_svid_signing_key_file, nullptr);
}

TEST(CaConfig, ReadsTheJwtSvidSection) {
  mt_test::ScratchDir dir;
  Loaded l;
  Load(dir,
       std::string(kMinimal) +
           "jwt_svid:\n  ttl_s: 120\n  max_ttl_s: 900\n  signing_key_file: keys/jwt.key\n",
       &l);
  ASSERT_NE(l.config, nullptr) << l.error;
  EXPECT_EQ(l.config->jwt_svid_ttl_s, 120);
  EXPECT_EQ(l.config->jwt_svid_max_ttl_s, 900);
  EXPECT_EQ(std::string(l.config->jwt_svid_signing_key_file), dir.path() + "/keys/jwt.key");
  EXPECT_EQ(l.config->jwt_svid_line, 6u);
}

TEST(CaConfig, AJwtSvidTtlAboveTheDefaultMaximumRaisesIt) {
  mt_test::ScratchDir dir;
  Loaded l;
  Load(dir, std::string(kMinimal) + "jwt_svid: {ttl_s: 7200}\n", &l);
  ASSERT_NE(l.config, nullptr) << l.error;
  EXPECT_EQ(l.config->jwt_svid_max_ttl_s, 7200);
  Loaded small;
  Load(dir, std::string(kMinimal) + "jwt_svid: {max_ttl_s: 60}\n", &small);
  ASSERT_NE(small.config, nullptr) << small.error;
  EXPECT_EQ(small.config->jwt_svid_ttl_s, 60);
}

TEST(CaConfig, NodeAgentsAndTheWorkloadsFileAreOffByDefault) {
  mt_test::ScratchDir dir;
  Loaded l;
  Load(dir, kMinimal, &l);
  ASSERT_NE(l.config, nullptr) << l.error;
  EXPECT_EQ(l.config->num_node_agents, 0u);
  EXPECT_EQ(l.config->workloads_file, nullptr);
}

TEST(CaConfig, ReadsNodeAgentsAndTheWorkloadsFile) {
  mt_test::ScratchDir dir;
  Loaded l;
  Load(dir,
       std::string(kMinimal) +
           "node_agents:\n"
           "  - spiffe://example.org/ns/mtls-system/sa/mtlsd-node\n"
           "  - spiffe://example.org/ns/mtls-system/sa/mtlsd-node-canary\n"
           "workloads_file: conf/workloads.yaml\n",
       &l);
  ASSERT_NE(l.config, nullptr) << l.error;
  const mt_ca_config *c = l.config;
  ASSERT_EQ(c->num_node_agents, 2u);
  EXPECT_STREQ(c->node_agents[0], "spiffe://example.org/ns/mtls-system/sa/mtlsd-node");
  EXPECT_STREQ(c->node_agents[1], "spiffe://example.org/ns/mtls-system/sa/mtlsd-node-canary");
  EXPECT_EQ(std::string(c->workloads_file), dir.path() + "/conf/workloads.yaml");
  EXPECT_EQ(c->workloads_line, 9u);
}

TEST(CaConfig, AWorkloadsFileWithoutNodeAgentsIsAccepted) {
  mt_test::ScratchDir dir;
  Loaded l;
  Load(dir, std::string(kMinimal) + "node_agents: []\nworkloads_file: /srv/workloads.yaml\n", &l);
  ASSERT_NE(l.config, nullptr) << l.error;
  EXPECT_EQ(l.config->num_node_agents, 0u);
  EXPECT_STREQ(l.config->workloads_file, "/srv/workloads.yaml");
}

TEST(CaConfig, WithKubernetesTheIssuerAndTheKeysMayBothComeFromTheApiServer) {
  mt_test::ScratchDir dir;
  Loaded l;
  Load(dir,
       "trust_domain: example.org\n"
       "tls: {cert_file: cp.pem, key_file: cp.key}\n"
       "signer: {cert_file: int.pem, key_file: int.key}\n"
       "roots_file: root.pem\n"
       "tokens: {audience: istio-ca}\n"
       "kubernetes: {}\n",
       &l);
  ASSERT_NE(l.config, nullptr) << l.error;
  EXPECT_EQ(l.config->token_issuer, nullptr);  // discovered at run time
  EXPECT_EQ(l.config->token_keys_file, nullptr);
  EXPECT_EQ(l.config->kubernetes, 1);
}

TEST(CaConfig, WithKubernetesTheTokensSectionMayBeLeftOut) {
  mt_test::ScratchDir dir;
  Loaded l;
  Load(dir,
       "trust_domain: example.org\n"
       "tls: {cert_file: cp.pem, key_file: cp.key}\n"
       "signer: {cert_file: int.pem, key_file: int.key}\n"
       "roots_file: root.pem\n"
       "kubernetes: {}\n",
       &l);
  ASSERT_NE(l.config, nullptr) << l.error;
  EXPECT_EQ(l.config->token_issuer, nullptr);
  EXPECT_STREQ(l.config->token_audience, "istio-ca");
}

TEST(CaConfig, IstioPoliciesAreOffByDefaultWithIstiosDefaults) {
  mt_test::ScratchDir dir;
  Loaded l;
  Load(dir, std::string(kMinimal) + "kubernetes: {}\n", &l);
  ASSERT_NE(l.config, nullptr) << l.error;
  EXPECT_EQ(l.config->k8s_istio_policies, 0);
  EXPECT_STREQ(l.config->k8s_root_namespace, "istio-system");
  EXPECT_EQ(l.config->k8s_default_mtls_mode, MT_CA_MTLS_PERMISSIVE);
}

TEST(CaConfig, ReadsTheIstioPolicySettings) {
  mt_test::ScratchDir dir;
  Loaded l;
  Load(dir,
       std::string(kMinimal) +
           "mesh_file: mesh.yaml\n"
           "kubernetes:\n"
           "  istio_policies: true\n"
           "  root_namespace: mesh-root\n"
           "  default_mtls_mode: STRICT\n",
       &l);
  ASSERT_NE(l.config, nullptr) << l.error;
  EXPECT_EQ(l.config->k8s_istio_policies, 1);
  EXPECT_STREQ(l.config->k8s_root_namespace, "mesh-root");
  EXPECT_EQ(l.config->k8s_default_mtls_mode, MT_CA_MTLS_STRICT);
}

TEST(CaConfig, MissingFileIsReportedAtLineOne) {
  char err[512];
  EXPECT_EQ(mt_ca_config_load("/nonexistent/ca.yaml", err, sizeof(err)), nullptr);
  EXPECT_NE(std::string(err).find("/nonexistent/ca.yaml:1: cannot open"), std::string::npos) << err;
}

struct BadCase {
  const char *name;
  std::string yaml;
  const char *expected;  // substring of the error, after "<path>"
};

void PrintTo(const BadCase &b, std::ostream *os) { *os << b.name; }

class CaConfigRefuses : public ::testing::TestWithParam<BadCase> {};

TEST_P(CaConfigRefuses, WithFileAndLine) {
  mt_test::ScratchDir dir;
  Loaded l;
  Load(dir, GetParam().yaml, &l);
  EXPECT_EQ(l.config, nullptr);
  std::string want = dir.path() + "/ca.yaml" + GetParam().expected;
  EXPECT_NE(l.error.find(want), std::string::npos) << "got: " << l.error << "\nwant: " << want;
}

const std::string M = kMinimal;  // 5 lines; additions start at line 6

INSTANTIATE_TEST_SUITE_P(
    Cases, CaConfigRefuses,
    ::testing::Values(
        BadCase{"EmptyFile", "", ":1: the file is empty"},
        BadCase{"NotAMapping", "- a\n- b\n", ":1: the configuration must be a mapping"},
        BadCase{"SyntaxError", "trust_domain: [unclosed\n", ":2: YAML syntax error"},
        BadCase{"MissingTrustDomain", "listen: 127.0.0.1:1\n",
                ":1: missing required key 'trust_domain'"},
        BadCase{"UppercaseTrustDomain", "trust_domain: Example.org\n",
                ":1: invalid trust domain 'Example.org'"},
        BadCase{"UnknownTopKey", M + "colour: blue\n", ":6: unknown key 'colour'"},
        BadCase{"UnknownTlsKey", "trust_domain: example.org\ntls: {cert_file: a, ciphers: x}\n",
                ":2: unknown key 'tls.ciphers'"},
        BadCase{"UnknownNestedKey", "trust_domain: example.org\ntls:\n  cert_file: a\n  key: b\n",
                ":4: unknown key 'tls.key'"},
        BadCase{"DuplicateKey", "trust_domain: example.org\ntrust_domain: example.com\n",
                ":2: duplicate key 'trust_domain'"},
        BadCase{"ListenHostName", M + "listen: localhost:15012\n", ":6: 'listen' must be IP:port"},
        BadCase{"ListenPortTooLarge", M + "listen: 127.0.0.1:70000\n",
                ":6: 'listen' must be IP:port"},
        BadCase{"ListenWithoutPort", M + "listen: 127.0.0.1\n", ":6: 'listen' must be IP:port"},
        BadCase{"TtlNotAnInteger", M + "max_cert_ttl_s: 1h\n",
                ":6: 'max_cert_ttl_s' must be an integer, got '1h'"},
        BadCase{"TtlTooShort", M + "default_cert_ttl_s: 59\n",
                ":6: 'default_cert_ttl_s' must be between 60 and"},
        BadCase{"DefaultAboveMaximum", M + "max_cert_ttl_s: 600\ndefault_cert_ttl_s: 3600\n",
                ":1: default_cert_ttl_s (3600) exceeds max_cert_ttl_s (600)"},
        BadCase{"LeewayTooLarge",
                "trust_domain: example.org\ntokens: {issuer: i, keys_file: k, leeway_s: 3601}\n",
                ":2: 'leeway_s' must be between 0 and 3600"},
        BadCase{"SectionGivenTwice", M + "tls: {cert_file: x, key_file: y}\n",
                ":6: duplicate key 'tls'"},
        BadCase{"MinVersion",
                "trust_domain: example.org\ntls: {cert_file: a, key_file: b, min_version: 1.1}\n",
                ":2: 'min_version' must be \"1.2\" or \"1.3\", got '1.1'"},
        BadCase{"PollTooFast", M + "mesh_poll_ms: 5\n", ":6: 'mesh_poll_ms' must be between 10"},
        BadCase{"JwtSvidUnknownKey", M + "jwt_svid: {ttl: 5m}\n", ":6: unknown key 'jwt_svid.ttl'"},
        BadCase{"JwtSvidTtlTooShort", M + "jwt_svid: {ttl_s: 5}\n",
                ":6: 'ttl_s' must be between 10 and 86400"},
        BadCase{"JwtSvidTtlAboveMaximum", M + "jwt_svid: {ttl_s: 900, max_ttl_s: 600}\n",
                ":6: 'jwt_svid.ttl_s' (900) exceeds 'jwt_svid.max_ttl_s' (600)"},
        BadCase{"TlsNotAMapping", "trust_domain: example.org\ntls: chain.pem\n",
                ":2: tls must be a mapping"},
        BadCase{"TlsWithoutKey",
                "trust_domain: example.org\ntls: {cert_file: a}\n"
                "signer: {cert_file: b, key_file: c}\n",
                ":1: 'tls' needs 'cert_file' and 'key_file'"},
        BadCase{"NoSigner", "trust_domain: example.org\ntls: {cert_file: a, key_file: b}\n",
                ":1: 'signer' needs 'cert_file' and 'key_file'"},
        BadCase{"NoRoots",
                "trust_domain: example.org\ntls: {cert_file: a, key_file: b}\n"
                "signer: {cert_file: b, key_file: c}\n",
                ":1: missing required key 'roots_file'"},
        BadCase{"TokensWithoutIssuer",
                "trust_domain: example.org\ntls: {cert_file: a, key_file: b}\n"
                "signer: {cert_file: b, key_file: c}\nroots_file: r\ntokens: {keys_file: k}\n",
                ":1: 'tokens' needs 'issuer' (with 'kubernetes', it may come from the API "
                "server's /.well-known/openid-configuration instead)"},
        BadCase{"TokensWithoutKeysOutsideKubernetes",
                "trust_domain: example.org\ntls: {cert_file: a, key_file: b}\n"
                "signer: {cert_file: b, key_file: c}\nroots_file: r\ntokens: {issuer: i}\n",
                ":1: 'tokens' needs 'keys_file' (with 'kubernetes', the keys may come from the "
                "API server's /openid/v1/jwks instead)"},
        BadCase{"IstioPoliciesNotABool",
                M + "mesh_file: m.yaml\nkubernetes:\n  istio_policies: often\n",
                ":8: 'istio_policies' must be"},
        BadCase{"IstioPoliciesWithoutMeshFile", M + "kubernetes:\n  istio_policies: true\n",
                ":6: 'kubernetes.istio_policies' needs 'mesh_file'"},
        BadCase{"RootNamespaceNotAName", M + "kubernetes: {root_namespace: Istio_System}\n",
                ":6: 'kubernetes.root_namespace' must be a namespace name"},
        BadCase{"RootNamespaceEmpty", M + "kubernetes:\n  root_namespace: \"\"\n",
                ":7: 'root_namespace' must not be empty"},
        BadCase{"MtlsModeDisable", M + "kubernetes:\n  default_mtls_mode: DISABLE\n",
                ":7: 'kubernetes.default_mtls_mode' must be PERMISSIVE or STRICT, got 'DISABLE'"},
        BadCase{"MtlsModeLowercase", M + "kubernetes: {default_mtls_mode: strict}\n",
                ":6: 'kubernetes.default_mtls_mode' must be PERMISSIVE or STRICT, got 'strict'"},
        BadCase{"EmptyPath", M + "mesh_file: \"\"\n", ":6: 'mesh_file' must not be empty"},
        BadCase{"PathIsAList", "trust_domain: example.org\nroots_file: [a, b]\n",
                ":2: 'roots_file' must be a scalar value"},
        BadCase{"AccessLogIsAMapping", M + "access_log: {path: x}\n",
                ":6: 'access_log' must be a scalar value"},
        BadCase{"NodeAgentsWithoutWorkloadsFile",
                M + "node_agents: [spiffe://example.org/ns/mtls-system/sa/mtlsd-node]\n",
                ":6: 'node_agents' needs 'workloads_file'"},
        BadCase{"NodeAgentNotASpiffeId",
                M + "workloads_file: w.yaml\nnode_agents:\n  - spiffe://example.org/ns/a/sa/b\n"
                    "  - mtls-system/mtlsd-node\n",
                ":9: invalid SPIFFE ID 'mtls-system/mtlsd-node'"},
        BadCase{"NodeAgentWithoutPath",
                M + "workloads_file: w.yaml\nnode_agents: [spiffe://example.org]\n",
                ":7: node agent 'spiffe://example.org' has no path"},
        BadCase{"NodeAgentListedTwice",
                M + "workloads_file: w.yaml\nnode_agents:\n  - spiffe://example.org/ns/a/sa/b\n"
                    "  - spiffe://example.org/ns/a/sa/b\n",
                ":9: node agent 'spiffe://example.org/ns/a/sa/b' is listed twice"},
        BadCase{"NodeAgentOfAnotherTrustDomain",
                "node_agents:\n  - spiffe://example.org/ns/a/sa/b\n"
                "  - spiffe://other.org/ns/a/sa/b\n" +
                    M + "workloads_file: w.yaml\n",
                ":3: node agent 'spiffe://other.org/ns/a/sa/b' is not in the trust domain "
                "'example.org'"},
        BadCase{"NodeAgentsNotAList", M + "node_agents: spiffe://example.org/ns/a/sa/b\n",
                ":6: node_agents must be a list"},
        BadCase{"EmptyWorkloadsFile", M + "workloads_file: \"\"\n",
                ":6: 'workloads_file' must not be empty"}),
    [](const ::testing::TestParamInfo<BadCase> &info) { return std::string(info.param.name); });

}  // namespace
