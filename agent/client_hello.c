/* client_hello.c: ClientHello parsing (RFC 8446 §4.1.2, RFC 7301) with CBS. */
#include "agent/client_hello.h"

#include <openssl/bytestring.h>
#include <string.h>

enum {
  RECORD_HANDSHAKE = 22,
  HANDSHAKE_CLIENT_HELLO = 1,
  EXTENSION_ALPN = 16,
  RANDOM_BYTES = 32,
};

static int alpn_offers(CBS *ext, const char *token) {
  CBS list, name;
  size_t token_len = strlen(token);
  if (!CBS_get_u16_length_prefixed(ext, &list) || CBS_len(ext) != 0) return -1;
  while (CBS_len(&list) > 0) {
    if (!CBS_get_u8_length_prefixed(&list, &name) || CBS_len(&name) == 0) return -1;
    if (CBS_len(&name) == token_len && memcmp(CBS_data(&name), token, token_len) == 0) return 1;
  }
  return 0;
}

/* Walks the extensions; 1 mesh, 0 other, -1 malformed. */
static int extensions_offer(CBS *extensions, const char *token) {
  int found = 0;
  while (CBS_len(extensions) > 0) {
    uint16_t type;
    CBS body;
    if (!CBS_get_u16(extensions, &type) || !CBS_get_u16_length_prefixed(extensions, &body))
      return -1;
    if (type != EXTENSION_ALPN) continue;
    int r = alpn_offers(&body, token);
    if (r < 0) return -1;
    found |= r;
  }
  return found;
}

static mt_hello_kind parse_hello(CBS *hello, const char *token) {
  uint16_t version;
  CBS random, session_id, suites, compression, extensions;
  if (!CBS_get_u16(hello, &version) || !CBS_get_bytes(hello, &random, RANDOM_BYTES) ||
      !CBS_get_u8_length_prefixed(hello, &session_id) ||
      !CBS_get_u16_length_prefixed(hello, &suites) ||
      !CBS_get_u8_length_prefixed(hello, &compression))
    return MT_HELLO_MALFORMED;
  if (CBS_len(hello) == 0) return MT_HELLO_TLS_OTHER; /* no extensions at all */
  if (!CBS_get_u16_length_prefixed(hello, &extensions) || CBS_len(hello) != 0)
    return MT_HELLO_MALFORMED;
  int r = extensions_offer(&extensions, token);
  return r < 0 ? MT_HELLO_MALFORMED : r ? MT_HELLO_TLS_MESH : MT_HELLO_TLS_OTHER;
}

mt_hello_kind mt_client_hello_classify(const uint8_t *data, size_t len, const char *mesh_alpn) {
  CBS in, record, hello;
  uint8_t type, hs_type;
  uint16_t version;
  uint32_t hs_len;
  CBS_init(&in, data, len);
  if (!CBS_get_u8(&in, &type)) return MT_HELLO_INCOMPLETE;
  if (type != RECORD_HANDSHAKE) return MT_HELLO_NOT_TLS;
  if (!CBS_get_u16(&in, &version)) return MT_HELLO_INCOMPLETE;
  if ((version >> 8) != 3) return MT_HELLO_NOT_TLS;
  if (!CBS_get_u16_length_prefixed(&in, &record)) return MT_HELLO_INCOMPLETE;
  /* The ClientHello must fit in this first record (it does for every
   * client we know; a fragmented one is judged as incomplete). */
  if (!CBS_get_u8(&record, &hs_type) || hs_type != HANDSHAKE_CLIENT_HELLO ||
      !CBS_get_u24(&record, &hs_len))
    return MT_HELLO_MALFORMED;
  if (hs_len > CBS_len(&record)) return MT_HELLO_INCOMPLETE;
  if (!CBS_get_bytes(&record, &hello, hs_len)) return MT_HELLO_MALFORMED;
  return parse_hello(&hello, mesh_alpn);
}
