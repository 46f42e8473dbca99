// End-to-end specification of grpc/client and grpc/server: our client against
// our server, in process, on one libev loop, over TLS with a self-signed
// certificate made here. A few tests use a helper thread to play a broken or
// hostile peer with blocking sockets; the code under test never blocks.
#include <arpa/inet.h>
#include <ev.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <gtest/gtest.h>
#include <openssl/ec_key.h>
#include <openssl/evp.h>
#include <openssl/obj.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <atomic>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "grpc/client.h"
#include "grpc/server.h"

namespace {

constexpr size_t kServerMaxMessage = 256 * 1024;
constexpr size_t kServerSendQueue = 1024 * 1024;
constexpr int kHandshakeTimeoutMs = 300;

// A self-signed P-256 certificate for localhost / 127.0.0.1, used as the
// server's certificate, the client's certificate, and the trust anchor.
struct Pki {
  EVP_PKEY *key = nullptr;
  X509 *cert = nullptr;

  Pki() {
    EC_KEY *ec = EC_KEY_new_by_curve_name(NID_X9_62_prime256v1);
    EC_KEY_generate_key(ec);
    key = EVP_PKEY_new();
    EVP_PKEY_assign_EC_KEY(key, ec);
    cert = X509_new();
    X509_set_version(cert, X509_VERSION_3);
    ASN1_INTEGER_set(X509_get_serialNumber(cert), 1);
    X509_gmtime_adj(X509_getm_notBefore(cert), -3600);
    X509_gmtime_adj(X509_getm_notAfter(cert), 86400);
    X509_NAME *name = X509_get_subject_name(cert);
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                               reinterpret_cast<const uint8_t *>("localhost"), -1, -1, 0);
    X509_set_issuer_name(cert, name);
    X509_set_pubkey(cert, key);
    X509V3_CTX ctx;
    X509V3_set_ctx(&ctx, cert, cert, nullptr, nullptr, 0);
    X509_EXTENSION *san =
        X509V3_EXT_nconf_nid(nullptr, &ctx, NID_subject_alt_name, "DNS:localhost,IP:127.0.0.1");
    X509_add_ext(cert, san, -1);
    X509_EXTENSION_free(san);
    X509_sign(cert, key, EVP_sha256());
  }
  ~Pki() {
    X509_free(cert);
    EVP_PKEY_free(key);
  }
};

Pki &TestPki() {
  static Pki *pki = new Pki();
  return *pki;
}

SSL_CTX *ServerCtx() {
  SSL_CTX *ctx = SSL_CTX_new(TLS_method());
  SSL_CTX_use_certificate(ctx, TestPki().cert);
  SSL_CTX_use_PrivateKey(ctx, TestPki().key);
  // Ask for (but do not require) a client certificate, trusting our own.
  X509_STORE_add_cert(SSL_CTX_get_cert_store(ctx), TestPki().cert);
  SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, nullptr);
  return ctx;
}

SSL_CTX *ClientCtx(bool trust_server, bool present_cert) {
  SSL_CTX *ctx = SSL_CTX_new(TLS_method());
  if (trust_server) X509_STORE_add_cert(SSL_CTX_get_cert_store(ctx), TestPki().cert);
  SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, nullptr);
  if (present_cert) {
    SSL_CTX_use_certificate(ctx, TestPki().cert);
    SSL_CTX_use_PrivateKey(ctx, TestPki().key);
  }
  return ctx;
}

// What one client call saw.
struct CallResult {
  std::vector<std::string> messages;
  int closes = 0;
  int status = -1;
  std::string message;
};

void OnMessage(void *arg, const uint8_t *msg, size_t len) {
  static_cast<CallResult *>(arg)->messages.emplace_back(reinterpret_cast<const char *>(msg), len);
}

void OnClose(void *arg, mt_grpc_status status, const char *message) {
  auto *r = static_cast<CallResult *>(arg);
  r->closes++;
  r->status = status;
  r->message = message;
}

const mt_grpc_call_handlers kHandlers = {OnMessage, OnClose};

// What the server's handlers saw.
struct ServerSide {
  std::vector<mt_grpc_stream *> held;  // streams kept open by /test.Echo/Hold
  int closed = 0;
  int last_closed_why = -1;
  int64_t last_timeout_ms = -2;
  std::string last_authorization;
  std::string last_peer_cn;
  int flood_sent = 0;
  std::vector<std::string> connection_errors;
};

void OnHeldClosed(void *arg, mt_grpc_status why) {
  auto *s = static_cast<ServerSide *>(arg);
  s->closed++;
  s->last_closed_why = why;
}

