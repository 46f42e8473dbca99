/* http_request.c: the request head, read through a CBS cursor line by line.
 *
 * The whole buffered head is parsed again on every read until it is
 * complete: at most MT_HTTP_MAX_HEAD_BYTES, so no parser state has to
 * survive between reads. */
#include "agent/http_request.h"

#include <openssl/bytestring.h>
#include <string.h>
#include <strings.h>

typedef enum { LINE_OK, LINE_INCOMPLETE, LINE_BAD } line_result;

/* What the header fields said, before they are checked against each other. */
typedef struct {
  int hosts;
  int has_length;
  uint64_t length;
  int has_transfer_encoding;
  int conn_close;
  int conn_keep_alive;
  int expect; /* 0 none, 1 100-continue, -1 anything else */
} fields_seen;

static mt_http_parse_result fail(mt_http_request *out, int status, const char *why) {
  out->status = status;
  out->error = why;
  return MT_HTTP_PARSE_ERROR;
}

/* Takes one line (without its CRLF or LF) from |in|. A CR anywhere but just
 * before the LF is refused. */
static line_result get_line(CBS *in, CBS *line) {
  const uint8_t *lf = memchr(CBS_data(in), '\n', CBS_len(in));
  if (lf == NULL) return LINE_INCOMPLETE;
  size_t n = (size_t)(lf - CBS_data(in));
  if (!CBS_get_bytes(in, line, n) || !CBS_skip(in, 1)) return LINE_BAD;
  if (n > 0 && CBS_data(line)[n - 1] == '\r') CBS_init(line, CBS_data(line), n - 1);
  if (memchr(CBS_data(line), '\r', CBS_len(line)) != NULL) return LINE_BAD;
  return LINE_OK;
}

