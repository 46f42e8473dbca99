/* http_request: the head of one HTTP/1.0 or 1.1 request, parsed from
 * untrusted bytes (pure: no I/O, no allocation; fuzzed).
 *
 * Promises:
 *   - mt_http_parse_request never reads past |len|, never writes past |out|,
 *     and answers INCOMPLETE only while the head could still become valid
 *     within MT_HTTP_MAX_HEAD_BYTES; past that it is an ERROR (414 or 431).
 *   - An ERROR carries the status to answer (400, 411, 413, 414, 417, 431,
 *     501 or 505) and a static, printable reason naming what was wrong.
 *   - What is accepted (RFC 9112): a request line "METHOD SP target SP
 *     HTTP/1.x", header fields "name: value" (no obs-fold, no space before
 *     the colon, no NUL or bare CR), lines ended by CRLF or LF, empty lines
 *     before the request line skipped. The target is origin-form ("/path"),
 *     absolute-form ("http://host/path") or "*"; its path is percent-decoded
 *     (a bad escape or %00 is an error), its query kept raw. HTTP/1.1 needs
 *     exactly one Host. A body is announced by Content-Length only (at most
 *     MT_HTTP_MAX_BODY_BYTES; Transfer-Encoding is refused with 411).
 *
 * The caller buffers bytes until OK, answers, then skips head_bytes +
 * content_length bytes (the body, which no caller reads) for the next
 * request on the connection. */
#ifndef MT_HTTP_REQUEST_H
#define MT_HTTP_REQUEST_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum {
  MT_HTTP_MAX_HEAD_BYTES = 8192,   /* request line + header fields + blank line */
  MT_HTTP_MAX_TARGET_BYTES = 4096, /* the request target as sent */
  MT_HTTP_MAX_METHOD_BYTES = 31,
  MT_HTTP_MAX_FIELDS = 100,
  MT_HTTP_MAX_BODY_BYTES = 8192 /* read and thrown away: no endpoint takes a body */
};

typedef enum {
  MT_HTTP_PARSE_OK,
  MT_HTTP_PARSE_INCOMPLETE, /* more bytes may complete it */
  MT_HTTP_PARSE_ERROR       /* answer |status| and close */
} mt_http_parse_result;

typedef struct {
  char method[MT_HTTP_MAX_METHOD_BYTES + 1]; /* a token, case kept */
  char path[MT_HTTP_MAX_TARGET_BYTES + 1];   /* decoded; no NUL inside */
  char query[MT_HTTP_MAX_TARGET_BYTES + 1];  /* after '?', raw; "" if none */
  int version_minor;                         /* HTTP/1.<version_minor>: 0 or 1 */
  int keep_alive;      /* the client lets the connection stay open after the answer */
  int expect_continue; /* "Expect: 100-continue" with a body to come */
  uint64_t content_length;
  size_t head_bytes; /* bytes of the head, blank line included */
  int status;        /* ERROR: the status to answer */
  const char *error; /* ERROR: what was wrong (static text) */
} mt_http_request;

/* Parses the head at the start of |data|. On OK every field is set; on ERROR
 * |status| and |error| are; on INCOMPLETE nothing is promised. */
mt_http_parse_result mt_http_parse_request(const uint8_t *data, size_t len, mt_http_request *out);

/* The first value of |name| in a raw query ("a=1&b=x%20y"), decoded ('+' is a
 * space, %XX a byte) into |out|. Returns 1 found, 0 absent (a name without
 * "=" counts as absent), -1 malformed (bad escape, %00, or longer than
 * |out_len| - 1). */
int mt_http_query_get(const char *query, const char *name, char *out, size_t out_len);

#ifdef __cplusplus
}
#endif

#endif /* MT_HTTP_REQUEST_H */
