/* ca_log: mtls-ca's three outputs about itself: the diagnostic log (stderr,
 * one timestamped line per event), the access log (one JSON line per call,
 * to a file or stdout), and the counters kept in memory (printed on SIGUSR1
 * and at exit).
 *
 * Single-threaded: everything runs on the server's loop. Each line goes out
 * with one write(2) (O_APPEND for files), so lines never interleave with
 * another writer's. */
#ifndef MT_CP_CA_LOG_H
#define MT_CP_CA_LOG_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "grpc/frame.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The methods mtls-ca serves, for counters and the access log. */
typedef enum {
  MT_CA_METHOD_CREATE_CERTIFICATE,
  MT_CA_METHOD_WATCH,
  MT_CA_METHOD_WANT,
  MT_CA_METHOD_NODE_INFO, /* /mtlsd.node.v1.NodeInfo/Get */
  MT_CA_METHOD_SIGN_JWT_SVID,
  MT_CA_METHOD_WATCH_JWT_BUNDLES,
  MT_CA_METHOD_COUNT,
} mt_ca_method;

/* Events counted besides the calls themselves. */
typedef enum {
  MT_CA_EV_CERTS_ISSUED,
  MT_CA_EV_WATCH_STREAMS_OPENED,
  MT_CA_EV_WATCH_STREAMS_ENDED,
  MT_CA_EV_SNAPSHOTS_SENT,
  MT_CA_EV_SNAPSHOT_DELTAS_SENT, /* of snapshots_sent: deltas */
  MT_CA_EV_SNAPSHOT_BYTES_SENT,  /* bytes of snapshots and deltas queued */
  MT_CA_EV_MESH_LOADS,           /* a new snapshot version came into force */
  MT_CA_EV_MESH_LOAD_FAILURES,   /* a changed mesh file was refused */
  MT_CA_EV_ISSUER_RELOADS,
  MT_CA_EV_ISSUER_RELOAD_FAILURES,
  MT_CA_EV_TOKEN_KEY_RELOADS,
  MT_CA_EV_TOKEN_KEY_RELOAD_FAILURES,
  MT_CA_EV_TOKEN_ISSUER_RELOADS,         /* a discovery document was accepted */
  MT_CA_EV_TOKEN_ISSUER_RELOAD_FAILURES, /* a discovery fetch failed or was refused */
  MT_CA_EV_TLS_RELOADS,
  MT_CA_EV_TLS_RELOAD_FAILURES,
  MT_CA_EV_CONNECTION_ERRORS,         /* TLS failures, garbage, timeouts, limits */
  MT_CA_EV_IMPERSONATED_CERTS_ISSUED, /* of certs_issued: to a node agent for a workload */
  MT_CA_EV_WORKLOADS_LOADS,           /* a workload registry came into force */
  MT_CA_EV_WORKLOADS_LOAD_FAILURES,   /* a changed workloads file was refused */
  MT_CA_EV_DESTINATIONS_WANTED,       /* addresses added by Want to streams */
  MT_CA_EV_ON_DEMAND_ROUNDS_SKIPPED,  /* on-demand streams a round left alone unbuilt */
  /* Istio objects (AuthorizationPolicy, PeerAuthentication) that came to
   * be in force as written, reduced for L4, or refused (istio_source.h):
   * counted at each status change of an object. */
  MT_CA_EV_ISTIO_OBJECTS_APPLIED,
  MT_CA_EV_ISTIO_OBJECTS_REDUCED,
  MT_CA_EV_ISTIO_OBJECTS_REFUSED,
  MT_CA_EV_JWT_SVIDS_SIGNED,
  MT_CA_EV_IMPERSONATED_JWT_SVIDS_SIGNED, /* of jwt_svids_signed: to a node agent for a workload */
  MT_CA_EV_JWT_SVID_REFUSALS,             /* SignJwtSvid calls refused (reasons: refusals_total) */
  MT_CA_EV_JWT_KEY_ROTATIONS,             /* a new JWT-SVID signing key came into force */
  MT_CA_EV_JWT_KEY_RELOAD_FAILURES,       /* a changed jwt_svid.signing_key_file was refused */
  MT_CA_EV_JWT_BUNDLES_SENT,              /* JwtBundles messages queued on WatchJwtBundles */
  MT_CA_EV_COUNT,
} mt_ca_event;

