// Specification of agent/jwt_svid against mtls-ca's own JwtSvidService,
// in process: our gRPC server (TLS, a certificate made here) runs
// controlplane/jwt_svid_service with a real bearer-token check, and the
// agent's module talks to it with our gRPC client, all on one libev loop.
// Tokens the agent gets must validate against the bundles it streams.
#include "agent/jwt_svid.h"

#include <ev.h>
#include <gtest/gtest.h>
#include <openssl/bio.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <time.h>
#include <unistd.h>

#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#include "agent/json_struct.h"
#include "controlplane/auth.h"
#include "controlplane/ca_log.h"
#include "controlplane/ca_service.h"
#include "controlplane/jwt_signer.h"
#include "controlplane/jwt_svid_service.h"
#include "grpc/client.h"
#include "grpc/server.h"
#include "tests/unit/jwt_test_tokens.h"

namespace {

const char kTrustDomain[] = "example.org";
const char kIssuer[] = "https://kubernetes.default.svc";
const char kAudience[] = "istio-ca";
const char kFrontend[] = "spiffe://example.org/ns/default/sa/frontend";
const double kWaitS = 10;
const size_t kSendQueueBytes = 4096;  // server side, per stream
const int kMaxRotations = 2000;

// A self-signed certificate for 127.0.0.1: the server's, and the client's anchor.
struct Tls {
  bssl::UniquePtr<EVP_PKEY> key = mt_test::NewEcKey();
  bssl::UniquePtr<X509> cert = mt_test::SelfSignedCert(key.get(), "mtls-ca", "IP:127.0.0.1");
  SSL_CTX *server = SSL_CTX_new(TLS_method());
  SSL_CTX *client = SSL_CTX_new(TLS_method());
  Tls() {
    SSL_CTX_use_certificate(server, cert.get());
    SSL_CTX_use_PrivateKey(server, key.get());
    X509_STORE_add_cert(SSL_CTX_get_cert_store(client), cert.get());
    SSL_CTX_set_verify(client, SSL_VERIFY_PEER, nullptr);
  }
  ~Tls() {
    SSL_CTX_free(server);
    SSL_CTX_free(client);
  }
};

std::string PublicPem(EVP_PKEY *key) {
  bssl::UniquePtr<BIO> bio(BIO_new(BIO_s_mem()));
  PEM_write_bio_PUBKEY(bio.get(), key);
  const uint8_t *data;
  size_t len;
  BIO_mem_contents(bio.get(), &data, &len);
  return std::string(reinterpret_cast<const char *>(data), len);
}

struct Streamed {
  int messages = 0;
  int closed = 0;
  mt_grpc_status status = MT_GRPC_UNKNOWN;
};

void OnStreamMessage(void *arg, const uint8_t *, size_t) {
  static_cast<Streamed *>(arg)->messages++;
}

void OnStreamClose(void *arg, mt_grpc_status status, const char *) {
  static_cast<Streamed *>(arg)->closed++;
  static_cast<Streamed *>(arg)->status = status;
}

struct Fetched {
  int calls = 0;
  mt_grpc_status status = MT_GRPC_UNKNOWN;
  std::string message, token, spiffe_id;
  int64_t expires_at = 0;
  int from_cache = -1;
};

void OnFetched(void *arg, const mt_jwt_svid_result *r) {
  auto *f = static_cast<Fetched *>(arg);
  f->calls++;
  f->status = r->status;
  f->message = r->message;
  if (r->status == MT_GRPC_OK) {
    f->token = r->token;
    f->spiffe_id = r->spiffe_id;
    f->expires_at = r->expires_at;
  }
  f->from_cache = r->from_cache;
}

void OnBundles(void *arg, const mt_jwt_bundles *bundles) {
  ++*static_cast<int *>(arg);
  EXPECT_NE(bundles, nullptr);
}

// mtls-ca's JWT-SVID service and the agent's module, wired together.
class JwtSvidTest : public ::testing::Test {
 protected:
  void SetUp() override {
    loop_ = ev_loop_new(0);
    char err[256] = "";
    std::string pub = PublicPem(token_key_.get());
    auth_ = mt_ca_auth_new(kTrustDomain, kIssuer, kAudience, 60,
                           mt_jwt_keys_load_pem(pub.data(), pub.size(), err, sizeof(err)));
    log_ = mt_ca_log_new("/dev/null");
    ca_ = mt_ca_service_new(auth_, log_, nullptr, 3600, 86400);
    mt_jwt_signer *signer = mt_jwt_signer_new(600);
    WriteSigningKey();
    ASSERT_EQ(1,
              mt_jwt_signer_reload_file(signer, key_path_.c_str(), time(nullptr), err, sizeof(err)))
        << err;
    // Polled rarely: the tests rotate with mt_jwt_svid_service_reload.
    mt_jwt_svid_service_options so = {kTrustDomain, 120, 600, key_path_.c_str(), 100000};
    svc_ = mt_jwt_svid_service_new(loop_, auth_, ca_, log_, signer, &so);
    mt_grpc_server_options o{};
    o.listen = "127.0.0.1:0";
    o.ssl_ctx = tls_.server;
    o.max_send_queue_bytes = kSendQueueBytes;
    server_ = mt_grpc_server_new(loop_, &o);
    ASSERT_NE(server_, nullptr);
    ASSERT_TRUE(mt_jwt_svid_service_register(svc_, server_));
    std::string target = "127.0.0.1:" + std::to_string(mt_grpc_server_port(server_));
    mt_grpc_client_options co{};
    co.target = target.c_str();
    co.ssl_ctx = tls_.client;
    client_ = mt_grpc_client_new(loop_, &co);
    ASSERT_NE(client_, nullptr);
    WriteToken(MintToken("system:serviceaccount:default:frontend"));
  }

