/* mesh_delta: a MeshSnapshot (proto/mtlsd/mesh.proto) as a set of keyed
 * entries, the delta between two such sets, and a delta applied to one.
 * Shared by mtls-ca, which computes deltas, and the agent, which applies
 * them. Pure: no I/O, no clock, no logging.
 *
 * Works on the encoded message, not on decoded structs: an entry is the
 * exact bytes of one top-level field (tag included), so a delta is built by
 * concatenating entries and applying one never re-encodes what did not
 * change. Keys (see mesh.proto "Deltas"): field 1 of a trust bundle,
 * destination, workload policy or unresolved address; "" for policy, node_workloads and any
 * field this module does not know (kept as a single entry each, so a newer
 * server's additions survive the agent's round trip). version, delta,
 * base_version and removed are the message's header, not entries.
 *
 * Refused (NULL with a reason): malformed wire format, a key twice in one
 * message (e.g. two destinations with the same address text), a removal of
 * an entry that is not held, a delta applied to a snapshot whose version
 * is not its base_version. */
#ifndef MT_MESH_DELTA_H
#define MT_MESH_DELTA_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct mt_mesh_entries mt_mesh_entries;

/* MeshSnapshot's fields keyed by address. */
enum { MT_MESH_FIELD_DESTINATIONS = 4, MT_MESH_FIELD_UNRESOLVED = 11 };

/* Splits an encoded MeshSnapshot (complete or delta) into its header and
 * entries; copies |buf|. */
mt_mesh_entries *mt_mesh_entries_parse(const uint8_t *buf, size_t len, char *err, size_t err_len);
void mt_mesh_entries_free(mt_mesh_entries *e); /* accepts NULL */

/* The header: version ("" when absent), whether this is a delta, and the
 * version it applies to. Borrowed from |e|. */
const char *mt_mesh_entries_version(const mt_mesh_entries *e);
int mt_mesh_entries_is_delta(const mt_mesh_entries *e);
const char *mt_mesh_entries_base_version(const mt_mesh_entries *e);

/* How many entries it holds (a delta: added or changed ones) and, for a
 * delta, how many removals it lists. */
size_t mt_mesh_entries_count(const mt_mesh_entries *e);
size_t mt_mesh_entries_num_removed(const mt_mesh_entries *e);

/* 1 when |e| holds the entry of |field| with |key| (|key_len| bytes). */
int mt_mesh_entries_has(const mt_mesh_entries *e, uint32_t field, const char *key, size_t key_len);

/* Calls |fn| with the field and key of every entry |e| holds and, for a
 * delta, of every removal it lists (keys are not NUL-terminated). */
typedef void (*mt_mesh_entry_key_fn)(void *ctx, uint32_t field, const char *key, size_t key_len);
void mt_mesh_entries_foreach_key(const mt_mesh_entries *e, mt_mesh_entry_key_fn fn, void *ctx);

/* The entry of |field| with |key|: its encoded bytes (tag included),
 * borrowed from |e|, length in |*len| (|len| may be NULL); NULL when |e|
 * holds none. */
const uint8_t *mt_mesh_entries_find(const mt_mesh_entries *e, uint32_t field, const char *key,
                                    size_t key_len, size_t *len);

/* The complete snapshot |delta| makes of |base| (a complete one), named by
 * the delta's version. NULL with the reason when |delta| does not apply
 * to |base| or when out of memory. */
mt_mesh_entries *mt_mesh_entries_apply(const mt_mesh_entries *base, const mt_mesh_entries *delta,
                                       char *err, size_t err_len);

/* |e| as a complete encoded MeshSnapshot (its version, then its entries
 * ordered by field and key): malloc'd, length in |*len|; NULL when out of
 * memory. */
uint8_t *mt_mesh_entries_encode(const mt_mesh_entries *e, size_t *len);

/* Like mt_mesh_entries_encode, leaving out every entry of |field|. */
uint8_t *mt_mesh_entries_encode_except(const mt_mesh_entries *e, uint32_t field, size_t *len);

/* The delta's body that turns |from| into |to| (both complete, headers
 * ignored): the entries of |to| that |from| lacks or holds with other
 * bytes, then a Removed for each entry of |from| that |to| lacks. It has
 * no header: a caller prepends version, delta and base_version (protobuf
 * fields may come in any order). malloc'd, length in |*len| (0 when
 * nothing changed); counts in |*changed| and |*removed|. NULL when out of
 * memory. */
uint8_t *mt_mesh_entries_diff(const mt_mesh_entries *from, const mt_mesh_entries *to, size_t *len,
                              size_t *changed, size_t *removed);

/* The header of a delta: version, delta = true, base_version. malloc'd,
 * length in |*len|; NULL when out of memory. */
uint8_t *mt_mesh_delta_header(const char *version, const char *base_version, size_t *len);

#ifdef __cplusplus
}
#endif

#endif /* MT_MESH_DELTA_H */
