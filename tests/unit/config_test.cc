// Config loading: every error names file:line and what is wrong; valid files
// produce the documented defaults.
#include <gtest/gtest.h>

#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include <string>

#include "agent/config.h"
#include "agent/mesh.h"

namespace {

class ConfigTest : public ::testing::Test {
 protected:
  void TearDown() override {
    if (!path_.empty()) unlink(path_.c_str());
  }

  // Writes |yaml| to a temp file and loads it; on failure |error_| holds the message.
  mt_config *Load(const std::string &yaml) {
    char tmpl[] = "/tmp/mtlsd-config-XXXXXX";
    int fd = mkstemp(tmpl);
    EXPECT_GE(fd, 0);
    EXPECT_EQ(write(fd, yaml.data(), yaml.size()), (ssize_t)yaml.size());
    close(fd);
    path_ = tmpl;
    char err[1024] = "";
    mt_config *c = mt_config_load(path_.c_str(), err, sizeof(err));
    error_ = err;
    return c;
  }

  std::string At(int line) { return path_ + ":" + std::to_string(line) + ": "; }

  std::string path_;
  std::string error_;
};

const char kMinimal[] =
    "trust_domain: example.org\n"
    "identity:\n"
    "  cert_file: /c.pem\n"
    "  key_file: /k.pem\n"
    "trust_bundles:\n"
    "  - trust_domain: example.org\n"
    "    file: /b.pem\n"
    "inbound:\n"
    "  listeners:\n"
    "    - address: 127.0.0.1:15006\n";

TEST_F(ConfigTest, MinimalConfigLoadsWithDefaults) {
  mt_config *c = Load(kMinimal);
  ASSERT_NE(c, nullptr) << error_;
  EXPECT_STREQ(c->trust_domain, "example.org");
  EXPECT_EQ(c->max_connections, 10000);
  EXPECT_EQ(c->handshake_timeout_ms, 10000);
  EXPECT_EQ(c->connect_timeout_ms, 5000);
  EXPECT_EQ(c->idle_timeout_ms, 300000);
  EXPECT_EQ(c->num_inbound_listeners, 1u);
  EXPECT_FALSE(c->inbound_listeners[0].has_fixed_target);
  EXPECT_EQ(mt_sockaddr_port((const sockaddr *)&c->inbound_listeners[0].listen.addr), 15006);
  EXPECT_STREQ(c->access_log, "-");
  EXPECT_EQ(c->unknown_destination, MT_UNKNOWN_DEST_TRUST_DOMAIN);
  mt_config_free(c);
}

TEST_F(ConfigTest, SessionResumptionIsOnByDefaultAndConfigurable) {
  mt_config *c = Load(kMinimal);
  ASSERT_NE(c, nullptr) << error_;
  EXPECT_EQ(c->tls_session_resumption, 1);
  EXPECT_EQ(c->tls_session_lifetime_s, 3600);
  mt_config_free(c);
  c = Load(std::string(kMinimal) + "tls:\n  session_resumption: false\n  session_lifetime_s: 60\n");
  ASSERT_NE(c, nullptr) << error_;
  EXPECT_EQ(c->tls_session_resumption, 0);
  EXPECT_EQ(c->tls_session_lifetime_s, 60);
  mt_config_free(c);
  EXPECT_EQ(Load(std::string(kMinimal) + "tls:\n  session_resumption: yes\n"), nullptr);
  EXPECT_NE(error_.find("session_resumption"), std::string::npos) << error_;
  EXPECT_EQ(Load(std::string(kMinimal) + "tls:\n  session_lifetime_s: 0\n"), nullptr);
  EXPECT_NE(error_.find("session_lifetime_s"), std::string::npos) << error_;
  EXPECT_EQ(Load(std::string(kMinimal) + "tls:\n  session_lifetime_s: 86401\n"), nullptr);
  EXPECT_NE(error_.find("session_lifetime_s"), std::string::npos) << error_;
}

TEST_F(ConfigTest, UnknownKeyIsRejectedWithItsLine) {
  EXPECT_EQ(Load(std::string(kMinimal) + "handshake_timeout: 5\n"), nullptr);
  EXPECT_EQ(error_, At(11) + "unknown key 'handshake_timeout'");
}

TEST_F(ConfigTest, NestedUnknownKeyNamesItsPath) {
  EXPECT_EQ(Load(std::string(kMinimal) + "timeouts:\n  handshake: 5\n"), nullptr);
  EXPECT_EQ(error_, At(12) + "unknown key 'timeouts.handshake'");
}

TEST_F(ConfigTest, YamlSyntaxErrorNamesTheLine) {
  EXPECT_EQ(Load("trust_domain: example.org\nidentity: [unclosed\n"), nullptr);
  EXPECT_NE(error_.find("YAML syntax error"), std::string::npos) << error_;
  EXPECT_EQ(error_.rfind(path_ + ":", 0), 0u) << error_;
}

TEST_F(ConfigTest, PortOutOfRangeIsRejected) {
  EXPECT_EQ(Load(std::string(kMinimal) + "    - address: 127.0.0.1:70000\n"), nullptr);
  EXPECT_EQ(error_, At(11) + "'address' is not a valid IP:port address: '127.0.0.1:70000'");
}

TEST_F(ConfigTest, NonNumericTimeoutIsRejected) {
  EXPECT_EQ(Load(std::string(kMinimal) + "timeouts:\n  idle_ms: soon\n"), nullptr);
  EXPECT_EQ(error_, At(12) + "'idle_ms' must be an integer, got 'soon'");
}

TEST_F(ConfigTest, MissingTrustDomainIsRejected) {
  std::string yaml = kMinimal;
  yaml.erase(0, yaml.find('\n') + 1);
  EXPECT_EQ(Load(yaml), nullptr);
  EXPECT_NE(error_.find("missing required key 'trust_domain'"), std::string::npos) << error_;
}

TEST_F(ConfigTest, UppercaseTrustDomainIsRejected) {
  EXPECT_EQ(Load("trust_domain: Example.org\n"), nullptr);
  EXPECT_EQ(error_.rfind(At(1) + "invalid trust domain 'Example.org'", 0), 0u) << error_;
}

TEST_F(ConfigTest, InvalidDestinationSpiffeIdIsRejected) {
  EXPECT_EQ(Load(std::string(kMinimal) + "outbound:\n"
                                         "  destinations:\n"
                                         "    - address: 10.0.0.1:80\n"
                                         "      spiffe_id: spiffe://example.org/ns//sa/x\n"),
            nullptr);
  EXPECT_EQ(error_.rfind(At(14) + "invalid SPIFFE ID 'spiffe://example.org/ns//sa/x'", 0), 0u)
      << error_;
}

TEST_F(ConfigTest, DestinationsTakeSeveralIdsAndIpAloneAddresses) {
  mt_config *c = Load(std::string(kMinimal) + "outbound:\n"
                                               "  destinations:\n"
                                               "    - address: 10.96.0.10:80\n"
                                               "      spiffe_ids:\n"
                                               "        - spiffe://example.org/ns/a/sa/x\n"
                                               "        - spiffe://example.org/ns/a/sa/y\n"
                                               "    - address: 10.0.0.7\n"
                                               "      spiffe_id: spiffe://example.org/ns/a/sa/p\n");
  ASSERT_NE(c, nullptr) << error_;
  ASSERT_EQ(c->num_destinations, 2u);
  ASSERT_EQ(c->destinations[0].num_spiffe_ids, 2u);
  EXPECT_STREQ(c->destinations[0].spiffe_ids[1], "spiffe://example.org/ns/a/sa/y");
  EXPECT_EQ(mt_sockaddr_port((const struct sockaddr *)&c->destinations[1].address.addr), 0);
  ASSERT_EQ(c->destinations[1].num_spiffe_ids, 1u);
  mt_config_free(c);
}

TEST_F(ConfigTest, DestinationNeedsAnIdAndAnAddressOnlyOnce) {
  EXPECT_EQ(Load(std::string(kMinimal) + "outbound:\n"
                                         "  destinations:\n"
                                         "    - address: 10.0.0.1:80\n"
                                         "      spiffe_ids: []\n"),
            nullptr);
  EXPECT_NE(error_.find("destination needs 'spiffe_id' or a non-empty 'spiffe_ids'"),
            std::string::npos)
      << error_;
  EXPECT_EQ(Load(std::string(kMinimal) + "outbound:\n"
                                         "  destinations:\n"
                                         "    - address: 10.0.0.1:80\n"
                                         "      spiffe_id: spiffe://example.org/ns/a/sa/x\n"
                                         "    - address: 10.0.0.1:80\n"
                                         "      spiffe_id: spiffe://example.org/ns/a/sa/y\n"),
            nullptr);
  EXPECT_NE(error_.find("destination address listed twice (entries 1 and 2)"), std::string::npos)
      << error_;
}

TEST_F(ConfigTest, ControlPlaneAddressMayBeANameButNotGarbage) {
  auto with_address = [](const char *address) {
    return std::string(
               "trust_domain: example.org\n"
               "identity:\n"
               "  spiffe_id: spiffe://example.org/ns/a/sa/x\n"
               "control_plane:\n"
               "  root_file: /dev/null\n"
               "  spiffe_id: spiffe://example.org/ns/mtls-system/sa/mtls-ca\n"
               "  address: ") +
           address +
           "\n"
           "inbound:\n"
           "  listeners:\n"
           "    - address: 127.0.0.1:15006\n";
  };
  mt_config *c = Load(with_address("mtls-ca.mtls-system.svc:15012"));
  ASSERT_NE(c, nullptr) << error_;
  EXPECT_STREQ(c->cp_address, "mtls-ca.mtls-system.svc:15012");
  mt_config_free(c);
  EXPECT_EQ(Load(with_address("mtls_ca:15012")), nullptr);
  EXPECT_NE(error_.find("'address' must be IP:port, [IPv6]:port or name:port, got 'mtls_ca:15012'"),
            std::string::npos)
      << error_;
}

TEST_F(ConfigTest, ControlPlaneDestinationsAreAllOrOnDemand) {
  auto with = [](const char *line) {
    return std::string(
               "trust_domain: example.org\n"
               "identity:\n"
               "  spiffe_id: spiffe://example.org/ns/a/sa/x\n"
               "control_plane:\n"
               "  root_file: /dev/null\n"
               "  spiffe_id: spiffe://example.org/ns/mtls-system/sa/mtls-ca\n"
               "  address: 127.0.0.1:15012\n") +
           line +
           "inbound:\n"
           "  listeners:\n"
           "    - address: 127.0.0.1:15006\n";
  };
  mt_config *c = Load(with(""));
  ASSERT_NE(c, nullptr) << error_;
  EXPECT_EQ(c->cp_on_demand, 0) << "every destination unless asked otherwise";
  mt_config_free(c);
  c = Load(with("  destinations: on_demand\n"));
  ASSERT_NE(c, nullptr) << error_;
  EXPECT_EQ(c->cp_on_demand, 1);
  mt_config_free(c);
  EXPECT_EQ(Load(with("  destinations: some\n")), nullptr);
  EXPECT_NE(error_.find("'destinations' must be all or on_demand, got 'some'"), std::string::npos)
      << error_;
}

TEST_F(ConfigTest, NodeNameComesFromNodeNameInTheEnvironmentWhenNotGiven) {
  const std::string node_config =
      "trust_domain: example.org\n"
      "identity:\n"
      "  spiffe_id: spiffe://example.org/ns/mtls-system/sa/mtlsd-node\n"
      "control_plane:\n"
      "  root_file: /dev/null\n"
      "  spiffe_id: spiffe://example.org/ns/mtls-system/sa/mtls-ca\n"
      "  address: mtls-ca.mtls-system.svc:15012\n"
      "inbound:\n"
      "  listeners:\n"
      "    - address: 0.0.0.0:15006\n"
      "node: {}\n";
  setenv("NODE_NAME", "worker-7", 1);
  mt_config *c = Load(node_config);
  unsetenv("NODE_NAME");
  ASSERT_NE(c, nullptr) << error_;
  EXPECT_STREQ(c->node_name, "worker-7");
  EXPECT_EQ(c->num_node_workloads, 0u) << "pods come from the control plane's Watch";
  mt_config_free(c);
}

TEST_F(ConfigTest, PolicyActionMustBeAllowOrDeny) {
  EXPECT_EQ(Load(std::string(kMinimal) + "policy:\n"
                                         "  rules:\n"
                                         "    - name: r\n"
                                         "      action: permit\n"
                                         "      from: [{any: true}]\n"),
            nullptr);
  EXPECT_EQ(error_, At(14) + "action must be allow or deny, got 'permit'");
}

TEST_F(ConfigTest, PrefixMustEndInSlashStar) {
  EXPECT_EQ(Load(std::string(kMinimal) + "policy:\n"
                                         "  rules:\n"
                                         "    - name: r\n"
                                         "      action: allow\n"
                                         "      from:\n"
                                         "        - prefix: spiffe://example.org/ns/prod\n"),
            nullptr);
  EXPECT_EQ(error_, At(16) + "prefix must end in '/*', got 'spiffe://example.org/ns/prod'");
}

TEST_F(ConfigTest, RuleWithoutMatchersIsRejected) {
  EXPECT_EQ(Load(std::string(kMinimal) + "policy:\n"
                                         "  rules:\n"
                                         "    - name: r\n"
                                         "      action: allow\n"),
            nullptr);
  EXPECT_EQ(error_, At(13) + "policy rule 'r' needs 'from'");
}

TEST_F(ConfigTest, PolicyRulesCompileIntoDecisions) {
  mt_config *c = Load(std::string(kMinimal) +
                      "policy:\n"
                      "  default: deny\n"
                      "  rules:\n"
                      "    - name: prod\n"
                      "      action: allow\n"
                      "      ports: [8080]\n"
                      "      from:\n"
                      "        - prefix: spiffe://example.org/ns/prod/*\n");
  ASSERT_NE(c, nullptr) << error_;
  mt_decision d = mt_policy_decide(c->policy, "spiffe://example.org/ns/prod/sa/a", 8080);
  EXPECT_EQ(d.action, MT_ACTION_ALLOW);
  EXPECT_STREQ(d.rule, "prod");
  d = mt_policy_decide(c->policy, "spiffe://example.org/ns/dev/sa/a", 8080);
  EXPECT_EQ(d.action, MT_ACTION_DENY);
  d = mt_policy_decide(c->policy, "spiffe://example.org/ns/prod/sa/a", 9090);
  EXPECT_EQ(d.action, MT_ACTION_DENY);
  EXPECT_STREQ(d.rule, MT_POLICY_RULE_DEFAULT);
  mt_config_free(c);
}

TEST_F(ConfigTest, CertAndPkcs12AreExclusive) {
  std::string yaml = kMinimal;
  yaml.replace(yaml.find("  key_file: /k.pem\n"), 18,
               "  key_file: /k.pem\n  pkcs12_file: /x.p12\n");
  EXPECT_EQ(Load(yaml), nullptr);
  EXPECT_NE(error_.find("either cert_file + key_file or pkcs12_file"), std::string::npos) << error_;
}

TEST_F(ConfigTest, DuplicateKeyIsRejectedWithItsLine) {
  EXPECT_EQ(Load(std::string(kMinimal) + "trust_domain: other.org\n"), nullptr);
  EXPECT_EQ(error_, At(11) + "duplicate key 'trust_domain'");
}

TEST_F(ConfigTest, NoListenersIsRejected) {
  std::string yaml = kMinimal;
  yaml.erase(yaml.find("inbound:"));
  EXPECT_EQ(Load(yaml), nullptr);
  EXPECT_NE(error_.find("no listeners"), std::string::npos) << error_;
}

TEST_F(ConfigTest, OwnTrustDomainNeedsABundle) {
  mt_config *c = Load(
      "trust_domain: example.org\n"
      "identity: {cert_file: /c, key_file: /k}\n"
      "trust_bundles: [{trust_domain: other.org, file: /b}]\n"
      "inbound: {listeners: [{address: '127.0.0.1:1'}]}\n");
  EXPECT_EQ(c, nullptr);
  EXPECT_NE(error_.find("no trust bundle for the agent's own trust domain"), std::string::npos)
      << error_;
}

TEST_F(ConfigTest, MissingFileIsReported) {
  char err[512];
  EXPECT_EQ(mt_config_load("/nonexistent/mtlsd.yaml", err, sizeof(err)), nullptr);
  EXPECT_STREQ(err, "/nonexistent/mtlsd.yaml:1: cannot open: No such file or directory");
}

TEST(SockaddrTest, ParsesIpv4AndIpv6WithPorts) {
  mt_sockaddr a;
  ASSERT_TRUE(mt_sockaddr_parse("127.0.0.1:8080", &a, 1));
  EXPECT_EQ(mt_sockaddr_port((const sockaddr *)&a.addr), 8080);
  ASSERT_TRUE(mt_sockaddr_parse("[::1]:15006", &a, 1));
  char buf[64];
  mt_sockaddr_format((const sockaddr *)&a.addr, buf, sizeof(buf));
  EXPECT_STREQ(buf, "[::1]:15006");
  EXPECT_FALSE(mt_sockaddr_parse("127.0.0.1", &a, 1));
  EXPECT_TRUE(mt_sockaddr_parse("127.0.0.1", &a, 0));
  EXPECT_FALSE(mt_sockaddr_parse("localhost:80", &a, 1));
  EXPECT_FALSE(mt_sockaddr_parse("127.0.0.1:-1", &a, 1));
  EXPECT_FALSE(mt_sockaddr_parse("127.0.0.1: 80", &a, 1));
  EXPECT_FALSE(mt_sockaddr_parse("127.0.0.1:+80", &a, 1));
  EXPECT_FALSE(mt_sockaddr_parse("127.0.0.1:0", &a, 1));
  EXPECT_FALSE(mt_sockaddr_parse("127.0.0.1:080808", &a, 1));
  EXPECT_FALSE(mt_sockaddr_parse("[::1", &a, 1));
}

// ---- node mode and admin ----------------------------------------------------

const char kNode[] =
    "trust_domain: example.org\n"
    "identity:\n"
    "  spiffe_id: spiffe://example.org/ns/mtls-system/sa/mtlsd-node\n"
    "control_plane:\n"
    "  address: 127.0.0.1:15012\n"
    "  root_file: /r.pem\n"
    "  spiffe_id: spiffe://example.org/ns/mtls-system/sa/mtls-ca\n"
    "inbound:\n"
    "  listeners:\n"
    "    - address: 0.0.0.0:15006\n"
    "node:\n"
    "  name: node-1\n"
    "  workloads:\n"
    "    - address: 10.77.1.2\n"
    "      spiffe_id: spiffe://example.org/ns/demo/sa/frontend\n"
    "    - address: 10.77.1.6\n"
    "      spiffe_id: spiffe://example.org/ns/demo/sa/backend\n"
    "      policy:\n"
    "        default: deny\n"
    "        rules:\n"
    "          - name: fe\n"
    "            action: allow\n"
    "            from: [{id: spiffe://example.org/ns/demo/sa/frontend}]\n";

TEST_F(ConfigTest, NodeModeGivesEachWorkloadItsPolicy) {
  mt_config *c = Load(kNode);
  ASSERT_NE(c, nullptr) << error_;
  ASSERT_TRUE(c->node_mode);
  EXPECT_STREQ(c->node_name, "node-1");
  ASSERT_EQ(c->num_node_workloads, 2u);
  EXPECT_EQ(c->node_workloads[0].mesh, c->mesh); /* no policy of its own: the top level's */
  ASSERT_NE(c->node_workloads[1].mesh, nullptr);
  EXPECT_NE(c->node_workloads[1].mesh, c->mesh);
  mt_decision d = mt_policy_decide(mt_mesh_policy(c->node_workloads[1].mesh),
                                   "spiffe://example.org/ns/demo/sa/other", 8080);
  EXPECT_EQ(d.action, MT_ACTION_DENY);
  mt_config_free(c);
}

TEST_F(ConfigTest, NodeModeNeedsAControlPlane) {
  std::string yaml = kMinimal;
  yaml += "node:\n  name: n\n  workloads:\n    - {address: 10.0.0.1, spiffe_id: "
          "\"spiffe://example.org/ns/a/sa/b\"}\n";
  EXPECT_EQ(Load(yaml), nullptr);
  EXPECT_NE(error_.find("node mode needs 'control_plane'"), std::string::npos) << error_;
}

TEST_F(ConfigTest, NodeWorkloadMistakesAreNamed) {
  std::string yaml = kNode;
  EXPECT_EQ(Load(yaml + "    - {address: 10.77.1.2, spiffe_id: "
                        "\"spiffe://example.org/ns/a/sa/b\"}\n"),
            nullptr);
  EXPECT_NE(error_.find(At(24) + "node workload address listed twice"), std::string::npos)
      << error_;
  EXPECT_EQ(Load(yaml + "    - {address: 10.77.1.9, spiffe_id: \"spiffe://other.org/ns/a/sa/b\"}\n"),
            nullptr);
  EXPECT_NE(error_.find("not in trust domain"), std::string::npos) << error_;
  EXPECT_EQ(Load(yaml + "    - {address: 10.77.1.9, spiffe_id: \"spiffe://example.org/x\", "
                        "port: 1}\n"),
            nullptr);
  EXPECT_NE(error_.find("unknown key 'node.workloads[].port'"), std::string::npos) << error_;
}

TEST_F(ConfigTest, AdminStaysOnLoopbackUnlessAllowed) {
  mt_config *c = Load(kMinimal);
  ASSERT_NE(c, nullptr) << error_;
  EXPECT_TRUE(c->admin_enabled);
  EXPECT_EQ(mt_sockaddr_port((const sockaddr *)&c->admin_address.addr), 15000);
  mt_config_free(c);
  EXPECT_EQ(Load(std::string(kMinimal) + "admin:\n  address: 0.0.0.0:15000\n"), nullptr);
  EXPECT_NE(error_.find(At(12) + "admin.address 0.0.0.0:15000 is not a loopback address"),
            std::string::npos)
      << error_;
  c = Load(std::string(kMinimal) + "admin:\n  address: 0.0.0.0:0\n  allow_non_local: true\n");
  ASSERT_NE(c, nullptr) << error_;
  mt_config_free(c);
}

TEST_F(ConfigTest, SeccompIsOnByDefaultAndTakesTrueFalseOrLog) {
  mt_config *c = Load(kMinimal);
  ASSERT_NE(c, nullptr) << error_;
  EXPECT_EQ(c->seccomp, MT_SECCOMP_ON);
  mt_config_free(c);
  const struct {
    const char *text;
    mt_seccomp_mode mode;
  } cases[] = {{"true", MT_SECCOMP_ON}, {"false", MT_SECCOMP_OFF}, {"log", MT_SECCOMP_LOG}};
  for (const auto &t : cases) {
    c = Load(std::string(kMinimal) + "security:\n  seccomp: " + t.text + "\n");
    ASSERT_NE(c, nullptr) << error_;
    EXPECT_EQ(c->seccomp, t.mode) << t.text;
    mt_config_free(c);
  }
  EXPECT_EQ(Load(std::string(kMinimal) + "security:\n  seccomp: maybe\n"), nullptr);
  EXPECT_NE(error_.find(At(12) + "'security.seccomp' must be true, false or log, not 'maybe'"),
            std::string::npos)
      << error_;
  EXPECT_EQ(Load(std::string(kMinimal) + "security:\n  capabilities: all\n"), nullptr);
  EXPECT_NE(error_.find(At(12) + "unknown key 'security.capabilities'"), std::string::npos)
      << error_;
}

TEST_F(ConfigTest, SeccompChangeNeedsARestart) {
  mt_config *a = Load(kMinimal);
  ASSERT_NE(a, nullptr) << error_;
  mt_config *b = Load(std::string(kMinimal) + "security:\n  seccomp: false\n");
  ASSERT_NE(b, nullptr) << error_;
  char out[256];
  EXPECT_EQ(mt_config_restart_changes(a, b, out, sizeof(out)), 1);
  EXPECT_STREQ(out, "security.seccomp");
  mt_config_free(a);
  mt_config_free(b);
}

TEST_F(ConfigTest, ReloadNamesSettingsThatNeedARestart) {
  mt_config *a = Load(kMinimal);
  ASSERT_NE(a, nullptr) << error_;
  mt_config *b = Load(std::string(kMinimal) + "    - address: 127.0.0.1:15007\nworkers: 3\n");
  ASSERT_NE(b, nullptr) << error_;
  mt_config *same = Load(std::string(kMinimal) + "policy:\n  default: deny\n");
  ASSERT_NE(same, nullptr) << error_;
  char out[256];
  EXPECT_EQ(b->workers, 3);
  EXPECT_EQ(mt_config_restart_changes(a, b, out, sizeof(out)), 2);
  EXPECT_STREQ(out, "workers, inbound.listeners");
  EXPECT_EQ(mt_config_restart_changes(a, same, out, sizeof(out)), 0);
  EXPECT_STREQ(out, "");
  mt_config_free(a);
  mt_config_free(b);
  mt_config_free(same);
}

const char kWorkloadApi[] =
    "trust_domain: example.org\n"
    "identity:\n"
    "  workload_api_socket: unix:///run/spire/sockets/agent.sock\n"
    "inbound:\n"
    "  listeners:\n"
    "    - address: 127.0.0.1:15006\n";

TEST_F(ConfigTest, WorkloadApiSocketIsTheWholeIdentitySource) {
  mt_config *c = Load(kWorkloadApi);
  ASSERT_NE(c, nullptr) << error_;
  EXPECT_STREQ(c->workload_api_source_socket, "unix:///run/spire/sockets/agent.sock");
  EXPECT_EQ(c->workload_api_source_retry_initial_ms, 500);
  EXPECT_EQ(c->workload_api_source_retry_max_ms, 30000);
  EXPECT_EQ(c->spiffe_id, nullptr);
  EXPECT_EQ(c->num_trust_bundles, 0u);
  mt_config_free(c);
  c = Load(std::string(kWorkloadApi) +
           "log_level: info\n"
           "access_log: \"-\"\n");
  ASSERT_NE(c, nullptr) << error_;
  mt_config_free(c);
}

TEST_F(ConfigTest, WorkloadApiSocketMustBeAUnixSocketPath) {
  auto with_socket = [](const std::string &socket) {
    return "trust_domain: example.org\nidentity:\n  workload_api_socket: \"" + socket +
           "\"\ninbound:\n  listeners:\n    - address: 127.0.0.1:15006\n";
  };
  mt_config *c = Load(with_socket("unix:/run/spire/agent.sock"));
  ASSERT_NE(c, nullptr) << error_;
  mt_config_free(c);
  const char *bad[][2] = {
      {"tcp://127.0.0.1:8081", "only Unix domain sockets"},
      {"/run/spire/agent.sock", "only Unix domain sockets"},
      {"unix://host/run/agent.sock", "three slashes"},
      {"unix:run/agent.sock", "must be absolute"},
      {"unix:///", "must be absolute"},
      {"unix:///run/agent.sock?x=1", "no query"},
  };
  for (const auto &b : bad) {
    EXPECT_EQ(Load(with_socket(b[0])), nullptr) << b[0];
    EXPECT_NE(error_.find(At(3) + "'workload_api_socket' must be unix:///absolute/path"),
              std::string::npos)
        << error_;
    EXPECT_NE(error_.find(b[1]), std::string::npos) << error_;
  }
  EXPECT_EQ(Load(with_socket("unix:///" + std::string(120, 'a'))), nullptr);
  EXPECT_NE(error_.find("longer than a Unix socket address holds"), std::string::npos) << error_;
}

TEST_F(ConfigTest, WorkloadApiExcludesOtherSourcesBundlesAndNodeMode) {
  std::string yaml = kWorkloadApi;
  EXPECT_EQ(Load(yaml + "trust_bundles:\n  - trust_domain: example.org\n    file: /b.pem\n"),
            nullptr);
  EXPECT_NE(error_.find("trust bundles come from the Workload API"), std::string::npos) << error_;
  EXPECT_EQ(Load(std::string(kMinimal) + "identity:\n  workload_api_socket: unix:///s\n"), nullptr);
  EXPECT_NE(error_.find("duplicate"), std::string::npos) << error_;
  std::string files =
      "trust_domain: example.org\n"
      "identity:\n"
      "  workload_api_socket: unix:///s.sock\n"
      "  cert_file: /c.pem\n"
      "  key_file: /k.pem\n"
      "inbound:\n"
      "  listeners:\n"
      "    - address: 127.0.0.1:15006\n";
  EXPECT_EQ(Load(files), nullptr);
  EXPECT_NE(error_.find("identity.workload_api_socket and certificate files"), std::string::npos)
      << error_;
  EXPECT_EQ(Load(yaml + "control_plane:\n  address: 127.0.0.1:15012\n  root_file: /r.pem\n"
                        "  spiffe_id: spiffe://example.org/cp\n"),
            nullptr);
  EXPECT_NE(error_.find("identity.workload_api_socket and control_plane are exclusive"),
            std::string::npos)
      << error_;
  EXPECT_EQ(Load(yaml + "node:\n  name: n\n  workloads:\n    - {address: 10.0.0.1, spiffe_id: "
                        "\"spiffe://example.org/ns/a/sa/b\"}\n"),
            nullptr);
  EXPECT_NE(error_.find("node mode cannot take identities from the Workload API"),
            std::string::npos)
      << error_;
}

TEST_F(ConfigTest, WorkloadApiSpiffeIdAndRetriesAreChecked) {
  std::string ok =
      "trust_domain: example.org\n"
      "identity:\n"
      "  workload_api_socket: unix:///s.sock\n"
      "  spiffe_id: spiffe://example.org/ns/a/sa/web\n"
      "  workload_api_retry_initial_ms: 100\n"
      "  workload_api_retry_max_ms: 2000\n"
      "inbound:\n"
      "  listeners:\n"
      "    - address: 127.0.0.1:15006\n";
  mt_config *c = Load(ok);
  ASSERT_NE(c, nullptr) << error_;
  EXPECT_STREQ(c->spiffe_id, "spiffe://example.org/ns/a/sa/web");
  EXPECT_EQ(c->workload_api_source_retry_initial_ms, 100);
  EXPECT_EQ(c->workload_api_source_retry_max_ms, 2000);
  mt_config_free(c);
  std::string other = ok;
  other.replace(other.find("example.org/ns"), 11, "other.org");
  EXPECT_EQ(Load(other), nullptr);
  EXPECT_NE(error_.find("is not in trust domain 'example.org'"), std::string::npos) << error_;
  std::string inverted = ok;
  inverted.replace(inverted.find("initial_ms: 100"), 15, "initial_ms: 5000");
  EXPECT_EQ(Load(inverted), nullptr);
  EXPECT_NE(error_.find("workload_api_retry_initial_ms (5000) is larger"), std::string::npos)
      << error_;
}

TEST_F(ConfigTest, WorkloadApiSocketChangeNeedsARestart) {
  mt_config *a = Load(kWorkloadApi);
  ASSERT_NE(a, nullptr) << error_;
  std::string yaml = kWorkloadApi;
  yaml.replace(yaml.find("agent.sock"), 10, "other.sock");
  mt_config *b = Load(yaml);
  ASSERT_NE(b, nullptr) << error_;
  char out[256];
  EXPECT_EQ(mt_config_restart_changes(a, b, out, sizeof(out)), 1);
  EXPECT_STREQ(out, "identity.workload_api_socket");
  mt_config_free(a);
  mt_config_free(b);
}

}  // namespace

