// proc_net: a network namespace's addresses from the text of
// /proc/<pid>/net/fib_trie and if_inet6. The fixtures are real files, taken
// from this machine (a host with 192.0.2.2 on eth0) and from a network
// namespace set up as a pod (veth with 10.244.1.7/24 and fd00:244::7/64).
#include <arpa/inet.h>
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "agent/proc_net.h"

namespace {

// A pod's namespace: Main and Local print the same merged trie.
const char kPodFibTrie[] = R"(Main:
  +-- 0.0.0.0/1 2 0 2
     +-- 10.244.1.0/24 2 0 2
        +-- 10.244.1.0/29 2 0 2
           |-- 10.244.1.0
              /24 link UNICAST
           |-- 10.244.1.7
              /32 host LOCAL
        |-- 10.244.1.255
           /32 link BROADCAST
     +-- 127.0.0.0/8 2 0 2
        +-- 127.0.0.0/31 1 0 0
           |-- 127.0.0.0
              /8 host LOCAL
           |-- 127.0.0.1
              /32 host LOCAL
        |-- 127.255.255.255
           /32 link BROADCAST
Local:
  +-- 0.0.0.0/1 2 0 2
     +-- 10.244.1.0/24 2 0 2
        +-- 10.244.1.0/29 2 0 2
           |-- 10.244.1.0
              /24 link UNICAST
           |-- 10.244.1.7
              /32 host LOCAL
        |-- 10.244.1.255
           /32 link BROADCAST
     +-- 127.0.0.0/8 2 0 2
        +-- 127.0.0.0/31 1 0 0
           |-- 127.0.0.0
              /8 host LOCAL
           |-- 127.0.0.1
              /32 host LOCAL
        |-- 127.255.255.255
           /32 link BROADCAST
)";

const char kPodIfInet6[] =
    "fe80000000000000e01b8bfffea2f749 05 40 20 80 veth-atty\n"
    "fd000244000000000000000000000007 05 40 00 80 veth-atty\n"
    "00000000000000000000000000000001 01 80 10 80       lo\n";

// The same namespace after a second address (10.244.1.8/32), a policy rule
// (which unmerges Local from Main and adds table 100), a route with a TOS and
// a local /24 on lo ("ip route add local 10.50.0.0/24 dev lo").
const char kPolicyRoutingFibTrie[] = R"(Id 100:
  |-- 10.9.0.0
     /16 link UNICAST
Main:
  +-- 10.0.0.0/8 2 0 2
     |-- 10.60.0.0
        /16 link UNICAST tos=16
     |-- 10.244.1.0
        /24 link UNICAST
Local:
  +-- 0.0.0.0/1 2 0 2
     +-- 10.0.0.0/8 2 0 2
        |-- 10.50.0.0
           /24 host LOCAL
        +-- 10.244.1.0/24 2 0 2
           +-- 10.244.1.0/28 2 0 2
              |-- 10.244.1.7
                 /32 host LOCAL
              |-- 10.244.1.8
                 /32 host LOCAL
           |-- 10.244.1.255
              /32 link BROADCAST
     +-- 127.0.0.0/8 2 0 2
        +-- 127.0.0.0/31 1 0 0
           |-- 127.0.0.0
              /8 host LOCAL
           |-- 127.0.0.1
              /32 host LOCAL
        |-- 127.255.255.255
           /32 link BROADCAST
)";

// A fresh namespace whose lo is up: loopback only.
const char kLoopbackOnlyFibTrie[] = R"(Main:
  +-- 127.0.0.0/8 2 0 2
     +-- 127.0.0.0/31 1 0 0
        |-- 127.0.0.0
           /8 host LOCAL
        |-- 127.0.0.1
           /32 host LOCAL
     |-- 127.255.255.255
        /32 link BROADCAST
Local:
  +-- 127.0.0.0/8 2 0 2
     +-- 127.0.0.0/31 1 0 0
        |-- 127.0.0.0
           /8 host LOCAL
        |-- 127.0.0.1
           /32 host LOCAL
     |-- 127.255.255.255
        /32 link BROADCAST
)";

// This machine's host namespace.
const char kHostIfInet6[] =
    "fe8000000000000000fc00fffe000001 04 40 20 80     eth0\n"
    "00000000000000000000000000000001 01 80 10 80       lo\n"
    "fe80000000000000bc1b8efffe1ca367 06 40 20 80 veth-attx\n"
    "fd000000000000000000000000000002 04 40 00 82     eth0\n";

