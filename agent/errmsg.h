/* errmsg: filling a caller's error buffer, the one way every module reports
 * what went wrong (errors travel up as text; only the edges print). */
#ifndef MT_ERRMSG_H
#define MT_ERRMSG_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Formats into |err| (|err_len| bytes); NULL or 0-length buffers are fine. */
void mt_errmsg_set(char *err, size_t err_len, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* BoringSSL's reason for the most recent failure in this thread's error
 * queue; an empty queue means it ran out of memory without saying so. */
const char *mt_errmsg_ssl_reason(void);

#ifdef __cplusplus
}
#endif

#endif /* MT_ERRMSG_H */