  void TearDown() override {
    mt_jwt_svid_source_free(source_);
    mt_grpc_client_free(client_);
    mt_jwt_svid_service_free(svc_);
    mt_grpc_server_free(server_);
    mt_ca_service_free(ca_);
    mt_ca_log_free(log_);
    mt_ca_auth_free(auth_);
    ev_loop_destroy(loop_);
    unlink(token_path_.c_str());
    unlink(key_path_.c_str());
  }

  // A fresh P-256 key in the signing key file, renamed over it as a
  // mounted Secret changes.
  void WriteSigningKey() {
    bssl::UniquePtr<EVP_PKEY> key = mt_test::NewEcKey();
    std::string next = key_path_ + ".next";
    FILE *f = fopen(next.c_str(), "w");
    PEM_write_ECPrivateKey(f, EVP_PKEY_get0_EC_KEY(key.get()), nullptr, nullptr, 0, nullptr,
                           nullptr);
    fclose(f);
    ASSERT_EQ(0, rename(next.c_str(), key_path_.c_str()));
  }

  std::string MintToken(const std::string &sub) {
    int64_t now = time(nullptr);
    std::string claims = "{\"iss\":\"" + std::string(kIssuer) + "\",\"aud\":\"" + kAudience +
                         "\",\"sub\":\"" + sub + "\",\"exp\":" + std::to_string(now + 600) + "}";
    return mt_test::Es256Token(token_key_.get(), "{\"alg\":\"ES256\"}", claims);
  }

  void WriteToken(const std::string &token) {
    FILE *f = fopen(token_path_.c_str(), "w");
    fputs(token.c_str(), f);
    fclose(f);
  }

  void StartSource(const char *token_file) {
    mt_jwt_svid_options o{};
    o.token_file = token_file;
    mt_jwt_svid_sink sink = {OnBundles, &bundle_updates_};
    char err[256] = "";
    source_ = mt_jwt_svid_source_new(loop_, client_, &o, &sink, err, sizeof(err));
    ASSERT_NE(source_, nullptr) << err;
  }

  // Runs the loop until |done| or kWaitS; false on timeout.
  bool RunUntil(const std::function<bool()> &done) {
    double deadline = ev_time() + kWaitS;
    while (!done()) {
      if (ev_time() > deadline) return false;
      ev_run(loop_, EVRUN_ONCE);
    }
    return true;
  }

