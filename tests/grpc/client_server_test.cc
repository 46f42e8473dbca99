// End-to-end specification of grpc/client and grpc/server: our client against
// our server, in process, on one libev loop, over TLS with a self-signed
// certificate made here. A few tests use a helper thread to play a broken or
// hostile peer with blocking sockets; the code under test never blocks.
#include <arpa/inet.h>
#include <ev.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <gtest/gtest.h>
#include <nghttp2/nghttp2.h>
#include <openssl/ec_key.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/obj.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <functional>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "grpc/client.h"
#include "grpc/resolver.h"
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
  struct Refusal {
    std::string peer, path;
    int status;
    std::string message;
  };
  std::vector<Refusal> refused;  // on_call_refused
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

void OnCallRefused(void *arg, const char *peer, const char *path, mt_grpc_status status,
                   const char *message) {
  static_cast<ServerSide *>(arg)->refused.push_back({peer, path, status, message});
}

// Leaves an error on this thread's OpenSSL error queue, as careless
// application code (a failed parse it did not clear) would.
void LeaveAStaleError() {
  const uint8_t junk[] = {0x30, 0x03, 0xff, 0xff, 0xff};
  const uint8_t *p = junk;
  X509 *x = d2i_X509(nullptr, &p, sizeof(junk));
  X509_free(x);
  ASSERT_NE(ERR_peek_error(), 0u);
}

// Echoes, leaving an error on the queue behind it.
void DirtyEcho(void *arg, mt_grpc_stream *stream, const mt_grpc_request *req) {
  (void)arg;
  LeaveAStaleError();
  mt_grpc_stream_send(stream, req->message, req->message_len);
  mt_grpc_stream_finish(stream, MT_GRPC_OK, nullptr);
}

void Tick(struct ev_loop *, ev_timer *, int) {}

// Runs |loop| until |done| holds or |seconds| pass.
bool RunLoopUntil(struct ev_loop *loop, const std::function<bool()> &done, double seconds) {
  ev_timer tick;
  ev_timer_init(&tick, Tick, 0.01, 0.01);
  ev_timer_start(loop, &tick);
  double end = ev_time() + seconds;
  while (!done() && ev_time() < end) ev_run(loop, EVRUN_ONCE);
  ev_timer_stop(loop, &tick);
  return done();
}