/* RFC 9110 5.6.2 tchar. */
static int is_tchar(uint8_t c) {
  if ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')) return 1;
  return c != '\0' && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

static int is_token(const CBS *s) {
  if (CBS_len(s) == 0) return 0;
  for (size_t i = 0; i < CBS_len(s); i++)
    if (!is_tchar(CBS_data(s)[i])) return 0;
  return 1;
}

/* Splits |in| at the first |sep|: |head| before it, |in| after it. */
static int get_until(CBS *in, uint8_t sep, CBS *head) {
  const uint8_t *at = memchr(CBS_data(in), sep, CBS_len(in));
  if (at == NULL) return 0;
  return CBS_get_bytes(in, head, (size_t)(at - CBS_data(in))) && CBS_skip(in, 1);
}

static int hex_value(uint8_t c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

/* Percent-decodes |in| into |out| (NUL-terminated; |out_len| > 0), '+' as a
 * space when |plus_is_space|. 0 on a bad escape, %00 or no room. */
static int decode(CBS in, int plus_is_space, char *out, size_t out_len) {
  size_t n = 0;
  uint8_t c;
  while (CBS_get_u8(&in, &c)) {
    if (c == '%') {
      uint8_t hi, lo;
      if (!CBS_get_u8(&in, &hi) || !CBS_get_u8(&in, &lo)) return 0;
      int h = hex_value(hi), l = hex_value(lo);
      if (h < 0 || l < 0 || (h | l) == 0) return 0;
      c = (uint8_t)(h * 16 + l);
    } else if (c == '+' && plus_is_space) {
      c = ' ';
    }
    if (n + 1 >= out_len) return 0;
    out[n++] = (char)c;
  }
  out[n] = '\0';
  return 1;
}

static int starts_with_ci(const CBS *s, const char *prefix) {
  size_t n = strlen(prefix);
  return CBS_len(s) >= n && strncasecmp((const char *)CBS_data(s), prefix, n) == 0;
}

static int equals_ci(const CBS *s, const char *word) {
  return CBS_len(s) == strlen(word) && starts_with_ci(s, word);
}

/* The request target into path and query. Absolute-form loses its scheme and
 * authority (RFC 9112 3.2.2: the server uses the path). */
static mt_http_parse_result parse_target(CBS target, mt_http_request *out) {
  if (CBS_len(&target) > MT_HTTP_MAX_TARGET_BYTES)
    return fail(out, 414, "request target longer than 4096 bytes");
  for (size_t i = 0; i < CBS_len(&target); i++) {
    uint8_t c = CBS_data(&target)[i];
    if (c <= ' ' || c >= 0x7f)
      return fail(out, 400, "request target has a control or non-ASCII byte");
  }
  if (CBS_len(&target) == 1 && CBS_data(&target)[0] == '*') {
    strcpy(out->path, "*");
    return MT_HTTP_PARSE_OK;
  }
  if (starts_with_ci(&target, "http://") || starts_with_ci(&target, "https://")) {
    if (!CBS_skip(&target, starts_with_ci(&target, "http://") ? 7 : 8))
      return fail(out, 400, "bad absolute request target");
    size_t n = 0;
    while (n < CBS_len(&target) && CBS_data(&target)[n] != '/' && CBS_data(&target)[n] != '?') n++;
    if (n == 0 || !CBS_skip(&target, n))
      return fail(out, 400, "absolute request target without a host");
    if (CBS_len(&target) == 0 || CBS_data(&target)[0] == '?') { /* no path: "/" */
      CBS rest = target;
      if (CBS_len(&rest) > 0 && !CBS_skip(&rest, 1)) return fail(out, 400, "bad request target");
      strcpy(out->path, "/");
      memcpy(out->query, CBS_data(&rest), CBS_len(&rest));
      out->query[CBS_len(&rest)] = '\0';
      return MT_HTTP_PARSE_OK;
    }
  }
  if (CBS_len(&target) == 0 || CBS_data(&target)[0] != '/')
    return fail(out, 400, "request target is not a path");
  CBS path = target, query;
  CBS_init(&query, (const uint8_t *)"", 0);
  if (get_until(&target, '?', &path)) query = target;
  if (!decode(path, 0, out->path, sizeof(out->path)))
    return fail(out, 400, "request path has a bad percent escape");
  memcpy(out->query, CBS_data(&query), CBS_len(&query));
  out->query[CBS_len(&query)] = '\0';
  return MT_HTTP_PARSE_OK;
}

static mt_http_parse_result parse_request_line(CBS line, mt_http_request *out) {
  CBS method, target;
  if (!get_until(&line, ' ', &method) || !get_until(&line, ' ', &target))
    return fail(out, 400, "request line is not METHOD SP TARGET SP VERSION");
  if (!is_token(&method)) return fail(out, 400, "method is not a token");
  if (CBS_len(&method) > MT_HTTP_MAX_METHOD_BYTES) return fail(out, 501, "method too long");
  memcpy(out->method, CBS_data(&method), CBS_len(&method));
  out->method[CBS_len(&method)] = '\0';
  static const char kPrefix[] = "HTTP/";
  const uint8_t *v = CBS_data(&line);
  if (CBS_len(&line) != 8 || memcmp(v, kPrefix, 5) != 0 || v[5] < '0' || v[5] > '9' ||
      v[6] != '.' || v[7] < '0' || v[7] > '9')
    return fail(out, 400, "bad HTTP version");
  if (v[5] != '1' || v[7] > '1') return fail(out, 505, "only HTTP/1.0 and HTTP/1.1 are served");
  out->version_minor = v[7] - '0';
  return parse_target(target, out);
}

/* Strips optional whitespace (SP, HTAB) from both ends. */
static void trim_ows(CBS *s) {
  const uint8_t *p = CBS_data(s);
  size_t n = CBS_len(s);
  while (n > 0 && (*p == ' ' || *p == '\t')) p++, n--;
  while (n > 0 && (p[n - 1] == ' ' || p[n - 1] == '\t')) n--;
  CBS_init(s, p, n);
}

static int parse_length(CBS value, uint64_t *out) {
  if (CBS_len(&value) == 0 || CBS_len(&value) > 19) return 0;
  uint64_t n = 0;
  uint8_t c;
  while (CBS_get_u8(&value, &c)) {
    if (c < '0' || c > '9') return 0;
    n = n * 10 + (uint64_t)(c - '0');
  }
  *out = n;
  return 1;
}

/* Connection: a comma-separated list of tokens. */
static void note_connection(CBS value, fields_seen *seen) {
  CBS item;
  for (;;) {
    int last = !get_until(&value, ',', &item);
    if (last) item = value;
    trim_ows(&item);
    if (equals_ci(&item, "close")) seen->conn_close = 1;
    if (equals_ci(&item, "keep-alive")) seen->conn_keep_alive = 1;
    if (last) return;
  }
}

static mt_http_parse_result parse_field(CBS line, fields_seen *seen, mt_http_request *out) {
  CBS name;
  if (!get_until(&line, ':', &name) || !is_token(&name))
    return fail(out, 400, "header field is not NAME: VALUE");
  CBS value = line;
  trim_ows(&value);
  for (size_t i = 0; i < CBS_len(&value); i++) {
    uint8_t c = CBS_data(&value)[i];
    if ((c < ' ' && c != '\t') || c == 0x7f)
      return fail(out, 400, "header value has a control byte");
  }
  if (equals_ci(&name, "host")) {
    seen->hosts++;
  } else if (equals_ci(&name, "content-length")) {
    uint64_t n;
    if (!parse_length(value, &n) || (seen->has_length && n != seen->length))
      return fail(out, 400, "bad Content-Length");
    seen->has_length = 1;
    seen->length = n;
  } else if (equals_ci(&name, "transfer-encoding")) {
    seen->has_transfer_encoding = 1;
  } else if (equals_ci(&name, "connection")) {
    note_connection(value, seen);
  } else if (equals_ci(&name, "expect")) {
    seen->expect = equals_ci(&value, "100-continue") && seen->expect >= 0 ? 1 : -1;
  }
  return MT_HTTP_PARSE_OK;
}

/* Checks the fields against each other and fills the request's summary. */
static mt_http_parse_result finish(const fields_seen *seen, mt_http_request *out) {
  if (seen->has_transfer_encoding)
    return fail(out, 411, "Transfer-Encoding is not accepted; send Content-Length");
  if (out->version_minor == 1 && seen->hosts != 1)
    return fail(out, 400, "HTTP/1.1 needs exactly one Host header");
  if (seen->hosts > 1) return fail(out, 400, "more than one Host header");
  if (seen->length > MT_HTTP_MAX_BODY_BYTES) return fail(out, 413, "body larger than 8192 bytes");
  if (seen->expect < 0) return fail(out, 417, "only \"Expect: 100-continue\" is understood");
  out->content_length = seen->length;
  out->expect_continue = seen->expect > 0 && out->version_minor == 1 && seen->length > 0;
  out->keep_alive =
      out->version_minor == 1 ? !seen->conn_close : seen->conn_keep_alive && !seen->conn_close;
  return MT_HTTP_PARSE_OK;
}

/* ERROR when the head can no longer fit, else INCOMPLETE. */
static mt_http_parse_result incomplete(const CBS *line_so_far, int in_request_line, size_t len,
                                       mt_http_request *out) {
  if (in_request_line && CBS_len(line_so_far) > MT_HTTP_MAX_TARGET_BYTES + 64)
    return fail(out, 414, "request line longer than the 4096-byte target limit allows");
  if (len >= MT_HTTP_MAX_HEAD_BYTES) return fail(out, 431, "request head larger than 8192 bytes");
  return MT_HTTP_PARSE_INCOMPLETE;
}

mt_http_parse_result mt_http_parse_request(const uint8_t *data, size_t len, mt_http_request *out) {
  memset(out, 0, sizeof(*out));
  CBS in, line;
  CBS_init(&in, data, len);
  line_result lr;
  do { /* empty lines before the request line are skipped (RFC 9112 2.2) */
    lr = get_line(&in, &line);
  } while (lr == LINE_OK && CBS_len(&line) == 0);
  if (lr == LINE_INCOMPLETE) return incomplete(&in, 1, len, out);
  if (lr == LINE_BAD) return fail(out, 400, "bare CR in the request line");
  if ((size_t)(CBS_data(&in) - data) > MT_HTTP_MAX_HEAD_BYTES)
    return fail(out, 431, "request head larger than 8192 bytes");
  mt_http_parse_result r = parse_request_line(line, out);
  if (r != MT_HTTP_PARSE_OK) return r;
  fields_seen seen = {0};
  for (size_t fields = 0;; fields++) {
    lr = get_line(&in, &line);
    if (lr == LINE_INCOMPLETE) return incomplete(&in, 0, len, out);
    if (lr == LINE_BAD) return fail(out, 400, "bare CR in a header field");
    if ((size_t)(CBS_data(&in) - data) > MT_HTTP_MAX_HEAD_BYTES)
      return fail(out, 431, "request head larger than 8192 bytes");
    if (CBS_len(&line) == 0) break;
    if (fields == MT_HTTP_MAX_FIELDS) return fail(out, 431, "more than 100 header fields");
    if (CBS_data(&line)[0] == ' ' || CBS_data(&line)[0] == '\t')
      return fail(out, 400, "folded header line (obs-fold)");
    r = parse_field(line, &seen, out);
    if (r != MT_HTTP_PARSE_OK) return r;
  }
  out->head_bytes = (size_t)(CBS_data(&in) - data);
  return finish(&seen, out);
}

int mt_http_query_get(const char *query, const char *name, char *out, size_t out_len) {
  if (out_len == 0) return -1;
  CBS rest, pair, key;
  CBS_init(&rest, (const uint8_t *)query, strlen(query));
  size_t name_len = strlen(name);
  char decoded_key[MT_HTTP_MAX_TARGET_BYTES + 1];
  while (CBS_len(&rest) > 0) {
    if (!get_until(&rest, '&', &pair)) {
      pair = rest;
      CBS_init(&rest, NULL, 0);
    }
    if (!get_until(&pair, '=', &key)) continue; /* "name" alone: no value */
    if (!decode(key, 1, decoded_key, sizeof(decoded_key))) return -1;
    if (strlen(decoded_key) != name_len || memcmp(decoded_key, name, name_len) != 0) continue;
    return decode(pair, 1, out, out_len) ? 1 : -1;
  }
  return 0;
}
