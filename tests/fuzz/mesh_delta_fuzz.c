/* libFuzzer target: agent/mesh_delta.c on arbitrary bytes, i.e. a
 * MeshSnapshot or delta from a broken or hostile control plane.
 *
 * Oracles, besides "never crashes" and "never leaks" (ASan/UBSan/LSan):
 *  - a refusal always comes with a non-empty reason;
 *  - what parses re-encodes to bytes that parse again to the same entries;
 *  - for a complete message, the diff from a fixed base applied to that
 *    base rebuilds exactly the message's own encoding (diff and apply are
 *    inverse), and the diff from itself is empty;
 *  - the input applied as a delta to the fixed base either is refused
 *    with a reason or gives a complete snapshot under the delta's version. */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent/mesh_delta.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void invariant(int ok, const char *what) {
  if (ok) return;
  fprintf(stderr, "invariant failed at mesh_delta_fuzz: %s\n", what);
  abort();
}

/* version "1", a trust bundle "a.org", policy, two destinations. */
static const uint8_t kBase[] = {
    0x0a, 0x01, '1',                                           /* version */
    0x12, 0x07, 0x0a, 0x05, 'a', '.', 'o', 'r', 'g',           /* trust_bundles */
    0x1a, 0x02, 0x08, 0x01,                                    /* policy ALLOW */
    0x22, 0x06, 0x0a, 0x04, '1', '.', '2', '3',                /* destination */
    0x22, 0x08, 0x0a, 0x06, '1', '.', '2', '.', '3', '4',      /* destination */
};

static int same_encoding(const mt_mesh_entries *a, const mt_mesh_entries *b) {
  size_t la = 0, lb = 0;
  uint8_t *ea = mt_mesh_entries_encode(a, &la), *eb = mt_mesh_entries_encode(b, &lb);
  int same = ea != NULL && eb != NULL && la == lb && (la == 0 || memcmp(ea, eb, la) == 0);
  free(ea);
  free(eb);
  return same;
}

static void check_round_trip(const mt_mesh_entries *e) {
  char err[256] = "";
  size_t len = 0;
  uint8_t *encoded = mt_mesh_entries_encode(e, &len);
  invariant(encoded != NULL, "encode failed");
  mt_mesh_entries *again = mt_mesh_entries_parse(encoded, len, err, sizeof(err));
  invariant(again != NULL, "an encoding does not parse again");
  invariant(mt_mesh_entries_count(again) == mt_mesh_entries_count(e), "entries changed");
  invariant(same_encoding(e, again), "encoding is not stable");
  mt_mesh_entries_free(again);
  free(encoded);
}

static mt_mesh_entries *delta_between(const mt_mesh_entries *from, const mt_mesh_entries *to) {
  char err[256] = "";
  size_t head_len = 0, body_len = 0, changed = 0, removed = 0;
  uint8_t *head = mt_mesh_delta_header(mt_mesh_entries_version(to),
                                       mt_mesh_entries_version(from), &head_len);
  uint8_t *body = mt_mesh_entries_diff(from, to, &body_len, &changed, &removed);
  invariant(head != NULL && body != NULL, "diff failed");
  uint8_t *msg = malloc(head_len + body_len + 1);
  invariant(msg != NULL, "out of memory");
  memcpy(msg, head, head_len);
  if (body_len) memcpy(msg + head_len, body, body_len);
  mt_mesh_entries *d = mt_mesh_entries_parse(msg, head_len + body_len, err, sizeof(err));
  invariant(d != NULL, "a computed delta does not parse");
  invariant(mt_mesh_entries_count(d) == changed, "delta entry count");
  invariant(mt_mesh_entries_num_removed(d) == removed, "delta removal count");
  free(head);
  free(body);
  free(msg);
  return d;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  char err[256] = "";
  mt_mesh_entries *base = mt_mesh_entries_parse(kBase, sizeof(kBase), err, sizeof(err));
  invariant(base != NULL, "the fixed base does not parse");
  mt_mesh_entries *in = mt_mesh_entries_parse(data, size, err, sizeof(err));
  if (in == NULL) {
    invariant(err[0] != '\0', "refused without a reason");
    mt_mesh_entries_free(base);
    return 0;
  }
  check_round_trip(in);
  if (!mt_mesh_entries_is_delta(in)) {
    mt_mesh_entries *d = delta_between(base, in);
    mt_mesh_entries *rebuilt = mt_mesh_entries_apply(base, d, err, sizeof(err));
    invariant(rebuilt != NULL, "a computed delta does not apply");
    invariant(same_encoding(rebuilt, in), "diff then apply does not rebuild the input");
    mt_mesh_entries *self = delta_between(in, in);
    invariant(mt_mesh_entries_count(self) == 0 && mt_mesh_entries_num_removed(self) == 0,
              "the diff of a message from itself is not empty");
    mt_mesh_entries_free(self);
    mt_mesh_entries_free(rebuilt);
    mt_mesh_entries_free(d);
  } else {
    err[0] = '\0';
    mt_mesh_entries *applied = mt_mesh_entries_apply(base, in, err, sizeof(err));
    invariant(applied != NULL || err[0] != '\0', "apply refused without a reason");
    if (applied != NULL) {
      invariant(strcmp(mt_mesh_entries_version(applied), mt_mesh_entries_version(in)) == 0,
                "the result is not named by the delta's version");
      invariant(!mt_mesh_entries_is_delta(applied), "the result is a delta");
      check_round_trip(applied);
    }
    mt_mesh_entries_free(applied);
  }
  mt_mesh_entries_free(in);
  mt_mesh_entries_free(base);
  return 0;
}
