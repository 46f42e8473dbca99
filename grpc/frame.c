/* frame.c: gRPC message framing, status codes, grpc-timeout, grpc-message. */
#include "grpc/frame.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum {
  HTTP_BAD_REQUEST = 400,
  HTTP_UNAUTHORIZED = 401,
  HTTP_FORBIDDEN = 403,
  HTTP_NOT_FOUND = 404,
  HTTP_TOO_MANY_REQUESTS = 429,
  HTTP_BAD_GATEWAY = 502,
  HTTP_SERVICE_UNAVAILABLE = 503,
  HTTP_GATEWAY_TIMEOUT = 504,
};

/* HTTP/2 error codes (RFC 9113 section 7), named here so this module needs
 * no nghttp2 header. */
enum {
  H2_REFUSED_STREAM = 0x7,
  H2_CANCEL = 0x8,
  H2_ENHANCE_YOUR_CALM = 0xb,
  H2_INADEQUATE_SECURITY = 0xc,
};

static const char *const kStatusNames[] = {
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
};

const char *mt_grpc_status_name(int status) {
  if (status < 0 || status > MT_GRPC_STATUS_MAX) return "INVALID_STATUS_CODE";
  return kStatusNames[status];
}

int mt_grpc_metadata_name_valid(const char *name) {
  if (name == NULL || name[0] == '\0') return 0;
  for (const char *p = name; *p; p++) {
    char c = *p;
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || c == '-' || c == '_' || c == '.'))
      return 0;
  }
  return 1;
}

int mt_grpc_metadata_value_valid(const char *value) {
  if (value == NULL) return 0;
  for (const unsigned char *p = (const unsigned char *)value; *p; p++)
    if (*p < 0x20 || *p > 0x7e) return 0;
  return 1;
}

int mt_grpc_content_type_valid(const char *value, size_t len) {
  static const char kGrpc[] = "application/grpc";
  size_t n = sizeof(kGrpc) - 1;
  if (len < n || memcmp(value, kGrpc, n) != 0) return 0;
  return len == n || value[n] == '+' || value[n] == ';';
}

mt_grpc_status mt_grpc_status_from_http(int http_status) {
  switch (http_status) {
    case HTTP_BAD_REQUEST: return MT_GRPC_INTERNAL;
    case HTTP_UNAUTHORIZED: return MT_GRPC_UNAUTHENTICATED;
    case HTTP_FORBIDDEN: return MT_GRPC_PERMISSION_DENIED;
    case HTTP_NOT_FOUND: return MT_GRPC_UNIMPLEMENTED;
    case HTTP_TOO_MANY_REQUESTS:
    case HTTP_BAD_GATEWAY:
    case HTTP_SERVICE_UNAVAILABLE:
    case HTTP_GATEWAY_TIMEOUT: return MT_GRPC_UNAVAILABLE;
    default: return MT_GRPC_UNKNOWN;
  }
}

mt_grpc_status mt_grpc_status_from_h2_error(uint32_t h2_error_code) {
  switch (h2_error_code) {
    case H2_REFUSED_STREAM: return MT_GRPC_UNAVAILABLE;
    case H2_CANCEL: return MT_GRPC_CANCELLED;
    case H2_ENHANCE_YOUR_CALM: return MT_GRPC_RESOURCE_EXHAUSTED;
    case H2_INADEQUATE_SECURITY: return MT_GRPC_PERMISSION_DENIED;
    default: return MT_GRPC_INTERNAL;
  }
}

void mt_grpc_prefix_encode(uint8_t out[MT_GRPC_PREFIX_BYTES], uint32_t message_len) {
  CBB cbb;
  /* Cannot fail: exactly five bytes into a five-byte buffer. */
  CBB_init_fixed(&cbb, out, MT_GRPC_PREFIX_BYTES);
  CBB_add_u8(&cbb, 0);
  CBB_add_u32(&cbb, message_len);
  CBB_cleanup(&cbb);
}

void mt_grpc_decoder_init(mt_grpc_decoder *d, size_t max_message_bytes) {
  memset(d, 0, sizeof(*d));
  d->max_message_bytes = max_message_bytes ? max_message_bytes : MT_GRPC_DEFAULT_MAX_MESSAGE_BYTES;
}

void mt_grpc_decoder_dispose(mt_grpc_decoder *d) {
  free(d->body);
  d->body = NULL;
}

enum { BODY_INITIAL_BYTES = 16 * 1024 };