std::string Text(const mt_net_address &a) {
  char buf[INET6_ADDRSTRLEN];
  const void *raw = a.sa.sa_family == AF_INET ? static_cast<const void *>(&a.in4.sin_addr)
                                              : static_cast<const void *>(&a.in6.sin6_addr);
  EXPECT_NE(inet_ntop(a.sa.sa_family, raw, buf, sizeof(buf)), nullptr);
  return buf;
}

std::vector<std::string> Texts(const mt_netns_addresses &set) {
  std::vector<std::string> out;
  for (size_t i = 0; i < set.count; i++) out.push_back(Text(set.address[i]));
  return out;
}

// Parses |text| as a fib_trie into a fresh set; |err| gets the reason.
int FibTrie(const std::string &text, mt_netns_addresses *set, std::string *err = nullptr) {
  *set = mt_netns_addresses{};
  char why[256] = "";
  int ok = mt_proc_net_parse_fib_trie(text.data(), text.size(), set, why, sizeof(why));
  if (err != nullptr) *err = why;
  return ok;
}

int IfInet6(const std::string &text, mt_netns_addresses *set, std::string *err = nullptr) {
  *set = mt_netns_addresses{};
  char why[256] = "";
  int ok = mt_proc_net_parse_if_inet6(text.data(), text.size(), set, why, sizeof(why));
  if (err != nullptr) *err = why;
  return ok;
}

// A one-leaf table around |alias| under leaf |leaf|.
std::string OneLeaf(const std::string &leaf, const std::string &alias) {
  return "Local:\n  |-- " + leaf + "\n     " + alias + "\n";
}

TEST(ProcNetFibTrie, PodNamespaceHasItsAddressOnceThoughTwoTablesListIt) {
  mt_netns_addresses set;
  ASSERT_EQ(FibTrie(kPodFibTrie, &set), 1);
  EXPECT_EQ(Texts(set), std::vector<std::string>{"10.244.1.7"});
}

TEST(ProcNetFibTrie, LoopbackIsNotAnAddressOfTheNamespace) {
  mt_netns_addresses set;
  ASSERT_EQ(FibTrie(kLoopbackOnlyFibTrie, &set), 1);
  EXPECT_EQ(set.count, 0u);
}

TEST(ProcNetFibTrie, EmptyFileIsANamespaceWithoutAddresses) {
  // A new namespace whose lo is still down prints nothing at all.
  mt_netns_addresses set;
  ASSERT_EQ(FibTrie("", &set), 1);
  EXPECT_EQ(set.count, 0u);
}

TEST(ProcNetFibTrie, OtherTablesTosAndWiderLocalRoutesAreRead) {
  // Only /32 host LOCAL leaves are addresses: not the local 10.50.0.0/24.
  mt_netns_addresses set;
  std::string err;
  ASSERT_EQ(FibTrie(kPolicyRoutingFibTrie, &set, &err), 1) << err;
  EXPECT_EQ(Texts(set), (std::vector<std::string>{"10.244.1.7", "10.244.1.8"}));
}

TEST(ProcNetFibTrie, LocalRouteWithTosOrANumericTableIdCounts) {
  mt_netns_addresses set;
  ASSERT_EQ(FibTrie("Id 4294967295:\n  |-- 10.1.2.3\n     /32 host LOCAL tos=16\n", &set), 1);
  EXPECT_EQ(Texts(set), std::vector<std::string>{"10.1.2.3"});
  ASSERT_EQ(FibTrie("Id -2:\n  |-- 10.1.2.3\n     /32 host LOCAL\n", &set), 1);
  EXPECT_EQ(set.count, 1u);
}

TEST(ProcNetFibTrie, LocalScopeOrTypeOtherThanHostLocalIsNotAnAddress) {
  mt_netns_addresses set;
  for (const char *alias : {"/32 link LOCAL", "/32 host BROADCAST", "/32 scope=200 LOCAL",
                            "/32 host type 12", "/31 host LOCAL"}) {
    ASSERT_EQ(FibTrie(OneLeaf("10.1.2.3", alias), &set), 1) << alias;
    EXPECT_EQ(set.count, 0u) << alias;
  }
}

TEST(ProcNetFibTrie, LinkLocalMulticastAndZeroNetworkAreNeverAddresses) {
  mt_netns_addresses set;
  for (const char *leaf : {"169.254.1.1", "127.1.2.3", "0.0.0.1", "224.0.0.1", "255.255.255.255"}) {
    ASSERT_EQ(FibTrie(OneLeaf(leaf, "/32 host LOCAL"), &set), 1) << leaf;
    EXPECT_EQ(set.count, 0u) << leaf;
  }
}

