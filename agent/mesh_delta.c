/* mesh_delta.c: MeshSnapshot entries read and written on the wire format
 * itself (varints, tags, length-delimited fields), see mesh_delta.h. */
#include "agent/mesh_delta.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* MeshSnapshot's field numbers (proto/mtlsd/mesh.proto). */
enum {
  FIELD_VERSION = 1,
  FIELD_TRUST_BUNDLES = 2,
  FIELD_DESTINATIONS = 4,
  FIELD_WORKLOAD_POLICIES = 5,
  FIELD_DELTA = 7,
  FIELD_BASE_VERSION = 8,
  FIELD_REMOVED = 9,
  FIELD_UNRESOLVED = 11,
  /* In Removed. */
  REMOVED_FIELD = 1,
  REMOVED_KEY = 2,
  /* In a keyed entry: the key is its field 1 (a string). */
  KEY_FIELD = 1,
};

enum { WIRE_VARINT = 0, WIRE_FIXED64 = 1, WIRE_LEN = 2, WIRE_FIXED32 = 5 };

enum { VARINT_MAX_BYTES = 10, TAG_SHIFT = 3, TAG_WIRE_MASK = 7, FIELD_MAX = 536870911 };

typedef struct {
  const uint8_t *data;
  size_t len;
} span;

/* One top-level field of the message: its bytes, tag included. */
typedef struct {
  uint32_t field;
  span key;
  span bytes;
} entry;

typedef struct {
  uint32_t field;
  span key;
} removal;

struct mt_mesh_entries {
  uint8_t *buf; /* the message; every span points into it */
  char *version;
  char *base_version;
  int delta;
  entry *entries; /* sorted by (field, key) */
  size_t num_entries;
  removal *removed; /* sorted by (field, key) */
  size_t num_removed;
};

/* ---- the wire format ------------------------------------------------------ */

/* Reads a varint at |*p|; 0 when it is truncated or too long. */
static int read_varint(const uint8_t **p, const uint8_t *end, uint64_t *out) {
  uint64_t v = 0;
  for (int i = 0; i < VARINT_MAX_BYTES && *p < end; i++) {
    uint8_t b = *(*p)++;
    v |= (uint64_t)(b & 0x7f) << (7 * i);
    if ((b & 0x80) == 0) {
      *out = v;
      return 1;
    }
  }
  return 0;
}

static size_t put_varint(uint8_t *out, uint64_t v) {
  size_t n = 0;
  do {
    uint8_t b = v & 0x7f;
    v >>= 7;
    out[n++] = b | (v ? 0x80 : 0);
  } while (v);
  return n;
}

static size_t varint_len(uint64_t v) {
  size_t n = 1;
  while (v >>= 7) n++;
  return n;
}

typedef struct {
  uint32_t field;
  int wire;
  span value; /* a length-delimited field's payload, else the raw value */
} field_read;

/* Reads the field at |*p| and moves past it; 0 when malformed. */
static int read_field(const uint8_t **p, const uint8_t *end, field_read *f) {
  uint64_t tag, n;
  if (!read_varint(p, end, &tag)) return 0;
  uint64_t field = tag >> TAG_SHIFT;
  if (field == 0 || field > FIELD_MAX) return 0;
  f->field = (uint32_t)field;
  f->wire = (int)(tag & TAG_WIRE_MASK);
  const uint8_t *start = *p;
  switch (f->wire) {
    case WIRE_VARINT:
      if (!read_varint(p, end, &n)) return 0;
      break;
    case WIRE_FIXED64:
    case WIRE_FIXED32: {
      size_t size = f->wire == WIRE_FIXED64 ? 8 : 4;
      if ((size_t)(end - *p) < size) return 0;
      *p += size;
      break;
    }
    case WIRE_LEN:
      if (!read_varint(p, end, &n) || n > (uint64_t)(end - *p)) return 0;
      start = *p;
      *p += n;
      break;
    default: return 0; /* groups are not proto3 */
  }
  f->value = (span){start, (size_t)(*p - start)};
  return 1;
}

/* The last string field |number| of a message (proto: the last one wins);
 * an empty span when there is none. 0 when the message is malformed. */
static int last_string_field(span msg, uint32_t number, span *out) {
  const uint8_t *p = msg.data, *end = msg.data + msg.len;
  *out = (span){msg.data, 0};
  while (p < end) {
    field_read f;
    if (!read_field(&p, end, &f)) return 0;
    if (f.field == number && f.wire == WIRE_LEN) *out = f.value;
  }
  return 1;
}

