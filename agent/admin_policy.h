/* admin_policy: the /policy page and its live explain (?peer=ID&port=N), as
 * JSON. The policy shown is the one in force: that of the identity snapshot
 * being served (node mode: of the pod named by its IP). Pure functions of
 * the view. */
#ifndef MT_ADMIN_POLICY_H
#define MT_ADMIN_POLICY_H

#include <stdint.h>
#include <sys/socket.h>

#include "agent/admin_view.h"
#include "agent/text.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The policy in force (mesh version, rules, destinations). Node mode:
 * that of the pod at |workload| (an IP), or every pod's when NULL;
 * |workload| is ignored in sidecar mode. */
void mt_admin_render_policy(const mt_admin_view *v, const char *workload, mt_text *out);
/* Why the policy in force (node mode: |workload|'s) allows or denies
 * |peer_id| (NULL = plaintext) from |peer_addr| (NULL: unknown) on |port|,
 * as `mtlsd explain --json` says it (|text|: as its text). Whether the
 * port admits plaintext is the workload's PeerAuthentication when the
 * control plane sent one, else inbound.permissive_ports. Returns 1 allow,
 * 0 deny. */
int mt_admin_render_explain(const mt_admin_view *v, const char *workload, const char *peer_id,
                            uint16_t port, const struct sockaddr *peer_addr, int text,
                            mt_text *out);

#ifdef __cplusplus
}
#endif

#endif /* MT_ADMIN_POLICY_H */
