/* text: a growable text buffer and the escapers that the agent's rendered
 * output needs (Prometheus label values, JSON strings, JSON object members).
 *
 * An mt_text is embedded by its user (init/free pair) and only ever grows.
 * A failed allocation does not stop the writer: it sets |failed|, every
 * later append is dropped, and the caller checks |failed| once at the end
 * (the admin endpoint answers 500). |data| is NUL-terminated whenever it is
 * not NULL. One buffer belongs to one thread. */
#ifndef MT_TEXT_H
#define MT_TEXT_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
  char *data;
  size_t len, cap;
  int failed; /* an allocation failed; the text is incomplete */
} mt_text;

void mt_text_init(mt_text *t);
void mt_text_free(mt_text *t); /* frees the data and leaves |t| empty again */
void mt_text_printf(mt_text *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Appends |s| escaped for a Prometheus label value (\\, \", \n). */
void mt_text_label_value(mt_text *t, const char *s);
/* Appends |s| escaped for a JSON string, with the quotes. */
void mt_text_json_string(mt_text *t, const char *s);

/* ---- members of a JSON object ----
 * |*first| is 1 before the object's first member; each helper writes the
 * separating comma when it is 0 and then clears it. |key| is written as is:
 * pass a literal that needs no escaping. */

/* Writes `"key":`; the caller writes the value. */
void mt_json_key(mt_text *out, int *first, const char *key);
/* A string member; NULL |value| writes null. */
void mt_json_str(mt_text *out, int *first, const char *key, const char *value);
void mt_json_int(mt_text *out, int *first, const char *key, long long value);

#ifdef __cplusplus
}
#endif

#endif /* MT_TEXT_H */