static mt_grpc_decode_result fail(mt_grpc_decoder *d, mt_grpc_status status, const char *why) {
  d->error = status;
  d->error_message = why;
  return MT_GRPC_DECODE_ERROR;
}

/* Fills the 5-byte prefix from |in|; returns 1 once it is complete. */
static int take_prefix(mt_grpc_decoder *d, CBS *in) {
  size_t want = MT_GRPC_PREFIX_BYTES - d->prefix_have;
  size_t n = CBS_len(in) < want ? CBS_len(in) : want;
  CBS part;
  CBS_get_bytes(in, &part, n);
  memcpy(d->prefix + d->prefix_have, CBS_data(&part), n);
  d->prefix_have += n;
  return d->prefix_have == MT_GRPC_PREFIX_BYTES;
}

/* Validates the complete prefix and records the message length. */
static int parse_prefix(mt_grpc_decoder *d) {
  CBS prefix;
  uint8_t flag = 0;
  uint32_t len = 0;
  CBS_init(&prefix, d->prefix, sizeof(d->prefix));
  if (!CBS_get_u8(&prefix, &flag) || !CBS_get_u32(&prefix, &len)) {
    fail(d, MT_GRPC_INTERNAL, "truncated message prefix");
    return 0;
  }
  if (flag == 1) {
    fail(d, MT_GRPC_INTERNAL, "compressed message, but no compression was negotiated");
    return 0;
  }
  if (flag != 0) {
    fail(d, MT_GRPC_INTERNAL, "invalid compressed-flag byte in message prefix");
    return 0;
  }
  if (len > d->max_message_bytes) {
    fail(d, MT_GRPC_RESOURCE_EXHAUSTED, "message larger than the maximum message size");
    return 0;
  }
  d->message_len = len;
  return 1;
}

/* Grows the assembly buffer geometrically, never past the announced length,
 * so a peer that announces a large message but sends little costs little. */
static int reserve(mt_grpc_decoder *d, size_t need) {
  if (need <= d->body_cap && d->body != NULL) return 1;
  size_t cap = d->body_cap ? d->body_cap : BODY_INITIAL_BYTES;
  while (cap < need) cap *= 2;
  if (cap > d->message_len) cap = d->message_len;
  uint8_t *grown = realloc(d->body, cap ? cap : 1);
  if (grown == NULL) return 0;
  d->body = grown;
  d->body_cap = cap;
  return 1;
}

mt_grpc_decode_result mt_grpc_decoder_next(mt_grpc_decoder *d, CBS *in, const uint8_t **msg,
                                           size_t *msg_len) {
  if (d->error_message != NULL) return MT_GRPC_DECODE_ERROR;
  if (d->body_delivered) {
    free(d->body);
    d->body = NULL;
    d->body_delivered = 0;
  }
  if (d->prefix_have < MT_GRPC_PREFIX_BYTES) {
    if (!take_prefix(d, in)) return MT_GRPC_DECODE_NEED_MORE;
    if (!parse_prefix(d)) return MT_GRPC_DECODE_ERROR;
  }
  CBS body;
  if (d->body == NULL && CBS_len(in) >= d->message_len) {
    /* The whole message is in this chunk: hand it out without copying. */
    CBS_get_bytes(in, &body, d->message_len);
    d->prefix_have = 0;
    *msg = CBS_data(&body);
    *msg_len = CBS_len(&body);
    return MT_GRPC_DECODE_MESSAGE;
  }
  if (d->body == NULL) d->body_have = d->body_cap = 0;
  size_t want = d->message_len - d->body_have;
  size_t n = CBS_len(in) < want ? CBS_len(in) : want;
  if (!reserve(d, d->body_have + n))
    return fail(d, MT_GRPC_RESOURCE_EXHAUSTED, "out of memory for message");
  CBS_get_bytes(in, &body, n);
  memcpy(d->body + d->body_have, CBS_data(&body), n);
  d->body_have += n;
  if (d->body_have < d->message_len) return MT_GRPC_DECODE_NEED_MORE;
  d->prefix_have = 0;
  d->body_delivered = 1;
  *msg = d->body;
  *msg_len = d->message_len;
  return MT_GRPC_DECODE_MESSAGE;
}

mt_grpc_status mt_grpc_decoder_error(const mt_grpc_decoder *d, const char **message) {
  if (message != NULL) *message = d->error_message ? d->error_message : "";
  return d->error_message ? d->error : MT_GRPC_OK;
}

