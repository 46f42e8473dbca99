// Specification of agent/http_server.h against real sockets on 127.0.0.1
// (and ::1 when the machine has it): the server runs on a libev loop that
// the test turns between its own non-blocking reads, every wait bounded.
#include "agent/http_server.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <string>

namespace {

const double kWaitS = 5.0;

double Now() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

int RefusedCount(const mt_http_server_stats *st, int status) {
  for (size_t i = 0; i < MT_HTTP_NUM_REFUSALS; i++)
    if (mt_http_refusal_status[i] == status) return static_cast<int>(st->refused[i]);
  return -1;
}

class HttpServerTest : public ::testing::Test {
 protected:
  void SetUp() override { loop_ = ev_loop_new(EVFLAG_AUTO); }
  void TearDown() override {
    mt_http_server_free(server_);
    ev_loop_destroy(loop_);
  }

  // Answers "/hello" with "hello\n", "/quit" likewise and counts when sent,
  // anything else 404.
  static void OnRequest(void *arg, const mt_http_request *req, mt_http_exchange *ex) {
    auto *self = static_cast<HttpServerTest *>(arg);
    self->requests_++;
    std::string path = req->path;
    if (path == "/hello" || path == "/quit") {
      if (path == "/quit") mt_http_on_sent(ex, OnSent, self);
      mt_http_respond(ex, 200, "text/plain", nullptr, "hello\n", 6);
    } else if (path == "/silent") {
      // no answer: the server must answer 500 itself
    } else {
      mt_http_respond(ex, 404, "text/plain", "GET", "no\n", 3);
    }
  }
  static void OnSent(void *arg) { static_cast<HttpServerTest *>(arg)->sent_++; }

  bool Start(const char *ip = "127.0.0.1", size_t max_conns = 4, double request_s = 5,
             double idle_s = 5) {
    sockaddr_storage ss = {};
    if (strchr(ip, ':') != nullptr) {
      auto *a6 = reinterpret_cast<sockaddr_in6 *>(&ss);
      a6->sin6_family = AF_INET6;
      if (inet_pton(AF_INET6, ip, &a6->sin6_addr) != 1) return false;
    } else {
      auto *a4 = reinterpret_cast<sockaddr_in *>(&ss);
      a4->sin_family = AF_INET;
      inet_pton(AF_INET, ip, &a4->sin_addr);
    }
    mt_http_limits limits = {max_conns, request_s, idle_s};
    char err[128];
    server_ = mt_http_server_new(loop_, reinterpret_cast<sockaddr *>(&ss), &limits, OnRequest, this,
                                 err, sizeof(err));
    if (server_ == nullptr) {
      err_ = err;
      return false;
    }
    EXPECT_TRUE(mt_http_server_address(server_, &bound_));
    return true;
  }

  int Connect() {
    int fd = socket(bound_.ss_family, SOCK_STREAM | SOCK_NONBLOCK, 0);
    socklen_t len = bound_.ss_family == AF_INET6 ? sizeof(sockaddr_in6) : sizeof(sockaddr_in);
    int rc = connect(fd, reinterpret_cast<sockaddr *>(&bound_), len);
    EXPECT_TRUE(rc == 0 || errno == EINPROGRESS) << strerror(errno);
    return fd;
  }

  // Turns the loop until |done| or the deadline.
  template <typename F>
  bool Until(F done, double wait_s = kWaitS) {
    double deadline = Now() + wait_s;
    while (Now() < deadline) {
      if (done()) return true;
      ev_run(loop_, EVRUN_NOWAIT);
      if (done()) return true;
      usleep(1000);
    }
    return done();
  }

  void Send(int fd, const std::string &bytes) {
    size_t off = 0;
    ASSERT_TRUE(Until([&] {
      ssize_t n = send(fd, bytes.data() + off, bytes.size() - off, MSG_NOSIGNAL);
      if (n > 0) off += static_cast<size_t>(n);
      return off == bytes.size();
    }));
  }

