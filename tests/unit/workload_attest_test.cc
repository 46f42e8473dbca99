// workload_attest: who is calling the Workload API. Sidecar mode admits
// listed uids/gids; node mode maps a caller's PID to the addresses of its
// network namespace and those to the one workload of the node's table.
// The live tests fork a child into a new network namespace with its own
// address, as a pod is, and need root (skipped when unshare says EPERM).
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <net/if.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <string>
#include <vector>

#include "agent/workload_attest.h"

namespace {

// ---- sidecar mode ----------------------------------------------------------

struct Selector {
  Selector(std::vector<uid_t> uids, std::vector<gid_t> gids)
      : s(mt_attest_selector_new(uids.data(), uids.size(), gids.data(), gids.size())) {}
  ~Selector() { mt_attest_selector_free(s); }
  mt_attest_selector *s;
};

mt_peer_cred Cred(uid_t uid, gid_t gid, const std::vector<gid_t> *groups = nullptr) {
  mt_peer_cred c{};
  c.pid = 1234;
  c.uid = uid;
  c.gid = gid;
  if (groups != nullptr) {
    c.groups = groups->data();
    c.group_count = groups->size();
  }
  return c;
}

std::string Refusal(const mt_attest_selector *s, const mt_peer_cred &cred) {
  char why[512] = "";
  if (mt_attest_selector_admits(s, &cred, why, sizeof(why))) return "admitted";
  return why;
}

TEST(AttestSelector, AdmitsAListedUid) {
  Selector sel({1000, 1002}, {});
  EXPECT_EQ(Refusal(sel.s, Cred(1002, 5000)), "admitted");
}

TEST(AttestSelector, AdmitsAListedPrimaryGid) {
  Selector sel({}, {3000});
  EXPECT_EQ(Refusal(sel.s, Cred(1001, 3000)), "admitted");
}

TEST(AttestSelector, AdmitsByASupplementaryGroupTheServerRead) {
  Selector sel({}, {3000});
  std::vector<gid_t> groups = {10, 3000};
  EXPECT_EQ(Refusal(sel.s, Cred(1001, 1001, &groups)), "admitted");
}

TEST(AttestSelector, RefusesAnUnlistedCallerNamingItAndTheLists) {
  Selector sel({1000}, {});
  EXPECT_EQ(Refusal(sel.s, Cred(1001, 1001)),
            "uid 1001 gid 1001 is not in workload_api.allowed_uids [1000] or allowed_gids []");
  std::vector<gid_t> groups = {4, 27};
  Selector both({1000, 1002}, {3000});
  EXPECT_EQ(Refusal(both.s, Cred(1001, 1001, &groups)),
            "uid 1001 gid 1001 groups [4, 27] is not in workload_api.allowed_uids [1000, 1002] or "
            "allowed_gids [3000]");
}

TEST(AttestSelector, NothingListedAdmitsNobodyNotEvenRoot) {
  Selector sel({}, {});
  EXPECT_EQ(Refusal(sel.s, Cred(0, 0)),
            "uid 0 gid 0 is not in workload_api.allowed_uids [] or allowed_gids []");
  EXPECT_EQ(Refusal(nullptr, Cred(0, 0)),
            "uid 0 gid 0 is not in workload_api.allowed_uids [] or allowed_gids []");
}

TEST(AttestSelector, ListedGidIsNotAUidAndViceVersa) {
  Selector sel({1000}, {2000});
  EXPECT_NE(Refusal(sel.s, Cred(2000, 1)), "admitted");
  EXPECT_NE(Refusal(sel.s, Cred(1, 1000)), "admitted");
}

TEST(AttestSelector, LongListsAreCutInTheReason) {
  std::vector<uid_t> uids;
  for (uid_t u = 100000; u < 100100; u++) uids.push_back(u);
  Selector sel(uids, {});
  std::string why = Refusal(sel.s, Cred(1, 1));
  EXPECT_NE(why.find("allowed_uids [100000, 100001, "), std::string::npos) << why;
  EXPECT_NE(why.find("...] or allowed_gids []"), std::string::npos) << why;
  EXPECT_LT(why.size(), 400u);
}

// ---- node mode: which workload -----------------------------------------------

mt_net_address Address(const char *ip) {
  mt_net_address a{};
  if (strchr(ip, ':') != nullptr) {
    a.in6.sin6_family = AF_INET6;
    EXPECT_EQ(inet_pton(AF_INET6, ip, &a.in6.sin6_addr), 1);
  } else {
    a.in4.sin_family = AF_INET;
    EXPECT_EQ(inet_pton(AF_INET, ip, &a.in4.sin_addr), 1);
  }
  return a;
}

mt_netns_addresses Set(std::vector<const char *> ips) {
  mt_netns_addresses set{};
  for (const char *ip : ips) set.address[set.count++] = Address(ip);
  return set;
}

struct Table {
  Table() : t(mt_workloads_new(8)) {}
  ~Table() { mt_workloads_unref(t); }
  void Add(const char *ip, const char *id) {
    mt_net_address a = Address(ip);
    ASSERT_EQ(mt_workloads_add(t, &a.sa, id, nullptr), 1);
  }
  mt_workloads *t;
};

const char kPodA[] = "spiffe://cluster.local/ns/shop/sa/cart";
const char kPodB[] = "spiffe://cluster.local/ns/shop/sa/payments";

struct PickTest : ::testing::Test {
  void SetUp() override {
    table.Add("10.244.1.7", kPodA);
    table.Add("fd00:244::7", kPodA);
    table.Add("10.244.1.8", kPodB);
  }
  // "index N" or the refusal.
  std::string Pick(const mt_netns_addresses &caller, const mt_workloads *t = nullptr) {
    char why[512] = "";
    size_t index = 99;
    if (!mt_attest_pick_workload(t != nullptr ? t : table.t, 1234, &caller, &index, why,
                                 sizeof(why)))
      return why;
    return "index " + std::to_string(index);
  }
  Table table;
};

TEST_F(PickTest, TheOneListedAddressNamesTheWorkload) {
  EXPECT_EQ(Pick(Set({"10.244.1.8"})), "index 2");
}

TEST_F(PickTest, ADualStackPodIsOneWorkload) {
  EXPECT_EQ(Pick(Set({"10.244.1.7", "fd00:244::7"})), "index 0");
  EXPECT_EQ(Pick(Set({"fd00:244::7"})), "index 1");
}

TEST_F(PickTest, UnlistedAddressesBesideAListedOneAreIgnored) {
  EXPECT_EQ(Pick(Set({"10.99.0.1", "10.244.1.8"})), "index 2");
}

TEST_F(PickTest, ACallerWithNoListedAddressIsNotAPodOfThisNode) {
  EXPECT_EQ(Pick(Set({"10.0.0.9"})),
            "caller pid 1234 (addresses 10.0.0.9) is not a pod of this node");
  EXPECT_EQ(Pick(Set({})), "caller pid 1234 (addresses none) is not a pod of this node");
}

TEST_F(PickTest, AddressesOfTwoWorkloadsAreRefused) {
  EXPECT_EQ(Pick(Set({"10.244.1.7", "10.244.1.8"})),
            std::string("caller pid 1234 has addresses of two workloads: 10.244.1.7 (") + kPodA +
                ") and 10.244.1.8 (" + kPodB + ")");
}

TEST_F(PickTest, AnEmptyOrMissingTableListsNobody) {
  Table empty;
  EXPECT_EQ(Pick(Set({"10.244.1.7"}), empty.t),
            "caller pid 1234 (addresses 10.244.1.7) is not a pod of this node");
  char why[256];
  size_t index;
  mt_netns_addresses caller = Set({"10.244.1.7"});
  EXPECT_EQ(mt_attest_pick_workload(nullptr, 1, &caller, &index, why, sizeof(why)), 0);
}

// ---- node mode: reading a live process -------------------------------------------

int PidfdOpen(pid_t pid) { return static_cast<int>(syscall(SYS_pidfd_open, pid, 0)); }

// Brings lo up in the current network namespace.
bool LoopbackUp() {
  int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  ifreq ifr{};
  snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), "lo");
  bool ok = ioctl(fd, SIOCGIFFLAGS, &ifr) == 0;
  ifr.ifr_flags = static_cast<short>(ifr.ifr_flags | IFF_UP);
  ok = ok && ioctl(fd, SIOCSIFFLAGS, &ifr) == 0;
  close(fd);
  return ok;
}

