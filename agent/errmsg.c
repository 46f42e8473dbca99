#include "agent/errmsg.h"

#include <openssl/err.h>
#include <stdarg.h>
#include <stdio.h>

void mt_errmsg_set(char *err, size_t err_len, const char *fmt, ...) {
  if (err == NULL || err_len == 0) return;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(err, err_len, fmt, ap);
  va_end(ap);
}

const char *mt_errmsg_ssl_reason(void) {
  const char *reason = ERR_reason_error_string(ERR_peek_last_error());
  return reason != NULL ? reason : "out of memory";
}
