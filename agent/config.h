/* config: the agent's YAML configuration, parsed into an immutable snapshot.
 *
 * mt_config_load parses with libyaml and validates everything it can without
 * touching the network or the certificate files (those are loaded by
 * identity_files.c, which reports its own errors). Every error names
 * "file:line: what is wrong". The returned snapshot is never modified, so
 * worker threads read it without locks; it is reference counted so a reload
 * can hand a new one to the workers while connections finish on the old.
 * Keys are documented in README.md. */
#ifndef MT_CONFIG_H
#define MT_CONFIG_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "agent/cidr.h"
#include "agent/policy.h"
#include "agent/sandbox.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct mt_mesh mt_mesh; /* agent/mesh.h */

typedef enum { MT_LOG_DEBUG, MT_LOG_INFO, MT_LOG_WARN, MT_LOG_ERROR } mt_log_level;

typedef enum {
  MT_UNKNOWN_DEST_TRUST_DOMAIN, /* any SPIFFE ID of our own trust domain */
  MT_UNKNOWN_DEST_DENY,         /* refuse destinations with no expected ID */
  MT_UNKNOWN_DEST_PASSTHROUGH,  /* outside the mesh: relay them in plaintext, untouched */
} mt_unknown_dest_mode;

typedef struct {
  struct sockaddr_storage addr;
  socklen_t addr_len;
} mt_sockaddr;

/* A listener either serves redirected traffic (the original destination comes
 * from SO_ORIGINAL_DST) or is a fixed port mapping. */
typedef struct {
  mt_sockaddr listen;
  int has_fixed_target;
  uint16_t app_port;       /* inbound mapping: the local app port */
  mt_sockaddr destination; /* outbound mapping: the remote agent */
} mt_listener_config;

/* A ready endpoint of a Service address: where a node agent dials instead
 * of the ClusterIP, and the one identity it must present there. Only the
 * control plane sends these (MeshSnapshot Destination.endpoints); the YAML
 * has no such key. */
typedef struct {
  mt_sockaddr address; /* ip:port, never port 0 */
  char *spiffe_id;
} mt_service_endpoint;

/* outbound.destinations[]: who may answer at an address. */
typedef struct {
  mt_sockaddr address; /* port 0: every port of that IP (a pod) */
  char **spiffe_ids;   /* allowed server identities (any one of them); at least one */
  size_t num_spiffe_ids;
  mt_service_endpoint *endpoints; /* a Service address's endpoints (pushed only); may be none */
  size_t num_endpoints;
} mt_destination_config;

typedef struct {
  char *trust_domain;
  char *file;
} mt_trust_bundle_config;

/* A port list that may instead be "*" (every port). */
typedef struct {
  int all;
  uint16_t *ports;
  size_t count;
} mt_port_list;

/* A CIDR list that may instead be "*" (every address). */
typedef struct {
  int all;
  mt_cidr *cidrs;
  size_t count;
} mt_cidr_list;

/* interception: the traffic-redirection rules `mtlsd init-iptables`
 * installs (agent/redirect.h). Defaults are resolved at load. */
typedef struct {
  int proxy_uid; /* the agent's own traffic is never captured */
  int has_proxy_gid;
  int proxy_gid;
  uint16_t outbound_port; /* REDIRECT target of outbound capture */
  uint16_t inbound_port;  /* REDIRECT target of inbound capture */
  mt_port_list include_inbound_ports;
  mt_port_list exclude_inbound_ports;
  mt_port_list exclude_outbound_ports;
  mt_cidr_list include_outbound_cidrs;
  mt_cidr_list exclude_outbound_cidrs;
  mt_sockaddr app_source_address; /* port unused */
  /* Node mode: the CIDRs of this node's pods. Non-empty selects the node
   * layout (capture in PREROUTING by pod CIDR; nothing in OUTPUT). */
  mt_cidr_list node_pod_cidrs;
  /* node_pod_cidrs: from_control_plane (|node_pod_cidrs| stays empty):
   * `mtlsd init-iptables` asks the control plane for this node's pod CIDRs
   * (NodeInfo, agent/node_info_client.h) and installs the node layout with
   * them; it keeps asking for at most |node_pod_cidrs_wait_s| seconds. The
   * running agent does not use the CIDRs. */
  int node_pod_cidrs_from_cp;
  int node_pod_cidrs_wait_s;
} mt_interception_config;

/* node mode: one workload (pod) served by this agent. */
typedef struct {
  mt_sockaddr address; /* the pod's IP (port unused) */
  char *spiffe_id;     /* the identity requested for it from the control plane */
  mt_policy *policy;   /* private: parsed policy, owned by |mesh| after the load */
  mt_mesh *mesh;       /* its inbound policy: its own `policy:` or the top-level one */
} mt_node_workload_config;