void Echo(void *arg, mt_grpc_stream *stream, const mt_grpc_request *req) {
  auto *s = static_cast<ServerSide *>(arg);
  s->last_timeout_ms = req->timeout_ms;
  mt_grpc_stream_send(stream, req->message, req->message_len);
  mt_grpc_stream_finish(stream, MT_GRPC_OK, nullptr);
}

void StreamThree(void *arg, mt_grpc_stream *stream, const mt_grpc_request *req) {
  (void)arg;
  for (int i = 0; i < 3; i++) {
    std::string m = std::string(reinterpret_cast<const char *>(req->message), req->message_len) +
                    "#" + std::to_string(i);
    mt_grpc_stream_send(stream, reinterpret_cast<const uint8_t *>(m.data()), m.size());
  }
  mt_grpc_stream_finish(stream, MT_GRPC_OK, nullptr);
}

void Hold(void *arg, mt_grpc_stream *stream, const mt_grpc_request *req) {
  auto *s = static_cast<ServerSide *>(arg);
  s->last_timeout_ms = req->timeout_ms;
  s->held.push_back(stream);
  mt_grpc_stream_set_on_closed(stream, OnHeldClosed, s);
}

void Fail(void *arg, mt_grpc_stream *stream, const mt_grpc_request *req) {
  (void)arg;
  (void)req;
  mt_grpc_stream_finish(stream, MT_GRPC_PERMISSION_DENIED, "denied: 100% sure\nno caf\xc3\xa9");
}

void Metadata(void *arg, mt_grpc_stream *stream, const mt_grpc_request *req) {
  auto *s = static_cast<ServerSide *>(arg);
  const char *auth = mt_grpc_request_metadata(req, "authorization");
  s->last_authorization = auth ? auth : "";
  const char *trace = mt_grpc_request_metadata(req, "x-trace");
  std::string reply = trace ? trace : "(none)";
  mt_grpc_stream_send(stream, reinterpret_cast<const uint8_t *>(reply.data()), reply.size());
  mt_grpc_stream_finish(stream, MT_GRPC_OK, nullptr);
}

void Peer(void *arg, mt_grpc_stream *stream, const mt_grpc_request *req) {
  auto *s = static_cast<ServerSide *>(arg);
  char cn[256] = "none";
  if (req->peer_cert)
    X509_NAME_get_text_by_NID(X509_get_subject_name(req->peer_cert), NID_commonName, cn,
                              sizeof(cn));
  s->last_peer_cn = cn;
  std::string reply = std::string(cn) + " from " + req->peer_address;
  mt_grpc_stream_send(stream, reinterpret_cast<const uint8_t *>(reply.data()), reply.size());
  mt_grpc_stream_finish(stream, MT_GRPC_OK, nullptr);
}

// Sends 64 KiB messages until the per-stream queue refuses one.
void Flood(void *arg, mt_grpc_stream *stream, const mt_grpc_request *req) {
  (void)req;
  auto *s = static_cast<ServerSide *>(arg);
  std::string chunk(64 * 1024, 'f');
  s->flood_sent = 0;
  while (mt_grpc_stream_send(stream, reinterpret_cast<const uint8_t *>(chunk.data()),
                             chunk.size()) == MT_GRPC_SEND_OK)
    s->flood_sent++;
  mt_grpc_stream_finish(stream, MT_GRPC_OK, "flooded");
}

void OnConnectionError(void *arg, const char *peer, const char *what) {
  (void)peer;
  static_cast<ServerSide *>(arg)->connection_errors.push_back(what);
}

void Tick(struct ev_loop *, ev_timer *, int) {}

class GrpcEndToEnd : public ::testing::Test {
 protected:
  void SetUp() override {
    signal(SIGPIPE, SIG_IGN);  // for the blocking helper peers; grpc/ never needs it
    loop_ = ev_loop_new(EVFLAG_AUTO);
    server_ctx_ = ServerCtx();
    client_ctx_ = ClientCtx(/*trust_server=*/true, /*present_cert=*/true);
    StartServer(0);
    client_ = NewClient(client_ctx_, port_);
  }

  void TearDown() override {
    mt_grpc_client_free(client_);
    mt_grpc_server_free(server_);
    SSL_CTX_free(client_ctx_);
    SSL_CTX_free(server_ctx_);
    ev_loop_destroy(loop_);
  }