/* Refusal reasons counted by name (auth reasons, "bad_request", ...). */
enum { MT_CA_LOG_MAX_REASONS = 32, MT_CA_LOG_REASON_MAX = 32 };

/* One finished (or refused) call. Strings are borrowed for the call; NULL
 * and "" both mean "none". */
typedef struct {
  mt_ca_method method;
  const char *peer;   /* "ip:port" */
  const char *caller; /* the caller's SPIFFE ID once authenticated */
  /* The identity the call was authorized for: the caller's own, or (for a
   * node agent, CreateCertificate) the workload it asked for. */
  const char *identity;
  const char *impersonated; /* CreateCertificate: the ImpersonatedIdentity asked for */
  const char *node;         /* the node its token names (kubernetes.io.node.name) */
  mt_grpc_status status;
  const char *reason;  /* stable code: "ok", "expired", "bad_csr", ... */
  const char *message; /* what the caller was told */
  const char *serial;  /* issued certificate serial, hex */
  int64_t ttl_s;       /* issued certificate lifetime, 0 when none */
  const char *version; /* Watch: the last snapshot version sent */
  int64_t duration_ms;
  int refused; /* the server turned the call down (counted by reason) */
} mt_ca_access_entry;

typedef struct mt_ca_log mt_ca_log;

/* How a call ends, as every service builds it up for its reply and its
 * access-log line. */
enum { MT_CA_OUTCOME_MESSAGE_MAX = 640 };
typedef struct {
  mt_grpc_status status;
  const char *reason; /* static, stable: "ok", "bad_request", an auth reason... */
  char message[MT_CA_OUTCOME_MESSAGE_MAX]; /* what the caller is told */
} mt_ca_outcome;

void mt_ca_outcome_set(mt_ca_outcome *out, mt_grpc_status status, const char *reason,
                       const char *fmt, ...) __attribute__((format(printf, 4, 5)));

/* Monotonic milliseconds, for mt_ca_access_entry.duration_ms. */
int64_t mt_ca_log_clock_ms(void);

/* |access_log_path|: a file (created if missing, appended) or "-" for
 * stdout. Returns NULL with errno set. */
mt_ca_log *mt_ca_log_new(const char *access_log_path);
void mt_ca_log_free(mt_ca_log *log); /* accepts NULL */

/* Diagnostic line to stderr: "<UTC time> mtls-ca <level>: <message>". */
void mt_ca_log_info(mt_ca_log *log, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void mt_ca_log_warn(mt_ca_log *log, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void mt_ca_log_error(mt_ca_log *log, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Writes the access-log line and counts the call (method x status, and the
 * reason of a refusal). */
void mt_ca_log_access(mt_ca_log *log, const mt_ca_access_entry *entry);

void mt_ca_log_count(mt_ca_log *log, mt_ca_event event);
/* Adds |n| to a counter of amounts (e.g. bytes). */
void mt_ca_log_add(mt_ca_log *log, mt_ca_event event, uint64_t n);
uint64_t mt_ca_log_counter(const mt_ca_log *log, mt_ca_event event);
uint64_t mt_ca_log_calls(const mt_ca_log *log, mt_ca_method method, mt_grpc_status status);

/* Writes every non-zero counter, one "name value" line each, to |out|,
 * between "# mtls-ca counters" and "# end of mtls-ca counters". */
void mt_ca_log_dump_counters(const mt_ca_log *log, FILE *out);

/* The JSON access-log line for |entry| at |now_ms| (Unix milliseconds),
 * without the newline; returns its length (truncated to |cap| - 1). */
size_t mt_ca_log_format_access(const mt_ca_access_entry *entry, int64_t now_ms, char *out,
                               size_t cap);

const char *mt_ca_method_path(mt_ca_method method);

#ifdef __cplusplus
}
#endif

#endif /* MT_CP_CA_LOG_H */