typedef struct {
  int refs_;  /* private: use mt_config_ref / mt_config_free */
  char *path; /* config file path, for messages */

  char *trust_domain;
  int workers;         /* 0 = one per core */
  int max_connections; /* whole agent */
  /* Inbound handshakes one source address may have in progress, whole
   * agent (each worker enforces its share); 0 = no limit. */
  int handshakes_per_source;
  mt_log_level log_level;
  char *access_log; /* path, or "-" for stdout */

  char *cert_file;
  char *key_file;
  char *pkcs12_file;
  char *pkcs12_password_file;
  int reload_interval_ms;

  char *spiffe_id; /* identity.spiffe_id: what to ask the CA for (or pick from the Workload API) */

  /* identity.workload_api_socket: SVIDs and trust bundles from a SPIFFE
   * Workload API server (a SPIRE agent), "unix:///path" or "unix:/path"
   * (agent/workload_api_source.h). NULL: not this source. */
  char *workload_api_source_socket;
  int workload_api_source_retry_initial_ms;
  int workload_api_source_retry_max_ms;

  /* control_plane: certificates and mesh config from mtls-ca (or istiod). */
  int has_control_plane;
  char *cp_address;    /* "ip:port" */
  char *cp_root_file;  /* roots for the control plane's TLS certificate */
  char *cp_spiffe_id;  /* the control plane's expected SPIFFE ID */
  char *cp_token_file; /* bearer token (projected service-account token) */
  char *cp_cluster_id;
  char *cp_node_id;
  int cp_cert_ttl_s;
  int cp_request_timeout_ms;
  int cp_retry_initial_ms;
  int cp_retry_max_ms;
  int cp_keepalive_ms;
  int cp_watch; /* subscribe to the mesh config stream */
  /* destinations: on_demand: the Watch stream carries only the destinations
   * the agent asks for as its workloads dial them (mesh.proto, Want). */
  int cp_on_demand;

  mt_trust_bundle_config *trust_bundles;
  size_t num_trust_bundles;

  int tls_min_version; /* TLS1_2_VERSION or TLS1_3_VERSION */
  /* TLS 1.3 session resumption (tls_resume.h): on by default; a session
   * lives at most tls_session_lifetime_s, and never past either certificate. */
  int tls_session_resumption;
  int tls_session_lifetime_s;

  int handshake_timeout_ms;
  int connect_timeout_ms;
  int idle_timeout_ms;
  int drain_timeout_ms;

  mt_listener_config *inbound_listeners;
  size_t num_inbound_listeners;
  mt_sockaddr inbound_app_address; /* port unused: taken per connection */
  uint16_t *permissive_ports;      /* app ports that also admit non-mesh peers */
  size_t num_permissive_ports;
  int has_inbound_source_address;
  mt_sockaddr inbound_source_address;

  mt_listener_config *outbound_listeners;
  size_t num_outbound_listeners;
  mt_destination_config *destinations;
  size_t num_destinations;
  mt_unknown_dest_mode unknown_destination;

  /* admin: the operator's HTTP endpoint (agent/admin.h). */
  int admin_enabled;
  mt_sockaddr admin_address;       /* full admin API; loopback unless admin_allow_non_local */
  int has_admin_telemetry_address; /* optional second listener: /healthz /ready /metrics */
  mt_sockaddr admin_telemetry_address;
  int admin_allow_non_local;

  /* node: one agent for several workloads (a DaemonSet). Outbound traffic
   * presents the certificate of the workload it comes from (by source IP);
   * inbound traffic is judged by the policy of the workload it goes to. */
  int node_mode;
  char *node_name;
  mt_node_workload_config *node_workloads;
  size_t num_node_workloads;

  /* workload_api: the SPIFFE Workload API served to the applications of
   * the pod (sidecar) or of the node's pods (node mode); workload_api.h. */
  char *workload_api_socket; /* absolute path; NULL = not served */
  /* Sidecar mode: callers admitted by uid or by gid (nothing = nobody). */
  unsigned *workload_api_uids;
  size_t num_workload_api_uids;
  unsigned *workload_api_gids;
  size_t num_workload_api_gids;

  /* security: what the running agent may still do (agent/sandbox.h). */
  mt_seccomp_mode seccomp;

  int has_interception; /* the optional `interception:` section is present */
  mt_interception_config interception;

  mt_policy *policy; /* owned by |mesh| once the load succeeded */
  mt_mesh *mesh;     /* policy + destinations as a snapshot (version "static") */
} mt_config;

/* Loads and validates |path|. Returns NULL with "file:line: reason" in |err|.
 * The caller holds the only reference. */
mt_config *mt_config_load(const char *path, char *err, size_t err_len);
mt_config *mt_config_ref(mt_config *config);
/* Drops one reference; the last one frees. Accepts NULL. */
void mt_config_free(mt_config *config);

/* Which settings differ between |old| and |next| that only take effect at
 * start (listeners, workers, admin, control plane, access log, ...): their
 * names, comma-separated, in |out| ("" when none). Returns how many. */
int mt_config_restart_changes(const mt_config *old, const mt_config *next, char *out,
                              size_t out_len);

/* "trust_domain", "deny" or "passthrough", as the config spells it. */
const char *mt_unknown_destination_str(mt_unknown_dest_mode mode);

/* Room for any mt_sockaddr_format text: "[" v6 "]:" port. */
enum { MT_SOCKADDR_TEXT_MAX = 64 };

/* Parses "ip:port", "[v6]:port" (port required) or, when |require_port| is
 * 0, also an IP alone (port 0). Returns 1 or 0. */
int mt_sockaddr_parse(const char *text, mt_sockaddr *out, int require_port);
/* Formats as "ip:port" into |buf|. */
void mt_sockaddr_format(const struct sockaddr *sa, char *buf, size_t len);
uint16_t mt_sockaddr_port(const struct sockaddr *sa);
int mt_sockaddr_equal(const struct sockaddr *a, const struct sockaddr *b);
/* The same IP address, whatever the ports. */
int mt_sockaddr_same_host(const struct sockaddr *a, const struct sockaddr *b);

#ifdef __cplusplus
}
#endif

#endif /* MT_CONFIG_H */
