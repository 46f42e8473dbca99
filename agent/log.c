/* log.c: diagnostic and access logs. Each line is formatted into a stack
 * buffer and written with one write(2), which keeps lines whole across threads
 * (O_APPEND files, pipes up to PIPE_BUF). */
#include "agent/log.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

enum { LOG_LINE_MAX = 4096, ACCESS_LINE_MAX = 8192 };

static int g_level = MT_LOG_INFO; /* read by every thread: atomic access only */
static int g_access_fd = -1;

void mt_log_set_level(mt_log_level level) {
  __atomic_store_n(&g_level, (int)level, __ATOMIC_RELAXED);
}

static size_t format_time(char *buf, size_t len) {
  struct timespec ts;
  struct tm tm;
  clock_gettime(CLOCK_REALTIME, &ts);
  gmtime_r(&ts.tv_sec, &tm);
  size_t n = strftime(buf, len, "%Y-%m-%dT%H:%M:%S", &tm);
  int m = snprintf(buf + n, len - n, ".%03ldZ", ts.tv_nsec / 1000000);
  return n + (m > 0 ? (size_t)m : 0);
}

static void write_all(int fd, const char *buf, size_t len) {
  while (len > 0) {
    ssize_t n = write(fd, buf, len);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return; /* a broken log sink must not take the data path down */
    buf += n;
    len -= (size_t)n;
  }
}

void mt_log(mt_log_level level, const char *fmt, ...) {
  static const char *const names[] = {"debug", "info", "warn", "error"};
  if ((int)level < __atomic_load_n(&g_level, __ATOMIC_RELAXED)) return;
  char line[LOG_LINE_MAX];
  size_t n = format_time(line, sizeof(line));
  int m = snprintf(line + n, sizeof(line) - n, " %s mtlsd: ", names[level]);
  n += m > 0 ? (size_t)m : 0;
  va_list ap;
  va_start(ap, fmt);
  m = vsnprintf(line + n, sizeof(line) - n - 1, fmt, ap);
  va_end(ap);
  if (m > 0) n += (size_t)m < sizeof(line) - n - 1 ? (size_t)m : sizeof(line) - n - 2;
  line[n++] = '\n';
  write_all(STDERR_FILENO, line, n);
}

int mt_access_log_open(const char *path) {
  mt_access_log_close();
  if (strcmp(path, "-") == 0) {
    g_access_fd = STDOUT_FILENO;
    return 1;
  }
  g_access_fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
  return g_access_fd >= 0;
}

void mt_access_log_close(void) {
  if (g_access_fd > STDERR_FILENO) close(g_access_fd);
  g_access_fd = -1;
}

void mt_json_escape(char *buf, size_t cap, size_t *pos, const char *s) {
  static const char hex[] = "0123456789abcdef";
  for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
    char esc[7];
    size_t len = 1;
    esc[0] = (char)*p;
    if (*p == '"' || *p == '\\') {
      esc[0] = '\\';
      esc[1] = (char)*p;
      len = 2;
    } else if (*p < 0x20 || *p == 0x7f) {
      memcpy(esc, "\\u00", 4);
      esc[4] = hex[*p >> 4];
      esc[5] = hex[*p & 0xf];
      len = 6;
    }
    if (*pos + len >= cap) return;
    memcpy(buf + *pos, esc, len);
    *pos += len;
  }
}

static void put_raw(char *buf, size_t cap, size_t *pos, const char *s) {
  size_t len = strlen(s);
  if (*pos + len >= cap) return;
  memcpy(buf + *pos, s, len);
  *pos += len;
}

static void put_str(char *buf, size_t cap, size_t *pos, const char *key, const char *value) {
  put_raw(buf, cap, pos, ",\"");
  put_raw(buf, cap, pos, key);
  put_raw(buf, cap, pos, "\":\"");
  mt_json_escape(buf, cap, pos, value ? value : "");
  put_raw(buf, cap, pos, "\"");
}

static void put_u64(char *buf, size_t cap, size_t *pos, const char *key, uint64_t value) {
  char num[48];
  snprintf(num, sizeof(num), ",\"%s\":%llu", key, (unsigned long long)value);
  put_raw(buf, cap, pos, num);
}

void mt_access_log_write(const mt_access_record *r) {
  if (g_access_fd < 0) return;
  char line[ACCESS_LINE_MAX];
  char now[64];
  size_t pos = 0;
  format_time(now, sizeof(now));
  put_raw(line, sizeof(line), &pos, "{\"time\":\"");
  put_raw(line, sizeof(line), &pos, now);
  put_raw(line, sizeof(line), &pos, "\"");
  put_str(line, sizeof(line), &pos, "direction", r->direction);
  put_str(line, sizeof(line), &pos, "source", r->source);
  put_str(line, sizeof(line), &pos, "destination", r->destination);
  put_str(line, sizeof(line), &pos, "endpoint", r->endpoint);
  put_str(line, sizeof(line), &pos, "peer_id", r->peer_id);
  put_str(line, sizeof(line), &pos, "local_id", r->local_id);
  put_str(line, sizeof(line), &pos, "decision", r->decision);
  put_str(line, sizeof(line), &pos, "rule", r->rule);
  put_str(line, sizeof(line), &pos, "reason", r->reason);
  put_str(line, sizeof(line), &pos, "detail", r->detail);
  put_str(line, sizeof(line), &pos, "tls_version", r->tls_version);
  put_str(line, sizeof(line), &pos, "cipher", r->cipher);
  put_str(line, sizeof(line), &pos, "peer_serial", r->peer_serial);
  put_str(line, sizeof(line), &pos, "tls_session", r->tls_session);
  put_u64(line, sizeof(line), &pos, "bytes_to_upstream", r->bytes_to_upstream);
  put_u64(line, sizeof(line), &pos, "bytes_to_downstream", r->bytes_to_downstream);
  put_u64(line, sizeof(line), &pos, "duration_ms", r->duration_ms);
  put_u64(line, sizeof(line), &pos, "held_ms", r->held_ms);
  /* Always close the object, even if a field was truncated. */
  if (pos > sizeof(line) - 3) pos = sizeof(line) - 3;
  line[pos++] = '}';
  line[pos++] = '\n';
  write_all(g_access_fd, line, pos);
}
