// sandbox: the seccomp allowlist refuses what the agent never does and lets
// through what it does; capabilities are gone after mt_sandbox_enter. Each
// test forks a child, sandboxes it with the agent's own module, makes one
// call and reports the result through a pipe (the test process itself stays
// unfiltered).
#include <errno.h>
#include <fcntl.h>
#include <linux/capability.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fstream>
#include <functional>
#include <string>

#include <gtest/gtest.h>

extern "C" {
#include "agent/sandbox.h"
}

namespace {

struct Outcome {
  long rc;
  int err;
  int applied;  // the filter went in (0: the child could not install it)
};

enum class Setup { kNone, kSeccomp, kEnter };

// Runs |call| in a child after |setup|; what it returned and errno.
Outcome InChild(Setup setup, const std::function<long()> &call) {
  int p[2];
  EXPECT_EQ(pipe(p), 0);
  pid_t pid = fork();
  if (pid == 0) {
    close(p[0]);
    Outcome o = {0, 0, 1};
    char err[256];
    if (setup == Setup::kSeccomp) o.applied = mt_sandbox_apply_seccomp(MT_SECCOMP_ON, err, sizeof(err));
    if (setup == Setup::kEnter) o.applied = mt_sandbox_enter(0, err, sizeof(err));
    if (o.applied) {
      errno = 0;
      o.rc = call();
      o.err = errno;
    }
    ssize_t n = write(p[1], &o, sizeof(o));
    _exit(n == (ssize_t)sizeof(o) ? 0 : 1);
  }
  close(p[1]);
  Outcome o = {-1, -1, 0};
  EXPECT_EQ(read(p[0], &o, sizeof(o)), (ssize_t)sizeof(o));
  close(p[0]);
  int status = 0;
  EXPECT_EQ(waitpid(pid, &status, 0), pid);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "child status " << status;
  return o;
}

long ExecTrue() {
  // Forks again so that a successful exec does not replace the reporter.
  pid_t pid = fork();
  if (pid < 0) return -1;
  if (pid == 0) {
    char *const argv[] = {const_cast<char *>("/bin/true"), nullptr};
    execve("/bin/true", argv, environ);
    _exit(127);
  }
  int status = 0;
  waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

long ExecTrueDirectly() {
  // In the sandboxed child itself: execve must fail, or the child becomes
  // /bin/true and exits 0 without reporting (the test then sees a short read).
  char *const argv[] = {const_cast<char *>("/bin/true"), nullptr};
  return execve("/bin/true", argv, environ);
}

long ListenOnLoopback() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return -2;
  sockaddr_in a = {};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (bind(fd, reinterpret_cast<sockaddr *>(&a), sizeof(a)) != 0) return -3;
  long rc = listen(fd, 1);
  int saved = errno;
  close(fd);
  errno = saved;
  return rc;
}

void *ThreadBody(void *arg) { return arg; }

long StartAndJoinThread() {
  pthread_t t;
  int rc = pthread_create(&t, nullptr, ThreadBody, nullptr);
  if (rc != 0) {
    errno = rc;
    return -1;
  }
  return pthread_join(t, nullptr);
}

// The value of |field| ("Seccomp:", "CapEff:", ...) in /proc/self/status.
std::string StatusField(const std::string &field) {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line))
    if (line.compare(0, field.size(), field) == 0) {
      size_t start = line.find_first_not_of(" \t", field.size());
      return start == std::string::npos ? "" : line.substr(start);
    }
  return "";
}

// Passes a status field through the outcome: its value as a number.
long StatusNumber(const char *field, int base) {
  return std::stol(StatusField(field), nullptr, base);
}

}  // namespace

TEST(SandboxTest, ExecveIsRefusedWithEperm) {
  Outcome o = InChild(Setup::kSeccomp, ExecTrueDirectly);
  ASSERT_TRUE(o.applied);
  EXPECT_EQ(o.rc, -1);
  EXPECT_EQ(o.err, EPERM);
}

TEST(SandboxTest, ExecveWorksWithoutTheFilter) {
  // The control for the test above: the same call, unfiltered, runs.
  EXPECT_EQ(InChild(Setup::kNone, ExecTrue).rc, 0);
}

TEST(SandboxTest, PacketSocketIsRefusedWithEperm) {
  Outcome o = InChild(Setup::kSeccomp, [] { return (long)socket(AF_PACKET, SOCK_RAW, 0); });
  ASSERT_TRUE(o.applied);
  EXPECT_EQ(o.rc, -1);
  EXPECT_EQ(o.err, EPERM);
}

TEST(SandboxTest, MountIsRefusedWithEperm) {
  Outcome o = InChild(Setup::kSeccomp, [] {
    return (long)mount("none", "/nonexistent-mtlsd-sandbox-test", "tmpfs", 0, nullptr);
  });
  ASSERT_TRUE(o.applied);
  EXPECT_EQ(o.rc, -1);
  EXPECT_EQ(o.err, EPERM);
}

