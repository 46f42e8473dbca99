/* istio_json: what istio_policy's decoders share (private to the
 * istio_policy library): a scratch arena for messages built only to be
 * packed, and bounded, type-checked readers of untrusted API JSON.
 *
 * Readers return 1, or 0 with "<field>: <why>" in |err| (the caller adds
 * "object refused: <ns>/<name>: "). Absent and null mean the same. */
#ifndef MT_CP_ISTIO_JSON_H
#define MT_CP_ISTIO_JSON_H

#include <jansson.h>
#include <stddef.h>

#include "proto/mtlsd/mesh.pb-c.h"

enum {
  MT_ISTIO_VALUE_MAX = 1024,  /* bytes in one string value */
  MT_ISTIO_MAX_VALUES = 1024, /* values in one list field */
  MT_ISTIO_FIELD_MAX = 256,   /* bytes of a field path in a message */
};

/* Every block allocated for one decode or one compile, freed at once:
 * the messages built in it are packed and unpacked (protobuf-c then owns
 * the copy), so nothing in it outlives the call. */
typedef struct {
  void **blocks;
  size_t num, cap;
} mt_istio_scratch;

/* Zeroed; NULL when out of memory (or |count| * |size| overflows). */
void *mt_istio_scratch_calloc(mt_istio_scratch *s, size_t count, size_t size);
char *mt_istio_scratch_strdup(mt_istio_scratch *s, const char *text);
void mt_istio_scratch_release(mt_istio_scratch *s);

/* Writes "<field>: <why>" and returns 0. */
int mt_istio_refuse(char *err, size_t err_len, const char *field, const char *why);

const json_t *mt_istio_member(const json_t *obj, const char *key);

/* |*out| is the array (or NULL when absent); refused when it is not an
 * array or has more than |max| entries. */
int mt_istio_optional_array(const json_t *obj, const char *key, size_t max, const char *field,
                            const json_t **out, char *err, size_t err_len);

/* |*out| is the object (or NULL when absent); refused when not an object. */
int mt_istio_optional_object(const json_t *obj, const char *key, const char *field,
                             const json_t **out, char *err, size_t err_len);

/* A string of 1..|max| bytes without control characters (it reaches logs
 * and /policy); |*out| borrowed from |v|. */
int mt_istio_text(const json_t *v, size_t max, const char *field, const char **out, char *err,
                  size_t err_len);

/* "<a><sep><b>" / "<a>[<index>]" into |out|, cut short when it does not
 * fit: field paths and names are for messages, their parts bounded well
 * below the buffers used. */
void mt_istio_join(char *out, size_t out_len, const char *a, const char *sep, const char *b);
void mt_istio_index(char *out, size_t out_len, const char *a, size_t index);

/* |text| as a port, "1".."65535" in plain decimal. */
int mt_istio_port(const char *text, unsigned *out);

/* A protobuf-c copy of |message| that protobuf-c owns (free it with its
 * __free_unpacked), made by packing and unpacking: the message may borrow
 * from anywhere, the copy borrows from nothing. NULL when out of memory. */
ProtobufCMessage *mt_istio_message_copy(const ProtobufCMessage *message);

#endif /* MT_CP_ISTIO_JSON_H */
