/* libFuzzer target: a mesh.proto Policy message from a broken or hostile
 * control plane -> the agent's mt_policy_from_proto, then decisions and
 * traces (agent/policy_proto.c, policy.c, policy_match.c, cidr.c).
 * mesh_snapshot reaches the same code through a whole snapshot; this
 * target spends every execution on the Policy and on requests with
 * addresses (ip_blocks, source.ip / destination.ip conditions).
 *
 * Input: byte 0 picks the peer (its low 3 bits: one of kPeers) and the
 * addresses (bits 3-5: one of kAddresses for the peer, bits 6-7 for the
 * destination); bytes 1-2 the destination port (big-endian); the rest is
 * the serialized Policy.
 *
 * Oracles, besides "never crashes, never leaks" (ASan, UBSan, LSan):
 *  - a refusal has a message; an accepted policy has one rule per message
 *    rule and the message's allow_policies;
 *  - decisions and traces agree (policy_check.h), for the request as
 *    picked, without addresses, and for an unauthenticated peer. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "agent/policy.h"
#include "agent/policy_proto.h"
#include "proto/mtlsd/mesh.pb-c.h"
#include "tests/fuzz/policy_check.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char *const kPeers[8] = {
    NULL,
    "spiffe://cluster.local/ns/shop/sa/frontend",
    "spiffe://cluster.local/ns/shop/sa/backend",
    "spiffe://cluster.local/ns/istio-system/sa/ingress",
    "spiffe://example.org/ns/web/sa/default",
    "spiffe://example.org/workload",
    "not a spiffe id",
    "spiffe://Cluster.Local/ns/shop/sa/frontend",
};

static const char *const kAddresses[8] = {
    NULL, "10.0.0.5", "10.1.2.3", "192.168.0.1", "::1", "fd00::5", "::ffff:10.0.0.5", "0.0.0.0",
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 3) return 0;
  const char *peer = kPeers[data[0] & 7];
  const char *peer_addr = kAddresses[(data[0] >> 3) & 7];
  const char *dest_addr = kAddresses[(data[0] >> 6) & 3];
  uint16_t port = (uint16_t)((data[1] << 8) | data[2]);
  Mtlsd__Mesh__V1__Policy *msg = mtlsd__mesh__v1__policy__unpack(NULL, size - 3, data + 3);
  if (msg == NULL) return 0;

  char err[512];
  memset(err, 'x', sizeof(err));
  mt_policy *policy = mt_policy_from_proto(msg, err, sizeof(err));
  if (policy == NULL) {
    FUZZ_CHECK(fuzz_is_message(err, sizeof(err)));
    mtlsd__mesh__v1__policy__free_unpacked(msg, NULL);
    return 0;
  }
  FUZZ_CHECK(mt_policy_rule_count(policy) == msg->n_rules);
  FUZZ_CHECK(mt_policy_num_allow_policies(policy) == msg->n_allow_policies);
  for (size_t i = 0; i < msg->n_allow_policies; i++)
    FUZZ_CHECK(strcmp(mt_policy_allow_policy(policy, i), msg->allow_policies[i]) == 0);

  struct sockaddr_storage peer_ss, dest_ss;
  mt_policy_request req = {peer, NULL, NULL, port};
  if (peer_addr != NULL && fuzz_sockaddr(peer_addr, 40000, &peer_ss))
    req.peer_addr = (struct sockaddr *)&peer_ss;
  if (dest_addr != NULL && fuzz_sockaddr(dest_addr, port, &dest_ss))
    req.dest_addr = (struct sockaddr *)&dest_ss;
  fuzz_decide(policy, &req);
  req.peer_addr = req.dest_addr = NULL;
  fuzz_decide(policy, &req);
  req.peer_id = NULL;
  fuzz_decide(policy, &req);

  mt_policy_free(policy);
  mtlsd__mesh__v1__policy__free_unpacked(msg, NULL);
  return 0;
}