static int is_keyed(uint32_t field) {
  return field == FIELD_TRUST_BUNDLES || field == FIELD_DESTINATIONS ||
         field == FIELD_WORKLOAD_POLICIES || field == FIELD_UNRESOLVED;
}

/* ---- ordering ------------------------------------------------------------- */

static int compare_keys(uint32_t fa, span ka, uint32_t fb, span kb) {
  if (fa != fb) return fa < fb ? -1 : 1;
  size_t n = ka.len < kb.len ? ka.len : kb.len;
  int c = n ? memcmp(ka.data, kb.data, n) : 0;
  if (c != 0) return c;
  return ka.len < kb.len ? -1 : ka.len > kb.len;
}

static int compare_entries(const void *pa, const void *pb) {
  const entry *a = pa, *b = pb;
  return compare_keys(a->field, a->key, b->field, b->key);
}

static int compare_removals(const void *pa, const void *pb) {
  const removal *a = pa, *b = pb;
  return compare_keys(a->field, a->key, b->field, b->key);
}

static int span_equal(span a, span b) {
  return a.len == b.len && (a.len == 0 || memcmp(a.data, b.data, a.len) == 0);
}

/* Shows a key in an error message (entries' keys are text). */
static void describe(uint32_t field, span key, char *out, size_t out_len) {
  int shown = key.len > 120 ? 120 : (int)key.len;
  snprintf(out, out_len, "field %u key \"%.*s\"", (unsigned)field, shown, (const char *)key.data);
}

/* ---- parsing -------------------------------------------------------------- */

static char *copy_string(span s) {
  if (s.len > 0 && memchr(s.data, '\0', s.len) != NULL) return NULL;
  char *out = malloc(s.len + 1);
  if (out == NULL) return NULL;
  if (s.len) memcpy(out, s.data, s.len);
  out[s.len] = '\0';
  return out;
}

static int parse_removal(span msg, removal *out) {
  const uint8_t *p = msg.data, *end = msg.data + msg.len;
  out->field = 0;
  out->key = (span){msg.data, 0};
  while (p < end) {
    field_read f;
    if (!read_field(&p, end, &f)) return 0;
    if (f.field == REMOVED_FIELD && f.wire == WIRE_VARINT) {
      const uint8_t *v = f.value.data;
      uint64_t n;
      if (!read_varint(&v, f.value.data + f.value.len, &n) || n == 0 || n > FIELD_MAX) return 0;
      out->field = (uint32_t)n;
    } else if (f.field == REMOVED_KEY && f.wire == WIRE_LEN) {
      out->key = f.value;
    }
  }
  return out->field != 0;
}

/* Sorts |n| items and returns the first one equal to its predecessor. */
static const void *sort_find_twice(void *items, size_t n, size_t size,
                                   int (*cmp)(const void *, const void *)) {
  if (n > 1) qsort(items, n, size, cmp);
  for (size_t i = 1; i < n; i++) {
    const char *prev = (const char *)items + (i - 1) * size;
    if (cmp(prev, prev + size) == 0) return prev;
  }
  return NULL;
}

