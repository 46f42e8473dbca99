/* json_struct.c: jansson -> google.protobuf.Struct. See json_struct.h. */
#include "agent/json_struct.h"

#include <stdlib.h>
#include <string.h>

static void value_free(Google__Protobuf__Value *v);

static void list_free(Google__Protobuf__ListValue *l) {
  if (l == NULL) return;
  for (size_t i = 0; i < l->n_values; i++) value_free(l->values[i]);
  free(l->values);
  free(l);
}

static void value_free(Google__Protobuf__Value *v) {
  if (v == NULL) return;
  if (v->kind_case == GOOGLE__PROTOBUF__VALUE__KIND_STRING_VALUE) free(v->string_value);
  if (v->kind_case == GOOGLE__PROTOBUF__VALUE__KIND_STRUCT_VALUE)
    mt_json_struct_free(v->struct_value);
  if (v->kind_case == GOOGLE__PROTOBUF__VALUE__KIND_LIST_VALUE) list_free(v->list_value);
  free(v);
}

void mt_json_struct_free(Google__Protobuf__Struct *s) {
  if (s == NULL) return;
  for (size_t i = 0; i < s->n_fields; i++) {
    Google__Protobuf__Struct__FieldsEntry *f = s->fields[i];
    if (f == NULL) continue;
    free(f->key);
    value_free(f->value);
    free(f);
  }
  free(s->fields);
  free(s);
}

static Google__Protobuf__ListValue *list_from_json(const json_t *array);

/* One JSON value; NULL when out of memory. */
static Google__Protobuf__Value *value_from_json(const json_t *j) {
  Google__Protobuf__Value *v = malloc(sizeof(*v));
  if (v == NULL) return NULL;
  google__protobuf__value__init(v);
  int ok = 1;
  switch (json_typeof(j)) {
    case JSON_OBJECT:
      v->kind_case = GOOGLE__PROTOBUF__VALUE__KIND_STRUCT_VALUE;
      ok = (v->struct_value = mt_json_struct_from_json(j)) != NULL;
      break;
    case JSON_ARRAY:
      v->kind_case = GOOGLE__PROTOBUF__VALUE__KIND_LIST_VALUE;
      ok = (v->list_value = list_from_json(j)) != NULL;
      break;
    case JSON_STRING:
      v->kind_case = GOOGLE__PROTOBUF__VALUE__KIND_STRING_VALUE;
      v->string_value = malloc(json_string_length(j) + 1);
      ok = v->string_value != NULL;
      if (ok) memcpy(v->string_value, json_string_value(j), json_string_length(j) + 1);
      break;
    case JSON_INTEGER:
    case JSON_REAL:
      v->kind_case = GOOGLE__PROTOBUF__VALUE__KIND_NUMBER_VALUE;
      v->number_value = json_number_value(j);
      break;
    case JSON_TRUE:
    case JSON_FALSE:
      v->kind_case = GOOGLE__PROTOBUF__VALUE__KIND_BOOL_VALUE;
      v->bool_value = json_is_true(j);
      break;
    case JSON_NULL:
      v->kind_case = GOOGLE__PROTOBUF__VALUE__KIND_NULL_VALUE;
      v->null_value = GOOGLE__PROTOBUF__NULL_VALUE__NULL_VALUE;
      break;
  }
  if (!ok) {
    value_free(v);
    return NULL;
  }
  return v;
}

static Google__Protobuf__ListValue *list_from_json(const json_t *array) {
  Google__Protobuf__ListValue *l = malloc(sizeof(*l));
  if (l == NULL) return NULL;
  google__protobuf__list_value__init(l);
  size_t n = json_array_size(array);
  l->values = n > 0 ? calloc(n, sizeof(*l->values)) : NULL;
  if (n > 0 && l->values == NULL) {
    free(l);
    return NULL;
  }
  for (size_t i = 0; i < n; i++) {
    l->values[l->n_values] = value_from_json(json_array_get(array, i));
    if (l->values[l->n_values] == NULL) {
      list_free(l);
      return NULL;
    }
    l->n_values++;
  }
  return l;
}

/* One member as a FieldsEntry; NULL when out of memory. */
static Google__Protobuf__Struct__FieldsEntry *entry_from_json(const char *key,
                                                              const json_t *value) {
  Google__Protobuf__Struct__FieldsEntry *f = malloc(sizeof(*f));
  if (f == NULL) return NULL;
  google__protobuf__struct__fields_entry__init(f);
  f->key = strdup(key);
  f->value = f->key != NULL ? value_from_json(value) : NULL;
  if (f->value == NULL) {
    free(f->key);
    free(f);
    return NULL;
  }
  return f;
}

Google__Protobuf__Struct *mt_json_struct_from_json(const json_t *object) {
  if (!json_is_object(object)) return NULL;
  Google__Protobuf__Struct *s = malloc(sizeof(*s));
  if (s == NULL) return NULL;
  google__protobuf__struct__init(s);
  size_t n = json_object_size(object);
  s->fields = n > 0 ? calloc(n, sizeof(*s->fields)) : NULL;
  if (n > 0 && s->fields == NULL) {
    free(s);
    return NULL;
  }
  const char *key;
  json_t *value;
  /* jansson's iteration API takes a non-const object; it does not change it. */
  json_object_foreach((json_t *)object, key, value) {
    if (s->n_fields == n) break;
    s->fields[s->n_fields] = entry_from_json(key, value);
    if (s->fields[s->n_fields] == NULL) {
      mt_json_struct_free(s);
      return NULL;
    }
    s->n_fields++;
  }
  return s;
}

Google__Protobuf__Struct *mt_json_struct_from_text(const char *text, size_t len) {
  json_t *doc = json_loadb(text, len, JSON_REJECT_DUPLICATES, NULL);
  Google__Protobuf__Struct *s = mt_json_struct_from_json(doc);
  json_decref(doc);
  return s;
}
