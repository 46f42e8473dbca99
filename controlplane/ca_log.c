/* ca_log.c: diagnostic log, JSON access log and counters of mtls-ca. */
#include "controlplane/ca_log.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

enum {
  LINE_MAX_BYTES = 8192,
  TIME_TEXT_MAX = 32,
  MS_PER_SECOND = 1000,
  NS_PER_MS = 1000000,
  STATUS_COUNT = MT_GRPC_STATUS_MAX + 1,
  ACCESS_LOG_MODE = 0640,
};

static const char kOtherReason[] = "other";

typedef struct {
  char name[MT_CA_LOG_REASON_MAX];
  uint64_t count;
} reason_counter;

struct mt_ca_log {
  int access_fd;
  int access_fd_owned;
  uint64_t events[MT_CA_EV_COUNT];
  uint64_t calls[MT_CA_METHOD_COUNT][STATUS_COUNT];
  reason_counter reasons[MT_CA_LOG_MAX_REASONS];
  size_t num_reasons;
};

static const char *const kEventNames[MT_CA_EV_COUNT] = {
    [MT_CA_EV_CERTS_ISSUED] = "certs_issued",
    [MT_CA_EV_WATCH_STREAMS_OPENED] = "watch_streams_opened",
    [MT_CA_EV_WATCH_STREAMS_ENDED] = "watch_streams_ended",
    [MT_CA_EV_SNAPSHOTS_SENT] = "snapshots_sent",
    [MT_CA_EV_SNAPSHOT_DELTAS_SENT] = "snapshot_deltas_sent",
    [MT_CA_EV_SNAPSHOT_BYTES_SENT] = "snapshot_bytes_sent",
    [MT_CA_EV_MESH_LOADS] = "mesh_loads",
    [MT_CA_EV_MESH_LOAD_FAILURES] = "mesh_load_failures",
    [MT_CA_EV_ISSUER_RELOADS] = "issuer_reloads",
    [MT_CA_EV_ISSUER_RELOAD_FAILURES] = "issuer_reload_failures",
    [MT_CA_EV_TOKEN_KEY_RELOADS] = "token_key_reloads",
    [MT_CA_EV_TOKEN_KEY_RELOAD_FAILURES] = "token_key_reload_failures",
    [MT_CA_EV_TOKEN_ISSUER_RELOADS] = "token_issuer_reloads",
    [MT_CA_EV_TOKEN_ISSUER_RELOAD_FAILURES] = "token_issuer_reload_failures",
    [MT_CA_EV_TLS_RELOADS] = "tls_reloads",
    [MT_CA_EV_TLS_RELOAD_FAILURES] = "tls_reload_failures",
    [MT_CA_EV_CONNECTION_ERRORS] = "connection_errors",
    [MT_CA_EV_IMPERSONATED_CERTS_ISSUED] = "impersonated_certs_issued",
    [MT_CA_EV_WORKLOADS_LOADS] = "workloads_loads",
    [MT_CA_EV_WORKLOADS_LOAD_FAILURES] = "workloads_load_failures",
    [MT_CA_EV_DESTINATIONS_WANTED] = "destinations_wanted",
    [MT_CA_EV_ON_DEMAND_ROUNDS_SKIPPED] = "on_demand_rounds_skipped",
    [MT_CA_EV_ISTIO_OBJECTS_APPLIED] = "istio_objects_applied",
    [MT_CA_EV_ISTIO_OBJECTS_REDUCED] = "istio_objects_reduced",
    [MT_CA_EV_ISTIO_OBJECTS_REFUSED] = "istio_objects_refused",
    [MT_CA_EV_JWT_SVIDS_SIGNED] = "jwt_svids_signed",
    [MT_CA_EV_IMPERSONATED_JWT_SVIDS_SIGNED] = "impersonated_jwt_svids_signed",
    [MT_CA_EV_JWT_SVID_REFUSALS] = "jwt_svid_refusals",
    [MT_CA_EV_JWT_KEY_ROTATIONS] = "jwt_key_rotations",
    [MT_CA_EV_JWT_KEY_RELOAD_FAILURES] = "jwt_key_reload_failures",
    [MT_CA_EV_JWT_BUNDLES_SENT] = "jwt_bundles_sent",
};