  void StartServer(int idle_timeout_ms) {
    mt_grpc_server_options o = {};
    o.listen = "127.0.0.1:0";
    o.ssl_ctx = server_ctx_;
    o.max_message_bytes = kServerMaxMessage;
    o.max_send_queue_bytes = kServerSendQueue;
    o.handshake_timeout_ms = kHandshakeTimeoutMs;
    o.idle_timeout_ms = idle_timeout_ms;
    o.on_connection_error = OnConnectionError;
    o.on_connection_error_arg = &side_;
    server_ = mt_grpc_server_new(loop_, &o);
    ASSERT_NE(server_, nullptr);
    port_ = mt_grpc_server_port(server_);
    ASSERT_GT(port_, 0);
    ASSERT_TRUE(mt_grpc_server_handle(server_, "/test.Echo/Unary", Echo, &side_));
    ASSERT_TRUE(mt_grpc_server_handle(server_, "/test.Echo/Stream", StreamThree, &side_));
    ASSERT_TRUE(mt_grpc_server_handle(server_, "/test.Echo/Hold", Hold, &side_));
    ASSERT_TRUE(mt_grpc_server_handle(server_, "/test.Echo/Fail", Fail, &side_));
    ASSERT_TRUE(mt_grpc_server_handle(server_, "/test.Echo/Metadata", Metadata, &side_));
    ASSERT_TRUE(mt_grpc_server_handle(server_, "/test.Echo/Peer", Peer, &side_));
    ASSERT_TRUE(mt_grpc_server_handle(server_, "/test.Echo/Flood", Flood, &side_));
    EXPECT_FALSE(mt_grpc_server_handle(server_, "/test.Echo/Unary", Echo, &side_));
  }

  mt_grpc_client *NewClient(SSL_CTX *ctx, int port, int keepalive_interval_ms = 0,
                            int keepalive_timeout_ms = 0) {
    std::string target = "127.0.0.1:" + std::to_string(port);
    mt_grpc_client_options o = {};
    o.target = target.c_str();
    o.ssl_ctx = ctx;
    o.authority = "localhost";
    o.server_name = "localhost";
    o.connect_timeout_ms = 2000;
    o.keepalive_interval_ms = keepalive_interval_ms;
    o.keepalive_timeout_ms = keepalive_timeout_ms;
    o.keepalive_without_calls = 1;
    return mt_grpc_client_new(loop_, &o);
  }

  mt_grpc_call *Start(mt_grpc_client *client, const char *path, const std::string &request,
                      CallResult *result, int64_t deadline_ms = 5000,
                      std::vector<mt_grpc_metadata> md = {}) {
    return mt_grpc_client_start_call(client, path, md.data(), md.size(),
                                     reinterpret_cast<const uint8_t *>(request.data()),
                                     request.size(), deadline_ms, &kHandlers, result);
  }

  // Runs the loop until |done| holds or |seconds| pass.
  bool RunUntil(const std::function<bool()> &done, double seconds = 5.0) {
    ev_timer tick;
    ev_timer_init(&tick, Tick, 0.01, 0.01);
    ev_timer_start(loop_, &tick);
    double end = ev_time() + seconds;
    while (!done() && ev_time() < end) ev_run(loop_, EVRUN_ONCE);
    ev_timer_stop(loop_, &tick);
    return done();
  }

  void RunFor(double seconds) {
    RunUntil([] { return false; }, seconds);
  }

  struct ev_loop *loop_ = nullptr;
  SSL_CTX *server_ctx_ = nullptr;
  SSL_CTX *client_ctx_ = nullptr;
  mt_grpc_server *server_ = nullptr;
  mt_grpc_client *client_ = nullptr;
  int port_ = 0;
  ServerSide side_;
};

TEST_F(GrpcEndToEnd, UnaryCallEchoesTheRequest) {
  CallResult r;
  ASSERT_NE(Start(client_, "/test.Echo/Unary", "ping", &r), nullptr);
  EXPECT_FALSE(mt_grpc_client_is_connected(client_));  // lazily, on the loop
  ASSERT_TRUE(RunUntil([&] { return r.closes > 0; }));
  EXPECT_EQ(r.status, MT_GRPC_OK);
  ASSERT_EQ(r.messages.size(), 1u);
  EXPECT_EQ(r.messages[0], "ping");
  EXPECT_TRUE(mt_grpc_client_is_connected(client_));
  EXPECT_NE(mt_grpc_client_peer_cert(client_), nullptr);
  RunFor(0.05);
  EXPECT_EQ(r.closes, 1);  // exactly once
}

