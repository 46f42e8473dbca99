// Interception rules (`mtlsd init-iptables`): the `interception:` config
// section, and the exact iptables-restore text generated from it.
#include <gtest/gtest.h>

#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

#include <string>

#include "agent/config.h"
#include "agent/redirect.h"

namespace {

// Everything a config needs besides listeners and the interception section.
const char kBase[] =
    "trust_domain: example.org\n"
    "identity:\n"
    "  cert_file: /c.pem\n"
    "  key_file: /k.pem\n"
    "trust_bundles:\n"
    "  - trust_domain: example.org\n"
    "    file: /b.pem\n";

// The same with certificates from a control plane at |address|.
std::string ControlPlaneBase(const std::string &address) {
  return "trust_domain: example.org\n"
         "identity:\n"
         "  spiffe_id: spiffe://example.org/ns/default/sa/frontend\n"
         "control_plane:\n"
         "  address: \"" +
         address +
         "\"\n"
         "  root_file: /r.pem\n"
         "  spiffe_id: spiffe://example.org/ns/mtls-system/sa/mtls-ca\n";
}

const char kRedirectListeners[] =
    "inbound:\n"
    "  listeners:\n"
    "    - address: 0.0.0.0:15006\n"
    "outbound:\n"
    "  listeners:\n"
    "    - address: 127.0.0.1:15001\n";

const char kChains[] =
    "*nat\n"
    ":MTLSD_INBOUND - [0:0]\n"
    ":MTLSD_IN_REDIRECT - [0:0]\n"
    ":MTLSD_OUTPUT - [0:0]\n"
    ":MTLSD_REDIRECT - [0:0]\n"
    ":MTLSD_NODE_OUT - [0:0]\n";

const char kJumps[] =
    "-A PREROUTING -p tcp -j MTLSD_INBOUND\n"
    "-A OUTPUT -p tcp -j MTLSD_OUTPUT\n"
    "COMMIT\n";

class RedirectTest : public ::testing::Test {
 protected:
  void TearDown() override {
    mt_config_free(config_);
    if (!path_.empty()) unlink(path_.c_str());
  }

  // Writes |yaml| to a temp file and loads it; on failure |error_| holds the message.
  mt_config *Load(const std::string &yaml) {
    mt_config_free(config_); /* a test may load more than once */
    config_ = nullptr;
    if (!path_.empty()) unlink(path_.c_str());
    char tmpl[] = "/tmp/mtlsd-redirect-XXXXXX";
    int fd = mkstemp(tmpl);
    EXPECT_GE(fd, 0);
    EXPECT_EQ(write(fd, yaml.data(), yaml.size()), (ssize_t)yaml.size());
    close(fd);
    path_ = tmpl;
    char err[1024] = "";
    config_ = mt_config_load(path_.c_str(), err, sizeof(err));
    error_ = err;
    return config_;
  }

  std::string At(int line) { return path_ + ":" + std::to_string(line) + ": "; }

  static std::string Install(const mt_config *c, int family, mt_redirect_state now = {0, 0, 0}) {
    char *text = mt_redirect_install_text(c, NULL, family, &now);
    EXPECT_NE(text, nullptr);
    std::string s = text ? text : "";
    free(text);
    return s;
  }

  static std::string Remove(mt_redirect_state now) {
    char *text = mt_redirect_remove_text(&now);
    EXPECT_NE(text, nullptr);
    std::string s = text ? text : "";
    free(text);
    return s;
  }