// "ip addr add <ip>/<prefix> dev lo", by rtnetlink.
bool AddToLoopback(const char *ip, int prefix) {
  mt_net_address a = Address(ip);
  int family = a.sa.sa_family;
  const void *raw = family == AF_INET ? static_cast<const void *>(&a.in4.sin_addr)
                                      : static_cast<const void *>(&a.in6.sin6_addr);
  size_t raw_len = family == AF_INET ? 4 : 16;
  struct {
    nlmsghdr nh;
    ifaddrmsg ifa;
    char attrs[64];
  } req{};
  req.nh.nlmsg_len = NLMSG_LENGTH(sizeof(ifaddrmsg));
  req.nh.nlmsg_type = RTM_NEWADDR;
  req.nh.nlmsg_flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL;
  req.ifa.ifa_family = static_cast<unsigned char>(family);
  req.ifa.ifa_prefixlen = static_cast<unsigned char>(prefix);
  req.ifa.ifa_index = if_nametoindex("lo");
  for (unsigned short type : {IFA_LOCAL, IFA_ADDRESS}) {
    rtattr *rta =
        reinterpret_cast<rtattr *>(reinterpret_cast<char *>(&req) + NLMSG_ALIGN(req.nh.nlmsg_len));
    rta->rta_type = type;
    rta->rta_len = static_cast<unsigned short>(RTA_LENGTH(raw_len));
    memcpy(RTA_DATA(rta), raw, raw_len);
    req.nh.nlmsg_len = NLMSG_ALIGN(req.nh.nlmsg_len) + RTA_ALIGN(rta->rta_len);
  }
  int fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE);
  if (fd < 0) return false;
  bool ok = send(fd, &req, req.nh.nlmsg_len, 0) == static_cast<ssize_t>(req.nh.nlmsg_len);
  char reply[512];
  ssize_t n = ok ? recv(fd, reply, sizeof(reply), 0) : -1;
  close(fd);
  const nlmsghdr *h = reinterpret_cast<const nlmsghdr *>(reply);
  if (n < static_cast<ssize_t>(NLMSG_LENGTH(sizeof(nlmsgerr))) || h->nlmsg_type != NLMSG_ERROR)
    return false;
  return static_cast<const nlmsgerr *>(NLMSG_DATA(h))->error == 0;
}