TEST_F(GrpcEndToEnd, CallsQueuedWhileConnectingAllComplete) {
  std::vector<CallResult> r(20);
  for (size_t i = 0; i < r.size(); i++)
    ASSERT_NE(Start(client_, "/test.Echo/Unary", "m" + std::to_string(i), &r[i]), nullptr);
  ASSERT_TRUE(RunUntil([&] {
    for (auto &x : r)
      if (x.closes == 0) return false;
    return true;
  }));
  for (size_t i = 0; i < r.size(); i++) {
    EXPECT_EQ(r[i].status, MT_GRPC_OK);
    ASSERT_EQ(r[i].messages.size(), 1u);
    EXPECT_EQ(r[i].messages[0], "m" + std::to_string(i));
  }
}

TEST_F(GrpcEndToEnd, EmptyAndLargeMessagesCrossFlowControlWindows) {
  CallResult empty, large;
  std::string big(200 * 1024, 'L');
  big[12345] = 'x';
  Start(client_, "/test.Echo/Unary", "", &empty);
  Start(client_, "/test.Echo/Unary", big, &large);
  ASSERT_TRUE(RunUntil([&] { return empty.closes && large.closes; }));
  EXPECT_EQ(empty.status, MT_GRPC_OK);
  ASSERT_EQ(empty.messages.size(), 1u);
  EXPECT_EQ(empty.messages[0], "");
  EXPECT_EQ(large.status, MT_GRPC_OK);
  ASSERT_EQ(large.messages.size(), 1u);
  EXPECT_EQ(large.messages[0], big);
}

TEST_F(GrpcEndToEnd, ServerStreamingDeliversThreeMessagesInOrder) {
  CallResult r;
  Start(client_, "/test.Echo/Stream", "s", &r);
  ASSERT_TRUE(RunUntil([&] { return r.closes > 0; }));
  EXPECT_EQ(r.status, MT_GRPC_OK);
  EXPECT_EQ(r.messages, (std::vector<std::string>{"s#0", "s#1", "s#2"}));
}

TEST_F(GrpcEndToEnd, StatusAndPercentEncodedMessagePropagate) {
  CallResult r;
  Start(client_, "/test.Echo/Fail", "", &r);
  ASSERT_TRUE(RunUntil([&] { return r.closes > 0; }));
  EXPECT_EQ(r.status, MT_GRPC_PERMISSION_DENIED);
  EXPECT_EQ(r.message, "denied: 100% sure\nno caf\xc3\xa9");
  EXPECT_TRUE(r.messages.empty());
}

TEST_F(GrpcEndToEnd, MetadataReachesTheHandler) {
  CallResult r;
  Start(client_, "/test.Echo/Metadata", "", &r, 5000,
        {{"authorization", "Bearer abc.def"}, {"x-trace", "t-42"}});
  ASSERT_TRUE(RunUntil([&] { return r.closes > 0; }));
  EXPECT_EQ(r.status, MT_GRPC_OK);
  EXPECT_EQ(side_.last_authorization, "Bearer abc.def");
  ASSERT_EQ(r.messages.size(), 1u);
  EXPECT_EQ(r.messages[0], "t-42");
}

TEST_F(GrpcEndToEnd, StartCallRefusesInvalidArguments) {
  CallResult r;
  EXPECT_EQ(Start(client_, "no-slash", "", &r), nullptr);
  EXPECT_EQ(Start(client_, "/a b", "", &r), nullptr);
  EXPECT_EQ(Start(client_, "/x/y", "", &r, 0, {{"Upper", "v"}}), nullptr);
  EXPECT_EQ(Start(client_, "/x/y", "", &r, 0, {{"te", "trailers"}}), nullptr);
  EXPECT_EQ(Start(client_, "/x/y", "", &r, 0, {{"x-evil", "a\r\nb"}}), nullptr);
  RunFor(0.05);
  EXPECT_EQ(r.closes, 0);
}

TEST_F(GrpcEndToEnd, HandlerSeesTheClientCertificateAndAddress) {
  CallResult r;
  Start(client_, "/test.Echo/Peer", "", &r);
  ASSERT_TRUE(RunUntil([&] { return r.closes > 0; }));
  EXPECT_EQ(r.status, MT_GRPC_OK);
  EXPECT_EQ(side_.last_peer_cn, "localhost");
  ASSERT_EQ(r.messages.size(), 1u);
  EXPECT_EQ(r.messages[0].rfind("localhost from 127.0.0.1:", 0), 0u) << r.messages[0];
}

