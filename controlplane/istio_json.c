#include "controlplane/istio_json.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void *mt_istio_scratch_calloc(mt_istio_scratch *s, size_t count, size_t size) {
  if (s->num == s->cap) {
    size_t cap = s->cap ? s->cap * 2 : 64;
    void **blocks = realloc(s->blocks, cap * sizeof(*blocks));
    if (blocks == NULL) return NULL;
    s->blocks = blocks;
    s->cap = cap;
  }
  /* calloc(0, ...) may return NULL: always ask for at least one element. */
  void *block = calloc(count ? count : 1, size ? size : 1);
  if (block != NULL) s->blocks[s->num++] = block;
  return block;
}

char *mt_istio_scratch_strdup(mt_istio_scratch *s, const char *text) {
  size_t len = strlen(text);
  char *copy = mt_istio_scratch_calloc(s, len + 1, 1);
  if (copy != NULL) memcpy(copy, text, len);
  return copy;
}

void mt_istio_scratch_release(mt_istio_scratch *s) {
  for (size_t i = 0; i < s->num; i++) free(s->blocks[i]);
  free(s->blocks);
  memset(s, 0, sizeof(*s));
}

int mt_istio_refuse(char *err, size_t err_len, const char *field, const char *why) {
  if (err != NULL && err_len > 0) snprintf(err, err_len, "%s: %s", field, why);
  return 0;
}

const json_t *mt_istio_member(const json_t *obj, const char *key) {
  return json_is_object(obj) ? json_object_get(obj, key) : NULL;
}

int mt_istio_optional_array(const json_t *obj, const char *key, size_t max, const char *field,
                            const json_t **out, char *err, size_t err_len) {
  const json_t *v = mt_istio_member(obj, key);
  *out = NULL;
  if (v == NULL || json_is_null(v)) return 1;
  if (!json_is_array(v)) return mt_istio_refuse(err, err_len, field, "not a list");
  if (json_array_size(v) > max) return mt_istio_refuse(err, err_len, field, "too many entries");
  *out = v;
  return 1;
}

int mt_istio_optional_object(const json_t *obj, const char *key, const char *field,
                             const json_t **out, char *err, size_t err_len) {
  const json_t *v = mt_istio_member(obj, key);
  *out = NULL;
  if (v == NULL || json_is_null(v)) return 1;
  if (!json_is_object(v)) return mt_istio_refuse(err, err_len, field, "not an object");
  *out = v;
  return 1;
}

int mt_istio_text(const json_t *v, size_t max, const char *field, const char **out, char *err,
                  size_t err_len) {
  if (!json_is_string(v)) return mt_istio_refuse(err, err_len, field, "not a string");
  size_t len = json_string_length(v);
  const char *text = json_string_value(v);
  if (len == 0) return mt_istio_refuse(err, err_len, field, "empty");
  if (len > max) return mt_istio_refuse(err, err_len, field, "too long");
  /* Also catches an embedded NUL (jansson accepts "\u0000"). */
  for (size_t i = 0; i < len; i++) {
    unsigned char c = (unsigned char)text[i];
    if (c < 0x20 || c == 0x7f) return mt_istio_refuse(err, err_len, field, "control character");
  }
  *out = text;
  return 1;
}

void mt_istio_join(char *out, size_t out_len, const char *a, const char *sep, const char *b) {
  int n = snprintf(out, out_len, "%s%s%s", a, sep, b);
  if (n < 0 && out_len > 0) out[0] = '\0';
}

void mt_istio_index(char *out, size_t out_len, const char *a, size_t index) {
  int n = snprintf(out, out_len, "%s[%zu]", a, index);
  if (n < 0 && out_len > 0) out[0] = '\0';
}

int mt_istio_port(const char *text, unsigned *out) {
  size_t len = strlen(text);
  if (len == 0 || len > 5 || text[0] == '0') return 0;
  unsigned value = 0;
  for (size_t i = 0; i < len; i++) {
    if (text[i] < '0' || text[i] > '9') return 0;
    value = value * 10 + (unsigned)(text[i] - '0');
  }
  if (value < 1 || value > UINT16_MAX) return 0;
  *out = value;
  return 1;
}

ProtobufCMessage *mt_istio_message_copy(const ProtobufCMessage *message) {
  size_t len = protobuf_c_message_get_packed_size(message);
  uint8_t *buf = malloc(len ? len : 1);
  if (buf == NULL) return NULL;
  protobuf_c_message_pack(message, buf);
  ProtobufCMessage *copy = protobuf_c_message_unpack(message->descriptor, NULL, len, buf);
  free(buf);
  return copy;
}
