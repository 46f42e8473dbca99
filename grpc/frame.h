/* frame: the gRPC-over-HTTP/2 wire pieces that do not depend on a connection.
 *
 * - The length-prefixed message framing carried in DATA frames: a 1-byte
 *   compressed flag (always 0 here: we never negotiate compression), a 4-byte
 *   big-endian length, then the message. The decoder takes DATA in chunks of
 *   any size and yields whole messages; it parses with BoringSSL's CBS.
 * - grpc-status codes and their names, and the HTTP-status / RST_STREAM
 *   error-code mappings of the gRPC spec.
 * - The grpc-timeout header value ("100m", "5S": at most 8 digits and one of
 *   the units H M S m u n) and the percent-encoding of grpc-message.
 * Nothing here allocates except the decoder, for a message that spans chunks
 * (bounded by its max_message_bytes). */
#ifndef MT_GRPC_FRAME_H
#define MT_GRPC_FRAME_H

#include <stddef.h>
#include <stdint.h>

#include <openssl/bytestring.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
  MT_GRPC_OK = 0,
  MT_GRPC_CANCELLED = 1,
  MT_GRPC_UNKNOWN = 2,
  MT_GRPC_INVALID_ARGUMENT = 3,
  MT_GRPC_DEADLINE_EXCEEDED = 4,
  MT_GRPC_NOT_FOUND = 5,
  MT_GRPC_ALREADY_EXISTS = 6,
  MT_GRPC_PERMISSION_DENIED = 7,
  MT_GRPC_RESOURCE_EXHAUSTED = 8,
  MT_GRPC_FAILED_PRECONDITION = 9,
  MT_GRPC_ABORTED = 10,
  MT_GRPC_OUT_OF_RANGE = 11,
  MT_GRPC_UNIMPLEMENTED = 12,
  MT_GRPC_INTERNAL = 13,
  MT_GRPC_UNAVAILABLE = 14,
  MT_GRPC_DATA_LOSS = 15,
  MT_GRPC_UNAUTHENTICATED = 16,
  MT_GRPC_STATUS_MAX = MT_GRPC_UNAUTHENTICATED, /* the largest code, for bounds checks */
} mt_grpc_status;

enum {
  MT_GRPC_PREFIX_BYTES = 5,
  MT_GRPC_DEFAULT_MAX_MESSAGE_BYTES = 4 * 1024 * 1024,
  MT_GRPC_TIMEOUT_MAX_DIGITS = 8,
  /* 8 digits, the unit, the NUL. */
  MT_GRPC_TIMEOUT_TEXT_MAX = MT_GRPC_TIMEOUT_MAX_DIGITS + 2,
};

/* One custom metadata entry (an HTTP/2 header): |name| lowercase, not a
 * pseudo-header; |value| printable ASCII (binary "-bin" values are the
 * caller's base64). Both borrowed. */
typedef struct {
  const char *name;
  const char *value;
} mt_grpc_metadata;

/* 1 when |name| is a legal custom metadata name: non-empty, only 0-9 a-z
 * '-' '_' '.' (so never a pseudo-header). */
int mt_grpc_metadata_name_valid(const char *name);

/* 1 when |value| holds only printable ASCII (0x20..0x7E). */
int mt_grpc_metadata_value_valid(const char *value);

/* 1 when a content-type is gRPC's: "application/grpc", optionally followed by
 * "+subtype" or ";parameters". */
int mt_grpc_content_type_valid(const char *value, size_t len);

/* "OK", "CANCELLED", ...; "INVALID_STATUS_CODE" outside 0..16. */
const char *mt_grpc_status_name(int status);

/* gRPC's mapping of a non-200 HTTP :status (e.g. 401 -> UNAUTHENTICATED,
 * 404 -> UNIMPLEMENTED, 503 -> UNAVAILABLE, anything unlisted -> UNKNOWN). */
mt_grpc_status mt_grpc_status_from_http(int http_status);

/* gRPC's mapping of an RST_STREAM / GOAWAY HTTP/2 error code. */
mt_grpc_status mt_grpc_status_from_h2_error(uint32_t h2_error_code);