int mt_grpc_decoder_in_message(const mt_grpc_decoder *d) {
  return d->prefix_have > 0 || (d->body != NULL && !d->body_delivered);
}

enum { TIMEOUT_DIGITS_LIMIT = 99999999 };

/* Writes |value| (at most 8 digits) and |unit|. */
static void write_timeout(uint32_t value, char unit, char out[MT_GRPC_TIMEOUT_TEXT_MAX]) {
  char digits[MT_GRPC_TIMEOUT_MAX_DIGITS];
  size_t n = 0;
  do {
    digits[n++] = (char)('0' + value % 10);
    value /= 10;
  } while (value > 0 && n < sizeof(digits));
  size_t o = 0;
  while (n > 0) out[o++] = digits[--n];
  out[o++] = unit;
  out[o] = '\0';
}

void mt_grpc_timeout_format(int64_t ms, char out[MT_GRPC_TIMEOUT_TEXT_MAX]) {
  static const struct {
    char unit;
    int64_t ms;
  } kUnits[] = {{'m', 1}, {'S', 1000}, {'M', 60 * 1000}, {'H', 60 * 60 * 1000}};
  if (ms < 1) ms = 1;
  size_t last = sizeof(kUnits) / sizeof(kUnits[0]) - 1;
  for (size_t i = 0; i <= last; i++) {
    int64_t value = (ms / kUnits[i].ms) + (ms % kUnits[i].ms != 0);
    if (value <= TIMEOUT_DIGITS_LIMIT || i == last) {
      write_timeout(value > TIMEOUT_DIGITS_LIMIT ? TIMEOUT_DIGITS_LIMIT : (uint32_t)value,
                    kUnits[i].unit, out);
      return;
    }
  }
}

int mt_grpc_timeout_parse(const char *text, size_t len, int64_t *out_ms) {
  if (text == NULL || len < 2 || len > MT_GRPC_TIMEOUT_MAX_DIGITS + 1) return 0;
  int64_t value = 0;
  for (size_t i = 0; i + 1 < len; i++) {
    if (text[i] < '0' || text[i] > '9') return 0;
    value = value * 10 + (text[i] - '0');
  }
  switch (text[len - 1]) {
    case 'H': *out_ms = value * 60 * 60 * 1000; return 1;
    case 'M': *out_ms = value * 60 * 1000; return 1;
    case 'S': *out_ms = value * 1000; return 1;
    case 'm': *out_ms = value; return 1;
    case 'u': *out_ms = (value + 999) / 1000; return 1;
    case 'n': *out_ms = (value + 999999) / 1000000; return 1;
    default: return 0;
  }
}

static int needs_escape(unsigned char c) { return c < 0x20 || c > 0x7e || c == '%'; }

size_t mt_grpc_percent_encoded_len(const char *in, size_t in_len) {
  size_t n = 0;
  for (size_t i = 0; i < in_len; i++) n += needs_escape((unsigned char)in[i]) ? 3 : 1;
  return n;
}

size_t mt_grpc_percent_encode(const char *in, size_t in_len, char *out, size_t out_cap) {
  static const char kHex[] = "0123456789ABCDEF";
  size_t o = 0, i = 0;
  for (; i < in_len; i++) {
    unsigned char c = (unsigned char)in[i];
    size_t need = needs_escape(c) ? 3 : 1;
    if (o + need + 1 > out_cap) break;
    if (need == 1) {
      out[o++] = (char)c;
    } else {
      out[o++] = '%';
      out[o++] = kHex[c >> 4];
      out[o++] = kHex[c & 0xf];
    }
  }
  if (out_cap > 0) out[o] = '\0';
  return i;
}

static int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

size_t mt_grpc_percent_decode(const char *in, size_t in_len, char *out, size_t out_cap) {
  size_t o = 0;
  if (out_cap == 0) return 0;
  for (size_t i = 0; i < in_len && o + 1 < out_cap; i++) {
    int hi = -1, lo = -1;
    if (in[i] == '%' && i + 2 < in_len) {
      hi = hex_value(in[i + 1]);
      lo = hex_value(in[i + 2]);
    }
    if (hi >= 0 && lo >= 0) {
      out[o++] = (char)(hi << 4 | lo);
      i += 2;
    } else {
      out[o++] = in[i];
    }
  }
  out[o] = '\0';
  return o;
}
