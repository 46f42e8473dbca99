/* socket_bio: the BIO under every TLS endpoint of the data plane, a socket
 * that reads ahead.
 *
 * BoringSSL reads a record with two exact reads (its 5-byte header, then its
 * body), so a plain socket BIO costs two recv calls per record, and the relay
 * a third that finds the socket empty. This BIO asks the kernel for all it
 * has, up to one buffer of the worker's pool, and serves BoringSSL's reads
 * from it: one recv per burst of records.
 *
 * The buffer is borrowed from the pool only while it holds bytes and given
 * back the moment BoringSSL has taken the last one, so an idle connection
 * holds none. When the pool has none to lend, the BIO reads exactly what it
 * is asked for, straight into BoringSSL's buffer: slower, never a failure.
 *
 * It also knows when it found the socket empty (its last recv returned less
 * than it asked for, and it holds no byte), which lets the relay skip a read
 * that could only return EAGAIN until the loop reports the socket readable.
 *
 * Writes go straight to send(MSG_NOSIGNAL). The BIO belongs to one thread,
 * like its pool; the pool must outlive it. The BIO does not own the fd. */
#ifndef MT_SOCKET_BIO_H
#define MT_SOCKET_BIO_H

#include <openssl/bio.h>
#include <stddef.h>

#include "agent/buffer_pool.h"

#ifdef __cplusplus
extern "C" {
#endif

/* A BIO over |fd| reading ahead into buffers of |pool| (NULL: exact reads,
 * no read-ahead). NULL when out of memory. */
BIO *mt_socket_bio_new(int fd, mt_buffer_pool *pool);

/* 1 when |bio| holds no byte and its last recv found the socket empty (or
 * the peer's FIN); 0 otherwise, and for a BIO that is not a socket_bio. */
int mt_socket_bio_drained(const BIO *bio);

/* Bytes read from the socket and not yet taken by the TLS stack. */
size_t mt_socket_bio_buffered(const BIO *bio);

#ifdef __cplusplus
}
#endif

#endif /* MT_SOCKET_BIO_H */