TEST_F(GrpcEndToEnd, DeadlineExceededEndsTheCallOnBothSides) {
  CallResult r;
  Start(client_, "/test.Echo/Hold", "", &r, 150);
  ASSERT_TRUE(RunUntil([&] { return r.closes > 0; }));
  EXPECT_EQ(r.status, MT_GRPC_DEADLINE_EXCEEDED);
  EXPECT_GT(side_.last_timeout_ms, 0);  // grpc-timeout arrived
  EXPECT_LE(side_.last_timeout_ms, 150);
  // The server learns too (our RST_STREAM, or its own deadline timer).
  ASSERT_TRUE(RunUntil([&] { return side_.closed == 1; }));
  EXPECT_TRUE(side_.last_closed_why == MT_GRPC_CANCELLED ||
              side_.last_closed_why == MT_GRPC_DEADLINE_EXCEEDED);
  RunFor(0.05);
  EXPECT_EQ(r.closes, 1);
}

TEST_F(GrpcEndToEnd, UnknownMethodIsUnimplemented) {
  CallResult r;
  Start(client_, "/test.Echo/Nope", "x", &r);
  ASSERT_TRUE(RunUntil([&] { return r.closes > 0; }));
  EXPECT_EQ(r.status, MT_GRPC_UNIMPLEMENTED);
  EXPECT_NE(r.message.find("/test.Echo/Nope"), std::string::npos) << r.message;
}

TEST_F(GrpcEndToEnd, OversizedRequestIsResourceExhaustedAndTheConnectionSurvives) {
  CallResult big, after;
  Start(client_, "/test.Echo/Unary", std::string(kServerMaxMessage + 1, 'o'), &big);
  ASSERT_TRUE(RunUntil([&] { return big.closes > 0; }));
  EXPECT_EQ(big.status, MT_GRPC_RESOURCE_EXHAUSTED) << big.message;
  Start(client_, "/test.Echo/Unary", "still fine", &after);
  ASSERT_TRUE(RunUntil([&] { return after.closes > 0; }));
  EXPECT_EQ(after.status, MT_GRPC_OK);
  EXPECT_TRUE(side_.connection_errors.empty());
}

TEST_F(GrpcEndToEnd, OversizedResponseIsResourceExhaustedOnTheClient) {
  std::string target = "127.0.0.1:" + std::to_string(port_);
  mt_grpc_client_options o = {};
  o.target = target.c_str();
  o.ssl_ctx = client_ctx_;
  o.max_message_bytes = 1000;
  mt_grpc_client *small = mt_grpc_client_new(loop_, &o);
  CallResult r;
  Start(small, "/test.Echo/Unary", std::string(1001, 'r'), &r);
  ASSERT_TRUE(RunUntil([&] { return r.closes > 0; }));
  EXPECT_EQ(r.status, MT_GRPC_RESOURCE_EXHAUSTED);
  EXPECT_TRUE(r.messages.empty());
  mt_grpc_client_free(small);
}

TEST_F(GrpcEndToEnd, CancelResetsTheStreamAndRunsNoCallback) {
  CallResult r;
  mt_grpc_call *call = Start(client_, "/test.Echo/Hold", "", &r, 0);
  ASSERT_TRUE(RunUntil([&] { return side_.held.size() == 1; }));
  mt_grpc_call_cancel(call);
  ASSERT_TRUE(RunUntil([&] { return side_.closed == 1; }));
  EXPECT_EQ(side_.last_closed_why, MT_GRPC_CANCELLED);
  RunFor(0.05);
  EXPECT_EQ(r.closes, 0);
  // The connection is still good.
  CallResult after;
  Start(client_, "/test.Echo/Unary", "ok", &after);
  ASSERT_TRUE(RunUntil([&] { return after.closes > 0; }));
  EXPECT_EQ(after.status, MT_GRPC_OK);
}

TEST_F(GrpcEndToEnd, CancelWhileConnectingRunsNoCallback) {
  CallResult r, other;
  mt_grpc_call *call = Start(client_, "/test.Echo/Unary", "x", &r);
  Start(client_, "/test.Echo/Unary", "y", &other);
  mt_grpc_call_cancel(call);
  ASSERT_TRUE(RunUntil([&] { return other.closes > 0; }));
  EXPECT_EQ(other.status, MT_GRPC_OK);
  EXPECT_EQ(r.closes, 0);
}