// A child process in a network namespace of its own, with 10.77.0.5/32 and
// fd00:77::5/128 on lo: a pod (or, |own_netns| false, a process of the
// host's network). It lives until Stop or the object is destroyed.
class PodProcess {
 public:
  explicit PodProcess(bool own_netns = true) {
    int ready[2], hold[2];
    if (pipe2(ready, O_CLOEXEC) != 0 || pipe2(hold, O_CLOEXEC) != 0) return;
    pid_ = fork();
    if (pid_ == 0) {
      close(ready[0]);
      close(hold[1]);
      int status = 0;
      if (!own_netns)
        status = 0;
      else if (unshare(CLONE_NEWNET) != 0)
        status = errno;
      else if (!LoopbackUp() || !AddToLoopback("10.77.0.5", 32) ||
               !AddToLoopback("fd00:77::5", 128))
        status = -1;
      if (write(ready[1], &status, sizeof(status)) != sizeof(status)) _exit(1);
      char byte;
      while (read(hold[0], &byte, 1) > 0) {
      }
      _exit(0);
    }
    close(ready[1]);
    close(hold[0]);
    hold_ = hold[1];
    if (pid_ < 0 || read(ready[0], &status_, sizeof(status_)) != sizeof(status_)) status_ = -2;
    close(ready[0]);
  }
  ~PodProcess() { Stop(); }
  // Lets the child exit and reaps it.
  void Stop() {
    if (hold_ >= 0) close(hold_);
    hold_ = -1;
    if (pid_ > 0) waitpid(pid_, nullptr, 0);
    pid_ = -1;
  }
  pid_t pid() const { return pid_; }
  // 0: set up; an errno from unshare; negative: the set-up failed.
  int status() const { return status_; }