static const char *const kMethodNames[MT_CA_METHOD_COUNT] = {
    [MT_CA_METHOD_CREATE_CERTIFICATE] = "CreateCertificate",
    [MT_CA_METHOD_WATCH] = "Watch",
    [MT_CA_METHOD_WANT] = "Want",
    [MT_CA_METHOD_NODE_INFO] = "NodeInfo",
    [MT_CA_METHOD_SIGN_JWT_SVID] = "SignJwtSvid",
    [MT_CA_METHOD_WATCH_JWT_BUNDLES] = "WatchJwtBundles",
};

static const char *const kMethodPaths[MT_CA_METHOD_COUNT] = {
    [MT_CA_METHOD_CREATE_CERTIFICATE] = "/istio.v1.auth.IstioCertificateService/CreateCertificate",
    [MT_CA_METHOD_WATCH] = "/mtlsd.mesh.v1.MeshConfig/Watch",
    [MT_CA_METHOD_WANT] = "/mtlsd.mesh.v1.MeshConfig/Want",
    [MT_CA_METHOD_NODE_INFO] = "/mtlsd.node.v1.NodeInfo/Get",
    [MT_CA_METHOD_SIGN_JWT_SVID] = "/mtlsd.jwt.v1.JwtSvidService/SignJwtSvid",
    [MT_CA_METHOD_WATCH_JWT_BUNDLES] = "/mtlsd.jwt.v1.JwtSvidService/WatchJwtBundles",
};

const char *mt_ca_method_path(mt_ca_method method) {
  return method < MT_CA_METHOD_COUNT ? kMethodPaths[method] : "-";
}

mt_ca_log *mt_ca_log_new(const char *access_log_path) {
  mt_ca_log *log = calloc(1, sizeof(*log));
  if (log == NULL) return NULL;
  if (strcmp(access_log_path, "-") == 0) {
    log->access_fd = STDOUT_FILENO;
    return log;
  }
  log->access_fd =
      open(access_log_path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, ACCESS_LOG_MODE);
  if (log->access_fd < 0) {
    int saved = errno;
    free(log);
    errno = saved;
    return NULL;
  }
  log->access_fd_owned = 1;
  return log;
}

void mt_ca_log_free(mt_ca_log *log) {
  if (log == NULL) return;
  if (log->access_fd_owned) close(log->access_fd);
  free(log);
}

/* Writes all of |buf|; a full disk or closed pipe drops the line (the log
 * must never stop the CA). */
static void write_all(int fd, const char *buf, size_t len) {
  while (len > 0) {
    ssize_t n = write(fd, buf, len);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;
    buf += n;
    len -= (size_t)n;
  }
}

static int64_t now_unix_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * MS_PER_SECOND + ts.tv_nsec / NS_PER_MS;
}

/* "2026-11-25T16:39:07.005Z" */
static void format_time(int64_t ms, char out[TIME_TEXT_MAX]) {
  time_t s = (time_t)(ms / MS_PER_SECOND);
  struct tm tm;
  gmtime_r(&s, &tm);
  size_t n = strftime(out, TIME_TEXT_MAX, "%Y-%m-%dT%H:%M:%S", &tm);
  snprintf(out + n, TIME_TEXT_MAX - n, ".%03dZ", (int)(ms % MS_PER_SECOND));
}

static void vlog(const char *level, const char *fmt, va_list ap) {
  char line[LINE_MAX_BYTES];
  char when[TIME_TEXT_MAX];
  format_time(now_unix_ms(), when);
  int n = snprintf(line, sizeof(line), "%s mtls-ca %s: ", when, level);
  if (n < 0) return;
  size_t pos = (size_t)n < sizeof(line) ? (size_t)n : sizeof(line) - 1;
  int m = vsnprintf(line + pos, sizeof(line) - pos, fmt, ap);
  if (m > 0) pos += (size_t)m < sizeof(line) - pos ? (size_t)m : sizeof(line) - pos - 1;
  line[pos++] = '\n';
  write_all(STDERR_FILENO, line, pos);
}