TEST(SandboxTest, ListenIsRefusedButSocketAndBindWork) {
  Outcome o = InChild(Setup::kSeccomp, ListenOnLoopback);
  ASSERT_TRUE(o.applied);
  EXPECT_EQ(o.rc, -1) << "-2: socket failed, -3: bind failed";
  EXPECT_EQ(o.err, EPERM);
  EXPECT_EQ(InChild(Setup::kNone, ListenOnLoopback).rc, 0);
}

#if defined(__SANITIZE_ADDRESS__)
#define UNDER_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define UNDER_ASAN 1
#endif
#endif

#ifndef UNDER_ASAN
// (AddressSanitizer builds allow a non-thread clone: LeakSanitizer's helper.)
TEST(SandboxTest, ForkIsRefusedWithEperm) {
  Outcome o = InChild(Setup::kSeccomp, [] { return (long)fork(); });
  ASSERT_TRUE(o.applied);
  EXPECT_EQ(o.rc, -1);
  EXPECT_EQ(o.err, EPERM);
}
#endif

TEST(SandboxTest, ThreadsStillStart) {
  Outcome o = InChild(Setup::kSeccomp, StartAndJoinThread);
  ASSERT_TRUE(o.applied);
  EXPECT_EQ(o.rc, 0) << "errno " << o.err;
}

TEST(SandboxTest, Clone3AnswersEnosysSoGlibcFallsBack) {
  Outcome o = InChild(Setup::kSeccomp, [] { return syscall(SYS_clone3, nullptr, 0); });
  ASSERT_TRUE(o.applied);
  EXPECT_EQ(o.rc, -1);
  EXPECT_EQ(o.err, ENOSYS);
}

TEST(SandboxTest, AllowedCallsWorkAndTheKernelReportsTheFilter) {
  Outcome o = InChild(Setup::kSeccomp, [] { return StatusNumber("Seccomp:", 10); });
  ASSERT_TRUE(o.applied);
  EXPECT_EQ(o.rc, 2);  // SECCOMP_MODE_FILTER: open, read, close all went through
  o = InChild(Setup::kSeccomp, [] { return StatusNumber("NoNewPrivs:", 10); });
  EXPECT_EQ(o.rc, 1);
  o = InChild(Setup::kSeccomp, [] { return (long)socket(AF_INET6, SOCK_STREAM, 0); });
  EXPECT_GE(o.rc, 0) << "errno " << o.err;
}

TEST(SandboxTest, EnterLeavesNoCapabilityAndSetsNoNewPrivs) {
  Outcome o = InChild(Setup::kEnter, [] { return StatusNumber("CapEff:", 16); });
  ASSERT_TRUE(o.applied);
  EXPECT_EQ(o.rc, 0);
  o = InChild(Setup::kEnter, [] { return StatusNumber("CapPrm:", 16); });
  EXPECT_EQ(o.rc, 0);
  o = InChild(Setup::kEnter, [] { return StatusNumber("CapAmb:", 16); });
  EXPECT_EQ(o.rc, 0);
  o = InChild(Setup::kEnter, [] { return StatusNumber("NoNewPrivs:", 10); });
  EXPECT_EQ(o.rc, 1);
}

TEST(SandboxTest, EnterEmptiesTheBoundingSetWhenAllowedTo) {
  // Only a process holding CAP_SETPCAP can shrink its bounding set.
  if (InChild(Setup::kNone, [] { return (long)prctl(PR_CAPBSET_READ, CAP_SETPCAP); }).rc != 1 ||
      (InChild(Setup::kNone, [] { return StatusNumber("CapEff:", 16); }).rc &
       (1L << CAP_SETPCAP)) == 0)
    GTEST_SKIP() << "no CAP_SETPCAP here";
  Outcome o = InChild(Setup::kEnter, [] { return StatusNumber("CapBnd:", 16); });
  ASSERT_TRUE(o.applied);
  EXPECT_EQ(o.rc, 0);
}

TEST(SandboxTest, PortZeroNeverNeedsAPrivilege) {
  EXPECT_FALSE(mt_sandbox_port_is_privileged(0));
  EXPECT_FALSE(mt_sandbox_port_is_privileged(65535));
}

TEST(SandboxTest, ModesAreSpelledAsTheConfigSpellsThem) {
  EXPECT_STREQ(mt_seccomp_mode_str(MT_SECCOMP_ON), "true");
  EXPECT_STREQ(mt_seccomp_mode_str(MT_SECCOMP_OFF), "false");
  EXPECT_STREQ(mt_seccomp_mode_str(MT_SECCOMP_LOG), "log");
}