TEST(ProcNetFibTrie, ANamespaceWithTooManyAddressesIsRefused) {
  std::string text = "Local:\n";
  for (int i = 0; i <= MT_NETNS_MAX_ADDRESSES; i++)
    text += "  |-- 10.0.0." + std::to_string(i + 1) + "\n     /32 host LOCAL\n";
  mt_netns_addresses set;
  std::string err;
  EXPECT_EQ(FibTrie(text, &set, &err), 0);
  EXPECT_EQ(err, "fib_trie: more than 32 addresses");
}

TEST(ProcNetFibTrie, LinesNotShapedAsTheKernelPrintsThemAreRefusedByNumber) {
  struct Case {
    std::string text, err;
  } cases[] = {
      {"  |-- 10.0.0.1\n", "fib_trie line 1: a node before any table header"},
      {"Local:\n |-- 10.0.0.1\n", "fib_trie line 2: not indented as the kernel indents"},
      {"Local:\n    |-- 10.0.0.1\n", "fib_trie line 2: not indented as the kernel indents"},
      {"Local:\n  |-- 10.0.0.01\n", "fib_trie line 2: a leaf that is not an IPv4 address"},
      {"Local:\n  |-- 10.0.0.256\n", "fib_trie line 2: a leaf that is not an IPv4 address"},
      {"Local:\n  |-- 10.0.0.1 \n", "fib_trie line 2: a leaf that is not an IPv4 address"},
      {"Local:\n  |-- fd00::1\n", "fib_trie line 2: a leaf that is not an IPv4 address"},
      {"Local:\n     /32 host LOCAL\n", "fib_trie line 2: a route outside a leaf"},
      {"Local:\n  +-- 10.0.0.0/8 2 0 2\n     /32 host LOCAL\n",
       "fib_trie line 3: a route outside a leaf"},
      {"Local:\n  |-- 10.0.0.1\n     /33 host LOCAL\n",
       "fib_trie line 3: not a table, node, leaf or route line"},
      {"Local:\n  |-- 10.0.0.1\n     /32 host LOCAL tos=x\n",
       "fib_trie line 3: not a table, node, leaf or route line"},
      {"Local:\n  |-- 10.0.0.1\n     /32 host\n",
       "fib_trie line 3: not a table, node, leaf or route line"},
      {"Local:\n  |-- 10.0.0.1\n     /32 host LOCAL  \n",
       "fib_trie line 3: not a table, node, leaf or route line"},
      {"Local:\n  |-- 10.0.0.1\n     /32 host LO\tCAL\n",
       "fib_trie line 3: not a table, node, leaf or route line"},
      {"Local:\n  +-- 10.0.0.0/8 2 0\n", "fib_trie line 2: not a table, node, leaf or route line"},
      {"Local:\n  |-- 10.0.0.1\n     /32 host LOCAL",
       "fib_trie line 3: too long or not ended by a newline"},
      {"Local:\n  " + std::string(300, 'x') + "\n",
       "fib_trie line 2: too long or not ended by a newline"},
      {std::string("Local:\n  |-- 10.0.0.1\0\n", 23),
       "fib_trie line 2: a leaf that is not an IPv4 address"},
      {"Id 007:\n", "fib_trie line 1: a node before any table header"},
      {"Main:\r\n", "fib_trie line 1: a node before any table header"},
  };
  for (const Case &c : cases) {
    mt_netns_addresses set;
    std::string err;
    EXPECT_EQ(FibTrie(c.text, &set, &err), 0) << c.text;
    EXPECT_EQ(err, c.err) << c.text;
  }
}

TEST(ProcNetIfInet6, PodNamespaceHasItsGlobalAddressNotLinkLocalOrLoopback) {
  mt_netns_addresses set;
  ASSERT_EQ(IfInet6(kPodIfInet6, &set), 1);
  EXPECT_EQ(Texts(set), std::vector<std::string>{"fd00:244::7"});
}

TEST(ProcNetIfInet6, HostFileWithLongInterfaceNamesParses) {
  mt_netns_addresses set;
  ASSERT_EQ(IfInet6(kHostIfInet6, &set), 1);
  EXPECT_EQ(Texts(set), std::vector<std::string>{"fd00::2"});
}

TEST(ProcNetIfInet6, AddressWhoseDuplicateDetectionFailedIsSomeoneElses) {
  mt_netns_addresses set;
  ASSERT_EQ(IfInet6("fd000244000000000000000000000007 05 40 00 08 veth-atty\n", &set), 1);
  EXPECT_EQ(set.count, 0u);
}

