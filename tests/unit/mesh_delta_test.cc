// MeshSnapshot deltas (agent/mesh_delta.h): what a server computes, an
// agent applies to the same content, byte for byte; and every way a delta
// can fail to apply is refused with a reason.
#include <gtest/gtest.h>

#include <stdlib.h>
#include <sys/socket.h>

#include <algorithm>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "agent/mesh_delta.h"
#include "agent/mesh_snapshot.h"
#include "proto/mtlsd/mesh.pb-c.h"

namespace {

using Bytes = std::vector<uint8_t>;

// A snapshot described by plain values; packed with protobuf-c (the same
// encoder mtls-ca uses), so the tests check mesh_delta against it.
struct Content {
  std::string version;
  std::map<std::string, std::vector<std::string>> destinations;  // address -> ids
  std::map<std::string, std::string> bundles;                    // domain -> root
  std::map<std::string, int> workload_policies;                  // id -> default action
  int policy = 0;                                                // 0: none
  std::vector<std::string> node_pods;                            // empty: no node_workloads
  bool has_node_workloads = false;
};

Bytes Pack(const Content &c) {
  Mtlsd__Mesh__V1__MeshSnapshot s = MTLSD__MESH__V1__MESH_SNAPSHOT__INIT;
  s.version = const_cast<char *>(c.version.c_str());
  std::vector<Mtlsd__Mesh__V1__Destination> dests(c.destinations.size());
  std::vector<Mtlsd__Mesh__V1__Destination *> dest_ptrs;
  std::vector<std::vector<char *>> ids(c.destinations.size());
  size_t i = 0;
  for (const auto &d : c.destinations) {
    mtlsd__mesh__v1__destination__init(&dests[i]);
    dests[i].address = const_cast<char *>(d.first.c_str());
    for (const auto &id : d.second) ids[i].push_back(const_cast<char *>(id.c_str()));
    dests[i].n_spiffe_ids = ids[i].size();
    dests[i].spiffe_ids = ids[i].data();
    dest_ptrs.push_back(&dests[i]);
    i++;
  }
  s.n_destinations = dest_ptrs.size();
  s.destinations = dest_ptrs.data();
  std::vector<Mtlsd__Mesh__V1__TrustBundle> bundles(c.bundles.size());
  std::vector<Mtlsd__Mesh__V1__TrustBundle *> bundle_ptrs;
  std::vector<char *> roots;
  roots.reserve(c.bundles.size());
  i = 0;
  for (const auto &b : c.bundles) {
    mtlsd__mesh__v1__trust_bundle__init(&bundles[i]);
    bundles[i].trust_domain = const_cast<char *>(b.first.c_str());
    roots.push_back(const_cast<char *>(b.second.c_str()));
    bundles[i].n_roots_pem = 1;
    bundles[i].roots_pem = &roots.back();
    bundle_ptrs.push_back(&bundles[i]);
    i++;
  }
  s.n_trust_bundles = bundle_ptrs.size();
  s.trust_bundles = bundle_ptrs.data();
  Mtlsd__Mesh__V1__Policy policy = MTLSD__MESH__V1__POLICY__INIT;
  policy.default_action = static_cast<Mtlsd__Mesh__V1__Action>(c.policy);
  if (c.policy != 0) s.policy = &policy;
  std::vector<Mtlsd__Mesh__V1__WorkloadPolicy> wps(c.workload_policies.size());
  std::vector<Mtlsd__Mesh__V1__Policy> wp_policies(c.workload_policies.size());
  std::vector<Mtlsd__Mesh__V1__WorkloadPolicy *> wp_ptrs;
  i = 0;
  for (const auto &w : c.workload_policies) {
    mtlsd__mesh__v1__workload_policy__init(&wps[i]);
    mtlsd__mesh__v1__policy__init(&wp_policies[i]);
    wp_policies[i].default_action = static_cast<Mtlsd__Mesh__V1__Action>(w.second);
    wps[i].spiffe_id = const_cast<char *>(w.first.c_str());
    wps[i].policy = &wp_policies[i];
    wp_ptrs.push_back(&wps[i]);
    i++;
  }
  s.n_workload_policies = wp_ptrs.size();
  s.workload_policies = wp_ptrs.data();
  Mtlsd__Mesh__V1__NodeWorkloads nw = MTLSD__MESH__V1__NODE_WORKLOADS__INIT;
  std::vector<Mtlsd__Mesh__V1__Workload> workloads(c.node_pods.size());
  std::vector<Mtlsd__Mesh__V1__Workload *> workload_ptrs;
  i = 0;
  for (const auto &pod : c.node_pods) {
    mtlsd__mesh__v1__workload__init(&workloads[i]);
    workloads[i].pod = const_cast<char *>(pod.c_str());
    workload_ptrs.push_back(&workloads[i]);
    i++;
  }
  nw.node_name = const_cast<char *>("node-1");
  nw.n_workloads = workload_ptrs.size();
  nw.workloads = workload_ptrs.data();
  if (c.has_node_workloads) s.node_workloads = &nw;
  Bytes out(mtlsd__mesh__v1__mesh_snapshot__get_packed_size(&s));
  mtlsd__mesh__v1__mesh_snapshot__pack(&s, out.data());
  return out;
}

struct EntriesDeleter {
  void operator()(mt_mesh_entries *e) const { mt_mesh_entries_free(e); }
};
using Entries = std::unique_ptr<mt_mesh_entries, EntriesDeleter>;

Entries Parse(const Bytes &b, std::string *why = nullptr) {
  char err[512] = "";
  mt_mesh_entries *e = mt_mesh_entries_parse(b.data(), b.size(), err, sizeof(err));
  if (why != nullptr) *why = err;
  return Entries(e);
}

Bytes Encode(const mt_mesh_entries *e) {
  size_t len = 0;
  uint8_t *p = mt_mesh_entries_encode(e, &len);
  Bytes out(p, p + len);
  free(p);
  return out;
}

// The delta message mtls-ca would send to turn |from| into |to|.
Bytes DeltaMessage(const Content &from, const Content &to, size_t *changed = nullptr,
                   size_t *removed = nullptr) {
  Entries a = Parse(Pack(from)), b = Parse(Pack(to));
  size_t head_len = 0, body_len = 0, c = 0, r = 0;
  uint8_t *head = mt_mesh_delta_header(to.version.c_str(), from.version.c_str(), &head_len);
  uint8_t *body = mt_mesh_entries_diff(a.get(), b.get(), &body_len, &c, &r);
  Bytes out(head, head + head_len);
  out.insert(out.end(), body, body + body_len);
  free(head);
  free(body);
  if (changed) *changed = c;
  if (removed) *removed = r;
  return out;
}

// Applies |delta| to |from| and returns the complete snapshot's bytes.
Bytes Apply(const Content &from, const Bytes &delta, std::string *why = nullptr) {
  Entries base = Parse(Pack(from));
  Entries d = Parse(delta);
  EXPECT_TRUE(d != nullptr);
  char err[512] = "";
  Entries next(mt_mesh_entries_apply(base.get(), d.get(), err, sizeof(err)));
  if (why != nullptr) *why = err;
  if (next == nullptr) return {};
  return Encode(next.get());
}

// |c| as an agent holding it would encode it (entries sorted).
Bytes Canonical(const Content &c) { return Encode(Parse(Pack(c)).get()); }

Content Sample() {
  Content c;
  c.version = "7-aaaa";
  c.bundles["example.org"] = "ROOT-A";
  c.policy = MTLSD__MESH__V1__ACTION__DENY;
  c.destinations["10.96.0.10:80"] = {"spiffe://example.org/ns/a/sa/web"};
  c.destinations["10.244.1.5"] = {"spiffe://example.org/ns/a/sa/web"};
  c.destinations["10.244.2.9"] = {"spiffe://example.org/ns/a/sa/api"};
  c.workload_policies["spiffe://example.org/ns/a/sa/web"] = MTLSD__MESH__V1__ACTION__ALLOW;
  c.has_node_workloads = true;
  c.node_pods = {"web-1"};
  return c;
}

TEST(MeshDelta, DeltaCarriesOnlyWhatChangedAndRebuildsTheSameContent) {
  Content from = Sample(), to = Sample();
  to.version = "8-bbbb";
  to.destinations.erase("10.244.2.9");                                      // removed
  to.destinations["10.244.1.6"] = {"spiffe://example.org/ns/a/sa/web"};     // added
  to.destinations["10.96.0.10:80"].push_back("spiffe://example.org/ns/a/sa/web2");  // changed
  to.node_pods.push_back("web-2");                                           // replaced
  size_t changed = 0, removed = 0;
  Bytes delta = DeltaMessage(from, to, &changed, &removed);
  EXPECT_EQ(changed, 3u);  // two destinations and node_workloads
  EXPECT_EQ(removed, 1u);
  EXPECT_LT(delta.size(), Pack(to).size());

  // protobuf-c reads the delta as a MeshSnapshot with the delta fields.
  Mtlsd__Mesh__V1__MeshSnapshot *m =
      mtlsd__mesh__v1__mesh_snapshot__unpack(nullptr, delta.size(), delta.data());
  ASSERT_NE(m, nullptr);
  EXPECT_TRUE(m->delta);
  EXPECT_STREQ(m->version, "8-bbbb");
  EXPECT_STREQ(m->base_version, "7-aaaa");
  EXPECT_EQ(m->n_destinations, 2u);
  EXPECT_EQ(m->policy, nullptr);  // unchanged: absent
  EXPECT_EQ(m->n_trust_bundles, 0u);
  ASSERT_NE(m->node_workloads, nullptr);
  ASSERT_EQ(m->n_removed, 1u);
  EXPECT_EQ(m->removed[0]->field, 4u);
  EXPECT_STREQ(m->removed[0]->key, "10.244.2.9");
  mtlsd__mesh__v1__mesh_snapshot__free_unpacked(m, nullptr);

  EXPECT_EQ(Apply(from, delta), Canonical(to));
}

TEST(MeshDelta, EveryKeyADeltaTouchesIsVisitedChangedAndRemovedAlike) {
  Content from = Sample(), to = Sample();
  to.version = "8-bbbb";
  to.destinations.erase("10.244.2.9");
  to.destinations["10.244.1.6"] = {"spiffe://example.org/ns/a/sa/web"};
  to.policy = MTLSD__MESH__V1__ACTION__ALLOW;
  Entries delta = Parse(DeltaMessage(from, to));
  ASSERT_TRUE(delta != nullptr);
  std::vector<std::string> seen;
  mt_mesh_entries_foreach_key(
      delta.get(),
      [](void *ctx, uint32_t field, const char *key, size_t len) {
        static_cast<std::vector<std::string> *>(ctx)->push_back(std::to_string(field) + " " +
                                                                std::string(key, len));
      },
      &seen);
  std::sort(seen.begin(), seen.end());
  EXPECT_EQ(seen, (std::vector<std::string>{"3 ", "4 10.244.1.6", "4 10.244.2.9"}));
}

TEST(MeshDelta, NothingChangedMeansAnEmptyBody) {
  Content from = Sample();
  Entries a = Parse(Pack(from)), b = Parse(Pack(from));
  size_t len = 1, changed = 1, removed = 1;
  uint8_t *body = mt_mesh_entries_diff(a.get(), b.get(), &len, &changed, &removed);
  ASSERT_NE(body, nullptr);
  EXPECT_EQ(len, 0u);
  EXPECT_EQ(changed, 0u);
  EXPECT_EQ(removed, 0u);
  free(body);
}

TEST(MeshDelta, SingleEntriesAreRemovedWithAnEmptyKey) {
  Content from = Sample(), to = Sample();
  to.version = "8";
  to.policy = 0;
  to.has_node_workloads = false;
  to.bundles.clear();
  to.workload_policies.clear();
  size_t changed = 0, removed = 0;
  Bytes delta = DeltaMessage(from, to, &changed, &removed);
  EXPECT_EQ(changed, 0u);
  EXPECT_EQ(removed, 4u);
  EXPECT_EQ(Apply(from, delta), Canonical(to));
}

TEST(MeshDelta, RandomEditsRoundTrip) {
  std::mt19937 rng(20261205);
  Content held = Sample();
  for (int round = 0; round < 400; round++) {
    Content next = held;
    next.version = std::to_string(round) + "-v";
    int edits = static_cast<int>(rng() % 6);
    for (int e = 0; e < edits; e++) {
      std::string addr = "10.244." + std::to_string(rng() % 4) + "." + std::to_string(rng() % 20);
      switch (rng() % 7) {
        case 0: next.destinations.erase(addr); break;
        case 1:
        case 2:
          next.destinations[addr] = {"spiffe://example.org/ns/a/sa/s" + std::to_string(rng() % 3)};
          break;
        case 3: next.policy = static_cast<int>(rng() % 3); break;
        case 4: next.has_node_workloads = !next.has_node_workloads; break;
        case 5: next.node_pods.push_back("pod-" + std::to_string(rng() % 50)); break;
        case 6:
          if (rng() % 2)
            next.bundles["td" + std::to_string(rng() % 3) + ".org"] = "R" + std::to_string(rng());
          else
            next.workload_policies.erase("spiffe://example.org/ns/a/sa/web");
          break;
      }
    }
    std::string why;
    Bytes rebuilt = Apply(held, DeltaMessage(held, next), &why);
    ASSERT_EQ(rebuilt, Canonical(next)) << "round " << round << ": " << why;
    held = next;
  }
}

TEST(MeshDelta, AnotherBaseVersionIsRefused) {
  Content from = Sample(), to = Sample(), other = Sample();
  to.version = "8";
  other.version = "6-old";
  std::string why;
  EXPECT_TRUE(Apply(other, DeltaMessage(from, to), &why).empty());
  EXPECT_NE(why.find("applies to 7-aaaa, not to the 6-old held"), std::string::npos) << why;
}

TEST(MeshDelta, RemovingWhatIsNotHeldIsRefused) {
  Content from = Sample(), to = Sample(), smaller = Sample();
  to.version = "8";
  to.destinations.erase("10.244.2.9");
  smaller.destinations.erase("10.244.2.9");
  std::string why;
  EXPECT_TRUE(Apply(smaller, DeltaMessage(from, to), &why).empty());
  EXPECT_NE(why.find("removes 1 entries that 7-aaaa does not hold"), std::string::npos) << why;
}

TEST(MeshDelta, ChangingAndRemovingOneEntryIsRefused) {
  Content from = Sample(), to = Sample();
  to.version = "8";
  to.destinations.erase("10.244.2.9");
  Bytes delta = DeltaMessage(from, to);
  // Add the removed destination back as a change in the same delta.
  Content extra;
  extra.destinations["10.244.2.9"] = {"spiffe://example.org/ns/a/sa/api"};
  Bytes more = Pack(extra);
  delta.insert(delta.end(), more.begin(), more.end());
  std::string why;
  EXPECT_TRUE(Apply(from, delta, &why).empty());
  EXPECT_NE(why.find("both changes and removes field 4 key \"10.244.2.9\""), std::string::npos)
      << why;
}

TEST(MeshDelta, ParseRefusesMalformedAndAmbiguousMessages) {
  std::string why;
  Bytes truncated = Pack(Sample());
  truncated.resize(truncated.size() - 3);
  EXPECT_EQ(Parse(truncated, &why), nullptr);
  EXPECT_NE(why.find("malformed protobuf"), std::string::npos) << why;

  Bytes group = {0x13};  // field 2, wire type 3 (start group)
  EXPECT_EQ(Parse(group, &why), nullptr);

  Bytes bad_type = {0x20, 0x01};  // destinations (4) as a varint
  EXPECT_EQ(Parse(bad_type, &why), nullptr);
  EXPECT_NE(why.find("field 4: malformed entry"), std::string::npos) << why;

  Content one;
  one.destinations["10.0.0.1:80"] = {"spiffe://example.org/x"};
  Bytes twice = Pack(one);
  Bytes again = twice;
  twice.insert(twice.end(), again.begin(), again.end());
  EXPECT_EQ(Parse(twice, &why), nullptr);
  EXPECT_NE(why.find("field 4 key \"10.0.0.1:80\" appears twice"), std::string::npos) << why;

  Bytes nul_version = {0x0a, 0x03, 'a', 0x00, 'b'};
  EXPECT_EQ(Parse(nul_version, &why), nullptr);
  EXPECT_NE(why.find("version holds a NUL byte"), std::string::npos) << why;

  // A complete snapshot (no delta flag) that lists removals.
  Bytes removal_only = {0x4a, 0x02, 0x08, 0x04};
  EXPECT_EQ(Parse(removal_only, &why), nullptr);
  EXPECT_NE(why.find("complete snapshot lists removed"), std::string::npos) << why;

  Bytes empty;
  Entries e = Parse(empty, &why);
  ASSERT_NE(e, nullptr) << why;
  EXPECT_STREQ(mt_mesh_entries_version(e.get()), "");
  EXPECT_EQ(mt_mesh_entries_count(e.get()), 0u);
}

TEST(MeshDelta, FieldsItDoesNotKnowSurviveARoundTrip) {
  Content from = Sample(), to = Sample();
  to.version = "8";
  to.destinations.erase("10.244.2.9");
  Bytes base = Pack(from);
  const uint8_t future[] = {0xa0, 0x01, 0x2a};  // field 20, varint 42
  base.insert(base.end(), future, future + sizeof(future));
  Entries held = Parse(base);
  ASSERT_NE(held, nullptr);
  Entries d = Parse(DeltaMessage(from, to));
  char err[256];
  Entries next(mt_mesh_entries_apply(held.get(), d.get(), err, sizeof(err)));
  ASSERT_NE(next, nullptr) << err;
  Bytes out = Encode(next.get());
  Bytes expect = Canonical(to);
  expect.insert(expect.end(), future, future + sizeof(future));  // sorted last: field 20
  EXPECT_EQ(out, expect);
}

}  // namespace