/* Reads the header fields and the entries out of e->buf. */
static int split(mt_mesh_entries *e, size_t len, char *err, size_t err_len) {
  const uint8_t *p = e->buf, *end = e->buf + len;
  size_t cap = 0, cap_removed = 0;
  /* Count first, so that every array is allocated once. */
  for (const uint8_t *q = p; q < end;) {
    field_read f;
    if (!read_field(&q, end, &f)) {
      snprintf(err, err_len, "malformed protobuf at byte %zu", (size_t)(q - e->buf));
      return 0;
    }
    if (f.field == FIELD_REMOVED)
      cap_removed++;
    else if (f.field != FIELD_VERSION && f.field != FIELD_DELTA && f.field != FIELD_BASE_VERSION)
      cap++;
  }
  e->entries = calloc(cap + 1, sizeof(*e->entries));
  e->removed = calloc(cap_removed + 1, sizeof(*e->removed));
  if (e->entries == NULL || e->removed == NULL) {
    snprintf(err, err_len, "out of memory");
    return 0;
  }
  while (p < end) {
    const uint8_t *start = p;
    field_read f;
    read_field(&p, end, &f); /* checked above */
    int header_type_ok = 1;
    switch (f.field) {
      case FIELD_VERSION:
      case FIELD_BASE_VERSION: {
        char **slot = f.field == FIELD_VERSION ? &e->version : &e->base_version;
        header_type_ok = f.wire == WIRE_LEN;
        if (!header_type_ok) break;
        free(*slot);
        if ((*slot = copy_string(f.value)) == NULL) {
          snprintf(err, err_len, "%s holds a NUL byte or memory ran out",
                   f.field == FIELD_VERSION ? "version" : "base_version");
          return 0;
        }
        break;
      }
      case FIELD_DELTA: {
        header_type_ok = f.wire == WIRE_VARINT;
        const uint8_t *v = f.value.data;
        uint64_t n = 0;
        if (header_type_ok) read_varint(&v, f.value.data + f.value.len, &n);
        e->delta = n != 0;
        break;
      }
      case FIELD_REMOVED:
        header_type_ok = f.wire == WIRE_LEN;
        if (header_type_ok && !parse_removal(f.value, &e->removed[e->num_removed++])) {
          snprintf(err, err_len, "a removed entry is malformed or names no field");
          return 0;
        }
        break;
      default: {
        entry *x = &e->entries[e->num_entries++];
        x->field = f.field;
        x->bytes = (span){start, (size_t)(p - start)};
        x->key = (span){start, 0};
        if (is_keyed(f.field) &&
            (f.wire != WIRE_LEN || !last_string_field(f.value, KEY_FIELD, &x->key))) {
          snprintf(err, err_len, "field %u: malformed entry", (unsigned)f.field);
          return 0;
        }
      }
    }
    if (!header_type_ok) {
      snprintf(err, err_len, "field %u has the wrong wire type", (unsigned)f.field);
      return 0;
    }
  }
  const entry *twice =
      sort_find_twice(e->entries, e->num_entries, sizeof(*e->entries), compare_entries);
  const removal *gone_twice =
      sort_find_twice(e->removed, e->num_removed, sizeof(*e->removed), compare_removals);
  char what[200];
  if (twice != NULL || gone_twice != NULL) {
    if (twice != NULL)
      describe(twice->field, twice->key, what, sizeof(what));
    else
      describe(gone_twice->field, gone_twice->key, what, sizeof(what));
    snprintf(err, err_len, "%s %s twice", what, twice != NULL ? "appears" : "is removed");
    return 0;
  }
  if (!e->delta && e->num_removed > 0) {
    snprintf(err, err_len, "a complete snapshot lists removed entries");
    return 0;
  }
  return 1;
}

mt_mesh_entries *mt_mesh_entries_parse(const uint8_t *buf, size_t len, char *err, size_t err_len) {
  mt_mesh_entries *e = calloc(1, sizeof(*e));
  if (e == NULL || (e->buf = malloc(len + 1)) == NULL) {
    snprintf(err, err_len, "out of memory");
    free(e);
    return NULL;
  }
  if (len) memcpy(e->buf, buf, len);
  if (!split(e, len, err, err_len)) {
    mt_mesh_entries_free(e);
    return NULL;
  }
  static const uint8_t kEmpty[1] = {0};
  if ((e->version == NULL && (e->version = copy_string((span){kEmpty, 0})) == NULL) ||
      (e->base_version == NULL && (e->base_version = copy_string((span){kEmpty, 0})) == NULL)) {
    snprintf(err, err_len, "out of memory");
    mt_mesh_entries_free(e);
    return NULL;
  }
  return e;
}

void mt_mesh_entries_free(mt_mesh_entries *e) {
  if (e == NULL) return;
  free(e->buf);
  free(e->version);
  free(e->base_version);
  free(e->entries);
  free(e->removed);
  free(e);
}

const char *mt_mesh_entries_version(const mt_mesh_entries *e) { return e->version; }
int mt_mesh_entries_is_delta(const mt_mesh_entries *e) { return e->delta; }
const char *mt_mesh_entries_base_version(const mt_mesh_entries *e) { return e->base_version; }
size_t mt_mesh_entries_count(const mt_mesh_entries *e) { return e->num_entries; }
size_t mt_mesh_entries_num_removed(const mt_mesh_entries *e) { return e->num_removed; }

/* ---- writing -------------------------------------------------------------- */

typedef struct {
  uint8_t *data;
  size_t len;
} out_buf;

static void put_bytes(out_buf *o, const void *data, size_t len) {
  if (len) memcpy(o->data + o->len, data, len);
  o->len += len;
}

static size_t string_field_len(uint32_t field, size_t len) {
  return varint_len((uint64_t)field << TAG_SHIFT) + varint_len(len) + len;
}