TEST(ProcNetIfInet6, WideIfindexAndFifteenByteNamesAreTheKernelsToo) {
  mt_netns_addresses set;
  std::string err;
  ASSERT_EQ(IfInet6("fd000244000000000000000000000007 1a2b 40 00 80 abcdefghijklmno\n", &set, &err),
            1)
      << err;
  EXPECT_EQ(Texts(set), std::vector<std::string>{"fd00:244::7"});
}

TEST(ProcNetIfInet6, MulticastUnspecifiedAndLinkLocalAreNeverAddresses) {
  mt_netns_addresses set;
  for (const char *hex : {"ff020000000000000000000000000001", "00000000000000000000000000000000",
                          "febf0000000000000000000000000001"}) {
    ASSERT_EQ(IfInet6(std::string(hex) + " 05 40 00 80     eth0\n", &set), 1) << hex;
    EXPECT_EQ(set.count, 0u) << hex;
  }
  // fec0::/10 is not link-local.
  ASSERT_EQ(IfInet6("fec00000000000000000000000000001 05 40 00 80     eth0\n", &set), 1);
  EXPECT_EQ(set.count, 1u);
}

TEST(ProcNetIfInet6, LinesNotShapedAsTheKernelPrintsThemAreRefusedByNumber) {
  const std::string bad[] = {
      "FD000244000000000000000000000007 05 40 00 80     eth0\n",          // uppercase hex
      "fd00024400000000000000000000007 05 40 00 80     eth0\n",           // 31 digits
      "fd000244000000000000000000000007 5 40 00 80     eth0\n",           // ifindex below 2 digits
      "fd000244000000000000000000000007 05 81 00 80     eth0\n",          // prefix length 129
      "fd000244000000000000000000000007 05 40 00 80    eth0\n",           // padding short
      "fd000244000000000000000000000007 05 40 00 80      eth0\n",         // padding long
      "fd000244000000000000000000000007 05 40 00 80 \n",                  // no name
      "fd000244000000000000000000000007 05 40 00 80 eth0:1234567890\n",   // ':' and 16 bytes
      "fd000244000000000000000000000007 05 40 00 80 abcdefghijklmnop\n",  // 16 bytes
      "fd000244000000000000000000000007 05 40 00 80     et/0\n",          // '/'
      "fd000244000000000000000000000007 05 40 00 80     eth0",            // no newline
  };
  for (const std::string &line : bad) {
    mt_netns_addresses set;
    std::string err;
    std::string text = std::string(kPodIfInet6) + line;
    EXPECT_EQ(IfInet6(text, &set, &err), 0) << line;
    EXPECT_EQ(err.rfind("if_inet6 line 4: ", 0), 0u) << err;
  }
}

TEST(ProcNetAddresses, BothFilesFillOneSet) {
  mt_netns_addresses set{};
  char err[128];
  ASSERT_EQ(mt_proc_net_parse_fib_trie(kPodFibTrie, strlen(kPodFibTrie), &set, err, sizeof(err)),
            1);
  ASSERT_EQ(mt_proc_net_parse_if_inet6(kPodIfInet6, strlen(kPodIfInet6), &set, err, sizeof(err)),
            1);
  char text[64];
  mt_netns_addresses_format(&set, text, sizeof(text));
  EXPECT_STREQ(text, "10.244.1.7, fd00:244::7");
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(8080);  // ignored
  inet_pton(AF_INET, "10.244.1.7", &a.sin_addr);
  EXPECT_EQ(mt_netns_addresses_contain(&set, reinterpret_cast<sockaddr *>(&a)), 1);
  inet_pton(AF_INET, "10.244.1.8", &a.sin_addr);
  EXPECT_EQ(mt_netns_addresses_contain(&set, reinterpret_cast<sockaddr *>(&a)), 0);
}

TEST(ProcNetAddresses, FormatSaysNoneAndCutsToTheBuffer) {
  mt_netns_addresses set{};
  char text[64];
  mt_netns_addresses_format(&set, text, sizeof(text));
  EXPECT_STREQ(text, "none");
  char err[128];
  ASSERT_EQ(mt_proc_net_parse_if_inet6(kPodIfInet6, strlen(kPodIfInet6), &set, err, sizeof(err)),
            1);
  ASSERT_EQ(mt_proc_net_parse_fib_trie(kPodFibTrie, strlen(kPodFibTrie), &set, err, sizeof(err)),
            1);
  char small[16];
  mt_netns_addresses_format(&set, small, sizeof(small));
  EXPECT_STREQ(small, "fd00:244::7...");
}

}  // namespace