  mt_config *config_ = nullptr;
  std::string path_;
  std::string error_;
};

// ---- the interception section ---------------------------------------------

TEST_F(RedirectTest, NoSectionMeansNoInterception) {
  ASSERT_NE(Load(std::string(kBase) + kRedirectListeners), nullptr) << error_;
  EXPECT_FALSE(config_->has_interception);
}

TEST_F(RedirectTest, DefaultsComeFromTheRedirectListeners) {
  ASSERT_NE(Load(std::string(kBase) + "inbound:\n"
                                      "  listeners:\n"
                                      "    - address: 127.0.0.1:16443\n"
                                      "      app_port: 8080\n"
                                      "    - address: 0.0.0.0:25006\n"
                                      "outbound:\n"
                                      "  listeners:\n"
                                      "    - address: 127.0.0.1:25001\n"
                                      "interception:\n"
                                      "  proxy_uid: 1337\n"),
            nullptr)
      << error_;
  const mt_interception_config &ic = config_->interception;
  EXPECT_TRUE(config_->has_interception);
  EXPECT_EQ(ic.proxy_uid, 1337);
  EXPECT_FALSE(ic.has_proxy_gid);
  EXPECT_EQ(ic.inbound_port, 25006);  // the fixed mapping (16443) is skipped
  EXPECT_EQ(ic.outbound_port, 25001);
  EXPECT_TRUE(ic.include_inbound_ports.all);
  EXPECT_TRUE(ic.include_outbound_cidrs.all);
  EXPECT_EQ(ic.exclude_inbound_ports.count, 0u);
  EXPECT_EQ(ic.exclude_outbound_cidrs.count, 0u);
  EXPECT_EQ(mt_sockaddr_port((const sockaddr *)&ic.app_source_address.addr), 0);
}

TEST_F(RedirectTest, WithoutRedirectListenersTheIstioPortsAreDefaults) {
  ASSERT_NE(Load(std::string(kBase) + "outbound:\n"
                                      "  listeners:\n"
                                      "    - address: 127.0.0.1:18080\n"
                                      "      destination: 10.0.0.7:15006\n"
                                      "interception:\n"
                                      "  proxy_uid: 0\n"),
            nullptr)
      << error_;
  EXPECT_EQ(config_->interception.outbound_port, 15001);
  EXPECT_EQ(config_->interception.inbound_port, 15006);
}

TEST_F(RedirectTest, ProxyUidIsRequired) {
  EXPECT_EQ(Load(std::string(kBase) + kRedirectListeners +
                 "interception:\n"        // line 14
                 "  proxy_gid: 1337\n"),  // line 15
            nullptr);
  EXPECT_EQ(error_, At(15) + "interception needs 'proxy_uid'");
}

TEST_F(RedirectTest, UnknownInterceptionKeyNamesItsPath) {
  EXPECT_EQ(Load(std::string(kBase) + kRedirectListeners +
                 "interception:\n"
                 "  proxy_uid: 1337\n"
                 "  exclude_ports: [22]\n"),  // line 16
            nullptr);
  EXPECT_EQ(error_, At(16) + "unknown key 'interception.exclude_ports'");
}

TEST_F(RedirectTest, BadPortInAListNamesTheList) {
  EXPECT_EQ(Load(std::string(kBase) + kRedirectListeners +
                 "interception:\n"
                 "  proxy_uid: 1337\n"
                 "  exclude_inbound_ports:\n"
                 "    - 22\n"
                 "    - 70000\n"),  // line 18
            nullptr);
  EXPECT_EQ(error_, At(18) + "'exclude_inbound_ports[]' must be between 1 and 65535, got 70000");
}

TEST_F(RedirectTest, StarIsOnlyForIncludeLists) {
  EXPECT_EQ(Load(std::string(kBase) + kRedirectListeners +
                 "interception:\n"
                 "  proxy_uid: 1337\n"
                 "  exclude_outbound_ports: \"*\"\n"),  // line 16
            nullptr);
  EXPECT_EQ(error_, At(16) + "'exclude_outbound_ports' must be a list of ports");
  EXPECT_EQ(Load(std::string(kBase) + kRedirectListeners +
                 "interception:\n"
                 "  proxy_uid: 1337\n"
                 "  include_inbound_ports: all\n"),
            nullptr);
  EXPECT_EQ(error_, At(16) + "'include_inbound_ports' must be \"*\" or a list of ports");
}

TEST_F(RedirectTest, MalformedCidrIsRejected) {
  for (const char *bad : {"10.0.0.0/33", "10.0.0/8", "10.0.0.0/", "10.0.0.0/8x", "fd00::/129",
                          "example.com/32", "/8"}) {
    EXPECT_EQ(Load(std::string(kBase) + kRedirectListeners +
                   "interception:\n"
                   "  proxy_uid: 1337\n"
                   "  exclude_outbound_cidrs: [\"" +
                   bad + "\"]\n"),
              nullptr)
        << bad;
    EXPECT_EQ(error_, At(16) + "'exclude_outbound_cidrs[]': '" + bad + "' is not a valid CIDR");
  }
}

TEST_F(RedirectTest, CidrWithHostBitsIsRejected) {
  EXPECT_EQ(Load(std::string(kBase) + kRedirectListeners +
                 "interception:\n"
                 "  proxy_uid: 1337\n"
                 "  include_outbound_cidrs: [10.1.2.3/16]\n"),
            nullptr);
  EXPECT_EQ(error_, At(16) +
                        "'include_outbound_cidrs[]': '10.1.2.3/16' has address bits set beyond "
                        "the /16 prefix");
}

TEST_F(RedirectTest, AppSourceAddressTakesNoPort) {
  EXPECT_EQ(Load(std::string(kBase) + kRedirectListeners +
                 "interception:\n"
                 "  proxy_uid: 1337\n"
                 "  app_source_address: 127.0.0.6:80\n"),
            nullptr);
  EXPECT_EQ(error_, At(16) + "'app_source_address' is an IP address without a port");
}

// ---- generated text --------------------------------------------------------

TEST_F(RedirectTest, MinimalConfigCapturesEverythingButTheAgent) {
  ASSERT_NE(Load(std::string(kBase) + kRedirectListeners +
                 "interception:\n"
                 "  proxy_uid: 1337\n"),
            nullptr)
      << error_;
  EXPECT_EQ(Install(config_, AF_INET),
            std::string(kChains) +
                "-A MTLSD_INBOUND -p tcp -m tcp --dport 15006 -j RETURN\n"
                "-A MTLSD_INBOUND -p tcp -j MTLSD_IN_REDIRECT\n"
                "-A MTLSD_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006\n"
                "-A MTLSD_OUTPUT -m owner --uid-owner 1337 -j RETURN\n"
                "-A MTLSD_OUTPUT -s 127.0.0.6/32 -j RETURN\n"
                "-A MTLSD_OUTPUT -d 127.0.0.1/32 -j RETURN\n"
                "-A MTLSD_OUTPUT -j MTLSD_REDIRECT\n"
                "-A MTLSD_REDIRECT -p tcp -j REDIRECT --to-ports 15001\n" +
                kJumps);
  EXPECT_FALSE(mt_redirect_wants_ipv6(config_, NULL));
}

// The example from README.md: Istio's excluded ports, a control plane, a
// Kubernetes API CIDR and an excluded outbound port.
TEST_F(RedirectTest, FullConfigOrdersTheExclusionsBeforeTheCapture) {
  ASSERT_NE(Load(ControlPlaneBase("10.0.0.2:15012") +
                 "inbound:\n"
                 "  listeners:\n"
                 "    - address: 0.0.0.0:15006\n"
                 "    - address: 0.0.0.0:16443\n"
                 "      app_port: 8080\n"
                 "outbound:\n"
                 "  listeners:\n"
                 "    - address: 127.0.0.1:15001\n"
                 "    - address: 0.0.0.0:18080\n"
                 "      destination: 10.0.0.7:15006\n"
                 "interception:\n"
                 "  proxy_uid: 1337\n"
                 "  proxy_gid: 1338\n"
                 "  outbound_port: 15001\n"
                 "  inbound_port: 15006\n"
                 "  include_inbound_ports: \"*\"\n"
                 "  exclude_inbound_ports: [15008, 15020, 15021, 15090, 22, 15006]\n"
                 "  exclude_outbound_ports: [25, 25]\n"
                 "  exclude_outbound_cidrs: [\"10.96.0.1/32\", 169.254.0.0/16]\n"
                 "  include_outbound_cidrs: \"*\"\n"
                 "  app_source_address: 127.0.0.6\n"),
            nullptr)
      << error_;
  EXPECT_EQ(Install(config_, AF_INET),
            std::string(kChains) +
                "-A MTLSD_INBOUND -p tcp -m tcp --dport 15008 -j RETURN\n"
                "-A MTLSD_INBOUND -p tcp -m tcp --dport 15020 -j RETURN\n"
                "-A MTLSD_INBOUND -p tcp -m tcp --dport 15021 -j RETURN\n"
                "-A MTLSD_INBOUND -p tcp -m tcp --dport 15090 -j RETURN\n"
                "-A MTLSD_INBOUND -p tcp -m tcp --dport 22 -j RETURN\n"
                "-A MTLSD_INBOUND -p tcp -m tcp --dport 15006 -j RETURN\n"
                "-A MTLSD_INBOUND -p tcp -m tcp --dport 16443 -j RETURN\n"
                "-A MTLSD_INBOUND -p tcp -j MTLSD_IN_REDIRECT\n"
                "-A MTLSD_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006\n"
                "-A MTLSD_OUTPUT -m owner --uid-owner 1337 -j RETURN\n"
                "-A MTLSD_OUTPUT -m owner --gid-owner 1338 -j RETURN\n"
                "-A MTLSD_OUTPUT -s 127.0.0.6/32 -j RETURN\n"
                "-A MTLSD_OUTPUT -d 127.0.0.1/32 -j RETURN\n"
                "-A MTLSD_OUTPUT -o lo -p tcp -m tcp --dport 18080 -j RETURN\n"
                "-A MTLSD_OUTPUT -d 10.0.0.2/32 -p tcp -m tcp --dport 15012 -j RETURN\n"
                "-A MTLSD_OUTPUT -d 10.96.0.1/32 -j RETURN\n"
                "-A MTLSD_OUTPUT -d 169.254.0.0/16 -j RETURN\n"
                "-A MTLSD_OUTPUT -p tcp -m tcp --dport 25 -j RETURN\n"
                "-A MTLSD_OUTPUT -j MTLSD_REDIRECT\n"
                "-A MTLSD_REDIRECT -p tcp -j REDIRECT --to-ports 15001\n" +
                kJumps);
}

TEST_F(RedirectTest, IncludeListsCaptureOnlyWhatTheyName) {
  ASSERT_NE(Load(std::string(kBase) + kRedirectListeners +
                 "interception:\n"
                 "  proxy_uid: 1337\n"
                 "  include_inbound_ports: [8080, 22, 9090, 8080]\n"
                 "  exclude_inbound_ports: [22]\n"
                 "  include_outbound_cidrs: [10.0.0.0/8, \"fd00::/8\", 0.0.0.0/0]\n"),
            nullptr)
      << error_;
  EXPECT_EQ(Install(config_, AF_INET),
            std::string(kChains) +
                "-A MTLSD_INBOUND -p tcp -m tcp --dport 22 -j RETURN\n"
                "-A MTLSD_INBOUND -p tcp -m tcp --dport 15006 -j RETURN\n"
                "-A MTLSD_INBOUND -p tcp -m tcp --dport 8080 -j MTLSD_IN_REDIRECT\n"
                "-A MTLSD_INBOUND -p tcp -m tcp --dport 9090 -j MTLSD_IN_REDIRECT\n"
                "-A MTLSD_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006\n"
                "-A MTLSD_OUTPUT -m owner --uid-owner 1337 -j RETURN\n"
                "-A MTLSD_OUTPUT -s 127.0.0.6/32 -j RETURN\n"
                "-A MTLSD_OUTPUT -d 127.0.0.1/32 -j RETURN\n"
                "-A MTLSD_OUTPUT -d 10.0.0.0/8 -j MTLSD_REDIRECT\n"
                "-A MTLSD_OUTPUT -j MTLSD_REDIRECT\n"  // 0.0.0.0/0: iptables omits "-d"
                "-A MTLSD_REDIRECT -p tcp -j REDIRECT --to-ports 15001\n" +
                kJumps);
}

TEST_F(RedirectTest, Ipv6RulesUseIpv6AddressesOnly) {
  ASSERT_NE(Load(ControlPlaneBase("[fd00::2]:15012") +
                 "inbound:\n"
                 "  listeners:\n"
                 "    - address: \"[::]:15006\"\n"
                 "outbound:\n"
                 "  listeners:\n"
                 "    - address: \"[::1]:15001\"\n"
                 "interception:\n"
                 "  proxy_uid: 1337\n"
                 "  exclude_outbound_cidrs: [10.96.0.0/12, \"fd00:10:96::/112\"]\n"
                 "  include_outbound_cidrs: [\"::/0\"]\n"),
            nullptr)
      << error_;
  EXPECT_TRUE(mt_redirect_wants_ipv6(config_, NULL));
  EXPECT_EQ(Install(config_, AF_INET6),
            std::string(kChains) +
                "-A MTLSD_INBOUND -p tcp -m tcp --dport 15006 -j RETURN\n"
                "-A MTLSD_INBOUND -p tcp -j MTLSD_IN_REDIRECT\n"
                "-A MTLSD_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006\n"
                "-A MTLSD_OUTPUT -m owner --uid-owner 1337 -j RETURN\n"
                "-A MTLSD_OUTPUT -d ::1/128 -j RETURN\n"
                "-A MTLSD_OUTPUT -d fd00::2/128 -p tcp -m tcp --dport 15012 -j RETURN\n"
                "-A MTLSD_OUTPUT -d fd00:10:96::/112 -j RETURN\n"
                "-A MTLSD_OUTPUT -j MTLSD_REDIRECT\n"
                "-A MTLSD_REDIRECT -p tcp -j REDIRECT --to-ports 15001\n" +
                kJumps);
  // The IPv4 table keeps 127.0.0.6 and the IPv4 CIDR, and captures nothing
  // (the include list names no IPv4 block).
  EXPECT_EQ(Install(config_, AF_INET),
            std::string(kChains) +
                "-A MTLSD_INBOUND -p tcp -m tcp --dport 15006 -j RETURN\n"
                "-A MTLSD_INBOUND -p tcp -j MTLSD_IN_REDIRECT\n"
                "-A MTLSD_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006\n"
                "-A MTLSD_OUTPUT -m owner --uid-owner 1337 -j RETURN\n"
                "-A MTLSD_OUTPUT -s 127.0.0.6/32 -j RETURN\n"
                "-A MTLSD_OUTPUT -d 127.0.0.1/32 -j RETURN\n"
                "-A MTLSD_OUTPUT -d 10.96.0.0/12 -j RETURN\n"
                "-A MTLSD_REDIRECT -p tcp -j REDIRECT --to-ports 15001\n" +
                kJumps);
}

TEST_F(RedirectTest, AnIpv6CidrAloneAsksForIpv6Rules) {
  ASSERT_NE(Load(std::string(kBase) + kRedirectListeners +
                 "interception:\n"
                 "  proxy_uid: 1337\n"
                 "  exclude_outbound_cidrs: [\"fd00::/8\"]\n"),
            nullptr)
      << error_;
  EXPECT_TRUE(mt_redirect_wants_ipv6(config_, NULL));
}

// ---- idempotence -----------------------------------------------------------

TEST_F(RedirectTest, InstalledJumpsAreNotAddedAgain) {
  ASSERT_NE(Load(std::string(kBase) + kRedirectListeners + "interception:\n  proxy_uid: 1\n"),
            nullptr)
      << error_;
  std::string text = Install(config_, AF_INET, {1, 1, 4});
  EXPECT_EQ(text.find("PREROUTING"), std::string::npos) << text;
  EXPECT_EQ(text.find("-A OUTPUT"), std::string::npos) << text;
  std::string tail = "-A MTLSD_REDIRECT -p tcp -j REDIRECT --to-ports 15001\nCOMMIT\n";
  ASSERT_GE(text.size(), tail.size());
  EXPECT_EQ(text.substr(text.size() - tail.size()), tail);
}

TEST_F(RedirectTest, DuplicateJumpsAreDeletedDownToOne) {
  ASSERT_NE(Load(std::string(kBase) + kRedirectListeners + "interception:\n  proxy_uid: 1\n"),
            nullptr)
      << error_;
  std::string text = Install(config_, AF_INET, {3, 2, 4});
  std::string tail =
      "-A MTLSD_REDIRECT -p tcp -j REDIRECT --to-ports 15001\n"
      "-D PREROUTING -p tcp -j MTLSD_INBOUND\n"
      "-D PREROUTING -p tcp -j MTLSD_INBOUND\n"
      "-D OUTPUT -p tcp -j MTLSD_OUTPUT\n"
      "COMMIT\n";
  ASSERT_GE(text.size(), tail.size());
  EXPECT_EQ(text.substr(text.size() - tail.size()), tail);
}

TEST_F(RedirectTest, RemoveDeletesJumpsThenChains) {
  EXPECT_EQ(Remove({2, 1, 4}), std::string(kChains) +
                                   "-D PREROUTING -p tcp -j MTLSD_INBOUND\n"
                                   "-D PREROUTING -p tcp -j MTLSD_INBOUND\n"
                                   "-D OUTPUT -p tcp -j MTLSD_OUTPUT\n"
                                   "-X MTLSD_INBOUND\n"
                                   "-X MTLSD_IN_REDIRECT\n"
                                   "-X MTLSD_OUTPUT\n"
                                   "-X MTLSD_REDIRECT\n"
                                   "-X MTLSD_NODE_OUT\n"
                                   "COMMIT\n");
}

TEST_F(RedirectTest, RemovingNothingIsEmpty) { EXPECT_EQ(Remove({0, 0, 0}), ""); }

TEST_F(RedirectTest, StateCountsOnlyOurExactJumpsAndChains) {
  const char listing[] =
      "-P PREROUTING ACCEPT\n"
      "-P OUTPUT ACCEPT\n"
      "-N MTLSD_INBOUND\n"
      "-N MTLSD_OUTPUT\n"
      "-N MTLSD_OUTPUT_OTHER\n"
      "-N KUBE-SERVICES\n"
      "-A PREROUTING -p tcp -j MTLSD_INBOUND\n"
      "-A PREROUTING -p udp -j MTLSD_INBOUND\n"
      "-A PREROUTING -p tcp -j MTLSD_INBOUND\n"
      "-A PREROUTING -j KUBE-SERVICES\n"
      "-A OUTPUT -p tcp -j MTLSD_OUTPUT\n"
      "-A MTLSD_OUTPUT -p tcp -j MTLSD_OUTPUT_OTHER\n"
      "-A OUTPUT -p tcp -j MTLSD_OUTPUT";  // no final newline
  mt_redirect_state st;
  mt_redirect_state_parse(listing, &st);
  EXPECT_EQ(st.prerouting_jumps, 2u);
  EXPECT_EQ(st.output_jumps, 2u);
  EXPECT_EQ(st.chains, 2u);
  mt_redirect_state_parse("", &st);
  EXPECT_EQ(st.prerouting_jumps + st.output_jumps + st.chains, 0u);
}

}  // namespace

