/* client_hello: a look at the first bytes of an inbound connection, before
 * anything is consumed. Is it a TLS ClientHello, and does its ALPN list
 * carry the mesh token? That is how a permissive port tells a mesh peer
 * (mTLS) from a plaintext or non-mesh client. Parsed with CBS only. */
#ifndef MT_CLIENT_HELLO_H
#define MT_CLIENT_HELLO_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
  MT_HELLO_NOT_TLS,    /* not a TLS handshake record: plaintext */
  MT_HELLO_INCOMPLETE, /* starts like TLS, but the ClientHello is not all here */
  MT_HELLO_TLS_MESH,   /* a ClientHello whose ALPN offers the mesh token */
  MT_HELLO_TLS_OTHER,  /* a ClientHello without the mesh token */
  MT_HELLO_MALFORMED,  /* a handshake record that is not a valid ClientHello */
} mt_hello_kind;

/* Classifies |data| (|len| bytes peeked from the socket). |mesh_alpn| is
 * the token to look for, e.g. "mtlsd". */
mt_hello_kind mt_client_hello_classify(const uint8_t *data, size_t len, const char *mesh_alpn);

#ifdef __cplusplus
}
#endif

#endif /* MT_CLIENT_HELLO_H */
