// Access-log lines are single, valid JSON objects whatever the field contents.
#include <gtest/gtest.h>

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include <fstream>
#include <sstream>
#include <string>

#include "agent/log.h"

namespace {

std::string Escape(const char *s) {
  char buf[256];
  size_t pos = 0;
  mt_json_escape(buf, sizeof(buf), &pos, s);
  return std::string(buf, pos);
}

TEST(JsonEscapeTest, QuotesAndBackslashesAreEscaped) {
  EXPECT_EQ(Escape("a\"b\\c"), "a\\\"b\\\\c");
}

TEST(JsonEscapeTest, ControlCharactersBecomeUnicodeEscapes) {
  EXPECT_EQ(Escape("x\ny\x01"), "x\\u000ay\\u0001");
}

TEST(JsonEscapeTest, NeverOverflowsTheBuffer) {
  char buf[8];
  size_t pos = 0;
  mt_json_escape(buf, sizeof(buf), &pos, "0123456789abcdef");
  EXPECT_LT(pos, sizeof(buf));
}

TEST(AccessLogTest, WritesOneLinePerRecordWithAllFields) {
  char path[] = "/tmp/mtlsd-access-XXXXXX";
  int fd = mkstemp(path);
  ASSERT_GE(fd, 0);
  close(fd);
  ASSERT_TRUE(mt_access_log_open(path));
  mt_access_record r = {};
  r.direction = "inbound";
  r.source = "127.0.0.1:5555";
  r.destination = "127.0.0.1:8080";
  r.endpoint = "10.0.1.5:8081";
  r.peer_id = "spiffe://example.org/ns/a/sa/\"evil\"\n";
  r.local_id = "spiffe://example.org/ns/b/sa/c";
  r.decision = "deny";
  r.rule = "no-allow-rule-matched";
  r.reason = "policy_denied";
  r.detail = "";
  r.tls_version = "TLSv1.3";
  r.cipher = "TLS_AES_128_GCM_SHA256";
  r.peer_serial = "0a";
  r.tls_session = "resumed";
  r.bytes_to_upstream = 7;
  r.bytes_to_downstream = 9;
  r.duration_ms = 3;
  r.held_ms = 2;
  mt_access_log_write(&r);
  mt_access_log_close();
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  std::string text = ss.str();
  unlink(path);
  EXPECT_EQ(std::count(text.begin(), text.end(), '\n'), 1);
  EXPECT_EQ(text.front(), '{');
  EXPECT_NE(text.find("\"peer_id\":\"spiffe://example.org/ns/a/sa/\\\"evil\\\"\\u000a\""),
            std::string::npos)
      << text;
  EXPECT_NE(text.find("\"reason\":\"policy_denied\""), std::string::npos);
  EXPECT_NE(text.find("\"peer_serial\":\"0a\",\"tls_session\":\"resumed\""), std::string::npos)
      << text;
  EXPECT_NE(text.find("\"destination\":\"127.0.0.1:8080\",\"endpoint\":\"10.0.1.5:8081\""),
            std::string::npos)
      << text;
  EXPECT_NE(
      text.find(
          "\"bytes_to_upstream\":7,\"bytes_to_downstream\":9,\"duration_ms\":3,\"held_ms\":2}"),
      std::string::npos)
      << text;
}

}  // namespace