// ---- the agent's incremental decode (mesh_snapshot.h) ----------------------

namespace {

struct UpdateDeleter {
  void operator()(mt_mesh_update *u) const {
    mt_mesh_update_clear(u);
    delete u;
  }
};
using Update = std::unique_ptr<mt_mesh_update, UpdateDeleter>;

Update DecodeFull(const Bytes &msg, std::string *why) {
  Update u(new mt_mesh_update());
  char err[512] = "";
  if (!mt_mesh_decode_snapshot(msg.data(), msg.size(), u.get(), err, sizeof(err))) {
    *why = err;
    delete u.release();
  }
  return u;
}

// What mesh_watch does with a delta when it holds |from|'s valid mesh.
Update DecodePatched(const Content &from, const mt_mesh *held, const Bytes &delta,
                     std::string *why) {
  Entries base = Parse(Pack(from)), d = Parse(delta);
  char err[512] = "";
  Entries next(mt_mesh_entries_apply(base.get(), d.get(), err, sizeof(err)));
  EXPECT_TRUE(next != nullptr) << err;
  size_t len = 0;
  uint8_t *rest = mt_mesh_entries_encode_except(next.get(), MT_MESH_FIELD_DESTINATIONS, &len);
  Update u(new mt_mesh_update());
  if (!mt_mesh_decode_patched(rest, len, delta.data(), delta.size(), held, base.get(), u.get(),
                              err, sizeof(err))) {
    *why = err;
    delete u.release();
  }
  free(rest);
  return u;
}

std::vector<std::string> ExpectedAt(const mt_mesh *m, const std::string &address) {
  mt_sockaddr a;
  EXPECT_TRUE(mt_sockaddr_parse(address.c_str(), &a, 0)) << address;
  mt_expected_ids ids;
  if (!mt_mesh_expected_ids(m, (const sockaddr *)&a.addr, &ids)) return {};
  return std::vector<std::string>(ids.ids, ids.ids + ids.count);
}

Content Decodable() {
  Content c;
  c.version = "1-a";
  c.policy = MTLSD__MESH__V1__ACTION__ALLOW;
  c.destinations["10.96.0.10:80"] = {"spiffe://example.org/ns/a/sa/web"};
  c.destinations["10.244.1.5"] = {"spiffe://example.org/ns/a/sa/web"};
  c.destinations["[fd00::7]:443"] = {"spiffe://example.org/ns/a/sa/api"};
  c.workload_policies["spiffe://example.org/ns/a/sa/web"] = MTLSD__MESH__V1__ACTION__DENY;
  return c;
}

TEST(MeshDeltaDecode, PatchedDecodeMatchesAFullDecodeOfTheSameSnapshot) {
  std::mt19937 rng(7);
  Content held = Decodable();
  std::string why;
  Update held_update = DecodeFull(Pack(held), &why);
  ASSERT_TRUE(held_update) << why;
  for (int round = 0; round < 200; round++) {
    Content next = held;
    next.version = std::to_string(round + 2) + "-v";
    for (int e = static_cast<int>(rng() % 5); e > 0; e--) {
      std::string ip = "10.244." + std::to_string(rng() % 3) + "." + std::to_string(rng() % 9);
      std::string addr = rng() % 2 ? ip : ip + ":" + std::to_string(80 + rng() % 2);
      if (rng() % 3 == 0)
        next.destinations.erase(addr);
      else
        next.destinations[addr] = {"spiffe://example.org/ns/a/sa/s" + std::to_string(rng() % 3),
                                   "spiffe://example.org/ns/b/sa/t"};
      if (rng() % 5 == 0) next.policy = 3 - next.policy;  // ALLOW <-> DENY
    }
    Update full = DecodeFull(Pack(next), &why);
    ASSERT_TRUE(full) << why;
    Update patched = DecodePatched(held, held_update->mesh, DeltaMessage(held, next), &why);
    ASSERT_TRUE(patched) << "round " << round << ": " << why;
    EXPECT_STREQ(mt_mesh_version(patched->mesh), mt_mesh_version(full->mesh));
    ASSERT_EQ(mt_mesh_num_destinations(patched->mesh), mt_mesh_num_destinations(full->mesh));
    for (const auto &d : next.destinations) {
      std::string probe = d.first.find(':') == std::string::npos ? d.first + ":1234" : d.first;
      EXPECT_EQ(ExpectedAt(patched->mesh, probe), ExpectedAt(full->mesh, probe)) << probe;
    }
    for (const auto &d : held.destinations) {  // the removed ones are gone in both
      if (!next.destinations.count(d.first) && d.first.find(':') != std::string::npos) {
        EXPECT_EQ(ExpectedAt(patched->mesh, d.first), ExpectedAt(full->mesh, d.first));
      }
    }
    ASSERT_EQ(patched->num_workloads, full->num_workloads);
    EXPECT_EQ(mt_policy_decide(mt_mesh_policy(patched->mesh), "spiffe://x.org/y", 80).action,
              mt_policy_decide(mt_mesh_policy(full->mesh), "spiffe://x.org/y", 80).action);
    held = next;
    held_update = std::move(patched);
  }
}

TEST(MeshDeltaDecode, OneAddressWrittenTwoWaysIsRefusedLikeAFullDecodeRefusesIt) {
  Content held = Decodable(), next = Decodable();
  next.version = "2-b";
  next.destinations["[fd00:0::7]:443"] = {"spiffe://example.org/ns/a/sa/other"};
  std::string why_full, why_patched;
  EXPECT_FALSE(DecodeFull(Pack(next), &why_full));
  EXPECT_NE(why_full.find("listed twice"), std::string::npos) << why_full;
  Update held_update = DecodeFull(Pack(held), &why_full);
  ASSERT_TRUE(held_update);
  EXPECT_FALSE(DecodePatched(held, held_update->mesh, DeltaMessage(held, next), &why_patched));
  EXPECT_NE(why_patched.find("address [fd00::7]:443 listed twice"), std::string::npos)
      << why_patched;
}

TEST(MeshDeltaDecode, ABadDestinationInADeltaIsRefusedWithItsReason) {
  Content held = Decodable(), next = Decodable();
  next.version = "2-b";
  next.destinations["10.1.1.1:80"] = {"not-a-spiffe-id"};
  std::string why;
  Update held_update = DecodeFull(Pack(held), &why);
  ASSERT_TRUE(held_update) << why;
  EXPECT_FALSE(DecodePatched(held, held_update->mesh, DeltaMessage(held, next), &why));
  EXPECT_NE(why.find("invalid SPIFFE ID"), std::string::npos) << why;
}

}  // namespace