TEST_F(GrpcEndToEnd, ServerShutdownFailsInFlightCallsWithUnavailable) {
  CallResult r;
  Start(client_, "/test.Echo/Hold", "", &r, 0);
  ASSERT_TRUE(RunUntil([&] { return side_.held.size() == 1; }));
  mt_grpc_server_free(server_);
  server_ = nullptr;
  EXPECT_EQ(side_.closed, 1);  // the handler was told, inside free
  EXPECT_EQ(side_.last_closed_why, MT_GRPC_UNAVAILABLE);
  ASSERT_TRUE(RunUntil([&] { return r.closes > 0; }));
  EXPECT_EQ(r.status, MT_GRPC_UNAVAILABLE);
  EXPECT_FALSE(r.message.empty());
  EXPECT_FALSE(mt_grpc_client_is_connected(client_));
  // The next call reconnects, finds nobody listening, and says so.
  CallResult again;
  Start(client_, "/test.Echo/Unary", "", &again);
  ASSERT_TRUE(RunUntil([&] { return again.closes > 0; }));
  EXPECT_EQ(again.status, MT_GRPC_UNAVAILABLE);
  EXPECT_NE(again.message.find("refused"), std::string::npos) << again.message;
}

TEST_F(GrpcEndToEnd, ConnectionRefusedIsUnavailable) {
  // A port we bound and closed, so nothing listens there.
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a = {};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(a);
  bind(fd, reinterpret_cast<sockaddr *>(&a), len);
  getsockname(fd, reinterpret_cast<sockaddr *>(&a), &len);
  close(fd);
  mt_grpc_client *c = NewClient(client_ctx_, ntohs(a.sin_port));
  CallResult r;
  Start(c, "/test.Echo/Unary", "", &r);
  ASSERT_TRUE(RunUntil([&] { return r.closes > 0; }));
  EXPECT_EQ(r.status, MT_GRPC_UNAVAILABLE);
  EXPECT_NE(r.message.find("Connection refused"), std::string::npos) << r.message;
  mt_grpc_client_free(c);
}

TEST_F(GrpcEndToEnd, UntrustedServerIsUnavailableWithTheVerificationError) {
  SSL_CTX *untrusting = ClientCtx(/*trust_server=*/false, /*present_cert=*/false);
  mt_grpc_client *c = NewClient(untrusting, port_);
  CallResult r;
  Start(c, "/test.Echo/Unary", "", &r);
  ASSERT_TRUE(RunUntil([&] { return r.closes > 0; }));
  EXPECT_EQ(r.status, MT_GRPC_UNAVAILABLE);
  EXPECT_NE(r.message.find("certificate verification failed"), std::string::npos) << r.message;
  mt_grpc_client_free(c);
  SSL_CTX_free(untrusting);
  ASSERT_TRUE(RunUntil([&] { return !side_.connection_errors.empty(); }));
}

TEST_F(GrpcEndToEnd, FreeingTheClientInsideOnCloseIsSafe) {
  struct Ctx {
    mt_grpc_client *client;
    int closes = 0;
  } ctx{NewClient(client_ctx_, port_)};
  mt_grpc_call_handlers h = {nullptr, [](void *arg, mt_grpc_status, const char *) {
                               auto *c = static_cast<Ctx *>(arg);
                               c->closes++;
                               mt_grpc_client_free(c->client);
                             }};
  std::string req = "x";
  mt_grpc_client_start_call(ctx.client, "/test.Echo/Stream", nullptr, 0,
                            reinterpret_cast<const uint8_t *>(req.data()), req.size(), 0, &h, &ctx);
  mt_grpc_client_start_call(ctx.client, "/test.Echo/Hold", nullptr, 0,
                            reinterpret_cast<const uint8_t *>(req.data()), req.size(), 0, &h, &ctx);
  ASSERT_TRUE(RunUntil([&] { return ctx.closes > 0; }));
  RunFor(0.1);
  EXPECT_EQ(ctx.closes, 1);  // the held call ended silently with the client
  ASSERT_TRUE(RunUntil([&] { return side_.closed == 1; }));  // and the server saw it go
}

TEST_F(GrpcEndToEnd, SendQueueIsBoundedAndDrainsUnderFlowControl) {
  CallResult r;
  Start(client_, "/test.Echo/Flood", "", &r);
  ASSERT_TRUE(RunUntil([&] { return r.closes > 0; }));
  EXPECT_EQ(r.status, MT_GRPC_OK);
  EXPECT_EQ(r.message, "flooded");
  // 1 MiB of queue holds 15 messages of 64 KiB + 5 bytes, not 16.
  EXPECT_EQ(side_.flood_sent, static_cast<int>(kServerSendQueue / (64 * 1024 + 5)));
  EXPECT_EQ(r.messages.size(), static_cast<size_t>(side_.flood_sent));
}