 private:
  pid_t pid_ = -1;
  int hold_ = -1;
  int status_ = -2;
};

#define START_POD(pod)                                                          \
  PodProcess pod;                                                               \
  if (pod.status() == EPERM) GTEST_SKIP() << "unshare(CLONE_NEWNET): not root"; \
  ASSERT_EQ(pod.status(), 0) << "could not set up the pod's namespace"

// The test process plays the agent.
mt_netns_id AgentNetns() {
  mt_netns_id id{};
  char err[256];
  EXPECT_EQ(mt_attest_agent_netns(&id, err, sizeof(err)), 1) << err;
  return id;
}

std::string Read(pid_t pid, int pidfd, mt_netns_addresses *set) {
  char err[512] = "";
  mt_netns_id agent = AgentNetns();
  if (!mt_attest_read_netns(pid, pidfd, &agent, set, err, sizeof(err))) return err;
  char text[256];
  mt_netns_addresses_format(set, text, sizeof(text));
  return text;
}

TEST(AttestLive, APodsPidNamesItsNamespacesAddressesWithOrWithoutAPidfd) {
  START_POD(pod);
  int pidfd = PidfdOpen(pod.pid());
  ASSERT_GE(pidfd, 0) << strerror(errno);
  mt_netns_addresses set;
  EXPECT_EQ(Read(pod.pid(), pidfd, &set), "10.77.0.5, fd00:77::5");
  EXPECT_EQ(Read(pod.pid(), -1, &set), "10.77.0.5, fd00:77::5");
  close(pidfd);
}

TEST(AttestLive, ThePodsAddressPicksItsWorkload) {
  START_POD(pod);
  int pidfd = PidfdOpen(pod.pid());
  ASSERT_GE(pidfd, 0);
  mt_netns_addresses set;
  ASSERT_EQ(Read(pod.pid(), pidfd, &set), "10.77.0.5, fd00:77::5");
  Table table;
  table.Add("10.0.0.1", kPodB);
  table.Add("10.77.0.5", kPodA);
  char why[256];
  size_t index = 99;
  EXPECT_EQ(mt_attest_pick_workload(table.t, pod.pid(), &set, &index, why, sizeof(why)), 1) << why;
  EXPECT_EQ(index, 1u);
  close(pidfd);
}

TEST(AttestLive, ProcessesOfTheAgentsNetworkNamespaceAreRefused) {
  // The agent itself, and another process on the host's network.
  mt_netns_addresses set;
  EXPECT_EQ(Read(getpid(), -1, &set), "caller pid " + std::to_string(getpid()) +
                                          " is in the agent's network namespace (host network), "
                                          "not a pod");
  START_POD(pod);  // for the EPERM skip only
  PodProcess host(false);
  ASSERT_EQ(host.status(), 0);
  int pidfd = PidfdOpen(host.pid());
  ASSERT_GE(pidfd, 0);
  EXPECT_EQ(Read(host.pid(), pidfd, &set),
            "caller pid " + std::to_string(host.pid()) +
                " is in the agent's network namespace (host network), not a pod");
  EXPECT_EQ(set.count, 0u);
  close(pidfd);
}

TEST(AttestLive, ANamespaceIsToldByItsFibTrieInode) {
  START_POD(pod);
  mt_netns_id agent = AgentNetns(), other{};
  struct stat st;
  ASSERT_EQ(stat(("/proc/" + std::to_string(pod.pid()) + "/net/fib_trie").c_str(), &st), 0);
  other.dev = st.st_dev;
  other.ino = st.st_ino;
  EXPECT_FALSE(other.dev == agent.dev && other.ino == agent.ino);
  // Read as if the pod were the agent: now it is the one refused.
  mt_netns_addresses set;
  char err[256];
  EXPECT_EQ(mt_attest_read_netns(pod.pid(), -1, &other, &set, err, sizeof(err)), 0);
  EXPECT_NE(std::string(err).find("agent's network namespace"), std::string::npos) << err;
  EXPECT_EQ(mt_attest_read_netns(pod.pid(), -1, nullptr, &set, err, sizeof(err)), 0);
  EXPECT_NE(std::string(err).find("the agent's network namespace is unknown"), std::string::npos)
      << err;
}