TEST_F(ConfigTest, WorkloadApiNeedsTheControlPlaneAndTheApplicationsUsers) {
  const std::string cp =
      "trust_domain: example.org\n"
      "identity:\n"
      "  spiffe_id: spiffe://example.org/ns/a/sa/x\n"
      "control_plane:\n"
      "  root_file: /dev/null\n"
      "  spiffe_id: spiffe://example.org/ns/mtls-system/sa/mtls-ca\n"
      "  address: 127.0.0.1:15012\n"
      "inbound:\n"
      "  listeners:\n"
      "    - address: 127.0.0.1:15006\n";
  mt_config *c = Load(cp +
                      "workload_api:\n"
                      "  socket: /run/mtlsd/workload.sock\n"
                      "  allowed_uids: [1000, 1001]\n"
                      "  allowed_gids: [2000]\n");
  ASSERT_NE(c, nullptr) << error_;
  EXPECT_STREQ(c->workload_api_socket, "/run/mtlsd/workload.sock");
  ASSERT_EQ(c->num_workload_api_uids, 2u);
  EXPECT_EQ(c->workload_api_uids[1], 1001u);
  ASSERT_EQ(c->num_workload_api_gids, 1u);
  mt_config_free(c);

  struct {
    std::string yaml, error;
  } bad[] = {
      {cp + "workload_api:\n  socket: /run/w.sock\n", "needs 'allowed_uids' or 'allowed_gids'"},
      {cp + "workload_api:\n  socket: relative.sock\n  allowed_uids: [1]\n",
       "must be an absolute path"},
      {cp + "workload_api:\n  socket: /w.sock\n  allowed_uids: [-1]\n", "must be between"},
      {cp + "workload_api:\n  socket: /w.sock\n  allowed_uids: 1000\n",
       "must be a list of numeric ids"},
      {cp + "workload_api:\n  allowed_uids: [1]\n", "workload_api needs 'socket'"},
      {cp + "workload_api:\n  socket: /w.sock\n  allowed_uids: [1]\n  colour: red\n",
       "unknown key 'workload_api.colour'"},
      {std::string(kMinimal) + "workload_api:\n  socket: /w.sock\n  allowed_uids: [1]\n",
       "workload_api needs 'control_plane'"},
      {cp + "node: {name: n1, workloads: [{address: 10.0.0.1, spiffe_id: "
            "'spiffe://example.org/ns/a/sa/x'}]}\n"
            "workload_api:\n  socket: /w.sock\n  allowed_uids: [1]\n",
       "are for sidecar mode"},
  };
  for (const auto &b : bad) {
    EXPECT_EQ(Load(b.yaml), nullptr) << b.yaml;
    EXPECT_NE(error_.find(b.error), std::string::npos) << error_;
  }
}
