/* log: the agent's diagnostic log (stderr, one line per event) and the JSON
 * access log (one line per connection).
 *
 * Both are written with a single write(2) per line so lines from different
 * worker threads never interleave. The access-log sink is process-wide and
 * set once at start-up, before workers run. */
#ifndef MT_LOG_H
#define MT_LOG_H

#include <stddef.h>
#include <stdint.h>

#include "agent/config.h"

#ifdef __cplusplus
extern "C" {
#endif

void mt_log_set_level(mt_log_level level);
void mt_log(mt_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define MT_LOG_D(...) mt_log(MT_LOG_DEBUG, __VA_ARGS__)
#define MT_LOG_I(...) mt_log(MT_LOG_INFO, __VA_ARGS__)
#define MT_LOG_W(...) mt_log(MT_LOG_WARN, __VA_ARGS__)
#define MT_LOG_E(...) mt_log(MT_LOG_ERROR, __VA_ARGS__)

/* One connection's outcome; strings are borrowed for the call. */
typedef struct {
  const char *direction;   /* "inbound" / "outbound" */
  const char *source;      /* "ip:port" */
  const char *destination; /* original destination "ip:port" */
  const char *endpoint;    /* the Service endpoint chosen by a node agent, "" (or NULL) for none */
  const char *peer_id;     /* "" when unknown */
  const char *local_id;
  const char *decision;    /* "allow" / "deny" */
  const char *rule;        /* "" when no rule was involved */
  const char *reason;      /* stable machine-readable reason code */
  const char *detail;      /* free text, may be "" */
  const char *tls_version; /* "" when no handshake completed */
  const char *cipher;
  const char *peer_serial;      /* hex, "" when unknown */
  const char *tls_session;      /* "full" / "resumed", "" when no handshake completed */
  uint64_t bytes_to_upstream;   /* from the accepted side to the connected side */
  uint64_t bytes_to_downstream; /* the other way */
  uint64_t duration_ms;
  uint64_t held_ms; /* of duration_ms, time spent waiting for a workload certificate */
} mt_access_record;

/* Opens the access-log sink: a file path (append) or "-" for stdout.
 * Returns 1, or 0 with errno set. */
int mt_access_log_open(const char *path);
void mt_access_log_close(void);
void mt_access_log_write(const mt_access_record *rec);

/* Appends |s| JSON-escaped (without quotes) to buf at *pos; never overflows,
 * truncates instead. Exposed for tests. */
void mt_json_escape(char *buf, size_t cap, size_t *pos, const char *s);

#ifdef __cplusplus
}
#endif

#endif /* MT_LOG_H */