  mt_jwt_svid_fetch *Fetch(Fetched *out, std::vector<const char *> audiences,
                           const char *id = kFrontend, int impersonate = 0) {
    char err[256] = "";
    mt_jwt_svid_fetch *f =
        mt_jwt_svid_fetch_start(source_, id, impersonate, audiences.data(), audiences.size(),
                                OnFetched, out, err, sizeof(err));
    EXPECT_NE(f, nullptr) << err;
    return f;
  }

  struct ev_loop *loop_ = nullptr;
  Tls tls_;
  bssl::UniquePtr<EVP_PKEY> token_key_ = mt_test::NewEcKey();
  std::string token_path_ = "/tmp/jwt_svid_test_token_" + std::to_string(getpid());
  std::string key_path_ = "/tmp/jwt_svid_test_key_" + std::to_string(getpid());
  mt_ca_auth *auth_ = nullptr;
  mt_ca_log *log_ = nullptr;
  mt_ca_service *ca_ = nullptr;
  mt_jwt_svid_service *svc_ = nullptr;
  mt_grpc_server *server_ = nullptr;
  mt_grpc_client *client_ = nullptr;
  mt_jwt_svid_source *source_ = nullptr;
  int bundle_updates_ = 0;
};

TEST_F(JwtSvidTest, AFetchedTokenValidatesAgainstTheStreamedBundles) {
  StartSource(token_path_.c_str());
  ASSERT_TRUE(RunUntil([&] { return bundle_updates_ > 0; }));
  ASSERT_EQ(1u, mt_jwt_bundles_count(mt_jwt_svid_bundles(source_)));
  EXPECT_STREQ("spiffe://example.org",
               mt_jwt_bundles_at(mt_jwt_svid_bundles(source_), 0).trust_domain_id);
  Fetched f;
  Fetch(&f, {"payments", "audit"});
  ASSERT_TRUE(RunUntil([&] { return f.calls > 0; }));
  ASSERT_EQ(MT_GRPC_OK, f.status) << f.message;
  EXPECT_EQ(kFrontend, f.spiffe_id);
  EXPECT_EQ(0, f.from_cache);

  mt_jwt_svid_valid v;
  char err[MT_JWT_BUNDLES_ERR_MAX] = "";
  ASSERT_TRUE(
      mt_jwt_svid_validate(source_, f.token.data(), f.token.size(), "audit", &v, err, sizeof(err)))
      << err;
  EXPECT_STREQ(kFrontend, v.spiffe_id);
  EXPECT_EQ(f.expires_at, v.expires_at);
  Google__Protobuf__Struct *claims = mt_json_struct_from_text(v.claims_json, v.claims_json_len);
  ASSERT_NE(claims, nullptr);
  EXPECT_EQ(4u, claims->n_fields);  // sub, aud, exp, iat
  mt_json_struct_free(claims);
  mt_jwt_svid_valid_dispose(&v);
  EXPECT_FALSE(
      mt_jwt_svid_validate(source_, f.token.data(), f.token.size(), "other", &v, err, sizeof(err)));
}

TEST_F(JwtSvidTest, ARotationReachesTheAgentWithThePreviousKeyKept) {
  StartSource(token_path_.c_str());
  Fetched before;
  Fetch(&before, {"a"});
  ASSERT_TRUE(RunUntil([&] { return before.calls > 0 && bundle_updates_ > 0; }));
  int updates = bundle_updates_;
  WriteSigningKey();
  mt_jwt_svid_service_reload(svc_);
  ASSERT_TRUE(RunUntil([&] { return bundle_updates_ > updates; }));
  mt_jwt_svid_valid v;
  char err[MT_JWT_BUNDLES_ERR_MAX] = "";
  EXPECT_TRUE(mt_jwt_svid_validate(source_, before.token.data(), before.token.size(), "a", &v, err,
                                   sizeof(err)))
      << err;
  mt_jwt_svid_valid_dispose(&v);
}

// A WatchJwtBundles caller that never reads: the server's queue for it is
// bounded, so the stream is ended (RESOURCE_EXHAUSTED) instead of growing.
TEST_F(JwtSvidTest, ABundleStreamThatIsNotReadIsEndedRatherThanBuffered) {
  struct ev_loop *client_loop = ev_loop_new(0);
  std::string target = "127.0.0.1:" + std::to_string(mt_grpc_server_port(server_));
  mt_grpc_client_options co{};
  co.target = target.c_str();
  co.ssl_ctx = tls_.client;
  mt_grpc_client *slow = mt_grpc_client_new(client_loop, &co);
  std::string auth = "Bearer " + MintToken("system:serviceaccount:default:frontend");
  mt_grpc_metadata md[] = {{"authorization", auth.c_str()}};
  const mt_grpc_call_handlers handlers = {OnStreamMessage, OnStreamClose};
  Streamed seen;
  static const uint8_t kEmpty[1] = {0};
  ASSERT_NE(nullptr, mt_grpc_client_start_call(slow, MT_JWT_SVID_WATCH_METHOD, md, 1, kEmpty, 0, 0,
                                               &handlers, &seen));
  auto both = [&] {
    ev_run(loop_, EVRUN_NOWAIT);
    ev_run(client_loop, EVRUN_NOWAIT);
  };
  double deadline = ev_time() + kWaitS;
  while (seen.messages == 0 && ev_time() < deadline) both();
  ASSERT_EQ(1, seen.messages);
  // From now on the client's loop does not run: nothing is read.
  int rotations = 0;
  while (mt_ca_log_calls(log_, MT_CA_METHOD_WATCH_JWT_BUNDLES, MT_GRPC_RESOURCE_EXHAUSTED) == 0 &&
         rotations < kMaxRotations) {
    WriteSigningKey();
    mt_jwt_svid_service_reload(svc_);
    rotations++;
    for (int i = 0; i < 3; i++) ev_run(loop_, EVRUN_NOWAIT);
  }
  EXPECT_EQ(1u, mt_ca_log_calls(log_, MT_CA_METHOD_WATCH_JWT_BUNDLES, MT_GRPC_RESOURCE_EXHAUSTED))
      << "after " << rotations << " rotations";
  // The client, reading again, learns how its stream ended.
  deadline = ev_time() + kWaitS;
  while (seen.closed == 0 && ev_time() < deadline) both();
  EXPECT_EQ(MT_GRPC_RESOURCE_EXHAUSTED, seen.status);
  mt_grpc_client_free(slow);
  ev_loop_destroy(client_loop);
}

TEST_F(JwtSvidTest, TheSecondFetchIsAnsweredFromTheCacheButNeverFromInsideStart) {
  StartSource(token_path_.c_str());
  Fetched first, second;
  Fetch(&first, {"a"});
  ASSERT_TRUE(RunUntil([&] { return first.calls > 0; }));
  ASSERT_EQ(MT_GRPC_OK, first.status) << first.message;
  Fetch(&second, {"a", "a"});
  EXPECT_EQ(0, second.calls);  // not from inside the call
  ASSERT_TRUE(RunUntil([&] { return second.calls > 0; }));
  EXPECT_EQ(1, second.from_cache);
  EXPECT_EQ(first.token, second.token);
  mt_jwt_svid_stats st;
  mt_jwt_svid_get_stats(source_, &st);
  EXPECT_EQ(1u, st.calls);
  EXPECT_EQ(1u, st.cache_hits);
  EXPECT_EQ(1u, st.cached);
}

TEST_F(JwtSvidTest, ConcurrentFetchesOfOneKeyShareOneCall) {
  StartSource(token_path_.c_str());
  Fetched a, b, other;
  Fetch(&a, {"x", "y"});
  Fetch(&b, {"y", "x"});
  Fetch(&other, {"z"});
  ASSERT_TRUE(RunUntil([&] { return a.calls > 0 && b.calls > 0 && other.calls > 0; }));
  EXPECT_EQ(MT_GRPC_OK, a.status);
  EXPECT_EQ(a.token, b.token);
  EXPECT_NE(a.token, other.token);
  mt_jwt_svid_stats st;
  mt_jwt_svid_get_stats(source_, &st);
  EXPECT_EQ(2u, st.calls);
}

TEST_F(JwtSvidTest, ACancelledFetchNeverCallsBack) {
  StartSource(token_path_.c_str());
  Fetched cancelled, kept;
  mt_jwt_svid_fetch *f = Fetch(&cancelled, {"a"});
  Fetch(&kept, {"a"});
  mt_jwt_svid_fetch_cancel(f);
  ASSERT_TRUE(RunUntil([&] { return kept.calls > 0; }));
  EXPECT_EQ(0, cancelled.calls);
  // A cache hit cancelled before the loop delivers it: likewise.
  Fetched hit;
  mt_jwt_svid_fetch_cancel(Fetch(&hit, {"a"}));
  ev_run(loop_, EVRUN_NOWAIT);
  EXPECT_EQ(0, hit.calls);
}

TEST_F(JwtSvidTest, ATokenForAnotherIdentityThanAskedIsRefused) {
  StartSource(token_path_.c_str());
  Fetched f;
  Fetch(&f, {"a"}, "spiffe://example.org/ns/default/sa/backend");
  ASSERT_TRUE(RunUntil([&] { return f.calls > 0; }));
  EXPECT_EQ(MT_GRPC_PERMISSION_DENIED, f.status);
  EXPECT_NE(f.message.find("not the identity asked for"), std::string::npos) << f.message;
}

TEST_F(JwtSvidTest, MtlsCasRefusalIsPassedOn) {
  WriteToken(MintToken("system:node:node-1"));  // not a service account
  StartSource(token_path_.c_str());
  Fetched f;
  Fetch(&f, {"a"});
  ASSERT_TRUE(RunUntil([&] { return f.calls > 0; }));
  EXPECT_EQ(MT_GRPC_PERMISSION_DENIED, f.status);
  // Impersonating needs a node agent: this caller is none.
  Fetched g;
  WriteToken(MintToken("system:serviceaccount:default:frontend"));
  Fetch(&g, {"a"}, "spiffe://example.org/ns/default/sa/backend", 1);
  ASSERT_TRUE(RunUntil([&] { return g.calls > 0; }));
  EXPECT_EQ(MT_GRPC_PERMISSION_DENIED, g.status) << g.message;
}

TEST_F(JwtSvidTest, AnUnreadableTokenFileFailsTheFetchFromTheLoop) {
  std::string missing = token_path_ + ".missing";
  StartSource(missing.c_str());
  Fetched f;
  Fetch(&f, {"a"});
  EXPECT_EQ(0, f.calls);
  ASSERT_TRUE(RunUntil([&] { return f.calls > 0; }));
  EXPECT_EQ(MT_GRPC_UNAVAILABLE, f.status);
  mt_jwt_svid_valid v;
  char err[MT_JWT_BUNDLES_ERR_MAX];
  EXPECT_FALSE(mt_jwt_svid_validate(source_, "a.b.c", 5, "a", &v, err, sizeof(err)));
  EXPECT_NE(std::string(err).find("no JWT bundle"), std::string::npos) << err;
}

TEST_F(JwtSvidTest, BadArgumentsAreRefusedAtOnce) {
  StartSource(token_path_.c_str());
  char err[256] = "";
  Fetched f;
  EXPECT_EQ(nullptr, mt_jwt_svid_fetch_start(source_, kFrontend, 0, nullptr, 0, OnFetched, &f, err,
                                             sizeof(err)));
  const char *empty[] = {""};
  EXPECT_EQ(nullptr, mt_jwt_svid_fetch_start(source_, kFrontend, 0, empty, 1, OnFetched, &f, err,
                                             sizeof(err)));
  const char *aud[] = {"a"};
  EXPECT_EQ(nullptr,
            mt_jwt_svid_fetch_start(source_, "", 1, aud, 1, OnFetched, &f, err, sizeof(err)));
  EXPECT_EQ(0, f.calls);
}

}  // namespace
