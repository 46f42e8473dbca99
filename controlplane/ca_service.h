/* ca_service: the server side of Istio's CA API,
 * /istio.v1.auth.IstioCertificateService/CreateCertificate (PROTOCOL.md 1).
 *
 * A call is authenticated with its bearer token (auth.h); the CSR's public
 * key is certified for the identity node_auth.h decides, whatever the CSR
 * asks for: the token's own identity, or, for a node agent whose request
 * metadata names an ImpersonatedIdentity, that workload's identity when the
 * workload registry lists it on the agent's node. The response carries the
 * leaf and the intermediates as one PEM certificate per cert_chain entry
 * (leaf first) and the roots in root_cert.ca_cert. Refusals: no or bad
 * token -> UNAUTHENTICATED with the reason; a token for something other
 * than a service account, or an impersonation node_auth.h refuses ->
 * PERMISSION_DENIED; a request, its metadata or the CSR that cannot be used
 * -> INVALID_ARGUMENT; an issuing CA past its notAfter -> UNAVAILABLE.
 * Every call is access-logged (caller, identity, node) and counted;
 * refusals also go to stderr. */
#ifndef MT_CP_CA_SERVICE_H
#define MT_CP_CA_SERVICE_H

#include <stdint.h>

#include "controlplane/auth.h"
#include "controlplane/ca_files.h"
#include "controlplane/ca_log.h"
#include "controlplane/cluster_state.h"
#include "controlplane/node_auth.h"
#include "controlplane/workload_registry.h"
#include "grpc/server.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct mt_ca_service mt_ca_service;

/* |auth| and |log| are borrowed and must outlive the service; |issuer| is
 * taken. TTLs in seconds: a request's validity_duration when > 0, else
 * |default_ttl_s|, capped at |max_ttl_s|. Returns NULL when out of memory
 * (|issuer| is then freed). */
mt_ca_service *mt_ca_service_new(const mt_ca_auth *auth, mt_ca_log *log, mt_ca_issuer *issuer,
                                 int64_t default_ttl_s, int64_t max_ttl_s);
void mt_ca_service_free(mt_ca_service *svc); /* accepts NULL */

/* Routes CreateCertificate of |server| to this service. Returns 1 or 0. */
int mt_ca_service_register(mt_ca_service *svc, mt_grpc_server *server);

/* Replaces the issuing CA and its roots (takes |issuer|): calls after this
 * one are signed by it. */
void mt_ca_service_set_issuer(mt_ca_service *svc, mt_ca_issuer *issuer);

/* Lets |node_agents| (|count| SPIFFE IDs) ask for certificates of the
 * identities in |trust_domain| that |registry| lists on their node. All
 * borrowed; they must outlive the service. Until this is called, every
 * request naming an ImpersonatedIdentity is refused ("not_node_agent"). */
void mt_ca_service_allow_node_agents(mt_ca_service *svc, const char *trust_domain,
                                     const char *const *node_agents, size_t count,
                                     const mt_workload_registry *registry);

/* Takes which workload runs on which node from the Kubernetes API's view
 * (borrowed, must outlive the service) instead of a registry; node agents
 * are still allowed with mt_ca_service_allow_node_agents (registry NULL). */
void mt_ca_service_use_cluster(mt_ca_service *svc, const mt_cluster_state *cluster);

/* The cluster state has been listed once (k8s_source's on_synced). Until
 * then a node agent's request for a workload is answered UNAVAILABLE
 * ("cluster_not_synced", retry), never PERMISSION_DENIED: a partial state
 * must not refuse anyone (k8s_source.h). */
void mt_ca_service_cluster_synced(mt_ca_service *svc);

/* Whom may a caller authenticated as |caller| (status OK) have an SVID
 * for? node_auth.h's decision under this service's node agents and
 * registry or cluster state: its own identity when |impersonated| is NULL,
 * else the workload's when allowed. Every method that issues an SVID to a
 * caller (CreateCertificate, SignJwtSvid) decides through this one rule.
 * |out->identity| points into |caller| or |impersonated|. */
void mt_ca_service_decide_identity(const mt_ca_service *svc, const mt_ca_auth_result *caller,
                                   const char *impersonated, mt_node_auth_decision *out);

#ifdef __cplusplus
}
#endif

#endif /* MT_CP_CA_SERVICE_H */