TEST_F(GrpcEndToEnd, PeerResetDuringALargeResponseRaisesNoSigpipe) {
  signal(SIGPIPE, SIG_DFL);  // the process would die if a write raised it
  mt_grpc_client *c = NewClient(client_ctx_, port_);
  CallResult r;
  Start(c, "/test.Echo/Flood", "", &r, 0);
  ASSERT_TRUE(RunUntil([&] { return !r.messages.empty(); }));
  mt_grpc_client_free(c);  // unread data in its socket: the kernel sends RST
  RunFor(0.2);             // the server keeps writing into the reset socket
  signal(SIGPIPE, SIG_IGN);
  CallResult after;
  Start(client_, "/test.Echo/Unary", "alive", &after);
  ASSERT_TRUE(RunUntil([&] { return after.closes > 0; }));
  EXPECT_EQ(after.status, MT_GRPC_OK);
}

TEST_F(GrpcEndToEnd, LongLivedStreamCanSendLater) {
  CallResult r;
  Start(client_, "/test.Echo/Hold", "", &r, 0);
  ASSERT_TRUE(RunUntil([&] { return side_.held.size() == 1; }));
  mt_grpc_stream *s = side_.held[0];
  const uint8_t one[] = {'1'}, two[] = {'2'};
  EXPECT_EQ(mt_grpc_stream_send(s, one, 1), MT_GRPC_SEND_OK);
  ASSERT_TRUE(RunUntil([&] { return r.messages.size() == 1; }));
  EXPECT_EQ(mt_grpc_stream_send(s, two, 1), MT_GRPC_SEND_OK);
  EXPECT_TRUE(mt_grpc_stream_finish(s, MT_GRPC_OK, "bye"));
  EXPECT_EQ(mt_grpc_stream_send(s, one, 1), MT_GRPC_SEND_FINISHED);
  ASSERT_TRUE(RunUntil([&] { return r.closes > 0; }));
  EXPECT_EQ(r.messages, (std::vector<std::string>{"1", "2"}));
  EXPECT_EQ(r.message, "bye");
  EXPECT_EQ(side_.closed, 0);  // finished streams get no on_closed
}

// Plays a client with blocking sockets in a helper thread.
class RawPeer {
 public:
  explicit RawPeer(std::function<void()> body)
      : thread_([this, body] {
          body();
          done_ = true;
        }) {}
  ~RawPeer() { thread_.join(); }
  bool done() const { return done_; }

 private:
  std::atomic<bool> done_{false};
  std::thread thread_;
};

int ConnectTo(int port) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a = {};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr *>(&a), sizeof(a)) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

// Reads until EOF or error: 1 when the server closed the connection.
int WaitForClose(int fd) {
  char buf[4096];
  for (;;) {
    ssize_t n = read(fd, buf, sizeof(buf));
    if (n <= 0) return 1;
  }
}

TEST_F(GrpcEndToEnd, GarbageInsteadOfTlsClosesOnlyThatConnection) {
  std::atomic<int> closed{0};
  RawPeer peer([&] {
    int fd = ConnectTo(port_);
    const char junk[] = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    (void)!write(fd, junk, sizeof(junk) - 1);
    closed = WaitForClose(fd);
    close(fd);
  });
  ASSERT_TRUE(RunUntil([&] { return peer.done(); }));
  EXPECT_EQ(closed, 1);
  ASSERT_FALSE(side_.connection_errors.empty());
  EXPECT_NE(side_.connection_errors[0].find("TLS handshake failed"), std::string::npos)
      << side_.connection_errors[0];
  CallResult r;
  Start(client_, "/test.Echo/Unary", "alive", &r);
  ASSERT_TRUE(RunUntil([&] { return r.closes > 0; }));
  EXPECT_EQ(r.status, MT_GRPC_OK);
}

