/* admin_policy.c: /policy and its live explain. */
#include "agent/admin_policy.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent/explain.h"
#include "agent/mesh.h"

/* ---- /policy ---- */

/* An Istio-form rule's clauses as written: "from": [{"principals": [...]}], ... */
static void render_clauses(const mt_rule_trace *r, mt_text *out, int *f) {
  static const char *const kKinds[] = {"from", "to", "when"};
  for (size_t k = 0; k < sizeof(kKinds) / sizeof(kKinds[0]); k++) {
    mt_json_key(out, f, kKinds[k]);
    mt_text_printf(out, "[");
    int any = 0;
    for (size_t i = 0; i < r->num_clauses; i++) {
      const mt_clause_trace *c = &r->clauses[i];
      if (strcmp(c->kind, kKinds[k]) != 0) continue;
      mt_text_printf(out, "%s{", any++ ? "," : "");
      int g = 1;
      for (size_t j = 0; j < c->num_fields; j++) {
        const mt_field_trace *fld = &c->fields[j];
        /* A when's values and notValues share the key's name. */
        char key[64];
        snprintf(key, sizeof(key), "%s%s", fld->field,
                 fld->negated && strchr(fld->field, '.') != NULL ? " notValues" : "");
        mt_text_printf(out, "%s", g ? "" : ",");
        g = 0;
        mt_text_json_string(out, key);
        mt_text_printf(out, ":[");
        for (size_t v = 0; v < fld->num_values; v++) {
          if (v) mt_text_printf(out, ",");
          mt_text_json_string(out, fld->values[v]);
        }
        mt_text_printf(out, "]");
      }
      mt_text_printf(out, "}");
    }
    mt_text_printf(out, "]");
  }
  mt_json_key(out, f, "never_matches");
  mt_text_printf(out, "%s", r->never_matches ? "true" : "false");
  mt_json_str(out, f, "reduced", r->reduced);
}

static void render_rules(const mt_policy *policy, mt_text *out, int *first) {
  mt_policy_trace trace;
  mt_policy_trace_init(&trace, policy, NULL, 0); /* NULL peer: rules in position order */
  mt_json_str(out, first, "default", mt_action_str(trace.default_action));
  mt_json_key(out, first, "allow_policies");
  mt_text_printf(out, "[");
  for (size_t i = 0; i < mt_policy_num_allow_policies(policy); i++) {
    if (i) mt_text_printf(out, ",");
    mt_text_json_string(out, mt_policy_allow_policy(policy, i));
  }
  mt_text_printf(out, "]");
  mt_json_key(out, first, "rules");
  mt_text_printf(out, "[");
  for (size_t i = 0; i < trace.num_rules; i++) {
    const mt_rule_trace *r = &trace.rules[i];
    int f = 1;
    mt_text_printf(out, "%s{", i ? "," : "");
    mt_json_str(out, &f, "name", r->name);
    mt_json_str(out, &f, "action", mt_action_str(r->action));
    if (r->istio) {
      mt_json_key(out, &f, "istio");
      mt_text_printf(out, "true");
      render_clauses(r, out, &f);
      mt_text_printf(out, "}");
      continue;
    }
    mt_json_key(out, &f, "ports");
    if (r->ports == NULL) {
      mt_text_printf(out, "\"*\"");
    } else {
      mt_text_printf(out, "[");
      for (size_t p = 0; p < r->num_ports; p++)
        mt_text_printf(out, "%s%u", p ? "," : "", r->ports[p]);
      mt_text_printf(out, "]");
    }
    mt_json_key(out, &f, "from");
    mt_text_printf(out, "[");
    for (size_t m = 0; m < r->num_matchers; m++) {
      int g = 1;
      mt_text_printf(out, "%s{", m ? "," : "");
      const mt_matcher_trace *mt = &r->matchers[m];
      mt_json_str(out, &g, "kind", mt_match_kind_key(mt->kind));
      if (mt->kind == MT_MATCH_PREFIX && mt->value != NULL) {
        /* The policy keeps the prefix without its "*"; show it as configured. */
        size_t len = strlen(mt->value);
        char *configured = malloc(len + 2);
        if (configured != NULL) {
          memcpy(configured, mt->value, len);
          memcpy(configured + len, "*", 2);
        }
        mt_json_str(out, &g, "value", configured);
        out->failed |= configured == NULL; /* the page is answered with a 500 */
        free(configured);
      } else {
        mt_json_str(out, &g, "value", mt->value);
      }
      mt_text_printf(out, "}");
    }
    mt_text_printf(out, "]}");
  }
  mt_text_printf(out, "]");
  mt_policy_trace_dispose(&trace);
}

/* The control plane's PeerAuthentication (null: permissive_ports apply). */
static void render_peer_auth(const mt_peer_auth *pa, mt_text *out, int *first) {
  mt_json_key(out, first, "peer_authentication");
  if (pa == NULL) {
    mt_text_printf(out, "null");
    return;
  }
  const char *source;
  mt_mtls_mode mode = mt_peer_auth_mode(pa, 0, &source); /* port 0: never a port entry */
  int f = 1;
  mt_text_printf(out, "{");
  mt_json_str(out, &f, "mode", mt_mtls_mode_str(mode));
  mt_json_str(out, &f, "source", source);
  mt_json_key(out, &f, "ports");
  mt_text_printf(out, "[");
  for (size_t i = 0; i < mt_peer_auth_num_ports(pa); i++) {
    uint16_t port;
    mt_peer_auth_port(pa, i, &port, &mode, &source);
    int g = 1;
    mt_text_printf(out, "%s{", i ? "," : "");
    mt_json_int(out, &g, "port", port);
    mt_json_str(out, &g, "mode", mt_mtls_mode_str(mode));
    mt_json_str(out, &g, "source", source);
    mt_text_printf(out, "}");
  }
  mt_text_printf(out, "]}");
}