// ---- node mode -------------------------------------------------------------

TEST_F(RedirectTest, NodeModeCapturesPodTrafficInPreroutingOnly) {
  ASSERT_NE(Load(std::string(kBase) + kRedirectListeners +
                 "interception:\n"
                 "  proxy_uid: 1337\n"
                 "  node_pod_cidrs: [10.77.1.0/24]\n"
                 "  exclude_inbound_ports: [22]\n"
                 "  exclude_outbound_cidrs: [10.96.0.0/12]\n"),
            nullptr)
      << error_;
  EXPECT_EQ(Install(config_, AF_INET, {1, 1, 0}),
            std::string(kChains) +
                "-A MTLSD_INBOUND -s 10.77.1.0/24 -j MTLSD_NODE_OUT\n"
                "-A MTLSD_INBOUND -p tcp -m tcp --dport 22 -j RETURN\n"
                "-A MTLSD_INBOUND -d 10.77.1.0/24 -j MTLSD_IN_REDIRECT\n"
                "-A MTLSD_NODE_OUT -d 10.96.0.0/12 -j RETURN\n"
                "-A MTLSD_NODE_OUT -j MTLSD_REDIRECT\n"
                "-A MTLSD_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006\n"
                "-A MTLSD_REDIRECT -p tcp -j REDIRECT --to-ports 15001\n"
                "-D PREROUTING -p tcp -j MTLSD_INBOUND\n" /* re-inserted above kube-proxy */
                "-I PREROUTING 1 -p tcp -j MTLSD_INBOUND\n"
                "-D OUTPUT -p tcp -j MTLSD_OUTPUT\n" /* a sidecar-layout leftover goes */
                "COMMIT\n");
}

