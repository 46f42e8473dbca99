// Ticket-key rotation and session records (agent/tls_resume.h).
#include "agent/tls_resume.h"

#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <vector>

namespace {

constexpr time_t kT0 = 1700000000;
constexpr time_t kPeriod = 3600;

std::vector<uint8_t> Seal(mt_ticket_keys *keys, time_t now, const std::string &plain) {
  std::vector<uint8_t> out(plain.size() + MT_TICKET_OVERHEAD);
  size_t len = 0;
  EXPECT_EQ(1, mt_ticket_keys_seal(keys, now, out.data(), &len, out.size(),
                                   reinterpret_cast<const uint8_t *>(plain.data()), plain.size()));
  out.resize(len);
  return out;
}

// 1 and the plaintext, or 0.
int Open(mt_ticket_keys *keys, time_t now, const std::vector<uint8_t> &ticket, std::string *out) {
  std::vector<uint8_t> buf(ticket.size());
  size_t len = 0;
  int ok =
      mt_ticket_keys_open(keys, now, buf.data(), &len, buf.size(), ticket.data(), ticket.size());
  if (ok && out) out->assign(reinterpret_cast<char *>(buf.data()), len);
  return ok;
}

struct Keys {
  explicit Keys(time_t now) : k(mt_ticket_keys_new(kPeriod, now)) {}
  ~Keys() { mt_ticket_keys_free(k); }
  mt_ticket_keys *k;
};

TEST(TicketKeys, RoundTripAndOverhead) {
  Keys keys(kT0);
  auto t = Seal(keys.k, kT0, "session bytes");
  EXPECT_EQ(t.size(), strlen("session bytes") + MT_TICKET_OVERHEAD);
  std::string plain;
  ASSERT_EQ(1, Open(keys.k, kT0 + 1, t, &plain));
  EXPECT_EQ(plain, "session bytes");
}

TEST(TicketKeys, PreviousKeyAcceptedForOnePeriodThenRetired) {
  Keys keys(kT0);
  auto old_ticket = Seal(keys.k, kT0 + 10, "old");
  // One period later the key rotates: new tickets use a new key name...
  auto new_ticket = Seal(keys.k, kT0 + kPeriod + 1, "new");
  EXPECT_NE(0, memcmp(old_ticket.data(), new_ticket.data(), MT_TICKET_KEY_NAME_LEN));
  // ...and the old one is still accepted during that period.
  EXPECT_EQ(1, Open(keys.k, kT0 + kPeriod + 2, old_ticket, nullptr));
  EXPECT_EQ(1, Open(keys.k, kT0 + 2 * kPeriod - 1, old_ticket, nullptr));
  // The next rotation retires it; the one made after the first rotation is
  // now the previous key and still opens.
  EXPECT_EQ(0, Open(keys.k, kT0 + 2 * kPeriod + 2, old_ticket, nullptr));
  EXPECT_EQ(1, Open(keys.k, kT0 + 2 * kPeriod + 3, new_ticket, nullptr));
  EXPECT_EQ(0, Open(keys.k, kT0 + 3 * kPeriod + 3, new_ticket, nullptr));
}

TEST(TicketKeys, LongQuietSpellRetiresBothKeys) {
  Keys keys(kT0);
  auto t = Seal(keys.k, kT0, "x");
  EXPECT_EQ(0, Open(keys.k, kT0 + 5 * kPeriod, t, nullptr));
}

TEST(TicketKeys, AnotherRingCannotOpen) {
  Keys a(kT0), b(kT0);
  auto t = Seal(a.k, kT0, "secret");
  EXPECT_EQ(0, Open(b.k, kT0, t, nullptr));
}

TEST(TicketKeys, TamperedOrTruncatedTicketsAreRefused) {
  Keys keys(kT0);
  auto t = Seal(keys.k, kT0, "session");
  for (size_t i = 0; i < t.size(); i++) {
    auto bad = t;
    bad[i] ^= 0x01;
    EXPECT_EQ(0, Open(keys.k, kT0, bad, nullptr)) << "byte " << i;
  }
  for (size_t n = 0; n < t.size(); n++) {
    std::vector<uint8_t> cut(t.begin(), t.begin() + n);
    EXPECT_EQ(0, Open(keys.k, kT0, cut, nullptr)) << "length " << n;
  }
}

TEST(TicketKeys, SealRefusesTooSmallBuffer) {
  Keys keys(kT0);
  uint8_t out[MT_TICKET_OVERHEAD + 3];
  size_t len = 0;
  const uint8_t in[4] = {1, 2, 3, 4};
  EXPECT_EQ(0, mt_ticket_keys_seal(keys.k, kT0, out, &len, sizeof(out), in, sizeof(in)));
}

mt_session_record MakeRecord() {
  mt_session_record r;
  memset(&r, 0, sizeof(r));
  r.auth_time = kT0;
  r.expires = kT0 + 600;
  r.peer_not_after = kT0 + 3600;
  memset(r.own_fp, 0xaa, sizeof(r.own_fp));
  memset(r.trust_fp, 0xbb, sizeof(r.trust_fp));
  snprintf(r.serial, sizeof(r.serial), "0a1b2c");
  snprintf(r.spiffe_id, sizeof(r.spiffe_id), "spiffe://example.org/ns/default/sa/frontend");
  return r;
}

TEST(SessionRecord, EncodeDecodeRoundTrip) {
  mt_session_record r = MakeRecord();
  std::vector<uint8_t> buf(mt_session_record_size(&r));
  ASSERT_EQ(buf.size(), mt_session_record_encode(&r, buf.data(), buf.size()));
  mt_session_record back;
  size_t used = 0;
  ASSERT_EQ(1, mt_session_record_decode(&back, buf.data(), buf.size(), &used));
  EXPECT_EQ(used, buf.size());
  EXPECT_EQ(back.auth_time, r.auth_time);
  EXPECT_EQ(back.expires, r.expires);
  EXPECT_EQ(back.peer_not_after, r.peer_not_after);
  EXPECT_EQ(0, memcmp(back.own_fp, r.own_fp, 32));
  EXPECT_EQ(0, memcmp(back.trust_fp, r.trust_fp, 32));
  EXPECT_STREQ(back.serial, r.serial);
  EXPECT_STREQ(back.spiffe_id, r.spiffe_id);
}

TEST(SessionRecord, DecodeRefusesEveryTruncationAndBadVersion) {
  mt_session_record r = MakeRecord();
  std::vector<uint8_t> buf(mt_session_record_size(&r));
  mt_session_record_encode(&r, buf.data(), buf.size());
  mt_session_record back;
  for (size_t n = 0; n < buf.size(); n++)
    EXPECT_EQ(0, mt_session_record_decode(&back, buf.data(), n, nullptr)) << n;
  buf[0] = 99;
  EXPECT_EQ(0, mt_session_record_decode(&back, buf.data(), buf.size(), nullptr));
}

TEST(SessionRecord, DecodeRefusesAnEmptyIdOrEmbeddedNul) {
  mt_session_record r = MakeRecord();
  r.spiffe_id[0] = '\0';
  std::vector<uint8_t> buf(mt_session_record_size(&r) + 8);
  size_t n = mt_session_record_encode(&r, buf.data(), buf.size());
  ASSERT_GT(n, 0u);
  mt_session_record back;
  EXPECT_EQ(0, mt_session_record_decode(&back, buf.data(), n, nullptr));

  r = MakeRecord();
  buf.resize(mt_session_record_size(&r));
  n = mt_session_record_encode(&r, buf.data(), buf.size());
  ASSERT_EQ(n, buf.size());
  buf[n - 3] = '\0';  // inside the ID
  EXPECT_EQ(0, mt_session_record_decode(&back, buf.data(), n, nullptr));
}

TEST(SessionRecord, RefusalReasons) {
  mt_session_record r = MakeRecord();
  uint8_t own[32], trust[32], other[32];
  memset(own, 0xaa, 32);
  memset(trust, 0xbb, 32);
  memset(other, 0xcc, 32);
  EXPECT_EQ(nullptr, mt_session_record_refusal(&r, kT0 + 1, own, trust));
  EXPECT_STREQ("expired", mt_session_record_refusal(&r, kT0 + 600, own, trust));
  EXPECT_STREQ("own_svid_rotated", mt_session_record_refusal(&r, kT0 + 1, other, trust));
  EXPECT_STREQ("trust_changed", mt_session_record_refusal(&r, kT0 + 1, own, other));
  // The peer's certificate bounds the session even if |expires| were later.
  r.expires = kT0 + 7200;
  EXPECT_STREQ("expired", mt_session_record_refusal(&r, kT0 + 3600, own, trust));
  // A record from the future (clock went back) is not trusted either.
  EXPECT_STREQ("expired", mt_session_record_refusal(&r, kT0 - 1, own, trust));
}

}  // namespace