class GrpcEndToEnd : public ::testing::Test {
 protected:
  void SetUp() override {
    ERR_clear_error();         // this thread runs every test's loop: start clean
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
    o.on_call_refused = OnCallRefused;
    o.on_call_refused_arg = &side_;
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
    ASSERT_TRUE(mt_grpc_server_handle(server_, "/test.Echo/Dirty", DirtyEcho, &side_));
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
    return RunLoopUntil(loop_, done, seconds);
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

// A name is looked up off the loop, again for every connection; "localhost"
// comes from /etc/hosts, so no DNS server is involved.
TEST_F(GrpcEndToEnd, ATargetNamedByHostNameIsResolvedAndReached) {
  std::string target = "localhost:" + std::to_string(port_);
  mt_grpc_client_options o = {};
  o.target = target.c_str();
  o.ssl_ctx = client_ctx_;
  o.authority = "localhost";
  o.server_name = "localhost";
  mt_grpc_client *named = mt_grpc_client_new(loop_, &o);
  ASSERT_NE(named, nullptr);
  CallResult r;
  ASSERT_NE(Start(named, "/test.Echo/Unary", "by name", &r), nullptr);
  ASSERT_TRUE(RunUntil([&] { return r.closes > 0; }));
  EXPECT_EQ(r.status, MT_GRPC_OK) << r.message;
  ASSERT_EQ(r.messages.size(), 1u);
  EXPECT_EQ(r.messages[0], "by name");
  mt_grpc_client_free(named);
}

TEST_F(GrpcEndToEnd, AnUnresolvableNameIsUnavailableAndSaysSo) {
  mt_grpc_client_options o = {};
  o.target = "no-such-host.invalid:15012";  // RFC 6761: never resolves
  o.ssl_ctx = client_ctx_;
  o.connect_timeout_ms = 3000;
  mt_grpc_client *named = mt_grpc_client_new(loop_, &o);
  ASSERT_NE(named, nullptr);
  CallResult r;
  ASSERT_NE(Start(named, "/test.Echo/Unary", "x", &r, 0), nullptr);
  ASSERT_TRUE(RunUntil([&] { return r.closes > 0; }, 10.0));
  EXPECT_EQ(r.status, MT_GRPC_UNAVAILABLE);
  // Either the resolver answered (no such name) or, with no DNS server
  // reachable, the lookup ran into the connect deadline; both name the host.
  EXPECT_TRUE(r.message.find("cannot resolve 'no-such-host.invalid'") != std::string::npos ||
              r.message.find("resolving no-such-host.invalid:15012 timed out") != std::string::npos)
      << r.message;
  mt_grpc_client_free(named);
}

TEST(GrpcTargets, NamesPortsAndLiteralsAreParsedStrictly) {
  mt_resolve_target t;
  ASSERT_TRUE(mt_resolve_parse("mtls-ca.mtls-system.svc:15012", &t));
  EXPECT_FALSE(t.numeric);
  EXPECT_STREQ(t.host, "mtls-ca.mtls-system.svc");
  EXPECT_STREQ(t.port, "15012");
  ASSERT_TRUE(mt_resolve_parse("[fd00::1]:15012", &t));
  EXPECT_TRUE(t.numeric);
  ASSERT_TRUE(mt_resolve_parse("10.96.0.12:15012", &t));
  EXPECT_TRUE(t.numeric);
  for (const char *bad :
       {"mtls-ca", "mtls-ca:", "mtls-ca:0", "mtls-ca:65536", "mtls_ca:15012", "-x:1", "a..b:1",
        "10.0.0.1:99999", "[fd00::1]", ":15012", "mtls-ca:15012x"})
    EXPECT_FALSE(mt_resolve_parse(bad, &t)) << bad;
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

// ---- TLS failure text: what the queue and the verifier really say ----

// Sends |bytes| where a ClientHello belongs and waits for the server to hang up.
void SendRawBytes(int port, const std::string &bytes) {
  int fd = ConnectTo(port);
  (void)!write(fd, bytes.data(), bytes.size());
  WaitForClose(fd);
  close(fd);
}

TEST_F(GrpcEndToEnd, NonTlsBytesAreReportedWithTheTlsReasonNotAsAVerificationFailure) {
  // No TLS session exists yet, so there was no verification to speak of.
  struct Case {
    const char *bytes, *reason;
  } cases[] = {
      {"GET / HTTP/1.1\r\n\r\n", "HTTP_REQUEST"},
      {"SSH-2.0-OpenSSH_9.2\r\n", "WRONG_VERSION_NUMBER"},
      {"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "WRONG_VERSION_NUMBER"},  // h2c, no TLS
  };
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    RawPeer peer([&] { SendRawBytes(port_, cases[i].bytes); });
    ASSERT_TRUE(RunUntil([&] { return peer.done() && side_.connection_errors.size() > i; }));
    const std::string &what = side_.connection_errors[i];
    EXPECT_EQ(what, std::string("TLS handshake failed: ") + cases[i].reason) << cases[i].bytes;
    EXPECT_EQ(what.find("verif"), std::string::npos) << what;
  }
  EXPECT_EQ(side_.connection_errors.size(), sizeof(cases) / sizeof(cases[0]));
}

TEST_F(GrpcEndToEnd, AClientThatDoesNotOfferH2IsToldSoNotAVerificationFailure) {
  SSL_CTX *ctx = ClientCtx(true, false);
  static const uint8_t kHttp11[] = {8, 'h', 't', 't', 'p', '/', '1', '.', '1'};
  SSL_CTX_set_alpn_protos(ctx, kHttp11, sizeof(kHttp11));
  std::atomic<int> connected{-1};
  RawPeer peer([&] {
    int fd = ConnectTo(port_);
    SSL *ssl = SSL_new(ctx);
    SSL_set_fd(ssl, fd);
    connected = SSL_connect(ssl) == 1;
    ERR_clear_error();  // this thread's queue
    SSL_free(ssl);
    close(fd);
  });
  ASSERT_TRUE(RunUntil([&] { return peer.done() && !side_.connection_errors.empty(); }));
  EXPECT_EQ(connected, 0);
  EXPECT_EQ(side_.connection_errors[0], "TLS handshake failed: NO_APPLICATION_PROTOCOL");
  SSL_CTX_free(ctx);
}

TEST_F(GrpcEndToEnd, OurClientReachingANonTlsServerIsNotToldOfAVerificationFailure) {
  int lfd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a = {};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(a);
  bind(lfd, reinterpret_cast<sockaddr *>(&a), len);
  listen(lfd, 1);
  getsockname(lfd, reinterpret_cast<sockaddr *>(&a), &len);
  RawPeer peer([&] {  // a plain HTTP/1.1 server
    int fd = accept(lfd, nullptr, nullptr);
    char buf[4096];
    (void)!read(fd, buf, sizeof(buf));  // the ClientHello
    const char reply[] = "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n";
    (void)!write(fd, reply, sizeof(reply) - 1);
    shutdown(fd, SHUT_WR);
    WaitForClose(fd);
    close(fd);
  });
  mt_grpc_client *c = NewClient(client_ctx_, ntohs(a.sin_port));
  CallResult r;
  Start(c, "/test.Echo/Unary", "", &r);
  ASSERT_TRUE(RunUntil([&] { return r.closes > 0; }));
  EXPECT_EQ(r.status, MT_GRPC_UNAVAILABLE);
  EXPECT_EQ(r.message.rfind("TLS handshake failed: ", 0), 0u) << r.message;
  EXPECT_EQ(r.message.find("verif"), std::string::npos) << r.message;
  mt_grpc_client_free(c);
  ASSERT_TRUE(RunUntil([&] { return peer.done(); }));
  close(lfd);
}

TEST_F(GrpcEndToEnd, AClientRejectingOurCertificateIsReportedWithItsAlert) {
  SSL_CTX *untrusting = ClientCtx(/*trust_server=*/false, /*present_cert=*/false);
  mt_grpc_client *c = NewClient(untrusting, port_);
  CallResult r;
  Start(c, "/test.Echo/Unary", "", &r);
  ASSERT_TRUE(RunUntil([&] { return r.closes > 0 && !side_.connection_errors.empty(); }));
  EXPECT_EQ(side_.connection_errors[0],
            "TLS handshake failed: peer sent alert TLSV1_ALERT_UNKNOWN_CA");
  mt_grpc_client_free(c);
  SSL_CTX_free(untrusting);
}

TEST_F(GrpcEndToEnd, AnUntrustedClientCertificateIsReportedAsAVerificationFailure) {
  Pki stranger;  // same name, another key: not the one the server trusts
  SSL_CTX *ctx = ClientCtx(/*trust_server=*/true, /*present_cert=*/false);
  SSL_CTX_use_certificate(ctx, stranger.cert);
  SSL_CTX_use_PrivateKey(ctx, stranger.key);
  mt_grpc_client *c = NewClient(ctx, port_);
  CallResult r;
  Start(c, "/test.Echo/Unary", "", &r);
  ASSERT_TRUE(RunUntil([&] { return r.closes > 0 && !side_.connection_errors.empty(); }));
  EXPECT_EQ(r.status, MT_GRPC_UNAVAILABLE);
  EXPECT_EQ(side_.connection_errors[0].rfind(
                "TLS handshake failed: certificate verification failed: ", 0),
            0u)
      << side_.connection_errors[0];
  // The client hears the server's alert (on its first read, in TLS 1.3).
  EXPECT_NE(r.message.find("peer sent alert"), std::string::npos) << r.message;
  mt_grpc_client_free(c);
  SSL_CTX_free(ctx);
}

TEST_F(GrpcEndToEnd, ErrorsAlreadyOnTheQueueDoNotLeakIntoAConnectionErrorText) {
  LeaveAStaleError();
  std::string stale = ERR_reason_error_string(ERR_peek_error());
  RawPeer peer([&] { SendRawBytes(port_, "GET / HTTP/1.1\r\n\r\n"); });
  ASSERT_TRUE(RunUntil([&] { return peer.done() && !side_.connection_errors.empty(); }));
  EXPECT_EQ(side_.connection_errors[0], "TLS handshake failed: HTTP_REQUEST") << "stale: " << stale;
  EXPECT_EQ(side_.connection_errors.size(), 1u);
}

TEST_F(GrpcEndToEnd, AnErrorLeftOnTheQueueByAHandlerDoesNotBreakItsConnection) {
  CallResult dirty, after;
  Start(client_, "/test.Echo/Dirty", "d", &dirty);
  ASSERT_TRUE(RunUntil([&] { return dirty.closes > 0; }));
  EXPECT_EQ(dirty.status, MT_GRPC_OK) << dirty.message;
  RunFor(0.05);
  EXPECT_TRUE(side_.connection_errors.empty())
      << side_.connection_errors.size() << ": " << side_.connection_errors[0];
  EXPECT_TRUE(mt_grpc_client_is_connected(client_));
  Start(client_, "/test.Echo/Unary", "clean", &after);
  ASSERT_TRUE(RunUntil([&] { return after.closes > 0; }));
  EXPECT_EQ(after.status, MT_GRPC_OK) << after.message;
}

TEST_F(GrpcEndToEnd, AnErrorLeftOnTheQueueByAClientCallbackDoesNotBreakItsConnection) {
  struct Ctx {
    int closes = 0;
    int status = -1;
  } ctx;
  mt_grpc_call_handlers h = {nullptr, [](void *arg, mt_grpc_status status, const char *) {
                               auto *c = static_cast<Ctx *>(arg);
                               c->closes++;
                               c->status = status;
                               LeaveAStaleError();
                             }};
  std::string req = "x";
  mt_grpc_client_start_call(client_, "/test.Echo/Unary", nullptr, 0,
                            reinterpret_cast<const uint8_t *>(req.data()), req.size(), 0, &h, &ctx);
  ASSERT_TRUE(RunUntil([&] { return ctx.closes > 0; }));
  EXPECT_EQ(ctx.status, MT_GRPC_OK);
  RunFor(0.05);
  EXPECT_TRUE(mt_grpc_client_is_connected(client_));
  CallResult after;
  Start(client_, "/test.Echo/Unary", "clean", &after);
  ASSERT_TRUE(RunUntil([&] { return after.closes > 0; }));
  EXPECT_EQ(after.status, MT_GRPC_OK) << after.message;
  EXPECT_TRUE(side_.connection_errors.empty());
}

// ---- on_call_refused ----

TEST_F(GrpcEndToEnd, CallsRefusedBeforeAnyHandlerAreReportedToTheApplication) {
  CallResult unknown, big, ok, failed;
  Start(client_, "/test.Echo/Nope", "x", &unknown);
  Start(client_, "/test.Echo/Unary", std::string(kServerMaxMessage + 1, 'o'), &big);
  Start(client_, "/test.Echo/Unary", "fine", &ok);
  Start(client_, "/test.Echo/Fail", "", &failed);  // the handler's verdict: not a refusal
  ASSERT_TRUE(RunUntil([&] { return unknown.closes && big.closes && ok.closes && failed.closes; }));
  EXPECT_EQ(unknown.status, MT_GRPC_UNIMPLEMENTED);
  EXPECT_EQ(big.status, MT_GRPC_RESOURCE_EXHAUSTED);
  ASSERT_EQ(side_.refused.size(), 2u);
  std::map<std::string, ServerSide::Refusal> by_status;
  for (auto &x : side_.refused) {
    EXPECT_EQ(x.peer.rfind("127.0.0.1:", 0), 0u) << x.peer;
    by_status[mt_grpc_status_name(static_cast<mt_grpc_status>(x.status))] = x;
  }
  ASSERT_EQ(by_status.count("UNIMPLEMENTED"), 1u);
  EXPECT_EQ(by_status["UNIMPLEMENTED"].path, "/test.Echo/Nope");
  EXPECT_EQ(by_status["UNIMPLEMENTED"].message, unknown.message);
  ASSERT_EQ(by_status.count("RESOURCE_EXHAUSTED"), 1u);
  EXPECT_EQ(by_status["RESOURCE_EXHAUSTED"].path, "/test.Echo/Unary");
  EXPECT_EQ(by_status["RESOURCE_EXHAUSTED"].message, big.message);
  EXPECT_FALSE(big.message.empty());
}

TEST_F(GrpcEndToEnd, FreeingTheServerInsideOnCallRefusedIsSafe) {
  mt_grpc_server_free(server_);
  server_ = nullptr;
  struct Ctx {
    mt_grpc_server *server = nullptr;
    int refused = 0;
  } ctx;
  mt_grpc_server_options o = {};
  o.listen = "127.0.0.1:0";
  o.ssl_ctx = server_ctx_;
  o.on_call_refused = [](void *arg, const char *, const char *, mt_grpc_status, const char *) {
    auto *c = static_cast<Ctx *>(arg);
    c->refused++;
    mt_grpc_server_free(c->server);
  };
  o.on_call_refused_arg = &ctx;
  ctx.server = mt_grpc_server_new(loop_, &o);
  ASSERT_NE(ctx.server, nullptr);
  mt_grpc_client *c = NewClient(client_ctx_, mt_grpc_server_port(ctx.server));
  CallResult r;
  Start(c, "/test.Echo/Nope", "x", &r);
  ASSERT_TRUE(RunUntil([&] { return r.closes > 0; }));
  EXPECT_EQ(ctx.refused, 1);
  EXPECT_TRUE(r.status == MT_GRPC_UNIMPLEMENTED || r.status == MT_GRPC_UNAVAILABLE) << r.status;
  mt_grpc_client_free(c);
}

// One HTTP/2 request with headers of our choosing (what our client never
// sends), from a blocking TLS + nghttp2 client on the calling thread.
struct RawH2Response {
  int http_status = -1;
  std::string grpc_status, grpc_message;
  bool closed = false;
};

struct RawH2Io {
  SSL *ssl;
  RawH2Response *response;
  std::string body;
  size_t body_off = 0;
};

ssize_t RawH2Send(nghttp2_session *, const uint8_t *data, size_t len, int, void *user) {
  int n = SSL_write(static_cast<RawH2Io *>(user)->ssl, data, static_cast<int>(len));
  return n > 0 ? n : NGHTTP2_ERR_CALLBACK_FAILURE;
}

int RawH2Header(nghttp2_session *, const nghttp2_frame *frame, const uint8_t *name, size_t namelen,
                const uint8_t *value, size_t valuelen, uint8_t, void *user) {
  if (frame->hd.type != NGHTTP2_HEADERS) return 0;
  RawH2Response *r = static_cast<RawH2Io *>(user)->response;
  std::string n(reinterpret_cast<const char *>(name), namelen);
  std::string v(reinterpret_cast<const char *>(value), valuelen);
  if (n == ":status") r->http_status = std::stoi(v);
  if (n == "grpc-status") r->grpc_status = v;
  if (n == "grpc-message") r->grpc_message = v;
  return 0;
}

int RawH2Close(nghttp2_session *, int32_t, uint32_t, void *user) {
  static_cast<RawH2Io *>(user)->response->closed = true;
  return 0;
}

ssize_t RawH2Body(nghttp2_session *, int32_t, uint8_t *buf, size_t length, uint32_t *flags,
                  nghttp2_data_source *, void *user) {
  auto *io = static_cast<RawH2Io *>(user);
  size_t n = std::min(length, io->body.size() - io->body_off);
  memcpy(buf, io->body.data() + io->body_off, n);
  io->body_off += n;
  if (io->body_off == io->body.size()) *flags |= NGHTTP2_DATA_FLAG_EOF;
  return static_cast<ssize_t>(n);
}

RawH2Response RawH2Request(int port,
                           const std::vector<std::pair<std::string, std::string>> &headers,
                           const std::string &body) {
  RawH2Response response;
  SSL_CTX *ctx = SSL_CTX_new(TLS_method());
  static const uint8_t kH2[] = {2, 'h', '2'};
  SSL_CTX_set_alpn_protos(ctx, kH2, sizeof(kH2));
  int fd = ConnectTo(port);
  timeval tv = {5, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  SSL *ssl = SSL_new(ctx);
  SSL_set_fd(ssl, fd);
  RawH2Io io{ssl, &response, body};
  if (SSL_connect(ssl) == 1) {
    nghttp2_session_callbacks *cbs = nullptr;
    nghttp2_session_callbacks_new(&cbs);
    nghttp2_session_callbacks_set_send_callback(cbs, RawH2Send);
    nghttp2_session_callbacks_set_on_header_callback(cbs, RawH2Header);
    nghttp2_session_callbacks_set_on_stream_close_callback(cbs, RawH2Close);
    nghttp2_session *session = nullptr;
    nghttp2_session_client_new(&session, cbs, &io);
    nghttp2_session_callbacks_del(cbs);
    nghttp2_submit_settings(session, NGHTTP2_FLAG_NONE, nullptr, 0);
    std::vector<nghttp2_nv> nva;
    for (auto &h : headers)
      nva.push_back({reinterpret_cast<uint8_t *>(const_cast<char *>(h.first.c_str())),
                     reinterpret_cast<uint8_t *>(const_cast<char *>(h.second.c_str())),
                     h.first.size(), h.second.size(), NGHTTP2_NV_FLAG_NONE});
    nghttp2_data_provider provider;
    provider.source.ptr = nullptr;
    provider.read_callback = RawH2Body;
    nghttp2_submit_request(session, nullptr, nva.data(), nva.size(),
                           body.empty() ? nullptr : &provider, nullptr);
    uint8_t buf[16384];
    while (!response.closed && nghttp2_session_send(session) == 0) {
      int n = SSL_read(ssl, buf, sizeof(buf));
      if (n <= 0 || nghttp2_session_mem_recv(session, buf, static_cast<size_t>(n)) < 0) break;
    }
    nghttp2_session_del(session);
  }
  ERR_clear_error();  // this thread's queue
  SSL_free(ssl);
  close(fd);
  SSL_CTX_free(ctx);
  return response;
}

std::string Framed(const std::string &message) {
  std::string out(5, '\0');
  out[4] = static_cast<char>(message.size());  // short messages only
  return out + message;
}

TEST_F(GrpcEndToEnd, HttpLevelRefusalsAreReportedToTheApplication) {
  struct Case {
    const char *method, *content_type, *timeout;
    int http_status;
    mt_grpc_status status;
    const char *message_part;
  } cases[] = {
      {"GET", "application/grpc", nullptr, 405, MT_GRPC_INTERNAL, "POST"},
      {"POST", "application/json", nullptr, 415, MT_GRPC_INTERNAL, "content-type"},
      {"POST", "application/grpc", "12 parsecs", 200, MT_GRPC_INTERNAL, "grpc-timeout"},
  };
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    const Case &c = cases[i];
    std::vector<std::pair<std::string, std::string>> headers = {
        {":method", c.method},
        {":scheme", "https"},
        {":path", "/test.Echo/Unary"},
        {":authority", "localhost"},
        {"content-type", c.content_type},
        {"te", "trailers"},
    };
    if (c.timeout) headers.push_back({"grpc-timeout", c.timeout});
    RawH2Response response;
    {
      RawPeer peer([&] {
        response = RawH2Request(port_, headers, strcmp(c.method, "GET") ? Framed("x") : "");
      });
      ASSERT_TRUE(RunUntil([&] { return peer.done(); }));
    }
    EXPECT_TRUE(response.closed) << c.method << " " << c.content_type;
    EXPECT_EQ(response.http_status, c.http_status);
    EXPECT_EQ(response.grpc_status, std::to_string(c.status));
    ASSERT_EQ(side_.refused.size(), i + 1) << c.method << " " << c.content_type;
    const ServerSide::Refusal &x = side_.refused[i];
    EXPECT_EQ(x.peer.rfind("127.0.0.1:", 0), 0u) << x.peer;
    EXPECT_EQ(x.path, "/test.Echo/Unary");
    EXPECT_EQ(x.status, c.status);
    EXPECT_NE(x.message.find(c.message_part), std::string::npos) << x.message;
  }
  EXPECT_TRUE(side_.connection_errors.empty());
}

}  // namespace

// ---- Unix domain sockets, plaintext HTTP/2 (the SPIFFE Workload API) ----

// What a handler saw of the caller's credentials.
struct CredSeen {
  int calls = 0;
  bool has_cred = false;
  pid_t pid = 0;
  uid_t uid = 0;
  gid_t gid = 0;
  bool pidfd_is_ours = false;
  std::string peer_address;
};

void Cred(void *arg, mt_grpc_stream *stream, const mt_grpc_request *req) {
  auto *seen = static_cast<CredSeen *>(arg);
  seen->calls++;
  seen->has_cred = req->peer_cred != nullptr;
  seen->peer_address = req->peer_address;
  if (req->peer_cred) {
    seen->pid = req->peer_cred->pid;
    seen->uid = req->peer_cred->uid;
    seen->gid = req->peer_cred->gid;
    // The pidfd names the caller: its fdinfo says "Pid:\t<pid>".
    std::string info = "/proc/self/fdinfo/" + std::to_string(req->peer_cred->pidfd);
    FILE *f = fopen(info.c_str(), "r");
    char line[128];
    while (f && fgets(line, sizeof(line), f))
      if (strncmp(line, "Pid:", 4) == 0) seen->pidfd_is_ours = atol(line + 4) == getpid();
    if (f) fclose(f);
  }
  mt_grpc_stream_send(stream, req->message, req->message_len);
  mt_grpc_stream_finish(stream, MT_GRPC_OK, nullptr);
}

class GrpcUnixSocket : public ::testing::Test {
 protected:
  void SetUp() override {
    loop_ = ev_loop_new(EVFLAG_AUTO);
    char tmpl[] = "/tmp/grpc-unix-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    path_ = dir_ + "/api.sock";
    target_ = "unix:" + path_;
  }
  void TearDown() override {
    mt_grpc_client_free(client_);
    mt_grpc_server_free(server_);
    ev_loop_destroy(loop_);
    unlink(path_.c_str());
    unlink((dir_ + "/file").c_str());
    rmdir(dir_.c_str());
  }
  mt_grpc_server *NewServer(const std::string &listen, unsigned mode = 0) {
    mt_grpc_server_options o = {};
    o.listen = listen.c_str();
    o.unix_socket_mode = mode;
    o.on_connection_error = OnConnectionError;
    o.on_connection_error_arg = &errors_;
    mt_grpc_server *s = mt_grpc_server_new(loop_, &o);
    if (s) {
      EXPECT_TRUE(mt_grpc_server_handle(s, "/test.Echo/Cred", Cred, &seen_));
    }
    return s;
  }
  mt_grpc_client *NewClient(const std::string &target) {
    mt_grpc_client_options o = {};
    o.target = target.c_str();
    o.connect_timeout_ms = 2000;
    return mt_grpc_client_new(loop_, &o);
  }
  bool RunUntil(const std::function<bool()> &done, double seconds = 5.0) {
    return RunLoopUntil(loop_, done, seconds);
  }
  CallResult Call(mt_grpc_client *client, const std::string &request) {
    CallResult r;
    EXPECT_NE(mt_grpc_client_start_call(client, "/test.Echo/Cred", nullptr, 0,
                                        reinterpret_cast<const uint8_t *>(request.data()),
                                        request.size(), 5000, &kHandlers, &r),
              nullptr);
    EXPECT_TRUE(RunUntil([&] { return r.closes > 0; }));
    return r;
  }

  struct ev_loop *loop_ = nullptr;
  std::string dir_, path_, target_;
  mt_grpc_server *server_ = nullptr;
  mt_grpc_client *client_ = nullptr;
  CredSeen seen_;
  ServerSide errors_;  // on_connection_error
};

TEST_F(GrpcUnixSocket, PlaintextCallCarriesTheCallersKernelCredentials) {
  server_ = NewServer(target_, 0666);
  ASSERT_NE(server_, nullptr) << strerror(errno);
  EXPECT_EQ(mt_grpc_server_port(server_), 0);
  struct stat st;
  ASSERT_EQ(stat(path_.c_str(), &st), 0);
  EXPECT_TRUE(S_ISSOCK(st.st_mode));
  EXPECT_EQ(st.st_mode & 0777, 0666u);
  client_ = NewClient("unix://" + path_);  // the unix:///abs form
  ASSERT_NE(client_, nullptr);
  CallResult r = Call(client_, "hello");
  EXPECT_EQ(r.status, MT_GRPC_OK) << r.message;
  ASSERT_EQ(r.messages.size(), 1u);
  EXPECT_EQ(r.messages[0], "hello");
  ASSERT_TRUE(seen_.has_cred);
  EXPECT_EQ(seen_.pid, getpid());
  EXPECT_EQ(seen_.uid, getuid());
  EXPECT_EQ(seen_.gid, getgid());
  EXPECT_TRUE(seen_.pidfd_is_ours);
  EXPECT_EQ(seen_.peer_address, "pid " + std::to_string(getpid()) + " uid " +
                                    std::to_string(getuid()) + " gid " + std::to_string(getgid()));
  mt_grpc_server_free(server_);
  server_ = nullptr;
  EXPECT_NE(access(path_.c_str(), F_OK), 0) << "the socket file outlived its server";
}

TEST_F(GrpcUnixSocket, AStaleSocketIsReplacedALiveOneAndOtherFilesAreNot) {
  // A socket file nobody listens on (a crashed agent's).
  int stale = socket(AF_UNIX, SOCK_STREAM, 0);
  struct sockaddr_storage ss;
  socklen_t len;
  ASSERT_TRUE(mt_unix_address_parse(target_.c_str(), &ss, &len));
  ASSERT_EQ(bind(stale, reinterpret_cast<sockaddr *>(&ss), len), 0);
  close(stale);
  server_ = NewServer(target_);
  ASSERT_NE(server_, nullptr) << strerror(errno);
  // A second server on the live socket is refused, and leaves it alone.
  mt_grpc_server *second = NewServer(target_);
  EXPECT_EQ(second, nullptr);
  EXPECT_EQ(errno, EADDRINUSE);
  client_ = NewClient(target_);
  EXPECT_EQ(Call(client_, "still").status, MT_GRPC_OK);
  // A regular file is never deleted to make room.
  std::string file = dir_ + "/file";
  FILE *f = fopen(file.c_str(), "w");
  ASSERT_NE(f, nullptr);
  fclose(f);
  EXPECT_EQ(NewServer("unix:" + file), nullptr);
  EXPECT_EQ(errno, EEXIST);
  EXPECT_EQ(access(file.c_str(), F_OK), 0);
}

TEST_F(GrpcUnixSocket, PlaintextIsRefusedOverTcpOnBothSides) {
  EXPECT_EQ(NewServer("127.0.0.1:0"), nullptr);
  EXPECT_EQ(errno, EINVAL);
  EXPECT_EQ(NewClient("127.0.0.1:15012"), nullptr);
  for (const char *bad : {"unix:", "unix:relative/path", "unix://host/path"})
    EXPECT_EQ(NewClient(bad), nullptr) << bad;
  std::string too_long = "unix:/" + std::string(120, 'a');
  EXPECT_EQ(NewClient(too_long), nullptr);
}

TEST_F(GrpcUnixSocket, NoServerIsUnavailableWithThePath) {
  client_ = NewClient(target_);
  ASSERT_NE(client_, nullptr);
  CallResult r = Call(client_, "x");
  EXPECT_EQ(r.status, MT_GRPC_UNAVAILABLE);
  EXPECT_NE(r.message.find(path_), std::string::npos) << r.message;
}

TEST_F(GrpcUnixSocket, AClientThatHangsUpEndsItsHeldStreamsAsCancelled) {
  server_ = NewServer(target_);
  ASSERT_NE(server_, nullptr);
  ServerSide side;
  ASSERT_TRUE(mt_grpc_server_handle(server_, "/test.Echo/Hold", Hold, &side));
  client_ = NewClient(target_);
  CallResult r;
  ASSERT_NE(mt_grpc_client_start_call(client_, "/test.Echo/Hold", nullptr, 0, nullptr, 0, 0,
                                      &kHandlers, &r),
            nullptr);
  ASSERT_TRUE(RunUntil([&] { return side.held.size() == 1; }));
  mt_grpc_client_free(client_);
  client_ = nullptr;
  ASSERT_TRUE(RunUntil([&] { return side.closed == 1; }));
  EXPECT_EQ(side.last_closed_why, MT_GRPC_CANCELLED);
  EXPECT_TRUE(errors_.connection_errors.empty()) << errors_.connection_errors[0];
}

uint64_t SameKey(void *arg, const mt_grpc_peer_cred *cred) {
  (void)arg;
  return static_cast<uint64_t>(cred->uid) + 1;
}

TEST_F(GrpcUnixSocket, OneCallerCannotTakeMoreThanItsShareOfConnections) {
  mt_grpc_server_options o = {};
  o.listen = target_.c_str();
  o.peer_key = SameKey;
  o.max_connections_per_key = 2;
  o.on_connection_error = OnConnectionError;
  o.on_connection_error_arg = &errors_;
  server_ = mt_grpc_server_new(loop_, &o);
  ASSERT_NE(server_, nullptr);
  ASSERT_TRUE(mt_grpc_server_handle(server_, "/test.Echo/Cred", Cred, &seen_));
  mt_grpc_client *clients[3];
  CallResult results[3];
  for (int i = 0; i < 3; i++) {
    clients[i] = NewClient(target_);
    results[i] = Call(clients[i], "x");
  }
  EXPECT_EQ(results[0].status, MT_GRPC_OK);
  EXPECT_EQ(results[1].status, MT_GRPC_OK);
  EXPECT_EQ(results[2].status, MT_GRPC_UNAVAILABLE) << results[2].message;
  ASSERT_FALSE(errors_.connection_errors.empty());
  EXPECT_EQ(errors_.connection_errors.back(), "per-caller connection limit (2) reached");
  // A caller's connection that ends makes room for its next one.
  mt_grpc_client_free(clients[0]);
  bool served = false;  // once the server has seen the close
  for (int i = 0; i < 100 && !served; i++) served = Call(clients[2], "again").status == MT_GRPC_OK;
  EXPECT_TRUE(served);
  mt_grpc_client_free(clients[1]);
  mt_grpc_client_free(clients[2]);
}
