/* cert_manager: the control-plane identity source.
 *
 * Owns the agent's relationship with mtls-ca (or istiod): a gRPC client over
 * TLS that verifies the control plane's own SVID, the certificate lifecycle
 * (fresh ECDSA P-256 key and CSR per request, renewal at about half of the
 * certificate's life with jitter, exponential backoff with jitter when the
 * CA fails, expiry), and the mesh config stream (trust bundles, policy,
 * destination identities). Whenever any of these changes it assembles a new
 * identity snapshot and hands it to |publish|; a certificate that expires
 * without renewal is replaced by "no identity" (fail closed) until the CA
 * answers again. Runs on the main thread's loop; never blocks it on the
 * network. */
#ifndef MT_CERT_MANAGER_H
#define MT_CERT_MANAGER_H

#include <ev.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "agent/config.h"
#include "agent/destination_demand.h"
#include "agent/identity.h"
#include "agent/workloads.h"
#include "grpc/client.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Where snapshots go. |publish| receives one reference to |identity| (NULL
 * = no usable identity; sidecar mode). In node mode |publish_workloads|
 * receives one reference to the table of workloads with a valid
 * certificate (NULL only when out of memory: fail closed). */
typedef struct {
  void (*publish)(void *arg, mt_identity *identity);
  void (*publish_workloads)(void *arg, mt_workloads *table);
  void *arg;
  /* Destinations on demand: where workers' asks collect (borrowed, must
   * outlive the manager); the Watch stream then carries only those
   * destinations. NULL: every destination. */
  mt_demand *demand;
  /* Optional: an application SVID (mt_cert_manager_want_app_svid) was
   * issued, renewed, rebuilt with new trust bundles (|identity|, borrowed:
   * take a reference to keep it), or expired or dropped (NULL). */
  void (*app_svid)(void *arg, const char *spiffe_id, mt_identity *identity);
} mt_cert_manager_sink;

typedef struct mt_cert_manager mt_cert_manager;

/* Validates the control-plane settings (root file, expected ID) and starts
 * the first certificate request and the Watch stream on |loop|. Takes its
 * own reference to |config|. Returns NULL with a reason in |err|. */
mt_cert_manager *mt_cert_manager_start(struct ev_loop *loop, mt_config *config,
                                       const mt_cert_manager_sink *sink, char *err, size_t err_len);

void mt_cert_manager_free(mt_cert_manager *manager); /* accepts NULL */

/* Application SVIDs, for the SPIFFE Workload API: a certificate for
 * |spiffe_id| with a key of its own (never the agent's), requested now and
 * renewed like the agent's, node mode on the workload's behalf. Only for
 * an identity the agent itself serves (sidecar: its own; node mode: a
 * listed workload's); returns 0 otherwise or when out of memory. The
 * certificate arrives through sink.app_svid; a node workload that goes
 * away takes its application SVID with it. Idempotent. */
int mt_cert_manager_want_app_svid(mt_cert_manager *manager, const char *spiffe_id);

/* The current application SVID for |spiffe_id| (borrowed), or NULL when
 * none is valid yet. */
mt_identity *mt_cert_manager_app_svid(const mt_cert_manager *manager, const char *spiffe_id);

/* A reloaded config: the static policy and destinations (used until the
 * Watch stream delivers), TLS and timeout settings. Connection settings of
 * the control plane itself only change at restart. Republishes the current
 * identity rebuilt from it. */
void mt_cert_manager_set_config(mt_cert_manager *manager, mt_config *config);

typedef enum {
  MT_WATCH_DISABLED,   /* control_plane.watch: false */
  MT_WATCH_CONNECTING, /* call started, no snapshot on it yet */
  MT_WATCH_STREAMING,  /* the current call has delivered a snapshot */
  MT_WATCH_RETRYING,   /* the call ended; waiting to start another */
  MT_WATCH_UNSUPPORTED /* the control plane does not serve Watch (UNIMPLEMENTED) */
} mt_watch_state;