static void put_string_field(out_buf *o, uint32_t field, const void *data, size_t len) {
  o->len += put_varint(o->data + o->len, ((uint64_t)field << TAG_SHIFT) | WIRE_LEN);
  o->len += put_varint(o->data + o->len, len);
  put_bytes(o, data, len);
}

static size_t removal_payload_len(const removal *r) {
  size_t n = varint_len(REMOVED_FIELD << TAG_SHIFT) + varint_len(r->field);
  return r->key.len ? n + string_field_len(REMOVED_KEY, r->key.len) : n;
}

static void put_removal(out_buf *o, const removal *r) {
  size_t payload = removal_payload_len(r);
  o->len += put_varint(o->data + o->len, ((uint64_t)FIELD_REMOVED << TAG_SHIFT) | WIRE_LEN);
  o->len += put_varint(o->data + o->len, payload);
  o->len += put_varint(o->data + o->len, REMOVED_FIELD << TAG_SHIFT | WIRE_VARINT);
  o->len += put_varint(o->data + o->len, r->field);
  if (r->key.len) put_string_field(o, REMOVED_KEY, r->key.data, r->key.len);
}

static size_t removal_len(const removal *r) {
  size_t payload = removal_payload_len(r);
  return varint_len((uint64_t)FIELD_REMOVED << TAG_SHIFT) + varint_len(payload) + payload;
}

uint8_t *mt_mesh_entries_encode_except(const mt_mesh_entries *e, uint32_t field, size_t *len) {
  size_t version_len = strlen(e->version);
  size_t total = version_len ? string_field_len(FIELD_VERSION, version_len) : 0;
  for (size_t i = 0; i < e->num_entries; i++)
    if (e->entries[i].field != field) total += e->entries[i].bytes.len;
  out_buf o = {malloc(total + 1), 0};
  if (o.data == NULL) return NULL;
  if (version_len) put_string_field(&o, FIELD_VERSION, e->version, version_len);
  for (size_t i = 0; i < e->num_entries; i++)
    if (e->entries[i].field != field)
      put_bytes(&o, e->entries[i].bytes.data, e->entries[i].bytes.len);
  *len = o.len;
  return o.data;
}

uint8_t *mt_mesh_entries_encode(const mt_mesh_entries *e, size_t *len) {
  return mt_mesh_entries_encode_except(e, 0, len); /* no field is 0 */
}

void mt_mesh_entries_foreach_key(const mt_mesh_entries *e, mt_mesh_entry_key_fn fn, void *ctx) {
  for (size_t i = 0; i < e->num_entries; i++)
    fn(ctx, e->entries[i].field, (const char *)e->entries[i].key.data, e->entries[i].key.len);
  for (size_t i = 0; i < e->num_removed; i++)
    fn(ctx, e->removed[i].field, (const char *)e->removed[i].key.data, e->removed[i].key.len);
}

int mt_mesh_entries_has(const mt_mesh_entries *e, uint32_t field, const char *key,
                        size_t key_len) {
  return mt_mesh_entries_find(e, field, key, key_len, NULL) != NULL;
}

const uint8_t *mt_mesh_entries_find(const mt_mesh_entries *e, uint32_t field, const char *key,
                                    size_t key_len, size_t *len) {
  entry probe = {field, {(const uint8_t *)key, key_len}, {NULL, 0}};
  const entry *found =
      bsearch(&probe, e->entries, e->num_entries, sizeof(probe), compare_entries);
  if (found == NULL) return NULL;
  if (len != NULL) *len = found->bytes.len;
  return found->bytes.data;
}

uint8_t *mt_mesh_delta_header(const char *version, const char *base_version, size_t *len) {
  size_t v = strlen(version), b = strlen(base_version);
  size_t total = string_field_len(FIELD_VERSION, v) + 2 + string_field_len(FIELD_BASE_VERSION, b);
  out_buf o = {malloc(total + 1), 0};
  if (o.data == NULL) return NULL;
  put_string_field(&o, FIELD_VERSION, version, v);
  o.data[o.len++] = FIELD_DELTA << TAG_SHIFT | WIRE_VARINT;
  o.data[o.len++] = 1;
  put_string_field(&o, FIELD_BASE_VERSION, base_version, b);
  *len = o.len;
  return o.data;
}

/* ---- diff and apply ------------------------------------------------------- */

/* Walks two sorted entry lists side by side: |visit| sees each key once,
 * with the entry of each side (NULL where that side lacks it). */
typedef void (*pair_visitor)(void *ctx, const entry *a, const entry *b);

