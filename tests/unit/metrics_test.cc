// Per-worker counters summed on scrape, and their Prometheus text.
#include <gtest/gtest.h>

#include <map>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "agent/metrics.h"
#include "agent/text.h"

namespace {

// Owns a few workers' counters for one test.
class Workers {
 public:
  explicit Workers(size_t n) {
    for (size_t i = 0; i < n; i++) {
      mt_worker_metrics *m = mt_worker_metrics_new();
      EXPECT_NE(m, nullptr);
      all_.push_back(m);
    }
  }
  ~Workers() {
    for (mt_worker_metrics *m : all_) mt_worker_metrics_free(m);
  }
  Workers(const Workers &) = delete;
  Workers &operator=(const Workers &) = delete;

  mt_worker_metrics *operator[](size_t i) { return all_[i]; }

  std::string Render() const {
    mt_text t;
    mt_text_init(&t);
    mt_metrics_render(&t, all_.data(), all_.size());
    EXPECT_FALSE(t.failed);
    std::string text(t.data ? t.data : "", t.len);
    mt_text_free(&t);
    return text;
  }

 private:
  std::vector<mt_worker_metrics *> all_;
};

// Sample lines by series ("name{labels}") -> value text. Fails the test on a
// series seen twice, on a sample before any TYPE line, or on a line that is
// neither a comment nor "series value".
std::map<std::string, std::string> Samples(const std::string &text) {
  std::map<std::string, std::string> samples;
  std::istringstream in(text);
  std::string line;
  bool typed = false;
  while (std::getline(in, line)) {
    if (line.rfind("# TYPE ", 0) == 0) typed = true;
    if (line.rfind("#", 0) == 0) continue;
    size_t space = line.rfind(' ');
    EXPECT_NE(space, std::string::npos) << line;
    EXPECT_TRUE(typed) << "sample before any TYPE line: " << line;
    if (space == std::string::npos) continue;
    std::string series = line.substr(0, space);
    EXPECT_EQ(samples.count(series), 0u) << "series twice: " << series;
    samples[series] = line.substr(space + 1);
  }
  return samples;
}

// The value of |series|, or -1 when it is absent.
double Value(const std::string &text, const std::string &series) {
  std::map<std::string, std::string> samples = Samples(text);
  auto it = samples.find(series);
  return it == samples.end() ? -1 : std::stod(it->second);
}

std::string Quoted(const char *s) {
  mt_text t;
  mt_text_init(&t);
  mt_text_json_string(&t, s);
  std::string out(t.data ? t.data : "", t.len);
  mt_text_free(&t);
  return out;
}

std::string Label(const char *s) {
  mt_text t;
  mt_text_init(&t);
  mt_text_label_value(&t, s);
  std::string out(t.data ? t.data : "", t.len);
  mt_text_free(&t);
  return out;
}

TEST(MetricsTest, NothingCountedRendersEveryFixedSeriesAtZero) {
  Workers w(2);
  std::string text = w.Render();
  EXPECT_EQ(Value(text, "mtlsd_connections_total{direction=\"inbound\"}"), 0);
  EXPECT_EQ(Value(text, "mtlsd_connections_active{direction=\"outbound\"}"), 0);
  EXPECT_EQ(Value(text, "mtlsd_connections_closed_total{direction=\"inbound\",reason=\"ok\"}"), 0);
  EXPECT_EQ(Value(text,
                  "mtlsd_connections_closed_total{direction=\"outbound\","
                  "reason=\"internal_error\"}"),
            0);
  EXPECT_EQ(Value(text, "mtlsd_handshake_duration_seconds_count{direction=\"inbound\"}"), 0);
  // Keyed families have a header and no sample until something is counted.
  EXPECT_NE(text.find("# TYPE mtlsd_authz_decisions_total counter\n"), std::string::npos);
  EXPECT_EQ(text.find("mtlsd_authz_decisions_total{"), std::string::npos);
  EXPECT_EQ(text.back(), '\n');
}

TEST(MetricsTest, CountersAreSummedOverWorkers) {
  Workers w(3);
  // Worker i opens i+1 inbound connections and one outbound.
  for (size_t i = 0; i < 3; i++) {
    for (size_t n = 0; n <= i; n++) mt_metrics_conn_opened(w[i], MT_DIR_INBOUND);
    mt_metrics_conn_opened(w[i], MT_DIR_OUTBOUND);
  }
  mt_metrics_conn_closed(w[0], MT_DIR_INBOUND, MT_REASON_OK, 100, 1000);
  mt_metrics_conn_closed(w[1], MT_DIR_INBOUND, MT_REASON_OK, 200, 2000);
  mt_metrics_conn_closed(w[2], MT_DIR_INBOUND, MT_REASON_POLICY_DENIED, 0, 0);
  mt_metrics_conn_closed(w[2], MT_DIR_OUTBOUND, MT_REASON_PEER_DENIED, 7, 0);
  mt_metrics_handshake(w[0], MT_DIR_INBOUND, 1, 0.001, "TLSv1.3", "TLS_AES_128_GCM_SHA256");
  mt_metrics_handshake(w[1], MT_DIR_INBOUND, 0, 0, nullptr, nullptr);
  mt_metrics_handshake(w[2], MT_DIR_INBOUND, 0, 0, nullptr, nullptr);

  std::string text = w.Render();
  EXPECT_EQ(Value(text, "mtlsd_connections_total{direction=\"inbound\"}"), 6);
  EXPECT_EQ(Value(text, "mtlsd_connections_total{direction=\"outbound\"}"), 3);
  EXPECT_EQ(Value(text, "mtlsd_connections_closed_total{direction=\"inbound\",reason=\"ok\"}"), 2);
  EXPECT_EQ(Value(text,
                  "mtlsd_connections_closed_total{direction=\"inbound\","
                  "reason=\"policy_denied\"}"),
            1);
  EXPECT_EQ(Value(text,
                  "mtlsd_connections_closed_total{direction=\"outbound\","
                  "reason=\"peer_denied\"}"),
            1);
  EXPECT_EQ(Value(text, "mtlsd_bytes_total{direction=\"inbound\",flow=\"upstream\"}"), 300);
  EXPECT_EQ(Value(text, "mtlsd_bytes_total{direction=\"inbound\",flow=\"downstream\"}"), 3000);
  EXPECT_EQ(Value(text, "mtlsd_bytes_total{direction=\"outbound\",flow=\"upstream\"}"), 7);
  EXPECT_EQ(Value(text, "mtlsd_handshakes_total{direction=\"inbound\",result=\"success\"}"), 1);
  EXPECT_EQ(Value(text, "mtlsd_handshakes_total{direction=\"inbound\",result=\"failure\"}"), 2);
  EXPECT_EQ(Value(text, "mtlsd_handshakes_total{direction=\"outbound\",result=\"failure\"}"), 0);
}

TEST(MetricsTest, ActiveIsOpenedMinusClosedAcrossWorkers) {
  Workers w(2);
  for (int i = 0; i < 5; i++) mt_metrics_conn_opened(w[0], MT_DIR_INBOUND);
  for (int i = 0; i < 4; i++) mt_metrics_conn_opened(w[1], MT_DIR_INBOUND);
  for (int i = 0; i < 3; i++) mt_metrics_conn_closed(w[0], MT_DIR_INBOUND, MT_REASON_OK, 0, 0);
  mt_metrics_conn_closed(w[1], MT_DIR_INBOUND, MT_REASON_IDLE_TIMEOUT, 0, 0);
  mt_metrics_conn_opened(w[1], MT_DIR_OUTBOUND);
  EXPECT_EQ(Value(w.Render(), "mtlsd_connections_active{direction=\"inbound\"}"), 9 - 4);
  EXPECT_EQ(Value(w.Render(), "mtlsd_connections_active{direction=\"outbound\"}"), 1);

  mt_metrics_conn_closed(w[1], MT_DIR_OUTBOUND, MT_REASON_OK, 0, 0);
  for (int i = 0; i < 2; i++) mt_metrics_conn_closed(w[0], MT_DIR_INBOUND, MT_REASON_OK, 0, 0);
  for (int i = 0; i < 3; i++) mt_metrics_conn_closed(w[1], MT_DIR_INBOUND, MT_REASON_OK, 0, 0);
  std::string text = w.Render();
  EXPECT_EQ(Value(text, "mtlsd_connections_active{direction=\"inbound\"}"), 0);
  EXPECT_EQ(Value(text, "mtlsd_connections_active{direction=\"outbound\"}"), 0);
}

TEST(MetricsTest, HandshakeHistogramIsCumulativeWithInfEqualToCount) {
  Workers w(2);
  // Upper bounds are inclusive: 0.001 s lands in le="0.001".
  const double seconds[] = {0.0001, 0.001, 0.003, 0.003, 0.2, 20.0};
  for (size_t i = 0; i < sizeof(seconds) / sizeof(seconds[0]); i++)
    mt_metrics_handshake(w[i % 2], MT_DIR_OUTBOUND, 1, seconds[i], "TLSv1.3",
                         "TLS_AES_128_GCM_SHA256");
  mt_metrics_handshake(w[0], MT_DIR_OUTBOUND, 0, 5.0, nullptr, nullptr);  // failures: no latency

  std::string text = w.Render();
  auto bucket = [&](const char *le) {
    return Value(text, std::string("mtlsd_handshake_duration_seconds_bucket{direction=\"outbound\","
                                   "le=\"") +
                           le + "\"}");
  };
  EXPECT_EQ(bucket("0.0005"), 1);
  EXPECT_EQ(bucket("0.001"), 2);
  EXPECT_EQ(bucket("0.0025"), 2);
  EXPECT_EQ(bucket("0.005"), 4);
  EXPECT_EQ(bucket("0.1"), 4);
  EXPECT_EQ(bucket("0.25"), 5);
  EXPECT_EQ(bucket("10"), 5);
  EXPECT_EQ(bucket("+Inf"), 6);
  EXPECT_EQ(Value(text, "mtlsd_handshake_duration_seconds_count{direction=\"outbound\"}"), 6);
  EXPECT_NEAR(Value(text, "mtlsd_handshake_duration_seconds_sum{direction=\"outbound\"}"),
              0.0001 + 0.001 + 0.003 + 0.003 + 0.2 + 20.0, 1e-5);
  EXPECT_EQ(Value(text, "mtlsd_handshake_duration_seconds_count{direction=\"inbound\"}"), 0);

  // Every bound is rendered, in increasing order, never decreasing.
  std::istringstream in(text);
  std::string line;
  std::vector<double> counts;
  while (std::getline(in, line))
    if (line.rfind("mtlsd_handshake_duration_seconds_bucket{direction=\"outbound\"", 0) == 0)
      counts.push_back(std::stod(line.substr(line.rfind(' ') + 1)));
  ASSERT_EQ(counts.size(), mt_num_handshake_buckets + 1);
  for (size_t i = 1; i < counts.size(); i++) EXPECT_LE(counts[i - 1], counts[i]) << i;
  for (size_t i = 1; i < mt_num_handshake_buckets; i++)
    EXPECT_LT(mt_handshake_buckets[i - 1], mt_handshake_buckets[i]);
}

TEST(MetricsTest, NegotiatedTlsParametersBecomeVersionAndCipherLabels) {
  Workers w(2);
  mt_metrics_handshake(w[0], MT_DIR_INBOUND, 1, 0.001, "TLSv1.3", "TLS_AES_128_GCM_SHA256");
  mt_metrics_handshake(w[1], MT_DIR_INBOUND, 1, 0.001, "TLSv1.3", "TLS_AES_128_GCM_SHA256");
  mt_metrics_handshake(w[1], MT_DIR_INBOUND, 1, 0.001, "TLSv1.2",
                       "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256");
  std::string text = w.Render();
  EXPECT_EQ(Value(text,
                  "mtlsd_tls_handshakes_total{direction=\"inbound\",version=\"TLSv1.3\","
                  "cipher=\"TLS_AES_128_GCM_SHA256\"}"),
            2);
  EXPECT_EQ(Value(text,
                  "mtlsd_tls_handshakes_total{direction=\"inbound\",version=\"TLSv1.2\","
                  "cipher=\"TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256\"}"),
            1);
  EXPECT_EQ(text.find("mtlsd_tls_handshakes_total{direction=\"outbound\""), std::string::npos);
}

TEST(MetricsTest, DecisionsAreKeyedByDirectionDecisionAndRule) {
  Workers w(3);
  for (size_t i = 0; i < 3; i++)
    mt_metrics_decision(w[i], MT_DIR_INBOUND, MT_ACTION_ALLOW, "frontend-to-backend");
  mt_metrics_decision(w[1], MT_DIR_INBOUND, MT_ACTION_DENY, "no-allow-rule-matched");
  mt_metrics_decision(w[2], MT_DIR_OUTBOUND, MT_ACTION_ALLOW, "expected-id");
  mt_metrics_decision(w[2], MT_DIR_OUTBOUND, MT_ACTION_DENY, "expected-id");
  std::string text = w.Render();
  EXPECT_EQ(Value(text,
                  "mtlsd_authz_decisions_total{direction=\"inbound\",decision=\"allow\","
                  "rule=\"frontend-to-backend\"}"),
            3);
  EXPECT_EQ(Value(text,
                  "mtlsd_authz_decisions_total{direction=\"inbound\",decision=\"deny\","
                  "rule=\"no-allow-rule-matched\"}"),
            1);
  EXPECT_EQ(Value(text,
                  "mtlsd_authz_decisions_total{direction=\"outbound\",decision=\"allow\","
                  "rule=\"expected-id\"}"),
            1);
  EXPECT_EQ(Value(text,
                  "mtlsd_authz_decisions_total{direction=\"outbound\",decision=\"deny\","
                  "rule=\"expected-id\"}"),
            1);
}

TEST(MetricsTest, RuleNamesAreEscapedAsPrometheusLabelValues) {
  Workers w(2);
  const char *rule = "say \"hi\"\\ to\nme";
  mt_metrics_decision(w[0], MT_DIR_INBOUND, MT_ACTION_DENY, rule);
  mt_metrics_decision(w[1], MT_DIR_INBOUND, MT_ACTION_DENY, rule);
  std::string text = w.Render();
  EXPECT_EQ(Value(text,
                  "mtlsd_authz_decisions_total{direction=\"inbound\",decision=\"deny\","
                  "rule=\"say \\\"hi\\\"\\\\ to\\nme\"}"),
            2)
      << text;
  EXPECT_EQ(Label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
  EXPECT_EQ(Label("plain-rule_1.x"), "plain-rule_1.x");
}

TEST(MetricsTest, MoreDistinctRulesThanAWorkerTableHoldsCountAsOther) {
  Workers w(1);
  const int kRules = 100;  // the per-worker table holds fewer
  for (int i = 0; i < kRules; i++)
    for (int n = 0; n <= i % 3; n++)
      mt_metrics_decision(w[0], MT_DIR_INBOUND, MT_ACTION_ALLOW,
                          ("rule-" + std::to_string(i)).c_str());
  // A rule that got a slot keeps counting in it.
  mt_metrics_decision(w[0], MT_DIR_INBOUND, MT_ACTION_ALLOW, "rule-0");

  std::string text = w.Render();
  std::map<std::string, std::string> samples = Samples(text);
  double total = 0;
  int named = 0;
  bool other = false;
  for (const auto &s : samples) {
    if (s.first.rfind("mtlsd_authz_decisions_total{", 0) != 0) continue;
    total += std::stod(s.second);
    if (s.first.find("rule=\"other\"") != std::string::npos)
      other = true;
    else
      named++;
  }
  EXPECT_TRUE(other) << text;
  EXPECT_GT(named, 0);
  EXPECT_LT(named, kRules);
  int expected = 1;
  for (int i = 0; i < kRules; i++) expected += i % 3 + 1;
  EXPECT_EQ(total, expected);  // nothing lost, nothing counted twice
  EXPECT_EQ(Value(text,
                  "mtlsd_authz_decisions_total{direction=\"inbound\",decision=\"allow\","
                  "rule=\"rule-0\"}"),
            2);
}

TEST(MetricsTest, MoreDistinctRulesThanTheScrapeHoldsCountAsOther) {
  // Every worker's table full of keys no other worker has.
  const size_t kWorkers = 8, kPerWorker = 64;
  Workers w(kWorkers);
  for (size_t i = 0; i < kWorkers; i++)
    for (size_t r = 0; r < kPerWorker; r++)
      mt_metrics_decision(w[i], MT_DIR_OUTBOUND, MT_ACTION_DENY,
                          ("w" + std::to_string(i) + "-r" + std::to_string(r)).c_str());
  std::map<std::string, std::string> samples = Samples(w.Render());
  double total = 0, other = -1;
  for (const auto &s : samples) {
    if (s.first.rfind("mtlsd_authz_decisions_total{", 0) != 0) continue;
    total += std::stod(s.second);
    if (s.first.find("rule=\"other\"") != std::string::npos) other = std::stod(s.second);
  }
  EXPECT_EQ(total, static_cast<double>(kWorkers * kPerWorker));
  EXPECT_GT(other, 0);
}

TEST(MetricsTest, ARuleNamedOtherSharesTheOverflowSeriesInsteadOfDuplicatingIt) {
  Workers w(1);
  mt_metrics_decision(w[0], MT_DIR_INBOUND, MT_ACTION_ALLOW, "other");
  std::string text = w.Render();
  EXPECT_EQ(Value(text,
                  "mtlsd_authz_decisions_total{direction=\"inbound\",decision=\"allow\","
                  "rule=\"other\"}"),
            1);
  for (int i = 0; i < 80; i++)
    mt_metrics_decision(w[0], MT_DIR_INBOUND, MT_ACTION_ALLOW, ("r" + std::to_string(i)).c_str());
  text = w.Render();  // Samples() fails the test on a series rendered twice
  double other = Value(text,
                       "mtlsd_authz_decisions_total{direction=\"inbound\",decision=\"allow\","
                       "rule=\"other\"}");
  EXPECT_GT(other, 1);
}

TEST(MetricsTest, AnOutOfRangeReasonCountsAsInternalError) {
  Workers w(1);
  mt_metrics_conn_opened(w[0], MT_DIR_INBOUND);
  mt_metrics_conn_closed(w[0], MT_DIR_INBOUND, static_cast<mt_reason>(MT_REASON_INTERNAL + 7), 0,
                         0);
  std::string text = w.Render();
  EXPECT_EQ(Value(text,
                  "mtlsd_connections_closed_total{direction=\"inbound\","
                  "reason=\"internal_error\"}"),
            1);
  EXPECT_EQ(Value(text, "mtlsd_connections_active{direction=\"inbound\"}"), 0);
}

TEST(MetricsTest, AcceptPausesAreEpisodesSummedOverWorkers) {
  Workers w(2);
  std::string text = w.Render();
  EXPECT_EQ(Value(text, "mtlsd_accept_pauses_total"), 0);
  mt_metrics_accept_paused(w[0]);
  mt_metrics_accept_paused(w[1]);
  mt_metrics_accept_resumed(w[0], 0.25);
  mt_metrics_accept_resumed(w[1], 1.5);
  mt_metrics_accept_paused(w[1]);  // a second episode, still going: its time is not in yet
  text = w.Render();
  EXPECT_EQ(Value(text, "mtlsd_accept_pauses_total"), 3);
  EXPECT_NEAR(Value(text, "mtlsd_accept_paused_seconds_total"), 1.75, 1e-6);
}

TEST(MetricsTest, HeldConnectionsAreCountedWithTheirWaitAndOutcome) {
  Workers w(2);
  mt_metrics_hold_began(w[0], MT_DIR_OUTBOUND);
  mt_metrics_hold_began(w[1], MT_DIR_OUTBOUND);
  mt_metrics_hold_began(w[1], MT_DIR_OUTBOUND);
  mt_metrics_hold_ended(w[0], MT_DIR_OUTBOUND, 1, 0.2);
  mt_metrics_hold_ended(w[1], MT_DIR_OUTBOUND, 0, 12.0);
  std::string text = w.Render();
  EXPECT_EQ(Value(text, "mtlsd_connections_held_total{direction=\"outbound\"}"), 3);
  EXPECT_EQ(Value(text, "mtlsd_connections_held_total{direction=\"inbound\"}"), 0);
  EXPECT_EQ(Value(text, "mtlsd_connections_awaiting_identity{direction=\"outbound\"}"), 1);
  EXPECT_EQ(
      Value(text, "mtlsd_connection_holds_ended_total{direction=\"outbound\",result=\"resumed\"}"),
      1);
  EXPECT_EQ(
      Value(text, "mtlsd_connection_holds_ended_total{direction=\"outbound\",result=\"refused\"}"),
      1);
  EXPECT_EQ(
      Value(text,
            "mtlsd_connection_hold_duration_seconds_bucket{direction=\"outbound\",le=\"0.25\"}"),
      1);
  EXPECT_EQ(
      Value(text,
            "mtlsd_connection_hold_duration_seconds_bucket{direction=\"outbound\",le=\"+Inf\"}"),
      2);
  EXPECT_EQ(Value(text, "mtlsd_connection_hold_duration_seconds_count{direction=\"outbound\"}"), 2);
  EXPECT_NEAR(Value(text, "mtlsd_connection_hold_duration_seconds_sum{direction=\"outbound\"}"),
              12.2, 1e-6);
}

TEST(MetricsTest, EveryFamilyHasOneHelpAndOneTypeLine) {
  Workers w(2);
  mt_metrics_decision(w[0], MT_DIR_INBOUND, MT_ACTION_ALLOW, "r");
  mt_metrics_handshake(w[1], MT_DIR_OUTBOUND, 1, 0.01, "TLSv1.3", "TLS_AES_256_GCM_SHA384");
  std::istringstream in(w.Render());
  std::string line;
  std::multiset<std::string> help, type;
  while (std::getline(in, line)) {
    std::istringstream words(line);
    std::string hash, kind, name;
    words >> hash >> kind >> name;
    if (hash != "#") continue;
    (kind == "HELP" ? help : type).insert(name);
  }
  // 12 per-worker families, mtlsd_handshake_mode_total, the 2 accept-pause
  // families, the 4 process-wide session-resumption families (tls_resume.h)
  // and the chain cache's.
  EXPECT_EQ(help.size(), 20u);
  EXPECT_EQ(std::set<std::string>(help.begin(), help.end()).size(), help.size());
  EXPECT_EQ(help, type);
}

TEST(MetricsTest, HandshakeModesAreCountedPerDirection) {
  Workers w(2);
  mt_metrics_handshake_mode(w[0], MT_DIR_INBOUND, 0);
  mt_metrics_handshake_mode(w[1], MT_DIR_INBOUND, 1);
  mt_metrics_handshake_mode(w[1], MT_DIR_INBOUND, 1);
  mt_metrics_handshake_mode(w[0], MT_DIR_OUTBOUND, 1);
  std::string text = w.Render();
  EXPECT_NE(text.find("mtlsd_handshake_mode_total{direction=\"inbound\",mode=\"full\"} 1\n"),
            std::string::npos);
  EXPECT_NE(text.find("mtlsd_handshake_mode_total{direction=\"inbound\",mode=\"resumed\"} 2\n"),
            std::string::npos);
  EXPECT_NE(text.find("mtlsd_handshake_mode_total{direction=\"outbound\",mode=\"resumed\"} 1\n"),
            std::string::npos);
  EXPECT_NE(text.find("mtlsd_handshake_mode_total{direction=\"outbound\",mode=\"full\"} 0\n"),
            std::string::npos);
}

TEST(TextTest, JsonStringsAreQuotedAndEscaped) {
  EXPECT_EQ(Quoted("plain"), "\"plain\"");
  EXPECT_EQ(Quoted(""), "\"\"");
  EXPECT_EQ(Quoted("a\"b\\c"), "\"a\\\"b\\\\c\"");
  EXPECT_EQ(Quoted("line\nnext\ttab\x01\x1f"), "\"line\\u000anext\\u0009tab\\u0001\\u001f\"");
  EXPECT_EQ(Quoted("caf\xc3\xa9 /ns/x"), "\"caf\xc3\xa9 /ns/x\"");  // UTF-8 and '/' as they are
}

TEST(TextTest, GrowsPastItsFirstBufferAndStaysTerminated) {
  mt_text t;
  mt_text_init(&t);
  std::string expected;
  for (int i = 0; i < 2000; i++) {
    mt_text_printf(&t, "line %d\n", i);
    expected += "line " + std::to_string(i) + "\n";
  }
  mt_text_label_value(&t, "x\"y");
  expected += "x\\\"y";
  ASSERT_FALSE(t.failed);
  ASSERT_EQ(t.len, expected.size());
  EXPECT_EQ(std::string(t.data, t.len), expected);
  EXPECT_EQ(t.data[t.len], '\0');
  mt_text_free(&t);
  EXPECT_EQ(t.data, nullptr);
  EXPECT_EQ(t.len, 0u);
}

}  // namespace
