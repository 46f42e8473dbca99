/* jwt_svid_service: /mtlsd.jwt.v1.JwtSvidService (proto/mtlsd/jwt.proto):
 * JWT-SVIDs signed for callers, and the JWT bundles that validate them.
 *
 * SignJwtSvid: the caller is authenticated and its identity decided
 * exactly as for CreateCertificate (auth.h, then ca_service.h's
 * mt_ca_service_decide_identity): its own identity, or, for a node agent
 * whose request carries the gRPC metadata "impersonatedidentity" (the
 * "ImpersonatedIdentity" of PROTOCOL.md 1, as an HTTP/2 header name), that
 * workload's when it runs on the agent's node. The token (jwt_signer.h)
 * lives ttl_seconds when > 0, capped at the maximum, else the default.
 * Refusals: auth's and node_auth's, as CreateCertificate; no audience, an
 * empty one or more than MT_JWT_SIGNER_MAX_AUDIENCES, an undecodable
 * request, the metadata given twice -> INVALID_ARGUMENT. Every call is
 * access-logged and counted (jwt_svids_signed, jwt_svid_refusals, and the
 * refusal's reason).
 *
 * WatchJwtBundles: any authenticated caller; answered at once with
 * {"spiffe://<trust domain>": JWKS} and again whenever the key set changes
 * (a rotation, a retired key dropped). The stream stays open. A caller
 * that does not read, so that a message cannot be queued, has its stream
 * ended with RESOURCE_EXHAUSTED rather than have bytes buffered without
 * bound; it reconnects and gets the current set.
 *
 * The signing key file, when configured, is checked every |poll_ms| and on
 * mt_jwt_svid_service_reload (SIGHUP): a changed valid key rotates in, a
 * refused one is logged and the keys in force stay. One loop, no threads. */
#ifndef MT_CP_JWT_SVID_SERVICE_H
#define MT_CP_JWT_SVID_SERVICE_H

#include <ev.h>
#include <stdint.h>

#include "controlplane/auth.h"
#include "controlplane/ca_log.h"
#include "controlplane/ca_service.h"
#include "controlplane/jwt_signer.h"
#include "grpc/server.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The gRPC metadata a node agent names the workload with. */
#define MT_JWT_SVID_IMPERSONATION_HEADER "impersonatedidentity"

typedef struct {
  const char *trust_domain; /* copied */
  int64_t default_ttl_s, max_ttl_s;
  const char *signing_key_file; /* copied; NULL: |signer|'s key is never reloaded */
  int64_t poll_ms;              /* how often the key file and key expiry are checked */
} mt_jwt_svid_service_options;

typedef struct mt_jwt_svid_service mt_jwt_svid_service;

/* |auth|, |ca| (for its identity decision) and |log| are borrowed and must
 * outlive the service; |signer| (holding a key already) is taken. Returns
 * NULL when out of memory (|signer| is then freed). */
mt_jwt_svid_service *mt_jwt_svid_service_new(struct ev_loop *loop, const mt_ca_auth *auth,
                                             const mt_ca_service *ca, mt_ca_log *log,
                                             mt_jwt_signer *signer,
                                             const mt_jwt_svid_service_options *options);

/* Ends every bundle stream (UNAVAILABLE) and frees. Accepts NULL. */
void mt_jwt_svid_service_free(mt_jwt_svid_service *svc);

/* Routes SignJwtSvid and WatchJwtBundles of |server| here. Returns 1 or 0. */
int mt_jwt_svid_service_register(mt_jwt_svid_service *svc, mt_grpc_server *server);

/* Checks the signing key file now (SIGHUP). */
void mt_jwt_svid_service_reload(mt_jwt_svid_service *svc);

#ifdef __cplusplus
}
#endif

#endif /* MT_CP_JWT_SVID_SERVICE_H */