TEST_F(RedirectTest, NodePodCidrCannotBeEverything) {
  EXPECT_EQ(Load(std::string(kBase) + kRedirectListeners +
                 "interception:\n"
                 "  proxy_uid: 1337\n"
                 "  node_pod_cidrs: [0.0.0.0/0]\n"),
            nullptr);
  EXPECT_NE(error_.find("node_pod_cidrs"), std::string::npos) << error_;
}

// ---- node pod CIDRs from the control plane ----------------------------------

std::string NodeFromControlPlane(const std::string &interception_extra) {
  return ControlPlaneBase("10.96.0.12:15012") +
         "  token_file: /var/run/secrets/tokens/mtls-token\n"
         "node: {name: node-1}\n" +
         kRedirectListeners +
         "interception:\n"
         "  proxy_uid: 1337\n"
         "  node_pod_cidrs: from_control_plane\n" +
         interception_extra;
}

TEST_F(RedirectTest, FromControlPlaneLeavesTheListEmptyAndWaitsThreeMinutesByDefault) {
  ASSERT_NE(Load(NodeFromControlPlane("")), nullptr) << error_;
  EXPECT_TRUE(config_->interception.node_pod_cidrs_from_cp);
  EXPECT_EQ(config_->interception.node_pod_cidrs.count, 0u);
  EXPECT_EQ(config_->interception.node_pod_cidrs_wait_s, 180);
  // Without the answer there is no node layout to print: the config's own
  // list is empty, so only an answer can select it (redirect.c asks first).
  EXPECT_EQ(Install(config_, AF_INET).find("-s 10."), std::string::npos);
}