/* The snapshot whose policy speaks for |workload| (an IP; node mode) or
 * for the agent (sidecar mode, |workload| ignored). NULL with |why| set. */
static mt_identity *policy_owner(const mt_admin_view *v, const char *workload, const char **why) {
  if (!v->config->node_mode) {
    *why = "no identity snapshot: every connection is refused";
    return v->identity;
  }
  mt_sockaddr addr;
  if (workload == NULL || !mt_sockaddr_parse(workload, &addr, 0)) {
    *why = "node mode: name the destination pod with workload=IP";
    return NULL;
  }
  mt_identity *id =
      v->workloads ? mt_workloads_find(v->workloads, (struct sockaddr *)&addr.addr) : NULL;
  *why = "no workload of this node with a valid certificate at that address";
  return id;
}

static void render_one_policy(const mt_admin_view *v, mt_identity *owner, mt_text *out,
                              int *first) {
  const mt_mesh *mesh = mt_identity_mesh(owner);
  mt_json_str(out, first, "spiffe_id", mt_identity_spiffe_id(owner));
  mt_json_str(out, first, "version", mt_mesh_version(mesh));
  render_rules(mt_mesh_policy(mesh), out, first);
  mt_json_key(out, first, "permissive_ports");
  mt_text_printf(out, "[");
  for (size_t i = 0; i < v->config->num_permissive_ports; i++)
    mt_text_printf(out, "%s%u", i ? "," : "", v->config->permissive_ports[i]);
  mt_text_printf(out, "]");
  render_peer_auth(mt_mesh_peer_auth(mesh), out, first);
  mt_json_int(out, first, "destinations", (long long)mt_mesh_num_destinations(mesh));
  mt_json_str(out, first, "unknown_destination",
              mt_unknown_destination_str(v->config->unknown_destination));
}

/* Node mode without workload=: every pod's policy, keyed by its address. */
static void render_node_policies(const mt_admin_view *v, mt_text *out) {
  mt_text_printf(out, "{\"node\":");
  mt_text_json_string(out, v->config->node_name);
  mt_text_printf(out, ",\"workloads\":[");
  for (size_t i = 0; i < mt_workloads_count(v->workloads); i++) {
    char addr[64];
    int first = 1;
    mt_sockaddr_format(mt_workloads_address_at(v->workloads, i), addr, sizeof(addr));
    char *colon = strrchr(addr, ':'); /* the table ignores ports: show the IP */
    if (colon != NULL) *colon = '\0';
    mt_text_printf(out, "%s{", i ? "," : "");
    mt_json_str(out, &first, "address", addr);
    mt_identity *owner = mt_workloads_identity_at(v->workloads, i);
    if (owner != NULL) {
      render_one_policy(v, owner, out, &first);
    } else { /* listed, no certificate yet: nothing it serves, nothing judged */
      mt_json_str(out, &first, "spiffe_id", mt_workloads_spiffe_id_at(v->workloads, i));
      mt_json_str(out, &first, "error", "no valid certificate for this workload");
    }
    mt_text_printf(out, "}");
  }
  mt_text_printf(out, "]}\n");
}

void mt_admin_render_policy(const mt_admin_view *v, const char *workload, mt_text *out) {
  if (v->config->node_mode && workload == NULL) {
    render_node_policies(v, out);
    return;
  }
  int first = 1;
  const char *why;
  mt_identity *owner = policy_owner(v, workload, &why);
  mt_text_printf(out, "{");
  if (owner == NULL)
    mt_json_str(out, &first, "error", why);
  else
    render_one_policy(v, owner, out, &first);
  mt_text_printf(out, "}\n");
}

int mt_admin_render_explain(const mt_admin_view *v, const char *workload, const char *peer_id,
                            uint16_t port, const struct sockaddr *peer_addr, int text,
                            mt_text *out) {
  const char *why;
  mt_identity *owner = policy_owner(v, workload, &why);
  if (owner == NULL) {
    int first = 1;
    mt_text_printf(out, "{");
    mt_json_str(out, &first, "decision", "deny");
    mt_json_str(out, &first, "reason", why);
    mt_text_printf(out, "}\n");
    return 0;
  }
  const mt_mesh *mesh = mt_identity_mesh(owner);
  const mt_peer_auth *pa = mt_mesh_peer_auth(mesh);
  const char *mtls_source = NULL;
  int permissive = mt_mesh_admits_plaintext(mesh, v->config, port);
  mt_explain_query q = {
      .source = "the running agent",
      .version = mt_mesh_version(mesh),
      .may_be_replaced = v->control_plane != NULL && v->config->cp_watch,
      .live = 1,
      .peer_id = peer_id,
      .port = port,
      .permissive = permissive,
      .mtls_mode = pa != NULL ? mt_mtls_mode_str(mt_peer_auth_mode(pa, port, &mtls_source)) : NULL,
      .mtls_source = mtls_source,
      .peer_addr = peer_addr,
  };
  const mt_policy *policy = mt_mesh_policy(mesh);
  char probe[1];
  int need = mt_explain_render(policy, &q, !text, probe, sizeof(probe));
  char *buf = need >= 0 ? malloc((size_t)need + 1) : NULL;
  if (buf == NULL) {
    out->failed = 1;
    return 0;
  }
  mt_explain_render(policy, &q, !text, buf, (size_t)need + 1);
  mt_text_printf(out, "%s%s", buf, text ? "" : "\n");
  free(buf);
  return mt_explain_decide(policy, &q).action == MT_ACTION_ALLOW;
}