static void walk(const entry *a, size_t na, const entry *b, size_t nb, pair_visitor visit,
                 void *ctx) {
  size_t i = 0, j = 0;
  while (i < na || j < nb) {
    int c = i == na ? 1 : j == nb ? -1 : compare_entries(&a[i], &b[j]);
    visit(ctx, c <= 0 ? &a[i] : NULL, c >= 0 ? &b[j] : NULL);
    if (c <= 0) i++;
    if (c >= 0) j++;
  }
}

typedef struct {
  int writing; /* 0: measuring */
  out_buf out;
  size_t changed, removed;
} diff_ctx;

static void diff_visit(void *arg, const entry *from, const entry *to) {
  diff_ctx *d = arg;
  if (to != NULL && (from == NULL || !span_equal(from->bytes, to->bytes))) {
    d->changed++;
    if (d->writing)
      put_bytes(&d->out, to->bytes.data, to->bytes.len);
    else
      d->out.len += to->bytes.len;
  } else if (to == NULL) {
    removal r = {from->field, from->key};
    d->removed++;
    if (d->writing)
      put_removal(&d->out, &r);
    else
      d->out.len += removal_len(&r);
  }
}

uint8_t *mt_mesh_entries_diff(const mt_mesh_entries *from, const mt_mesh_entries *to, size_t *len,
                              size_t *changed, size_t *removed) {
  diff_ctx d = {0, {NULL, 0}, 0, 0};
  walk(from->entries, from->num_entries, to->entries, to->num_entries, diff_visit, &d);
  size_t total = d.out.len;
  d = (diff_ctx){1, {malloc(total + 1), 0}, 0, 0};
  if (d.out.data == NULL) return NULL;
  walk(from->entries, from->num_entries, to->entries, to->num_entries, diff_visit, &d);
  *len = d.out.len;
  *changed = d.changed;
  *removed = d.removed;
  return d.out.data;
}

static const removal *find_removal(const mt_mesh_entries *delta, const entry *x) {
  removal key = {x->field, x->key};
  return bsearch(&key, delta->removed, delta->num_removed, sizeof(key), compare_removals);
}

typedef struct {
  const mt_mesh_entries *delta;
  out_buf out;
  size_t removals_used;
  int writing;
  const entry *conflict; /* an entry the delta both changes and removes */
} apply_ctx;

static void apply_visit(void *arg, const entry *held, const entry *update) {
  apply_ctx *a = arg;
  const entry *x = update != NULL ? update : held;
  if (find_removal(a->delta, x) != NULL) {
    if (update != NULL && a->conflict == NULL) a->conflict = update;
    if (held != NULL) a->removals_used++;
    return;
  }
  if (a->writing)
    put_bytes(&a->out, x->bytes.data, x->bytes.len);
  else
    a->out.len += x->bytes.len;
}

mt_mesh_entries *mt_mesh_entries_apply(const mt_mesh_entries *base, const mt_mesh_entries *delta,
                                       char *err, size_t err_len) {
  if (base->delta || !delta->delta) {
    snprintf(err, err_len, "a delta applies only to a complete snapshot");
    return NULL;
  }
  if (strcmp(delta->base_version, base->version) != 0) {
    snprintf(err, err_len, "the delta to %.64s applies to %.64s, not to the %.64s held",
             delta->version, delta->base_version, base->version);
    return NULL;
  }
  apply_ctx a = {delta, {NULL, 0}, 0, 0, NULL};
  walk(base->entries, base->num_entries, delta->entries, delta->num_entries, apply_visit, &a);
  char what[200];
  if (a.conflict != NULL || a.removals_used != delta->num_removed) {
    if (a.conflict != NULL) {
      describe(a.conflict->field, a.conflict->key, what, sizeof(what));
      snprintf(err, err_len, "the delta both changes and removes %s", what);
    } else {
      snprintf(err, err_len, "the delta removes %zu entries that %.64s does not hold",
               delta->num_removed - a.removals_used, base->version);
    }
    return NULL;
  }
  size_t version_len = strlen(delta->version);
  size_t total = a.out.len + string_field_len(FIELD_VERSION, version_len);
  a = (apply_ctx){delta, {malloc(total + 1), 0}, 0, 1, NULL};
  if (a.out.data == NULL) {
    snprintf(err, err_len, "out of memory");
    return NULL;
  }
  put_string_field(&a.out, FIELD_VERSION, delta->version, version_len);
  walk(base->entries, base->num_entries, delta->entries, delta->num_entries, apply_visit, &a);
  mt_mesh_entries *result = mt_mesh_entries_parse(a.out.data, a.out.len, err, err_len);
  free(a.out.data);
  return result;
}
