// low_fds: sockets moved onto reserved low descriptor numbers and back.
#include "agent/low_fds.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <vector>

namespace {

bool IsSocket(int fd) {
  struct stat st;
  return fstat(fd, &st) == 0 && S_ISSOCK(st.st_mode);
}

bool IsOpen(int fd) { return fcntl(fd, F_GETFD) != -1; }

TEST(LowFds, MovesAHighSocketOntoAReservedNumberAndRestoresThePlaceholder) {
  mt_low_fds *r = mt_low_fds_new(2);
  ASSERT_NE(r, nullptr);
  // Push the next descriptor numbers up, as a burst of connections would.
  std::vector<int> filler;
  for (int i = 0; i < 50; i++) filler.push_back(open("/dev/null", O_RDONLY | O_CLOEXEC));
  int pair[2];
  ASSERT_EQ(0, socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, pair));
  int high = pair[0];
  int low = mt_low_fds_take(r, high);
  EXPECT_LT(low, high);
  EXPECT_FALSE(IsOpen(high)) << "the high number is given back";
  EXPECT_TRUE(IsSocket(low));
  EXPECT_TRUE(fcntl(low, F_GETFL) & O_NONBLOCK) << "flags live with the socket";
  EXPECT_TRUE(fcntl(low, F_GETFD) & FD_CLOEXEC);
  EXPECT_EQ(1u, mt_low_fds_in_use(r));
  // The same socket: what one end writes the other reads.
  ASSERT_EQ(1, write(pair[1], "x", 1));
  char c = 0;
  EXPECT_EQ(1, read(low, &c, 1));

  mt_low_fds_close(r, low);
  EXPECT_EQ(0u, mt_low_fds_in_use(r));
  EXPECT_TRUE(IsOpen(low)) << "the number stays reserved";
  EXPECT_FALSE(IsSocket(low));
  EXPECT_EQ(0, read(pair[1], &c, 1)) << "the socket itself was closed";

  close(pair[1]);
  for (int fd : filler) close(fd);
  mt_low_fds_free(r);
}

TEST(LowFds, KeepsTheNumberWhenTheReserveIsFullOrHigher) {
  mt_low_fds *r = mt_low_fds_new(1);
  ASSERT_NE(r, nullptr);
  std::vector<int> filler;
  for (int i = 0; i < 10; i++) filler.push_back(open("/dev/null", O_RDONLY | O_CLOEXEC));
  int a[2], b[2];
  ASSERT_EQ(0, socketpair(AF_UNIX, SOCK_STREAM, 0, a));
  ASSERT_EQ(0, socketpair(AF_UNIX, SOCK_STREAM, 0, b));
  int first = mt_low_fds_take(r, a[0]);
  EXPECT_NE(first, a[0]);
  EXPECT_EQ(b[0], mt_low_fds_take(r, b[0])) << "no free slot: unchanged";
  mt_low_fds_close(r, b[0]);
  EXPECT_FALSE(IsOpen(b[0])) << "a number outside the reserve is simply closed";
  mt_low_fds_close(r, first);
  for (int fd : {a[1], b[1]}) close(fd);
  for (int fd : filler) close(fd);
  mt_low_fds_free(r);
}

TEST(LowFds, NullReserveIsPlainClose) {
  int fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
  EXPECT_EQ(fd, mt_low_fds_take(nullptr, fd));
  mt_low_fds_close(nullptr, fd);
  EXPECT_FALSE(IsOpen(fd));
}

}  // namespace