const char *mt_watch_state_str(mt_watch_state state); /* "streaming", ... */

/* The control-plane call a refusal happened on. */
typedef enum { MT_CP_CALL_CERTIFICATE, MT_CP_CALL_WATCH, MT_CP_NUM_CALLS } mt_cp_call;

/* Why the agent did not take what the control plane sent (or did not
 * send): each is counted, logged, and answered by keeping the last good
 * certificate and mesh config and retrying with backoff. */
typedef enum {
  MT_CP_REFUSAL_UNAVAILABLE,         /* no connection, connection lost, GOAWAY */
  MT_CP_REFUSAL_STALLED,             /* no complete answer within request_timeout_ms */
  MT_CP_REFUSAL_TOO_LARGE,           /* a message over the size limit */
  MT_CP_REFUSAL_MALFORMED,           /* broken gRPC framing, protobuf or PEM; not one answer */
  MT_CP_REFUSAL_ERROR_STATUS,        /* the control plane answered with another error status */
  MT_CP_REFUSAL_KEY_MISMATCH,        /* the certificate is not for the key we sent */
  MT_CP_REFUSAL_WRONG_IDENTITY,      /* a certificate for another SPIFFE ID than ours */
  MT_CP_REFUSAL_INVALID_CERTIFICATE, /* fails our own SVID checks (chain, trust domain, dates) */
  MT_CP_REFUSAL_ROOT_REMOVED,        /* trust bundles without the root our certificate needs */
  MT_CP_REFUSAL_INVALID_MESH,        /* a mesh snapshot that does not validate */
  MT_CP_NUM_REFUSALS
} mt_cp_refusal;

const char *mt_cp_call_str(mt_cp_call call);          /* "certificate", "watch" */
const char *mt_cp_refusal_str(mt_cp_refusal refusal); /* "stalled", "wrong_identity", ... */

enum { MT_CP_LAST_ERROR_MAX = 200 };

/* What the admin endpoint reports; counters only grow. */
typedef struct {
  uint64_t certificates_issued;  /* CA answers that became the served identity */
  uint64_t app_svids_issued;     /* application SVIDs (Workload API) issued or renewed */
  uint64_t certificate_failures; /* requests that failed or gave an unusable answer */
  mt_watch_state watch_state;
  uint64_t mesh_updates;        /* snapshots applied */
  uint64_t mesh_deltas;         /* of mesh_updates: sent as deltas */
  uint64_t mesh_rejected;       /* snapshots refused (the last good one stayed) */
  uint64_t rules_reduced;       /* rules in force the control plane reduced for L4 (a gauge) */
  uint64_t mesh_resyncs;        /* streams ended to get a complete snapshot */
  uint64_t destinations_wanted; /* destinations on demand: addresses asked for */
  uint64_t want_failures;       /* Want calls that failed */
  int has_mesh_config;          /* a snapshot arrived, or none will (disabled/unsupported) */
  uint64_t refusals[MT_CP_NUM_CALLS][MT_CP_NUM_REFUSALS];
  time_t last_issued_at; /* the last certificate put into service (0: none yet) */
  /* A served certificate whose renewal was due and has failed at least
   * once since: the earliest such due time (0: none overdue). */
  time_t renewal_overdue_since;
  time_t last_error_at;                  /* the last certificate refusal (0: none) */
  char last_error[MT_CP_LAST_ERROR_MAX]; /* what it said */
} mt_cert_manager_stats;

void mt_cert_manager_get_stats(const mt_cert_manager *manager, mt_cert_manager_stats *out);

/* The gRPC client to the control plane, borrowed (valid until the
 * manager's free): other calls to the control plane (JWT-SVIDs,
 * jwt_svid.h) share its one connection instead of opening their own. */
mt_grpc_client *mt_cert_manager_grpc(mt_cert_manager *manager);

#ifdef __cplusplus
}
#endif

#endif /* MT_CERT_MANAGER_H */