TEST(AttestLive, ACallerThatExitedAndWasReapedIsRefused) {
  START_POD(pod);
  pid_t pid = pod.pid();
  int pidfd = PidfdOpen(pid);
  ASSERT_GE(pidfd, 0);
  pod.Stop();
  mt_netns_addresses set;
  std::string gone = "caller pid " + std::to_string(pid) + " exited before attestation";
  EXPECT_EQ(Read(pid, pidfd, &set), gone);
  EXPECT_EQ(Read(pid, -1, &set), gone);
  EXPECT_EQ(set.count, 0u);
  close(pidfd);
}

TEST(AttestLive, AZombieCallerIsRefused) {
  START_POD(pod);
  pid_t pid = pod.pid();
  int pidfd = PidfdOpen(pid);
  ASSERT_GE(pidfd, 0);
  // Let it exit but do not reap it: /proc/<pid> is still there.
  kill(pid, SIGKILL);
  siginfo_t info{};
  ASSERT_EQ(waitid(P_PID, static_cast<id_t>(pid), &info, WEXITED | WNOWAIT), 0);
  mt_netns_addresses set;
  std::string exited = "caller pid " + std::to_string(pid) + " exited during attestation";
  EXPECT_EQ(Read(pid, pidfd, &set), exited);
  EXPECT_EQ(Read(pid, -1, &set), exited);
  close(pidfd);
}

TEST(AttestLive, APidNowHeldByAnotherProcessThanThePidfdsIsRefused) {
  // What reuse looks like: the pidfd is the process that connected, the PID
  // names another live process (here: this one, in the host's namespace).
  START_POD(pod);
  int pidfd = PidfdOpen(pod.pid());
  ASSERT_GE(pidfd, 0);
  mt_netns_addresses set;
  EXPECT_EQ(Read(getpid(), pidfd, &set),
            "caller pid " + std::to_string(getpid()) + " exited during attestation");
  // And once the connecting process is gone, whatever holds its PID is refused.
  pod.Stop();
  EXPECT_EQ(Read(getpid(), pidfd, &set),
            "caller pid " + std::to_string(getpid()) + " exited during attestation");
  close(pidfd);
}

TEST(AttestLive, AFdThatIsNotAPidfdIsRefused) {
  int fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
  ASSERT_GE(fd, 0);
  mt_netns_addresses set;
  std::string why = Read(getpid(), fd, &set);
  EXPECT_EQ(why.rfind("caller pid " + std::to_string(getpid()) + ": fd " + std::to_string(fd) +
                          " is not a pidfd",
                      0),
            0u)
      << why;
  close(fd);
  why = Read(getpid(), 1000000, &set);
  EXPECT_NE(why.find(": fd 1000000 is not a pidfd (No such file or directory)"), std::string::npos)
      << why;
}

TEST(AttestLive, APidOutsideTheAgentsNamespaceIsRefused) {
  mt_netns_addresses set;
  EXPECT_EQ(Read(0, -1, &set), "caller pid 0 is not in the agent's PID namespace");
  EXPECT_EQ(Read(-5, -1, &set), "caller pid -5 is not in the agent's PID namespace");
}

}  // namespace

TEST(WorkloadAttestNetns, AProcessInOurNamespaceHasOurLabelAndADeadPidNone) {
  mt_netns_id ours, of_self;
  char err[256];
  ASSERT_TRUE(mt_attest_agent_netns(&ours, err, sizeof(err))) << err;
  ASSERT_TRUE(mt_attest_netns_of(getpid(), &of_self, err, sizeof(err))) << err;
  EXPECT_EQ(ours.dev, of_self.dev);
  EXPECT_EQ(ours.ino, of_self.ino);
  EXPECT_FALSE(mt_attest_netns_of(-1, &of_self, err, sizeof(err)));
  EXPECT_NE(std::string(err).find("cannot stat /proc/-1/net/fib_trie"), std::string::npos) << err;
}
