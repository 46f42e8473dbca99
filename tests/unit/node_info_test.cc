// The control plane's NodeInfo answer as init-iptables reads it
// (agent/node_info_client.h): only a usable list of CIDRs is accepted.
#include "agent/node_info_client.h"

#include <arpa/inet.h>

#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "proto/mtlsd/node.pb-c.h"

namespace {

std::vector<uint8_t> Answer(const char *node, std::vector<const char *> cidrs) {
  Mtlsd__Node__V1__NodeInfoResponse r = MTLSD__NODE__V1__NODE_INFO_RESPONSE__INIT;
  r.node_name = const_cast<char *>(node);
  r.n_pod_cidrs = cidrs.size();
  r.pod_cidrs = const_cast<char **>(cidrs.data());
  std::vector<uint8_t> out(mtlsd__node__v1__node_info_response__get_packed_size(&r));
  mtlsd__node__v1__node_info_response__pack(&r, out.data());
  return out;
}

// "" when accepted, else the reason.
std::string Decode(const std::vector<uint8_t> &msg, mt_node_info *out) {
  char why[256] = "";
  if (mt_node_info_decode(msg.data(), msg.size(), out, why, sizeof(why))) return "";
  return why;
}

TEST(NodeInfo, ADualStackAnswerIsRead) {
  mt_node_info info;
  ASSERT_EQ(Decode(Answer("node-2", {"10.244.2.0/24", "fd00:10:244:2::/64"}), &info), "");
  EXPECT_STREQ(info.node_name, "node-2");
  ASSERT_EQ(info.num_cidrs, 2u);
  EXPECT_EQ(info.cidrs[0].family, AF_INET);
  EXPECT_EQ(info.cidrs[0].prefix_len, 24);
  EXPECT_EQ(info.cidrs[1].family, AF_INET6);
  EXPECT_EQ(info.cidrs[1].prefix_len, 64);
}

TEST(NodeInfo, AnAnswerThatCannotBeInstalledIsRefused) {
  mt_node_info info;
  EXPECT_EQ(Decode(Answer("node-1", {}), &info), "the answer for node node-1 lists no pod CIDR");
  EXPECT_EQ(Decode(Answer("", {"10.244.1.0/24"}), &info), "the answer names no node");
  EXPECT_EQ(Decode(Answer("node-1", {"10.244.1.0/33"}), &info),
            "pod CIDR of node node-1: '10.244.1.0/33' is not a valid CIDR");
  EXPECT_EQ(Decode(Answer("node-1", {"10.244.1.7/24"}), &info),
            "pod CIDR of node node-1: '10.244.1.7/24' has address bits set beyond the /24 prefix");
  EXPECT_EQ(Decode(Answer("node-1", {"0.0.0.0/0"}), &info),
            "pod CIDR '0.0.0.0/0' of node node-1 is everything");
  EXPECT_EQ(Decode(Answer("node-1", {"10.244.1.0/24", "10.244.1.0/24"}), &info),
            "pod CIDR '10.244.1.0/24' of node node-1 is listed twice");
  EXPECT_EQ(Decode(Answer("node-1", {"10.0.1.0/24", "10.0.2.0/24", "10.0.3.0/24", "10.0.4.0/24",
                                     "10.0.5.0/24"}),
                   &info),
            "the answer for node node-1 lists 5 pod CIDRs (at most 4)");
  EXPECT_EQ(info.num_cidrs, 0u);
  const std::vector<uint8_t> garbage = {0x0a, 0xff};
  EXPECT_EQ(Decode(garbage, &info), "the answer is not a NodeInfoResponse message");
}

}  // namespace
