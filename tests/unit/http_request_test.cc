// Specification of agent/http_request.h: what an admin request head may be,
// and what each kind of bad input is answered with.
#include "agent/http_request.h"

#include <gtest/gtest.h>

#include <string>

namespace {

struct Parsed {
  mt_http_parse_result result;
  mt_http_request req;
};

Parsed Parse(const std::string &text) {
  Parsed p;
  p.result =
      mt_http_parse_request(reinterpret_cast<const uint8_t *>(text.data()), text.size(), &p.req);
  return p;
}

// The status an invalid head is refused with (0 if it was not refused).
int Refusal(const std::string &text) {
  Parsed p = Parse(text);
  if (p.result != MT_HTTP_PARSE_ERROR) return 0;
  EXPECT_NE(p.req.error, nullptr);
  EXPECT_GT(strlen(p.req.error), 0u);
  return p.req.status;
}

TEST(HttpRequest, ParsesAnHttp11GetWithQuery) {
  std::string head =
      "GET /policy?peer=x&port=80 HTTP/1.1\r\nHost: localhost\r\nAccept: */*\r\n\r\n";
  Parsed p = Parse(head + "next");
  ASSERT_EQ(p.result, MT_HTTP_PARSE_OK) << p.req.error;
  EXPECT_STREQ(p.req.method, "GET");
  EXPECT_STREQ(p.req.path, "/policy");
  EXPECT_STREQ(p.req.query, "peer=x&port=80");
  EXPECT_EQ(p.req.version_minor, 1);
  EXPECT_EQ(p.req.keep_alive, 1);
  EXPECT_EQ(p.req.content_length, 0u);
  EXPECT_EQ(p.req.head_bytes, head.size());
}

TEST(HttpRequest, EveryPrefixOfAValidHeadIsIncomplete) {
  std::string head = "POST /reload HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n";
  for (size_t n = 0; n < head.size(); n++)
    EXPECT_EQ(Parse(head.substr(0, n)).result, MT_HTTP_PARSE_INCOMPLETE) << n;
  EXPECT_EQ(Parse(head).result, MT_HTTP_PARSE_OK);
}

TEST(HttpRequest, KeepAliveFollowsVersionAndConnection) {
  EXPECT_EQ(Parse("GET / HTTP/1.0\r\n\r\n").req.keep_alive, 0);
  EXPECT_EQ(Parse("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").req.keep_alive, 1);
  EXPECT_EQ(Parse("GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").req.keep_alive, 0);
  EXPECT_EQ(Parse("GET / HTTP/1.1\r\nHost: a\r\nConnection: te, CLOSE\r\n\r\n").req.keep_alive, 0);
  EXPECT_EQ(Parse("GET / HTTP/1.0\r\n\r\n").req.version_minor, 0);
}

TEST(HttpRequest, AcceptsBareLfLeadingBlankLinesAndOws) {
  Parsed p = Parse("\r\n\nGET /healthz HTTP/1.1\nHost:\t a \t\n\n");
  ASSERT_EQ(p.result, MT_HTTP_PARSE_OK) << p.req.error;
  EXPECT_STREQ(p.req.path, "/healthz");
}

TEST(HttpRequest, DecodesThePathAndKeepsTheQueryRaw) {
  Parsed p = Parse("GET /heal%74hz?a=%2F+b HTTP/1.0\r\n\r\n");
  ASSERT_EQ(p.result, MT_HTTP_PARSE_OK);
  EXPECT_STREQ(p.req.path, "/healthz");
  EXPECT_STREQ(p.req.query, "a=%2F+b");
}

TEST(HttpRequest, AbsoluteFormKeepsOnlyThePath) {
  Parsed p = Parse("GET http://127.0.0.1:15000/ready?x=1 HTTP/1.1\r\nHost: a\r\n\r\n");
  ASSERT_EQ(p.result, MT_HTTP_PARSE_OK);
  EXPECT_STREQ(p.req.path, "/ready");
  EXPECT_STREQ(p.req.query, "x=1");
  p = Parse("GET HTTPS://h?q HTTP/1.1\r\nHost: a\r\n\r\n");
  ASSERT_EQ(p.result, MT_HTTP_PARSE_OK);
  EXPECT_STREQ(p.req.path, "/");
  EXPECT_STREQ(p.req.query, "q");
  EXPECT_EQ(Refusal("GET http:///x HTTP/1.1\r\nHost: a\r\n\r\n"), 400);
}

TEST(HttpRequest, AnnouncedBodyAndExpectContinue) {
  Parsed p = Parse(
      "POST /reload HTTP/1.1\r\nHost: a\r\nContent-Length: 12\r\n"
      "Expect: 100-continue\r\n\r\n");
  ASSERT_EQ(p.result, MT_HTTP_PARSE_OK);
  EXPECT_EQ(p.req.content_length, 12u);
  EXPECT_EQ(p.req.expect_continue, 1);
  // The same length twice is one length.
  EXPECT_EQ(
      Parse("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n").result,
      MT_HTTP_PARSE_OK);
}

TEST(HttpRequest, MalformedRequestLinesAre400) {
  for (const char *bad :
       {"GET\r\n\r\n", "GET /\r\n\r\n", "GET  / HTTP/1.1\r\nHost: a\r\n\r\n",
        "G(T / HTTP/1.1\r\nHost: a\r\n\r\n", "GET / HTTP/1.1 \r\nHost: a\r\n\r\n",
        "GET / http/1.1\r\nHost: a\r\n\r\n", "GET / HTTP/1\r\nHost: a\r\n\r\n",
        "GET healthz HTTP/1.1\r\nHost: a\r\n\r\n", "GET /a\rb HTTP/1.1\r\nHost: a\r\n\r\n",
        "GET /a\x7f HTTP/1.1\r\nHost: a\r\n\r\n", "GET /\xc3\xa9 HTTP/1.1\r\nHost: a\r\n\r\n"})
    EXPECT_EQ(Refusal(bad), 400) << bad;
}

TEST(HttpRequest, BadPercentEscapesInThePathAre400) {
  for (const char *bad :
       {"GET /a%zz HTTP/1.0\r\n\r\n", "GET /a%4 HTTP/1.0\r\n\r\n", "GET /a%00b HTTP/1.0\r\n\r\n"})
    EXPECT_EQ(Refusal(bad), 400) << bad;
}

TEST(HttpRequest, OtherHttpVersionsAre505) {
  EXPECT_EQ(Refusal("GET / HTTP/2.0\r\n\r\n"), 505);
  EXPECT_EQ(Refusal("GET / HTTP/1.2\r\n\r\n"), 505);
  EXPECT_EQ(Refusal("GET / HTTP/0.9\r\n\r\n"), 505);
}

TEST(HttpRequest, MalformedHeaderFieldsAre400) {
  for (const char *bad :
       {"GET / HTTP/1.1\r\nHost : a\r\n\r\n", "GET / HTTP/1.1\r\nHost: a\r\nNo colon\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\n: empty\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nX: 1\r\n folded\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nX: a\x01b\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n"})
    EXPECT_EQ(Refusal(bad), 400) << bad;
}

TEST(HttpRequest, Http11NeedsExactlyOneHost) {
  EXPECT_EQ(Refusal("GET / HTTP/1.1\r\n\r\n"), 400);
  EXPECT_EQ(Refusal("GET / HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n"), 400);
  EXPECT_EQ(Refusal("GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n"), 400);
}

TEST(HttpRequest, BodiesOnlyByASaneContentLength) {
  EXPECT_EQ(Refusal("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: x\r\n\r\n"), 400);
  EXPECT_EQ(Refusal("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n"), 400);
  EXPECT_EQ(Refusal("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1, 1\r\n\r\n"), 400);
  EXPECT_EQ(Refusal("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"),
            400);
  EXPECT_EQ(Refusal("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999\r\n\r\n"),
            400);
  EXPECT_EQ(Refusal("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 8193\r\n\r\n"), 413);
  EXPECT_EQ(Refusal("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"), 411);
  EXPECT_EQ(Refusal("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nExpect: magic\r\n\r\n"),
            417);
}

TEST(HttpRequest, SizeLimits) {
  std::string target(MT_HTTP_MAX_TARGET_BYTES, 'a');
  target[0] = '/';
  EXPECT_EQ(Parse("GET " + target + " HTTP/1.1\r\nHost: a\r\n\r\n").result, MT_HTTP_PARSE_OK);
  EXPECT_EQ(Refusal("GET " + target + "a HTTP/1.1\r\nHost: a\r\n\r\n"), 414);
  // A request line that cannot end within the limit is refused before its end.
  EXPECT_EQ(Refusal("GET " + target + std::string(100, 'a')), 414);
  EXPECT_EQ(Refusal(std::string(MT_HTTP_MAX_METHOD_BYTES + 1, 'G') + " / HTTP/1.0\r\n\r\n"), 501);
  std::string fields;
  while (fields.size() < MT_HTTP_MAX_HEAD_BYTES) fields += "X-Filler: 0123456789abcdef\r\n";
  EXPECT_EQ(Refusal("GET / HTTP/1.1\r\nHost: a\r\n" + fields + "\r\n"), 431);
  EXPECT_EQ(Refusal("GET / HTTP/1.1\r\nHost: a\r\n" + fields), 431);  // never completes
  std::string many;
  for (int i = 0; i < MT_HTTP_MAX_FIELDS; i++) many += "X: 1\r\n";
  EXPECT_EQ(Parse("GET / HTTP/1.1\r\n" + many.substr(6) + "Host: a\r\n\r\n").result,
            MT_HTTP_PARSE_OK);
  EXPECT_EQ(Refusal("GET / HTTP/1.1\r\nHost: a\r\n" + many + "\r\n"), 431);
  EXPECT_EQ(Refusal(std::string(MT_HTTP_MAX_HEAD_BYTES, '\n')), 431);
}

TEST(HttpRequestQuery, FindsTheFirstValueDecoded) {
  char v[64];
  EXPECT_EQ(mt_http_query_get("peer=spiffe%3A%2F%2Fa%2Fb&port=80&port=81", "port", v, sizeof(v)),
            1);
  EXPECT_STREQ(v, "80");
  EXPECT_EQ(mt_http_query_get("peer=spiffe%3A%2F%2Fa%2Fb", "peer", v, sizeof(v)), 1);
  EXPECT_STREQ(v, "spiffe://a/b");
  EXPECT_EQ(mt_http_query_get("a=x+y&b=", "a", v, sizeof(v)), 1);
  EXPECT_STREQ(v, "x y");
  EXPECT_EQ(mt_http_query_get("a=x+y&b=", "b", v, sizeof(v)), 1);
  EXPECT_STREQ(v, "");
  EXPECT_EQ(mt_http_query_get("p%6Frt=1", "port", v, sizeof(v)), 1);
}

TEST(HttpRequestQuery, AbsentNamesAndNamesWithoutValues) {
  char v[8];
  EXPECT_EQ(mt_http_query_get("", "port", v, sizeof(v)), 0);
  EXPECT_EQ(mt_http_query_get("plaintext&port=1", "plaintext", v, sizeof(v)), 0);
  EXPECT_EQ(mt_http_query_get("&&portx=1&=2", "port", v, sizeof(v)), 0);
}

TEST(HttpRequestQuery, MalformedOrTooLongIsAnError) {
  char v[4];
  EXPECT_EQ(mt_http_query_get("port=%zz", "port", v, sizeof(v)), -1);
  EXPECT_EQ(mt_http_query_get("port=%00", "port", v, sizeof(v)), -1);
  EXPECT_EQ(mt_http_query_get("port=1234", "port", v, sizeof(v)), -1);
  EXPECT_EQ(mt_http_query_get("port=123", "port", v, sizeof(v)), 1);
}

}  // namespace