TEST_F(RedirectTest, TheWaitIsConfigurable) {
  ASSERT_NE(Load(NodeFromControlPlane("  node_pod_cidrs_wait_s: 5\n")), nullptr) << error_;
  EXPECT_EQ(config_->interception.node_pod_cidrs_wait_s, 5);
  EXPECT_EQ(Load(NodeFromControlPlane("  node_pod_cidrs_wait_s: 0\n")), nullptr);
  EXPECT_NE(error_.find("node_pod_cidrs_wait_s"), std::string::npos) << error_;
}

TEST_F(RedirectTest, FromControlPlaneNeedsAControlPlaneToken) {
  std::string yaml = NodeFromControlPlane("");
  yaml.replace(yaml.find("  token_file:"), yaml.find("node:") - yaml.find("  token_file:"), "");
  EXPECT_EQ(Load(yaml), nullptr);
  EXPECT_NE(error_.find("interception.node_pod_cidrs: from_control_plane needs control_plane with "
                        "a token_file"),
            std::string::npos)
      << error_;
}

TEST_F(RedirectTest, OtherWordsAreNotCidrLists) {
  EXPECT_EQ(Load(std::string(kBase) + kRedirectListeners +
                 "interception:\n"
                 "  proxy_uid: 1337\n"
                 "  node_pod_cidrs: from_the_api\n"),
            nullptr);
  EXPECT_EQ(error_, At(16) +
                        "'node_pod_cidrs' must be a list of CIDRs or \"from_control_plane\" (the "
                        "node's spec.podCIDRs, asked of the control plane)");
}

