// Specification of grpc/frame: message framing, grpc-timeout, grpc-message
// encoding, status names and mappings.
#include "grpc/frame.h"

#include <gtest/gtest.h>

#include <cstring>

#include <string>
#include <vector>

namespace {

std::vector<uint8_t> Framed(const std::string &msg) {
  std::vector<uint8_t> out(MT_GRPC_PREFIX_BYTES);
  mt_grpc_prefix_encode(out.data(), static_cast<uint32_t>(msg.size()));
  out.insert(out.end(), msg.begin(), msg.end());
  return out;
}

// Feeds |bytes| in chunks of |chunk| bytes; collects messages until an error.
struct Decoded {
  std::vector<std::string> messages;
  bool failed = false;
  mt_grpc_status status = MT_GRPC_OK;
  std::string why;
};

Decoded Feed(const std::vector<uint8_t> &bytes, size_t chunk, size_t max = 0) {
  mt_grpc_decoder d;
  mt_grpc_decoder_init(&d, max);
  Decoded out;
  for (size_t off = 0; off < bytes.size() && !out.failed; off += chunk) {
    size_t n = std::min(chunk, bytes.size() - off);
    CBS in;
    CBS_init(&in, bytes.data() + off, n);
    for (;;) {
      const uint8_t *msg = nullptr;
      size_t len = 0;
      mt_grpc_decode_result r = mt_grpc_decoder_next(&d, &in, &msg, &len);
      if (r == MT_GRPC_DECODE_NEED_MORE) break;
      if (r == MT_GRPC_DECODE_ERROR) {
        const char *why = nullptr;
        out.failed = true;
        out.status = mt_grpc_decoder_error(&d, &why);
        out.why = why;
        break;
      }
      out.messages.emplace_back(reinterpret_cast<const char *>(msg), len);
    }
  }
  mt_grpc_decoder_dispose(&d);
  return out;
}

TEST(GrpcPrefix, IsZeroFlagThenBigEndianLength) {
  uint8_t p[MT_GRPC_PREFIX_BYTES];
  mt_grpc_prefix_encode(p, 0x01020304);
  EXPECT_EQ(p[0], 0);
  EXPECT_EQ(p[1], 1);
  EXPECT_EQ(p[2], 2);
  EXPECT_EQ(p[3], 3);
  EXPECT_EQ(p[4], 4);
}

TEST(GrpcDecoder, DecodesOneMessageFedByteByByte) {
  Decoded d = Feed(Framed("hello, world"), 1);
  ASSERT_FALSE(d.failed);
  ASSERT_EQ(d.messages.size(), 1u);
  EXPECT_EQ(d.messages[0], "hello, world");
}

TEST(GrpcDecoder, DecodesSeveralMessagesInOneChunk) {
  std::vector<uint8_t> all;
  for (const char *m : {"one", "", "three three", "4"}) {
    auto f = Framed(m);
    all.insert(all.end(), f.begin(), f.end());
  }
  Decoded d = Feed(all, all.size());
  ASSERT_FALSE(d.failed);
  ASSERT_EQ(d.messages.size(), 4u);
  EXPECT_EQ(d.messages[0], "one");
  EXPECT_EQ(d.messages[1], "");
  EXPECT_EQ(d.messages[2], "three three");
  EXPECT_EQ(d.messages[3], "4");
}

TEST(GrpcDecoder, DecodesMessagesSplitAtEveryChunkSize) {
  std::vector<uint8_t> all;
  std::string big(70000, 'x');
  for (const std::string &m : {std::string("a"), big, std::string("tail")}) {
    auto f = Framed(m);
    all.insert(all.end(), f.begin(), f.end());
  }
  for (size_t chunk : {1u, 2u, 3u, 5u, 7u, 4096u, 16384u, 70005u}) {
    Decoded d = Feed(all, chunk);
    ASSERT_FALSE(d.failed) << chunk;
    ASSERT_EQ(d.messages.size(), 3u) << chunk;
    EXPECT_EQ(d.messages[1], big) << chunk;
    EXPECT_EQ(d.messages[2], "tail") << chunk;
  }
}

TEST(GrpcDecoder, ReportsAPartialMessage) {
  mt_grpc_decoder d;
  mt_grpc_decoder_init(&d, 0);
  EXPECT_FALSE(mt_grpc_decoder_in_message(&d));
  auto f = Framed("abcdef");
  CBS in;
  CBS_init(&in, f.data(), 3);
  const uint8_t *msg;
  size_t len;
  EXPECT_EQ(mt_grpc_decoder_next(&d, &in, &msg, &len), MT_GRPC_DECODE_NEED_MORE);
  EXPECT_TRUE(mt_grpc_decoder_in_message(&d));
  CBS_init(&in, f.data() + 3, f.size() - 3);
  EXPECT_EQ(mt_grpc_decoder_next(&d, &in, &msg, &len), MT_GRPC_DECODE_MESSAGE);
  EXPECT_FALSE(mt_grpc_decoder_in_message(&d));
  mt_grpc_decoder_dispose(&d);
}

TEST(GrpcDecoder, RefusesAMessageOverTheLimitAsResourceExhausted) {
  Decoded d = Feed(Framed(std::string(101, 'x')), 1000, 100);
  EXPECT_TRUE(d.failed);
  EXPECT_EQ(d.status, MT_GRPC_RESOURCE_EXHAUSTED);
  EXPECT_TRUE(d.messages.empty());
}

TEST(GrpcDecoder, AcceptsAMessageExactlyAtTheLimit) {
  Decoded d = Feed(Framed(std::string(100, 'x')), 7, 100);
  EXPECT_FALSE(d.failed);
  EXPECT_EQ(d.messages.size(), 1u);
}

TEST(GrpcDecoder, RefusesTheOversizeBeforeTheBodyArrives) {
  // A 4-byte length announcing 4 GiB - 1: the error comes from the prefix.
  std::vector<uint8_t> prefix = {0, 0xff, 0xff, 0xff, 0xff};
  Decoded d = Feed(prefix, 1);
  EXPECT_TRUE(d.failed);
  EXPECT_EQ(d.status, MT_GRPC_RESOURCE_EXHAUSTED);
}

TEST(GrpcDecoder, RefusesACompressedMessage) {
  auto f = Framed("zz");
  f[0] = 1;
  Decoded d = Feed(f, f.size());
  EXPECT_TRUE(d.failed);
  EXPECT_EQ(d.status, MT_GRPC_INTERNAL);
  EXPECT_NE(d.why.find("compress"), std::string::npos);
}

TEST(GrpcDecoder, RefusesAnInvalidFlagByte) {
  auto f = Framed("zz");
  f[0] = 0x80;
  Decoded d = Feed(f, 1);
  EXPECT_TRUE(d.failed);
  EXPECT_EQ(d.status, MT_GRPC_INTERNAL);
}

TEST(GrpcDecoder, StaysFailedAfterAnError) {
  mt_grpc_decoder d;
  mt_grpc_decoder_init(&d, 0);
  auto bad = Framed("x");
  bad[0] = 1;
  auto good = Framed("y");
  CBS in;
  const uint8_t *msg;
  size_t len;
  CBS_init(&in, bad.data(), bad.size());
  EXPECT_EQ(mt_grpc_decoder_next(&d, &in, &msg, &len), MT_GRPC_DECODE_ERROR);
  CBS_init(&in, good.data(), good.size());
  EXPECT_EQ(mt_grpc_decoder_next(&d, &in, &msg, &len), MT_GRPC_DECODE_ERROR);
  mt_grpc_decoder_dispose(&d);
}

std::string Timeout(int64_t ms) {
  char out[MT_GRPC_TIMEOUT_TEXT_MAX];
  mt_grpc_timeout_format(ms, out);
  return out;
}

TEST(GrpcTimeout, FormatsInMillisecondsWhileEightDigitsSuffice) {
  EXPECT_EQ(Timeout(1), "1m");
  EXPECT_EQ(Timeout(100), "100m");
  EXPECT_EQ(Timeout(99999999), "99999999m");
}

TEST(GrpcTimeout, SwitchesToCoarserUnitsRoundingUp) {
  EXPECT_EQ(Timeout(100000000), "100000S");
  EXPECT_EQ(Timeout(100000001), "100001S");
  EXPECT_EQ(Timeout(int64_t{99999999} * 1000 + 1), "1666667M");
  EXPECT_EQ(Timeout(int64_t{99999999} * 60000 + 1), "1666667H");
}

TEST(GrpcTimeout, ClampsOutOfRangeValues) {
  EXPECT_EQ(Timeout(0), "1m");
  EXPECT_EQ(Timeout(-5), "1m");
  EXPECT_EQ(Timeout(INT64_MAX), "99999999H");
}

int64_t Parse(const std::string &s, bool *ok) {
  int64_t ms = -1;
  *ok = mt_grpc_timeout_parse(s.data(), s.size(), &ms) == 1;
  return ms;
}

TEST(GrpcTimeout, ParsesEveryUnit) {
  bool ok;
  EXPECT_EQ(Parse("2H", &ok), 7200000);
  EXPECT_TRUE(ok);
  EXPECT_EQ(Parse("3M", &ok), 180000);
  EXPECT_EQ(Parse("5S", &ok), 5000);
  EXPECT_EQ(Parse("100m", &ok), 100);
  EXPECT_EQ(Parse("2500u", &ok), 3);  // rounded up
  EXPECT_EQ(Parse("1n", &ok), 1);
  EXPECT_EQ(Parse("0m", &ok), 0);
  EXPECT_EQ(Parse("99999999H", &ok), int64_t{99999999} * 3600000);
  EXPECT_TRUE(ok);
}

TEST(GrpcTimeout, RoundTripsThroughFormatAndParse) {
  for (int64_t ms : {int64_t{1}, int64_t{999}, int64_t{5000}, int64_t{99999999}, int64_t{100000000},
                     int64_t{3600000000}, int64_t{86400000} * 365}) {
    bool ok;
    int64_t back = Parse(Timeout(ms), &ok);
    EXPECT_TRUE(ok) << ms;
    EXPECT_GE(back, ms) << ms;                        // never shorter than asked
    EXPECT_LT(back - ms, ms / 1000 + 3600000) << ms;  // and within one coarse unit
  }
}

TEST(GrpcTimeout, RejectsMalformedValues) {
  bool ok;
  for (const char *bad : {"", "m", "5", "5s", "5x", "-5S", "+5S", "5 S", " 5S", "5S ", "1.5S",
                          "123456789m", "5SS", "S5"}) {
    Parse(bad, &ok);
    EXPECT_FALSE(ok) << '"' << bad << '"';
  }
}

std::string Encode(const std::string &in) {
  std::string out(mt_grpc_percent_encoded_len(in.data(), in.size()) + 1, '\0');
  size_t used = mt_grpc_percent_encode(in.data(), in.size(), &out[0], out.size());
  EXPECT_EQ(used, in.size());
  out.resize(strlen(out.c_str()));
  return out;
}

std::string Decode(const std::string &in) {
  std::string out(in.size() + 1, '\0');
  size_t n = mt_grpc_percent_decode(in.data(), in.size(), &out[0], out.size());
  out.resize(n);
  return out;
}

TEST(GrpcMessage, PercentEncodesControlNonAsciiAndPercent) {
  EXPECT_EQ(Encode("plain text ok"), "plain text ok");
  EXPECT_EQ(Encode("100%"), "100%25");
  EXPECT_EQ(Encode("a\nb\tc"), "a%0Ab%09c");
  EXPECT_EQ(Encode("caf\xc3\xa9"), "caf%C3%A9");
  EXPECT_EQ(Encode(std::string("\x7f\x00", 2)), "%7F%00");
}

TEST(GrpcMessage, DecodesAndRoundTrips) {
  EXPECT_EQ(Decode("caf%C3%A9"), "caf\xc3\xa9");
  EXPECT_EQ(Decode("lower%c3%a9"), "lower\xc3\xa9");
  std::string all;
  for (int c = 1; c < 256; c++) all.push_back(static_cast<char>(c));
  EXPECT_EQ(Decode(Encode(all)), all);
}

TEST(GrpcMessage, KeepsMalformedEscapesLiterally) {
  EXPECT_EQ(Decode("50%"), "50%");
  EXPECT_EQ(Decode("%4"), "%4");
  EXPECT_EQ(Decode("%zz%41"), "%zzA");
  EXPECT_EQ(Decode("%%41"), "%A");
}

TEST(GrpcMessage, EncodeNeverSplitsAnEscapeWhenTruncating) {
  char out[6];
  size_t used = mt_grpc_percent_encode("ab\n\n", 4, out, sizeof(out));
  EXPECT_EQ(used, 3u);  // "ab%0A" fits, the second escape does not
  EXPECT_STREQ(out, "ab%0A");
}

TEST(GrpcStatus, HasTheSpecNames) {
  EXPECT_STREQ(mt_grpc_status_name(MT_GRPC_OK), "OK");
  EXPECT_STREQ(mt_grpc_status_name(MT_GRPC_DEADLINE_EXCEEDED), "DEADLINE_EXCEEDED");
  EXPECT_STREQ(mt_grpc_status_name(MT_GRPC_UNAUTHENTICATED), "UNAUTHENTICATED");
  EXPECT_STREQ(mt_grpc_status_name(17), "INVALID_STATUS_CODE");
  EXPECT_STREQ(mt_grpc_status_name(-1), "INVALID_STATUS_CODE");
}

TEST(GrpcStatus, MapsHttpStatusesAsTheSpecSays) {
  EXPECT_EQ(mt_grpc_status_from_http(400), MT_GRPC_INTERNAL);
  EXPECT_EQ(mt_grpc_status_from_http(401), MT_GRPC_UNAUTHENTICATED);
  EXPECT_EQ(mt_grpc_status_from_http(403), MT_GRPC_PERMISSION_DENIED);
  EXPECT_EQ(mt_grpc_status_from_http(404), MT_GRPC_UNIMPLEMENTED);
  EXPECT_EQ(mt_grpc_status_from_http(429), MT_GRPC_UNAVAILABLE);
  EXPECT_EQ(mt_grpc_status_from_http(502), MT_GRPC_UNAVAILABLE);
  EXPECT_EQ(mt_grpc_status_from_http(503), MT_GRPC_UNAVAILABLE);
  EXPECT_EQ(mt_grpc_status_from_http(504), MT_GRPC_UNAVAILABLE);
  EXPECT_EQ(mt_grpc_status_from_http(500), MT_GRPC_UNKNOWN);
}

TEST(GrpcStatus, MapsHttp2ErrorCodesAsTheSpecSays) {
  EXPECT_EQ(mt_grpc_status_from_h2_error(0x0), MT_GRPC_INTERNAL);  // NO_ERROR without status
  EXPECT_EQ(mt_grpc_status_from_h2_error(0x1), MT_GRPC_INTERNAL);
  EXPECT_EQ(mt_grpc_status_from_h2_error(0x7), MT_GRPC_UNAVAILABLE);
  EXPECT_EQ(mt_grpc_status_from_h2_error(0x8), MT_GRPC_CANCELLED);
  EXPECT_EQ(mt_grpc_status_from_h2_error(0xb), MT_GRPC_RESOURCE_EXHAUSTED);
  EXPECT_EQ(mt_grpc_status_from_h2_error(0xc), MT_GRPC_PERMISSION_DENIED);
}

TEST(GrpcMetadata, AcceptsOnlyLegalNamesAndValues) {
  EXPECT_TRUE(mt_grpc_metadata_name_valid("authorization"));
  EXPECT_TRUE(mt_grpc_metadata_name_valid("x-trace_id.v2"));
  EXPECT_FALSE(mt_grpc_metadata_name_valid(""));
  EXPECT_FALSE(mt_grpc_metadata_name_valid("Authorization"));
  EXPECT_FALSE(mt_grpc_metadata_name_valid(":path"));
  EXPECT_FALSE(mt_grpc_metadata_name_valid("a b"));
  EXPECT_TRUE(mt_grpc_metadata_value_valid("Bearer abc.def"));
  EXPECT_FALSE(mt_grpc_metadata_value_valid("a\r\nb: c"));
  EXPECT_FALSE(mt_grpc_metadata_value_valid("caf\xc3\xa9"));
}

TEST(GrpcContentType, AcceptsGrpcAndItsSubtypes) {
  auto ok = [](const std::string &s) { return mt_grpc_content_type_valid(s.data(), s.size()); };
  EXPECT_TRUE(ok("application/grpc"));
  EXPECT_TRUE(ok("application/grpc+proto"));
  EXPECT_TRUE(ok("application/grpc;charset=utf-8"));
  EXPECT_FALSE(ok("application/grpcx"));
  EXPECT_FALSE(ok("application/json"));
  EXPECT_FALSE(ok("application/grp"));
}

}  // namespace