void mt_ca_outcome_set(mt_ca_outcome *out, mt_grpc_status status, const char *reason,
                       const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  out->status = status;
  out->reason = reason;
  vsnprintf(out->message, sizeof(out->message), fmt, ap);
  va_end(ap);
}

int64_t mt_ca_log_clock_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * MS_PER_SECOND + ts.tv_nsec / NS_PER_MS;
}

void mt_ca_log_info(mt_ca_log *log, const char *fmt, ...) {
  (void)log;
  va_list ap;
  va_start(ap, fmt);
  vlog("info", fmt, ap);
  va_end(ap);
}

void mt_ca_log_warn(mt_ca_log *log, const char *fmt, ...) {
  (void)log;
  va_list ap;
  va_start(ap, fmt);
  vlog("warn", fmt, ap);
  va_end(ap);
}

void mt_ca_log_error(mt_ca_log *log, const char *fmt, ...) {
  (void)log;
  va_list ap;
  va_start(ap, fmt);
  vlog("error", fmt, ap);
  va_end(ap);
}

/* ---- JSON -------------------------------------------------------------- */

/* A bounded output buffer; writes past the end are dropped, never overflow. */
typedef struct {
  char *buf;
  size_t cap, pos;
} out_buf;

static void put_raw(out_buf *o, const char *s, size_t len) {
  if (o->cap == 0) return;
  size_t room = o->cap - 1 - o->pos;
  size_t n = len < room ? len : room;
  memcpy(o->buf + o->pos, s, n);
  o->pos += n;
  o->buf[o->pos] = '\0';
}

static void put_text(out_buf *o, const char *s) { put_raw(o, s, strlen(s)); }

/* JSON string contents: quotes, backslashes and control bytes escaped.
 * Bytes >= 0x80 pass through (UTF-8 stays UTF-8). */
static void put_escaped(out_buf *o, const char *s) {
  static const char kHex[] = "0123456789abcdef";
  for (const unsigned char *p = (const unsigned char *)(s ? s : ""); *p; p++) {
    char esc[7];
    if (*p == '"' || *p == '\\') {
      esc[0] = '\\';
      esc[1] = (char)*p;
      put_raw(o, esc, 2);
    } else if (*p < 0x20 || *p == 0x7f) {
      memcpy(esc, "\\u00", 4);
      esc[4] = kHex[*p >> 4];
      esc[5] = kHex[*p & 0xf];
      put_raw(o, esc, 6);
    } else {
      put_raw(o, (const char *)p, 1);
    }
  }
}

static void put_field_str(out_buf *o, const char *name, const char *value, int first) {
  if (!first) put_text(o, ",");
  put_text(o, "\"");
  put_text(o, name);
  put_text(o, "\":\"");
  put_escaped(o, value);
  put_text(o, "\"");
}

static void put_field_int(out_buf *o, const char *name, int64_t value) {
  char num[32];
  snprintf(num, sizeof(num), "%lld", (long long)value);
  put_text(o, ",\"");
  put_text(o, name);
  put_text(o, "\":");
  put_text(o, num);
}

size_t mt_ca_log_format_access(const mt_ca_access_entry *e, int64_t now_ms, char *out, size_t cap) {
  out_buf o = {out, cap, 0};
  char when[TIME_TEXT_MAX];
  if (cap > 0) out[0] = '\0';
  format_time(now_ms, when);
  put_text(&o, "{");
  put_field_str(&o, "time", when, 1);
  put_field_str(&o, "method", mt_ca_method_path(e->method), 0);
  put_field_str(&o, "peer", e->peer, 0);
  put_field_str(&o, "caller", e->caller, 0);
  put_field_str(&o, "identity", e->identity, 0);
  put_field_str(&o, "impersonated", e->impersonated, 0);
  put_field_str(&o, "node", e->node, 0);
  put_field_str(&o, "status", mt_grpc_status_name((int)e->status), 0);
  put_field_int(&o, "code", (int64_t)e->status);
  put_field_str(&o, "reason", e->reason, 0);
  put_field_str(&o, "message", e->message, 0);
  put_field_str(&o, "serial", e->serial, 0);
  put_field_int(&o, "ttl", e->ttl_s);
  put_field_str(&o, "version", e->version, 0);
  put_field_int(&o, "duration_ms", e->duration_ms);
  put_text(&o, "}");
  return o.pos;
}

