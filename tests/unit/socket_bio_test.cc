// socket_bio: one recv per burst of records, buffers only while bytes wait,
// and an honest "found the socket empty".
#include <fcntl.h>
#include <gtest/gtest.h>
#include <openssl/bio.h>
#include <sys/socket.h>
#include <unistd.h>

#include <string>
#include <vector>

extern "C" {
#include "agent/buffer_pool.h"
#include "agent/socket_bio.h"
}

namespace {

constexpr size_t kBufferBytes = 1024;

// A connected, non-blocking stream socket pair; |ours| is under the BIO.
struct Pair {
  Pair() {
    int fds[2];
    EXPECT_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, fds), 0);
    ours = fds[0];
    theirs = fds[1];
    fcntl(ours, F_SETFL, fcntl(ours, F_GETFL) | O_NONBLOCK);
    fcntl(theirs, F_SETFL, fcntl(theirs, F_GETFL) | O_NONBLOCK);
  }
  ~Pair() {
    close(ours);
    if (theirs >= 0) close(theirs);
  }
  void Send(const std::string &s) const {
    ASSERT_EQ(send(theirs, s.data(), s.size(), 0), static_cast<ssize_t>(s.size()));
  }
  int ours, theirs;
};

struct Fixture : ::testing::Test {
  Fixture() : pool(mt_buffer_pool_new(kBufferBytes, 4, 4)), bio(mt_socket_bio_new(pair.ours, pool)) {}
  ~Fixture() override {
    BIO_free(bio);
    mt_buffer_pool_free(pool);
  }
  size_t InUse() const { return mt_buffer_pool_stats_of(pool).in_use; }
  std::string Read(int len) {
    std::vector<char> out(static_cast<size_t>(len));
    int n = BIO_read(bio, out.data(), len);
    return n > 0 ? std::string(out.data(), static_cast<size_t>(n)) : std::string();
  }
  Pair pair;
  mt_buffer_pool *pool;
  BIO *bio;
};

std::string Bytes(size_t n, char first) {
  std::string s(n, '\0');
  for (size_t i = 0; i < n; i++) s[i] = static_cast<char>(first + static_cast<char>(i % 23));
  return s;
}

using SocketBioTest = Fixture;

TEST_F(SocketBioTest, ServesSmallReadsFromOneRecvAndReturnsTheBufferWhenEmpty) {
  ASSERT_NE(bio, nullptr);
  std::string sent = Bytes(300, 'a');
  pair.Send(sent);
  EXPECT_EQ(Read(5), sent.substr(0, 5));  // a TLS record header
  EXPECT_EQ(mt_socket_bio_buffered(bio), 295u);
  EXPECT_EQ(InUse(), 1u);
  // The socket is empty now: everything came up with the first recv.
  char probe;
  EXPECT_EQ(recv(pair.ours, &probe, 1, MSG_PEEK), -1);
  EXPECT_FALSE(mt_socket_bio_drained(bio));  // bytes still waiting in the BIO
  EXPECT_EQ(Read(200), sent.substr(5, 200));
  EXPECT_EQ(Read(200), sent.substr(205));  // only what is left
  EXPECT_EQ(InUse(), 0u);
  EXPECT_EQ(mt_socket_bio_buffered(bio), 0u);
  EXPECT_TRUE(mt_socket_bio_drained(bio));
}

TEST_F(SocketBioTest, AnEmptySocketIsARetryNotAnError) {
  char out[16];
  EXPECT_EQ(BIO_read(bio, out, sizeof(out)), -1);
  EXPECT_TRUE(BIO_should_retry(bio));
  EXPECT_TRUE(BIO_should_read(bio));
  EXPECT_TRUE(mt_socket_bio_drained(bio));
  EXPECT_EQ(InUse(), 0u);  // nothing held while waiting
}

TEST_F(SocketBioTest, AFullRecvDoesNotClaimTheSocketIsEmpty) {
  std::string sent = Bytes(kBufferBytes + 10, 'A');
  pair.Send(sent);
  EXPECT_EQ(Read(static_cast<int>(kBufferBytes)), sent.substr(0, kBufferBytes));
  EXPECT_FALSE(mt_socket_bio_drained(bio));  // the recv filled the buffer: maybe more
  EXPECT_EQ(Read(64), sent.substr(kBufferBytes));
  EXPECT_TRUE(mt_socket_bio_drained(bio));  // 10 < 1024: the socket was empty
}