TEST_F(GrpcEndToEnd, GarbageInsteadOfTheHttp2PrefaceClosesOnlyThatConnection) {
  std::atomic<int> closed{0};
  SSL_CTX *ctx = ClientCtx(true, false);
  static const uint8_t kH2[] = {2, 'h', '2'};
  SSL_CTX_set_alpn_protos(ctx, kH2, sizeof(kH2));
  RawPeer peer([&] {
    int fd = ConnectTo(port_);
    SSL *ssl = SSL_new(ctx);
    SSL_set_fd(ssl, fd);
    if (SSL_connect(ssl) == 1) {
      const char junk[] = "PRI * HTTP/1.1\r\n\r\nthis is not the preface at all";
      SSL_write(ssl, junk, sizeof(junk) - 1);
      char buf[4096];
      while (SSL_read(ssl, buf, sizeof(buf)) > 0) {
      }
      closed = 1;
    }
    SSL_free(ssl);
    close(fd);
  });
  ASSERT_TRUE(RunUntil([&] { return peer.done(); }));
  EXPECT_EQ(closed, 1);
  ASSERT_FALSE(side_.connection_errors.empty());
  EXPECT_NE(side_.connection_errors[0].find("HTTP/2"), std::string::npos)
      << side_.connection_errors[0];
  SSL_CTX_free(ctx);
  CallResult r;
  Start(client_, "/test.Echo/Unary", "alive", &r);
  ASSERT_TRUE(RunUntil([&] { return r.closes > 0; }));
  EXPECT_EQ(r.status, MT_GRPC_OK);
}

TEST_F(GrpcEndToEnd, SilentClientHitsTheHandshakeTimeout) {
  std::atomic<int> closed{0};
  RawPeer peer([&] {
    int fd = ConnectTo(port_);
    closed = WaitForClose(fd);  // never says a word
    close(fd);
  });
  ASSERT_TRUE(RunUntil([&] { return peer.done(); }, 3.0));
  EXPECT_EQ(closed, 1);
  ASSERT_EQ(side_.connection_errors.size(), 1u);
  EXPECT_NE(side_.connection_errors[0].find("handshake timed out"), std::string::npos);
}

TEST_F(GrpcEndToEnd, KeepaliveTimeoutFailsCallsOnASilentServer) {
  // A TLS server that completes the handshake (ALPN h2) and then ignores
  // everything, PINGs included.
  int lfd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a = {};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(a);
  bind(lfd, reinterpret_cast<sockaddr *>(&a), len);
  listen(lfd, 1);
  getsockname(lfd, reinterpret_cast<sockaddr *>(&a), &len);
  RawPeer peer([&] {
    int fd = accept(lfd, nullptr, nullptr);
    SSL *ssl = SSL_new(server_ctx_);  // has the h2 ALPN callback from the real server
    SSL_set_fd(ssl, fd);
    if (SSL_accept(ssl) == 1) {
      char buf[4096];
      while (SSL_read(ssl, buf, sizeof(buf)) > 0) {
      }
    }
    SSL_free(ssl);
    close(fd);
  });
  mt_grpc_client *c = NewClient(client_ctx_, ntohs(a.sin_port), 100, 200);
  CallResult r;
  Start(c, "/test.Echo/Unary", "", &r, 0);
  ASSERT_TRUE(RunUntil([&] { return r.closes > 0; }));
  EXPECT_EQ(r.status, MT_GRPC_UNAVAILABLE);
  EXPECT_NE(r.message.find("keepalive timeout"), std::string::npos) << r.message;
  mt_grpc_client_free(c);
  ASSERT_TRUE(RunUntil([&] { return peer.done(); }));
  close(lfd);
}

TEST_F(GrpcEndToEnd, KeepalivePingsAreAnsweredByOurServer) {
  mt_grpc_client *c = NewClient(client_ctx_, port_, 50, 500);
  CallResult r;
  Start(c, "/test.Echo/Hold", "", &r, 0);
  RunFor(0.4);  // several PING / ACK rounds
  EXPECT_EQ(r.closes, 0);
  EXPECT_TRUE(mt_grpc_client_is_connected(c));
  mt_grpc_client_free(c);
}

TEST_F(GrpcEndToEnd, IdleConnectionGetsGoawayAndTheClientReconnects) {
  mt_grpc_server_free(server_);
  side_ = ServerSide();
  StartServer(/*idle_timeout_ms=*/200);
  mt_grpc_client_free(client_);
  client_ = NewClient(client_ctx_, port_);
  CallResult first;
  Start(client_, "/test.Echo/Unary", "1", &first);
  ASSERT_TRUE(RunUntil([&] { return first.closes > 0; }));
  EXPECT_EQ(first.status, MT_GRPC_OK);
  EXPECT_TRUE(mt_grpc_client_is_connected(client_));
  ASSERT_TRUE(RunUntil([&] { return !mt_grpc_client_is_connected(client_); }, 2.0));
  CallResult second;
  Start(client_, "/test.Echo/Unary", "2", &second);
  ASSERT_TRUE(RunUntil([&] { return second.closes > 0; }));
  EXPECT_EQ(second.status, MT_GRPC_OK);
  EXPECT_TRUE(side_.connection_errors.empty());
}

}  // namespace
