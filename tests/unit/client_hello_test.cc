// The peek that tells mesh TLS from plaintext and non-mesh TLS, on real
// ClientHellos produced by BoringSSL.
#include <gtest/gtest.h>

#include <openssl/bio.h>
#include <openssl/ssl.h>

#include <string>
#include <vector>

#include "agent/client_hello.h"

namespace {

// The first flight of a TLS client offering |alpn| (wire format, may be empty).
std::vector<uint8_t> ClientHello(const std::vector<uint8_t> &alpn) {
  bssl::UniquePtr<SSL_CTX> ctx(SSL_CTX_new(TLS_method()));
  bssl::UniquePtr<SSL> ssl(SSL_new(ctx.get()));
  if (!alpn.empty()) SSL_set_alpn_protos(ssl.get(), alpn.data(), alpn.size());
  BIO *rbio = BIO_new(BIO_s_mem());
  BIO *wbio = BIO_new(BIO_s_mem());
  SSL_set_bio(ssl.get(), rbio, wbio);
  SSL_set_connect_state(ssl.get());
  SSL_do_handshake(ssl.get());  // wants to read the ServerHello; the hello is written
  const uint8_t *data;
  size_t len;
  BIO_mem_contents(wbio, &data, &len);
  return std::vector<uint8_t>(data, data + len);
}

const std::vector<uint8_t> kMeshAlpn = {2, 'h', '2', 5, 'm', 't', 'l', 's', 'd'};
const std::vector<uint8_t> kOtherAlpn = {2, 'h', '2', 8, 'h', 't', 't', 'p', '/', '1', '.', '1'};

mt_hello_kind Classify(const std::vector<uint8_t> &bytes) {
  return mt_client_hello_classify(bytes.data(), bytes.size(), "mtlsd");
}

TEST(ClientHelloTest, MeshAlpnIsRecognised) {
  EXPECT_EQ(Classify(ClientHello(kMeshAlpn)), MT_HELLO_TLS_MESH);
}

TEST(ClientHelloTest, OtherAlpnIsNonMeshTls) {
  EXPECT_EQ(Classify(ClientHello(kOtherAlpn)), MT_HELLO_TLS_OTHER);
}

TEST(ClientHelloTest, NoAlpnIsNonMeshTls) {
  EXPECT_EQ(Classify(ClientHello({})), MT_HELLO_TLS_OTHER);
}

TEST(ClientHelloTest, PlaintextIsNotTls) {
  std::string http = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
  EXPECT_EQ(Classify(std::vector<uint8_t>(http.begin(), http.end())), MT_HELLO_NOT_TLS);
}

TEST(ClientHelloTest, EveryTruncationIsIncompleteNeverMisjudged) {
  std::vector<uint8_t> hello = ClientHello(kMeshAlpn);
  for (size_t n = 0; n < hello.size(); n++) {
    std::vector<uint8_t> prefix(hello.begin(), hello.begin() + n);
    EXPECT_EQ(Classify(prefix), MT_HELLO_INCOMPLETE) << "prefix of " << n << " bytes";
  }
}

TEST(ClientHelloTest, MeshTokenMustMatchExactly) {
  const std::vector<uint8_t> lookalike = {6, 'm', 't', 'l', 's', 'd', 'x'};
  EXPECT_EQ(Classify(ClientHello(lookalike)), MT_HELLO_TLS_OTHER);
}

TEST(ClientHelloTest, HandshakeRecordThatIsNotAClientHelloIsMalformed) {
  const std::vector<uint8_t> server_hello_like = {22, 3, 3, 0, 4, 2, 0, 0, 0};
  EXPECT_EQ(Classify(server_hello_like), MT_HELLO_MALFORMED);
}

TEST(ClientHelloTest, CorruptedExtensionLengthIsMalformed) {
  std::vector<uint8_t> hello = ClientHello(kMeshAlpn);
  // Append a byte inside the record: lengths no longer add up.
  hello.insert(hello.end(), 0);
  hello[4] = static_cast<uint8_t>(hello[4] + 1);
  hello[8] = static_cast<uint8_t>(hello[8] + 1);
  EXPECT_EQ(Classify(hello), MT_HELLO_MALFORMED);
}

}  // namespace
