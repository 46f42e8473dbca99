/* text.c: the growable buffer and its escapers. */
#include "agent/text.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { TEXT_FIRST_CAP_BYTES = 4096 };

void mt_text_init(mt_text *t) { memset(t, 0, sizeof(*t)); }

void mt_text_free(mt_text *t) {
  free(t->data);
  mt_text_init(t);
}

static int text_reserve(mt_text *t, size_t more) {
  if (t->failed) return 0;
  if (t->len + more + 1 <= t->cap) return 1;
  size_t cap = t->cap ? t->cap : TEXT_FIRST_CAP_BYTES;
  while (cap < t->len + more + 1) cap *= 2;
  char *data = realloc(t->data, cap);
  if (data == NULL) {
    t->failed = 1;
    return 0;
  }
  t->data = data;
  t->cap = cap;
  return 1;
}

void mt_text_printf(mt_text *t, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(NULL, 0, fmt, ap);
  va_end(ap);
  if (n < 0 || !text_reserve(t, (size_t)n)) return;
  va_start(ap, fmt);
  vsnprintf(t->data + t->len, t->cap - t->len, fmt, ap);
  va_end(ap);
  t->len += (size_t)n;
}

static void text_putc(mt_text *t, char c) {
  if (!text_reserve(t, 1)) return;
  t->data[t->len++] = c;
  t->data[t->len] = '\0';
}

void mt_text_label_value(mt_text *t, const char *s) {
  for (; *s; s++) {
    if (*s == '\\' || *s == '"') {
      text_putc(t, '\\');
      text_putc(t, *s);
    } else if (*s == '\n') {
      text_putc(t, '\\');
      text_putc(t, 'n');
    } else {
      text_putc(t, *s);
    }
  }
}

void mt_text_json_string(mt_text *t, const char *s) {
  text_putc(t, '"');
  for (; *s; s++) {
    unsigned char c = (unsigned char)*s;
    if (c == '"' || c == '\\') {
      text_putc(t, '\\');
      text_putc(t, (char)c);
    } else if (c < 0x20) {
      mt_text_printf(t, "\\u%04x", c);
    } else {
      text_putc(t, (char)c);
    }
  }
  text_putc(t, '"');
}

/* ---- members of a JSON object ---- */

void mt_json_key(mt_text *out, int *first, const char *key) {
  mt_text_printf(out, "%s\"%s\":", *first ? "" : ",", key);
  *first = 0;
}

void mt_json_str(mt_text *out, int *first, const char *key, const char *value) {
  mt_json_key(out, first, key);
  if (value == NULL)
    mt_text_printf(out, "null");
  else
    mt_text_json_string(out, value);
}

void mt_json_int(mt_text *out, int *first, const char *key, long long value) {
  mt_json_key(out, first, key);
  mt_text_printf(out, "%lld", value);
}