TEST_F(RedirectTest, TheAnsweredCidrsSelectTheNodeLayoutPerFamily) {
  ASSERT_NE(Load(NodeFromControlPlane("")), nullptr) << error_;
  mt_cidr cidrs[2];
  char why[128];
  ASSERT_TRUE(mt_cidr_parse("10.244.2.0/24", &cidrs[0], why, sizeof(why))) << why;
  ASSERT_TRUE(mt_cidr_parse("fd00:10:244:2::/64", &cidrs[1], why, sizeof(why))) << why;
  mt_cidr_list answered = {0, cidrs, 2};
  EXPECT_FALSE(mt_redirect_wants_ipv6(config_, NULL));
  EXPECT_TRUE(mt_redirect_wants_ipv6(config_, &answered));
  mt_redirect_state fresh = {0, 0, 0};
  char *v4 = mt_redirect_install_text(config_, &answered, AF_INET, &fresh);
  char *v6 = mt_redirect_install_text(config_, &answered, AF_INET6, &fresh);
  ASSERT_NE(v4, nullptr);
  ASSERT_NE(v6, nullptr);
  std::string t4 = v4, t6 = v6;
  free(v4);
  free(v6);
  EXPECT_NE(t4.find("-A MTLSD_INBOUND -s 10.244.2.0/24 -j MTLSD_NODE_OUT\n"), std::string::npos);
  EXPECT_NE(t4.find("-A MTLSD_INBOUND -d 10.244.2.0/24 -j MTLSD_IN_REDIRECT\n"), std::string::npos);
  EXPECT_EQ(t4.find("fd00"), std::string::npos);
  EXPECT_NE(t6.find("-A MTLSD_INBOUND -s fd00:10:244:2::/64 -j MTLSD_NODE_OUT\n"), std::string::npos);
  EXPECT_NE(t6.find("-A MTLSD_INBOUND -d fd00:10:244:2::/64 -j MTLSD_IN_REDIRECT\n"),
            std::string::npos);
  EXPECT_EQ(t6.find("10.244"), std::string::npos);
  EXPECT_NE(t4.find("-I PREROUTING 1 -p tcp -j MTLSD_INBOUND\n"), std::string::npos);
}

TEST_F(RedirectTest, AnIpv6PodCidrInTheConfigInstallsIpv6Rules) {
  // Before, only listeners, the control plane and the outbound CIDR lists
  // counted: a dual-stack node's IPv6 pods went uncaptured.
  ASSERT_NE(Load(std::string(kBase) + kRedirectListeners +
                 "interception:\n"
                 "  proxy_uid: 1337\n"
                 "  node_pod_cidrs: [10.77.1.0/24, 'fd00:77:1::/64']\n"),
            nullptr)
      << error_;
  EXPECT_TRUE(mt_redirect_wants_ipv6(config_, NULL));
}