  // Reads until |count| complete answers (head + Content-Length body, or
  // head only for HEAD) or EOF. Sets *eof when the server closed.
  std::string ReadAnswers(int fd, int count, bool *eof, bool head_only = false) {
    std::string got;
    *eof = false;
    auto complete = [&] {
      size_t pos = 0;
      for (int i = 0; i < count; i++) {
        size_t end = got.find("\r\n\r\n", pos);
        if (end == std::string::npos) return false;
        size_t cl = got.find("Content-Length: ", pos);
        size_t body =
            head_only || cl == std::string::npos || cl > end ? 0 : std::stoul(got.substr(cl + 16));
        pos = end + 4 + body;
        if (got.size() < pos) return false;
      }
      return true;
    };
    Until([&] {
      char buf[4096];
      ssize_t n;
      while ((n = recv(fd, buf, sizeof(buf), 0)) > 0) got.append(buf, static_cast<size_t>(n));
      if (n == 0 || (n < 0 && errno != EAGAIN)) *eof = true;
      return *eof || complete();
    });
    return got;
  }

  bool ClosedByServer(int fd) {
    bool eof = false;
    std::string extra = ReadAnswers(fd, 1000, &eof);
    return eof && extra.empty();
  }

  struct ev_loop *loop_ = nullptr;
  mt_http_server *server_ = nullptr;
  sockaddr_storage bound_ = {};
  std::string err_;
  int requests_ = 0;
  int sent_ = 0;
};

TEST_F(HttpServerTest, AnswersWithTheHeadersEveryAnswerCarries) {
  ASSERT_TRUE(Start()) << err_;
  int fd = Connect();
  Send(fd, "GET /hello HTTP/1.1\r\nHost: x\r\n\r\n");
  bool eof;
  std::string a = ReadAnswers(fd, 1, &eof);
  EXPECT_EQ(a.rfind("HTTP/1.1 200 OK\r\n", 0), 0u) << a;
  EXPECT_NE(a.find("\r\nDate: "), std::string::npos) << a;
  EXPECT_NE(a.find("\r\nContent-Type: text/plain\r\n"), std::string::npos) << a;
  EXPECT_NE(a.find("\r\nCache-Control: no-store\r\n"), std::string::npos) << a;
  EXPECT_NE(a.find("\r\nContent-Length: 6\r\n\r\nhello\n"), std::string::npos) << a;
  EXPECT_EQ(a.find("Connection:"), std::string::npos) << a;
  EXPECT_FALSE(eof);
  EXPECT_EQ(mt_http_server_get_stats(server_)->requests, 1u);
  close(fd);
}

TEST_F(HttpServerTest, KeepAliveHeadAndPipelinedRequestsInOrder) {
  ASSERT_TRUE(Start()) << err_;
  int fd = Connect();
  bool eof;
  Send(fd, "GET /hello HTTP/1.1\r\nHost: x\r\n\r\n");
  ReadAnswers(fd, 1, &eof);
  Send(fd, "HEAD /hello HTTP/1.1\r\nHost: x\r\n\r\n");
  std::string head = ReadAnswers(fd, 1, &eof, true);
  EXPECT_NE(head.find("Content-Length: 6\r\n\r\n"), std::string::npos) << head;
  EXPECT_EQ(head.find("hello"), std::string::npos) << head;
  // Two requests in one write: both answered, in order, then the close asked for.
  Send(fd,
       "GET /other HTTP/1.1\r\nHost: x\r\n\r\nGET /hello HTTP/1.1\r\nHost: x\r\n"
       "Connection: close\r\n\r\n");
  std::string two = ReadAnswers(fd, 2, &eof);
  size_t first = two.find("HTTP/1.1 404 Not Found\r\n");
  size_t second = two.find("HTTP/1.1 200 OK\r\n");
  ASSERT_NE(first, std::string::npos) << two;
  ASSERT_NE(second, std::string::npos) << two;
  EXPECT_LT(first, second);
  EXPECT_NE(two.find("Allow: GET\r\n"), std::string::npos) << two;
  EXPECT_NE(two.find("Connection: close\r\n"), std::string::npos) << two;
  EXPECT_TRUE(ClosedByServer(fd));
  EXPECT_EQ(requests_, 4);
  close(fd);
}

TEST_F(HttpServerTest, Http10ClosesUnlessKeepAliveIsAsked) {
  ASSERT_TRUE(Start()) << err_;
  int fd = Connect();
  bool eof;
  Send(fd, "GET /hello HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
  std::string a = ReadAnswers(fd, 1, &eof);
  EXPECT_NE(a.find("Connection: keep-alive\r\n"), std::string::npos) << a;
  Send(fd, "GET /hello HTTP/1.0\r\n\r\n");
  a = ReadAnswers(fd, 1, &eof);
  EXPECT_NE(a.find("Connection: close\r\n"), std::string::npos) << a;
  EXPECT_TRUE(ClosedByServer(fd));
  close(fd);
}

TEST_F(HttpServerTest, MalformedRequestIsRefusedCountedAndClosed) {
  ASSERT_TRUE(Start()) << err_;
  int fd = Connect();
  Send(fd, "GET /hello HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n");
  bool eof;
  std::string a = ReadAnswers(fd, 1, &eof);
  EXPECT_EQ(a.rfind("HTTP/1.1 400 Bad Request\r\n", 0), 0u) << a;
  EXPECT_NE(a.find("header field is not NAME: VALUE\n"), std::string::npos) << a;
  EXPECT_TRUE(ClosedByServer(fd));
  EXPECT_EQ(RefusedCount(mt_http_server_get_stats(server_), 400), 1);
  EXPECT_EQ(requests_, 0);
  close(fd);
}

TEST_F(HttpServerTest, OversizedHeadIs431WithoutWaitingForItsEnd) {
  ASSERT_TRUE(Start()) << err_;
  int fd = Connect();
  std::string fields = "GET /hello HTTP/1.1\r\nHost: x\r\n";
  while (fields.size() <= MT_HTTP_MAX_HEAD_BYTES) fields += "X-Long: 0123456789abcdef0123\r\n";
  Send(fd, fields);
  bool eof;
  std::string a = ReadAnswers(fd, 1, &eof);
  EXPECT_EQ(a.rfind("HTTP/1.1 431 ", 0), 0u) << a;
  EXPECT_EQ(RefusedCount(mt_http_server_get_stats(server_), 431), 1);
  close(fd);
}

TEST_F(HttpServerTest, ARequestWithABodyIsAnsweredThenClosed) {
  ASSERT_TRUE(Start()) << err_;
  int fd = Connect();
  Send(fd, "POST /hello HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nabcde");
  bool eof;
  std::string a = ReadAnswers(fd, 1, &eof);
  EXPECT_EQ(a.rfind("HTTP/1.1 200 OK\r\n", 0), 0u) << a;
  EXPECT_NE(a.find("Connection: close\r\n"), std::string::npos) << a;
  EXPECT_TRUE(ClosedByServer(fd));
  close(fd);
}

TEST_F(HttpServerTest, SlowRequestGets408AfterTheRequestTimeout) {
  ASSERT_TRUE(Start("127.0.0.1", 4, 0.2, 5)) << err_;
  int fd = Connect();
  double t0 = Now();
  Send(fd, "GET /hello HTTP/1.1\r\n");
  bool eof;
  std::string a = ReadAnswers(fd, 1, &eof);
  EXPECT_GE(Now() - t0, 0.15);
  EXPECT_EQ(a.rfind("HTTP/1.1 408 Request Timeout\r\n", 0), 0u) << a;
  EXPECT_TRUE(ClosedByServer(fd));
  EXPECT_EQ(RefusedCount(mt_http_server_get_stats(server_), 408), 1);
  close(fd);
}

TEST_F(HttpServerTest, IdleConnectionIsClosedSilentlyAfterTheIdleTimeout) {
  ASSERT_TRUE(Start("127.0.0.1", 4, 5, 0.2)) << err_;
  int fd = Connect();
  bool eof;
  Send(fd, "GET /hello HTTP/1.1\r\nHost: x\r\n\r\n");
  ReadAnswers(fd, 1, &eof);
  EXPECT_TRUE(Until([&] { return mt_http_server_get_stats(server_)->connections_active == 0; }));
  EXPECT_TRUE(ClosedByServer(fd));
  close(fd);
}

TEST_F(HttpServerTest, ConnectionsBeyondTheLimitGet503) {
  ASSERT_TRUE(Start("127.0.0.1", 2)) << err_;
  int a = Connect(), b = Connect();
  ASSERT_TRUE(Until([&] { return mt_http_server_get_stats(server_)->connections_active == 2; }));
  int c = Connect();
  bool eof;
  std::string got = ReadAnswers(c, 1, &eof);
  EXPECT_EQ(got.rfind("HTTP/1.1 503 Service Unavailable\r\n", 0), 0u) << got;
  EXPECT_EQ(RefusedCount(mt_http_server_get_stats(server_), 503), 1);
  close(a);
  ASSERT_TRUE(Until([&] { return mt_http_server_get_stats(server_)->connections_active == 1; }));
  int d = Connect();
  Send(d, "GET /hello HTTP/1.1\r\nHost: x\r\n\r\n");
  got = ReadAnswers(d, 1, &eof);
  EXPECT_EQ(got.rfind("HTTP/1.1 200 OK\r\n", 0), 0u) << got;
  close(b);
  close(c);
  close(d);
}

TEST_F(HttpServerTest, OnSentRunsOnceTheAnswerIsOut) {
  ASSERT_TRUE(Start()) << err_;
  int fd = Connect();
  Send(fd, "GET /quit HTTP/1.1\r\nHost: x\r\n\r\n");
  bool eof;
  ReadAnswers(fd, 1, &eof);
  EXPECT_TRUE(Until([&] { return sent_ == 1; }));
  close(fd);
}

TEST_F(HttpServerTest, AHandlerThatDoesNotAnswerGives500) {
  ASSERT_TRUE(Start()) << err_;
  int fd = Connect();
  Send(fd, "GET /silent HTTP/1.1\r\nHost: x\r\n\r\n");
  bool eof;
  std::string a = ReadAnswers(fd, 1, &eof);
  EXPECT_EQ(a.rfind("HTTP/1.1 500 ", 0), 0u) << a;
  close(fd);
}

TEST_F(HttpServerTest, ListensOnIpv6Loopback) {
  int probe = socket(AF_INET6, SOCK_STREAM, 0);
  sockaddr_in6 a6 = {};
  a6.sin6_family = AF_INET6;
  a6.sin6_addr = in6addr_loopback;
  bool have_v6 = probe >= 0 && bind(probe, reinterpret_cast<sockaddr *>(&a6), sizeof(a6)) == 0;
  if (probe >= 0) close(probe);
  if (!have_v6) GTEST_SKIP() << "no ::1 on this machine";
  ASSERT_TRUE(Start("::1")) << err_;
  int fd = Connect();
  Send(fd, "GET /hello HTTP/1.1\r\nHost: [::1]\r\n\r\n");
  bool eof;
  std::string a = ReadAnswers(fd, 1, &eof);
  EXPECT_EQ(a.rfind("HTTP/1.1 200 OK\r\n", 0), 0u) << a;
  close(fd);
}

TEST_F(HttpServerTest, ATakenPortIsAnErrorWithTheReason) {
  ASSERT_TRUE(Start()) << err_;
  mt_http_limits limits = {1, 1, 1};
  char err[128];
  mt_http_server *again = mt_http_server_new(loop_, reinterpret_cast<sockaddr *>(&bound_), &limits,
                                             OnRequest, this, err, sizeof(err));
  EXPECT_EQ(again, nullptr);
  EXPECT_STREQ(err, "Address already in use");
}

}  // namespace