TEST_F(SocketBioTest, ReadsExactlyWhatIsAskedWhenThePoolHasNoBuffer) {
  std::vector<uint8_t *> taken;
  for (uint8_t *b; (b = mt_buffer_pool_get(pool)) != nullptr;) taken.push_back(b);
  pair.Send(Bytes(100, 'x'));
  EXPECT_EQ(Read(5), Bytes(5, 'x'));
  EXPECT_EQ(mt_socket_bio_buffered(bio), 0u);
  char rest[200];
  EXPECT_EQ(recv(pair.ours, rest, sizeof(rest), MSG_PEEK), 95);  // left in the kernel
  EXPECT_FALSE(mt_socket_bio_drained(bio));
  for (uint8_t *b : taken) mt_buffer_pool_put(pool, b);
  EXPECT_EQ(Read(200).size(), 95u);  // read-ahead again once the pool can lend
}

TEST_F(SocketBioTest, WorksWithoutAPool) {
  BIO *plain = mt_socket_bio_new(pair.ours, nullptr);
  ASSERT_NE(plain, nullptr);
  pair.Send("hello");
  char out[3];
  EXPECT_EQ(BIO_read(plain, out, sizeof(out)), 3);
  EXPECT_EQ(mt_socket_bio_buffered(plain), 0u);
  BIO_free(plain);
}

TEST_F(SocketBioTest, ThePeersFinReadsAsZeroAndCountsAsEmpty) {
  pair.Send("tail");
  shutdown(pair.theirs, SHUT_WR);
  EXPECT_EQ(Read(64), "tail");
  char out[8];
  EXPECT_EQ(BIO_read(bio, out, sizeof(out)), 0);
  EXPECT_FALSE(BIO_should_retry(bio));
  EXPECT_TRUE(mt_socket_bio_drained(bio));
  EXPECT_EQ(InUse(), 0u);
}

TEST_F(SocketBioTest, AResetIsAnErrorWithoutRetry) {
  pair.Send("x");
  EXPECT_EQ(Read(1), "x");
  close(pair.theirs);
  pair.theirs = -1;
  char out[8];
  int n = BIO_read(bio, out, sizeof(out));
  EXPECT_LE(n, 0);
  EXPECT_FALSE(BIO_should_retry(bio));
}

TEST_F(SocketBioTest, FreeingWithBytesInsideGivesTheBufferBack) {
  pair.Send(Bytes(50, 'q'));
  EXPECT_EQ(Read(5).size(), 5u);
  EXPECT_EQ(InUse(), 1u);
  BIO_free(bio);
  bio = nullptr;
  EXPECT_EQ(InUse(), 0u);
}

TEST_F(SocketBioTest, WritesGoToTheSocketAndAFullSocketAsksToRetry) {
  EXPECT_EQ(BIO_write(bio, "ping", 4), 4);
  char got[8];
  EXPECT_EQ(recv(pair.theirs, got, sizeof(got), 0), 4);
  std::string big(64 * 1024, 'w');
  int n;
  size_t total = 0;
  while ((n = BIO_write(bio, big.data(), static_cast<int>(big.size()))) > 0 && total < (64u << 20))
    total += static_cast<size_t>(n);
  EXPECT_EQ(n, -1);
  EXPECT_TRUE(BIO_should_retry(bio));
  EXPECT_TRUE(BIO_should_write(bio));
}

TEST_F(SocketBioTest, ReportsItsFdAndOnlyAnswersForItsOwnKind) {
  EXPECT_EQ(BIO_get_fd(bio, nullptr), pair.ours);
  BIO *mem = BIO_new(BIO_s_mem());
  EXPECT_FALSE(mt_socket_bio_drained(mem));
  EXPECT_EQ(mt_socket_bio_buffered(mem), 0u);
  EXPECT_FALSE(mt_socket_bio_drained(nullptr));
  BIO_free(mem);
}

}  // namespace