/* Writes the 5-byte prefix of a |message_len|-byte uncompressed message. */
void mt_grpc_prefix_encode(uint8_t out[MT_GRPC_PREFIX_BYTES], uint32_t message_len);

/* The incremental decoder. Embedded by its owner; fields are private. */
typedef struct {
  size_t max_message_bytes;
  uint8_t prefix[MT_GRPC_PREFIX_BYTES];
  size_t prefix_have;
  uint32_t message_len; /* valid once the prefix is complete */
  uint8_t *body;        /* assembly buffer for a message split over chunks */
  size_t body_have, body_cap;
  int body_delivered; /* |body| was handed out; freed on the next call */
  mt_grpc_status error;
  const char *error_message; /* static text, NULL while no error */
} mt_grpc_decoder;

typedef enum {
  MT_GRPC_DECODE_NEED_MORE, /* |in| is used up; feed the next chunk */
  MT_GRPC_DECODE_MESSAGE,   /* one whole message is ready */
  MT_GRPC_DECODE_ERROR,     /* see mt_grpc_decoder_error; the decoder stays failed */
} mt_grpc_decode_result;

/* |max_message_bytes| 0 means MT_GRPC_DEFAULT_MAX_MESSAGE_BYTES. */
void mt_grpc_decoder_init(mt_grpc_decoder *d, size_t max_message_bytes);
void mt_grpc_decoder_dispose(mt_grpc_decoder *d);

/* Consumes bytes from |in| up to the end of the next message. On MESSAGE,
 * |*msg|/|*msg_len| name it; the bytes stay valid until the next call on the
 * decoder or until |in|'s buffer goes away, whichever is first. Call again
 * with the rest of |in| until NEED_MORE. Errors: a non-zero compressed flag
 * (INTERNAL: compression is never negotiated) or a length above the limit
 * (RESOURCE_EXHAUSTED). */
mt_grpc_decode_result mt_grpc_decoder_next(mt_grpc_decoder *d, CBS *in, const uint8_t **msg,
                                           size_t *msg_len);

/* After ERROR: the status to report and a static description. */
mt_grpc_status mt_grpc_decoder_error(const mt_grpc_decoder *d, const char **message);

/* 1 when a message has started but not finished (a stream that ends here is
 * truncated). */
int mt_grpc_decoder_in_message(const mt_grpc_decoder *d);

/* Formats a timeout of |ms| milliseconds as a grpc-timeout value, choosing
 * the finest unit that fits in 8 digits (ms, then S, M, H; rounding up).
 * Values below 1 ms are sent as "1m"; above 99999999 hours, capped. */
void mt_grpc_timeout_format(int64_t ms, char out[MT_GRPC_TIMEOUT_TEXT_MAX]);

/* Parses a grpc-timeout value (1..8 ASCII digits and a unit, nothing else)
 * into milliseconds, rounding sub-millisecond units up. Returns 1, or 0 for
 * a malformed value. */
int mt_grpc_timeout_parse(const char *text, size_t len, int64_t *out_ms);

/* Percent-encodes |in| for grpc-message: bytes outside 0x20..0x7E and '%'
 * become "%XX". Writes a NUL-terminated result to |out| (|out_cap| > 0) and
 * never splits an escape; returns the number of input bytes encoded, which
 * is |in_len| unless the output was too small. */
size_t mt_grpc_percent_encode(const char *in, size_t in_len, char *out, size_t out_cap);

/* Bytes mt_grpc_percent_encode needs for |in| (excluding the NUL). */
size_t mt_grpc_percent_encoded_len(const char *in, size_t in_len);

/* Decodes a grpc-message value into |out| (NUL-terminated, truncated to
 * |out_cap| - 1; |in_len| + 1 always suffices). Malformed escapes are kept
 * literally, as the spec asks. Returns the decoded length. */
size_t mt_grpc_percent_decode(const char *in, size_t in_len, char *out, size_t out_cap);

#ifdef __cplusplus
}
#endif

#endif /* MT_GRPC_FRAME_H */