/* ---- counters ---------------------------------------------------------- */

static void count_reason(mt_ca_log *log, const char *reason) {
  for (size_t i = 0; i < log->num_reasons; i++) {
    if (strcmp(log->reasons[i].name, reason) == 0) {
      log->reasons[i].count++;
      return;
    }
  }
  /* The last slot is kept for "other", so the table can never overflow. */
  if (log->num_reasons == MT_CA_LOG_MAX_REASONS - 1) reason = kOtherReason;
  if (log->num_reasons == MT_CA_LOG_MAX_REASONS) {
    log->reasons[MT_CA_LOG_MAX_REASONS - 1].count++;
    return;
  }
  reason_counter *r = &log->reasons[log->num_reasons++];
  snprintf(r->name, sizeof(r->name), "%s", reason);
  r->count = 1;
}

void mt_ca_log_access(mt_ca_log *log, const mt_ca_access_entry *e) {
  char line[LINE_MAX_BYTES];
  size_t n = mt_ca_log_format_access(e, now_unix_ms(), line, sizeof(line) - 1);
  line[n++] = '\n';
  write_all(log->access_fd, line, n);
  if (e->method < MT_CA_METHOD_COUNT && (int)e->status >= 0 &&
      (int)e->status <= (int)MT_GRPC_STATUS_MAX)
    log->calls[e->method][e->status]++;
  if (e->refused && e->reason != NULL && e->reason[0] != '\0') count_reason(log, e->reason);
}

void mt_ca_log_count(mt_ca_log *log, mt_ca_event event) { mt_ca_log_add(log, event, 1); }

void mt_ca_log_add(mt_ca_log *log, mt_ca_event event, uint64_t n) {
  if (event < MT_CA_EV_COUNT) log->events[event] += n;
}

uint64_t mt_ca_log_counter(const mt_ca_log *log, mt_ca_event event) {
  return event < MT_CA_EV_COUNT ? log->events[event] : 0;
}

uint64_t mt_ca_log_calls(const mt_ca_log *log, mt_ca_method method, mt_grpc_status status) {
  if (method >= MT_CA_METHOD_COUNT || (int)status < 0 || (int)status > (int)MT_GRPC_STATUS_MAX)
    return 0;
  return log->calls[method][status];
}

/* Prometheus text format, so the same lines can later be served as metrics. */
void mt_ca_log_dump_counters(const mt_ca_log *log, FILE *out) {
  fprintf(out, "# mtls-ca counters\n");
  for (int m = 0; m < MT_CA_METHOD_COUNT; m++)
    for (int s = 0; s < STATUS_COUNT; s++)
      if (log->calls[m][s] != 0)
        fprintf(out, "mtls_ca_calls_total{method=\"%s\",status=\"%s\"} %llu\n", kMethodNames[m],
                mt_grpc_status_name(s), (unsigned long long)log->calls[m][s]);
  for (size_t i = 0; i < log->num_reasons; i++)
    fprintf(out, "mtls_ca_refusals_total{reason=\"%s\"} %llu\n", log->reasons[i].name,
            (unsigned long long)log->reasons[i].count);
  for (int e = 0; e < MT_CA_EV_COUNT; e++)
    fprintf(out, "mtls_ca_%s_total %llu\n", kEventNames[e], (unsigned long long)log->events[e]);
  /* Each line is its own write on unbuffered stderr: the end line tells a
   * reader (a person, a test) that the dump is whole. */
  fprintf(out, "# end of mtls-ca counters\n");
  fflush(out);
}
