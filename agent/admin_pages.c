/* admin_pages.c: /ready, /metrics, /certs, /config and /policy bodies. */
#include "agent/admin_pages.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/bio.h>
#include <openssl/digest.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent/explain.h"
#include "agent/mesh.h"
#include "agent/x509_util.h"

#define MTLSD_VERSION_TEXT "0.1.0"

enum { TEXT_MAX = 256 };

/* ---- the identities being served ---- */

/* How many identity slots there are to look at: the sidecar's one, or one
 * per entry of node mode's workload table. */
static size_t num_served(const mt_admin_view *v) {
  if (!v->config->node_mode) return v->identity != NULL;
  return v->workloads != NULL ? mt_workloads_count(v->workloads) : 0;
}

/* The identity in slot |i|, or NULL when an earlier slot holds the same one
 * (pods of one service account share a certificate): each is shown once. */
static mt_identity *served_at(const mt_admin_view *v, size_t i) {
  if (!v->config->node_mode) return v->identity;
  mt_identity *id = mt_workloads_identity_at(v->workloads, i);
  for (size_t j = 0; j < i; j++)
    if (mt_workloads_identity_at(v->workloads, j) == id) return NULL;
  return id;
}

/* Node mode: the identity serving workload |w| now; NULL when it has none. */
static mt_identity *workload_identity(const mt_admin_view *v, const mt_node_workload_config *w) {
  if (v->workloads == NULL) return NULL;
  return mt_workloads_find(v->workloads, (const struct sockaddr *)&w->address.addr);
}

/* Node mode: every listed workload needs a valid certificate of its own. */
static int node_certificates_ready(const mt_admin_view *v, char *why, size_t why_len) {
  const mt_config *c = v->config;
  size_t missing = 0;
  const char *first = NULL;
  for (size_t i = 0; i < c->num_node_workloads; i++) {
    const mt_node_workload_config *w = &c->node_workloads[i];
    mt_identity *id = workload_identity(v, w);
    if (id != NULL && mt_identity_not_after(id) > v->now) continue;
    if (missing++ == 0) first = w->spiffe_id;
  }
  if (missing == 0) return 1;
  snprintf(why, why_len, "not ready: %zu of %zu workloads have no valid certificate (first: %s)",
           missing, c->num_node_workloads, first);
  return 0;
}

static int sidecar_certificate_ready(const mt_admin_view *v, char *why, size_t why_len) {
  if (v->identity == NULL) {
    snprintf(why, why_len, "not ready: no valid workload certificate yet (source: %s)",
             v->identity_source);
    return 0;
  }
  if (mt_identity_not_after(v->identity) <= v->now) {
    snprintf(why, why_len, "not ready: the workload certificate expired");
    return 0;
  }
  return 1;
}

int mt_admin_ready(const mt_admin_view *v, char *why, size_t why_len) {
  if (v->draining) {
    snprintf(why, why_len, "not ready: draining connections before exit");
    return 0;
  }
  int node = v->config->node_mode;
  if (!(node ? node_certificates_ready(v, why, why_len)
             : sidecar_certificate_ready(v, why, why_len)))
    return 0;
  if (v->control_plane != NULL && !v->control_plane->has_mesh_config) {
    snprintf(why, why_len, "not ready: waiting for the first mesh config from the control plane");
    return 0;
  }
  if (node) {
    snprintf(why, why_len, "ready: serving %zu workloads", v->config->num_node_workloads);
    return 1;
  }
  snprintf(why, why_len, "ready: serving as %s (serial %s, expires in %lld s)",
           mt_identity_spiffe_id(v->identity), mt_identity_serial(v->identity),
           (long long)(mt_identity_not_after(v->identity) - v->now));
  return 1;
}

/* ---- /metrics: agent-wide gauges after the workers' counters ---- */

static void metric_header(mt_text *out, const char *name, const char *type, const char *help) {
  mt_text_printf(out, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* One sample per served certificate, labelled with its SPIFFE ID and serial:
 * its notBefore (|not_before|) or notAfter. */
static void render_validity_gauge(const mt_admin_view *v, mt_text *out, const char *name,
                                  int not_before) {
  for (size_t i = 0; i < num_served(v); i++) {
    mt_identity *id = served_at(v, i);
    if (id == NULL) continue;
    time_t t = not_before ? mt_x509_time(X509_get0_notBefore(mt_identity_leaf(id)), v->now)
                          : mt_identity_not_after(id);
    mt_text_printf(out, "%s{spiffe_id=\"", name);
    mt_text_label_value(out, mt_identity_spiffe_id(id));
    mt_text_printf(out, "\",serial=\"%s\"} %lld\n", mt_identity_serial(id), (long long)t);
  }
}

/* The served certificate that expires first; NULL when none is served. */
static mt_identity *soonest_expiring(const mt_admin_view *v) {
  mt_identity *soonest = NULL;
  for (size_t i = 0; i < num_served(v); i++) {
    mt_identity *id = served_at(v, i);
    if (id != NULL &&
        (soonest == NULL || mt_identity_not_after(id) < mt_identity_not_after(soonest)))
      soonest = id;
  }
  return soonest;
}

/* Each family's samples follow its own HELP/TYPE lines: a parser files a
 * sample under the family whose header it read last. */
static void render_identity_metrics(const mt_admin_view *v, mt_text *out) {
  mt_identity *soonest = soonest_expiring(v);
  metric_header(out, "mtlsd_certificate_not_after_seconds", "gauge",
                "notAfter of each workload certificate being served (Unix time).");
  render_validity_gauge(v, out, "mtlsd_certificate_not_after_seconds", 0);
  metric_header(out, "mtlsd_certificate_not_before_seconds", "gauge",
                "notBefore of each workload certificate being served (Unix time).");
  render_validity_gauge(v, out, "mtlsd_certificate_not_before_seconds", 1);
  metric_header(out, "mtlsd_certificate_expiry_seconds", "gauge",
                "Seconds until the served workload certificate expires (node mode: the one "
                "that expires first).");
  if (soonest != NULL)
    mt_text_printf(out, "mtlsd_certificate_expiry_seconds %lld\n",
                   (long long)(mt_identity_not_after(soonest) - v->now));
  metric_header(out, "mtlsd_certificate_rotations_total", "counter",
                "New workload certificates put into service.");
  mt_text_printf(out, "mtlsd_certificate_rotations_total{source=\"%s\"} %llu\n",
                 v->identity_source, (unsigned long long)v->identity_updates);
  metric_header(out, "mtlsd_certificate_rotation_failures_total", "counter",
                "Certificate requests or reloads that failed (the old certificate stayed).");
  mt_text_printf(out, "mtlsd_certificate_rotation_failures_total{source=\"%s\"} %llu\n",
                 v->identity_source, (unsigned long long)v->identity_update_failures);
  metric_header(out, "mtlsd_trust_bundle_roots", "gauge",
                "Root certificates trusted, by trust domain.");
  if (soonest != NULL) { /* every served identity is built on the same trust */
    const mt_trust *trust = mt_identity_trust(soonest);
    for (size_t i = 0; i < mt_trust_num_domains(trust); i++) {
      mt_text_printf(out, "mtlsd_trust_bundle_roots{trust_domain=\"");
      mt_text_label_value(out, mt_trust_domain_at(trust, i));
      mt_text_printf(out, "\"} %zu\n", sk_X509_num(mt_trust_roots_at(trust, i)));
    }
  }
}

static void render_control_plane_metrics(const mt_admin_view *v, mt_text *out) {
  const mt_cert_manager_stats *cp = v->control_plane;
  if (cp == NULL) return;
  static const mt_watch_state states[] = {MT_WATCH_DISABLED, MT_WATCH_CONNECTING,
                                          MT_WATCH_STREAMING, MT_WATCH_RETRYING,
                                          MT_WATCH_UNSUPPORTED};
  metric_header(out, "mtlsd_control_plane_stream_state", "gauge",
                "State of the mesh config stream (1 for the current state).");
  for (size_t i = 0; i < sizeof(states) / sizeof(states[0]); i++)
    mt_text_printf(out, "mtlsd_control_plane_stream_state{state=\"%s\"} %d\n",
                   mt_watch_state_str(states[i]), cp->watch_state == states[i]);
  metric_header(out, "mtlsd_mesh_config_updates_total", "counter",
                "Mesh config snapshots applied from the control plane.");
  mt_text_printf(out, "mtlsd_mesh_config_updates_total %llu\n",
                 (unsigned long long)cp->mesh_updates);
  metric_header(out, "mtlsd_mesh_config_rejected_total", "counter",
                "Mesh config snapshots refused (the last good one stayed).");
  mt_text_printf(out, "mtlsd_mesh_config_rejected_total %llu\n",
                 (unsigned long long)cp->mesh_rejected);
}

void mt_admin_render_metrics(const mt_admin_view *v, mt_text *out) {
  char why[TEXT_MAX];
  metric_header(out, "mtlsd_info", "gauge", "Build and identity source of this agent.");
  mt_text_printf(out, "mtlsd_info{version=\"%s\",source=\"%s\"} 1\n", MTLSD_VERSION_TEXT,
                 v->identity_source);
  metric_header(out, "mtlsd_start_time_seconds", "gauge", "When the agent started (Unix time).");
  mt_text_printf(out, "mtlsd_start_time_seconds %lld\n", (long long)v->started);
  metric_header(out, "mtlsd_ready", "gauge", "1 when the agent serves a valid identity.");
  mt_text_printf(out, "mtlsd_ready %d\n", mt_admin_ready(v, why, sizeof(why)));
  mt_metrics_render(out, v->worker_metrics, v->num_workers);
  render_identity_metrics(v, out);
  render_control_plane_metrics(v, out);
  metric_header(out, "mtlsd_config_reloads_total", "counter",
                "Configuration reloads (SIGHUP, file change or POST /reload), by result.");
  mt_text_printf(out, "mtlsd_config_reloads_total{result=\"success\"} %llu\n",
                 (unsigned long long)v->config_reloads);
  mt_text_printf(out, "mtlsd_config_reloads_total{result=\"failure\"} %llu\n",
                 (unsigned long long)v->config_reload_failures);
}

/* ---- JSON helpers ---- */

static void json_key(mt_text *out, int *first, const char *key) {
  mt_text_printf(out, "%s\"%s\":", *first ? "" : ",", key);
  *first = 0;
}

static void json_str(mt_text *out, int *first, const char *key, const char *value) {
  json_key(out, first, key);
  if (value == NULL)
    mt_text_printf(out, "null");
  else
    mt_text_json_string(out, value);
}

static void json_int(mt_text *out, int *first, const char *key, long long value) {
  json_key(out, first, key);
  mt_text_printf(out, "%lld", value);
}

static void json_time(mt_text *out, int *first, const char *key, time_t t) {
  char text[32];
  struct tm tm;
  gmtime_r(&t, &tm);
  strftime(text, sizeof(text), "%Y-%m-%dT%H:%M:%SZ", &tm);
  json_str(out, first, key, text);
}

static void json_address(mt_text *out, int *first, const char *key, const mt_sockaddr *a) {
  char text[64];
  mt_sockaddr_format((const struct sockaddr *)&a->addr, text, sizeof(text));
  json_str(out, first, key, text);
}

/* An address whose port means nothing (a pod's IP), without the port. */
static void json_ip(mt_text *out, int *first, const char *key, const mt_sockaddr *a) {
  char text[INET6_ADDRSTRLEN] = "";
  if (a->addr.ss_family == AF_INET6)
    inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)&a->addr)->sin6_addr, text, sizeof(text));
  else
    inet_ntop(AF_INET, &((const struct sockaddr_in *)&a->addr)->sin_addr, text, sizeof(text));
  json_str(out, first, key, text);
}

/* ---- /certs ---- */

static void cert_name(X509_NAME *name, char *buf, size_t len) {
  buf[0] = '\0';
  BIO *bio = BIO_new(BIO_s_mem());
  if (bio == NULL) return;
  if (X509_NAME_print_ex(bio, name, 0, XN_FLAG_RFC2253) >= 0) {
    char *s = mt_x509_bio_to_string(bio);
    if (s != NULL) snprintf(buf, len, "%s", s);
    free(s);
  }
  BIO_free(bio);
}

static void cert_fingerprint(X509 *cert, char *buf, size_t len) {
  uint8_t md[EVP_MAX_MD_SIZE];
  unsigned int md_len = 0;
  buf[0] = '\0';
  if (!X509_digest(cert, EVP_sha256(), md, &md_len)) return;
  for (unsigned int i = 0; i < md_len && (size_t)(2 * i + 2) < len; i++)
    snprintf(buf + 2 * i, 3, "%02x", md[i]);
}

static void render_cert(mt_text *out, X509 *cert, time_t now) {
  char text[TEXT_MAX];
  int first = 1;
  mt_text_printf(out, "{");
  cert_name(X509_get_subject_name(cert), text, sizeof(text));
  json_str(out, &first, "subject", text);
  cert_name(X509_get_issuer_name(cert), text, sizeof(text));
  json_str(out, &first, "issuer", text);
  json_time(out, &first, "not_before", mt_x509_time(X509_get0_notBefore(cert), now));
  json_time(out, &first, "not_after", mt_x509_time(X509_get0_notAfter(cert), now));
  cert_fingerprint(cert, text, sizeof(text));
  json_str(out, &first, "sha256", text);
  mt_text_printf(out, "}");
}

static void render_bundles(mt_text *out, const mt_trust *trust, time_t now) {
  mt_text_printf(out, "[");
  for (size_t i = 0; i < mt_trust_num_domains(trust); i++) {
    int first = 1;
    mt_text_printf(out, "%s{", i ? "," : "");
    json_str(out, &first, "trust_domain", mt_trust_domain_at(trust, i));
    json_key(out, &first, "roots");
    mt_text_printf(out, "[");
    const STACK_OF(X509) *roots = mt_trust_roots_at(trust, i);
    for (size_t r = 0; r < sk_X509_num(roots); r++) {
      mt_text_printf(out, "%s", r ? "," : "");
      render_cert(out, sk_X509_value(roots, r), now);
    }
    mt_text_printf(out, "]}");
  }
  mt_text_printf(out, "]");
}

/* The certificate of |id|: SPIFFE ID, serial, validity, chain (leaf first). */
static void render_identity_fields(mt_text *out, int *first, mt_identity *id, time_t now) {
  X509 *leaf = mt_identity_leaf(id);
  time_t not_after = mt_identity_not_after(id);
  json_str(out, first, "spiffe_id", mt_identity_spiffe_id(id));
  json_str(out, first, "serial", mt_identity_serial(id));
  json_time(out, first, "not_before", mt_x509_time(X509_get0_notBefore(leaf), now));
  json_time(out, first, "not_after", not_after);
  json_int(out, first, "seconds_to_expiry", (long long)(not_after - now));
  json_key(out, first, "chain");
  mt_text_printf(out, "[");
  render_cert(out, leaf, now);
  const STACK_OF(X509) *chain = mt_identity_chain(id);
  for (size_t i = 0; chain != NULL && i < sk_X509_num(chain); i++) {
    mt_text_printf(out, ",");
    render_cert(out, sk_X509_value(chain, i), now);
  }
  mt_text_printf(out, "]");
  json_str(out, first, "mesh_version", mt_mesh_version(mt_identity_mesh(id)));
}

/* Node mode: one entry per listed workload, with its certificate when it
 * has a valid one. */
static void render_node_certs(const mt_admin_view *v, mt_text *out, int *first) {
  const mt_config *c = v->config;
  mt_identity *any = NULL;
  json_key(out, first, "workloads");
  mt_text_printf(out, "[");
  for (size_t i = 0; i < c->num_node_workloads; i++) {
    const mt_node_workload_config *w = &c->node_workloads[i];
    mt_identity *id = workload_identity(v, w);
    int f = 1;
    mt_text_printf(out, "%s{", i ? "," : "");
    json_ip(out, &f, "address", &w->address);
    if (id != NULL) {
      render_identity_fields(out, &f, id, v->now);
      any = any ? any : id;
    } else {
      json_str(out, &f, "spiffe_id", w->spiffe_id);
      json_str(out, &f, "serial", NULL);
      json_str(out, &f, "error", "no valid certificate for this workload");
    }
    mt_text_printf(out, "}");
  }
  mt_text_printf(out, "]");
  if (any != NULL) {
    json_key(out, first, "trust_bundles");
    render_bundles(out, mt_identity_trust(any), v->now);
  }
}

void mt_admin_render_certs(const mt_admin_view *v, mt_text *out) {
  int first = 1;
  mt_text_printf(out, "{");
  json_str(out, &first, "source", v->identity_source);
  if (v->config->node_mode) {
    render_node_certs(v, out, &first);
  } else if (v->identity == NULL) {
    json_str(out, &first, "spiffe_id", NULL);
    json_str(out, &first, "error", "no valid workload certificate is being served");
  } else {
    render_identity_fields(out, &first, v->identity, v->now);
    json_key(out, &first, "trust_bundles");
    render_bundles(out, mt_identity_trust(v->identity), v->now);
  }
  mt_text_printf(out, "}\n");
}

/* ---- /config: the effective settings (paths, never file contents) ---- */

static void render_listeners(mt_text *out, const mt_listener_config *l, size_t n, int inbound) {
  mt_text_printf(out, "[");
  for (size_t i = 0; i < n; i++) {
    int first = 1;
    mt_text_printf(out, "%s{", i ? "," : "");
    json_address(out, &first, "address", &l[i].listen);
    if (!l[i].has_fixed_target)
      json_str(out, &first, "mode", "redirected");
    else if (inbound)
      json_int(out, &first, "app_port", l[i].app_port);
    else
      json_address(out, &first, "destination", &l[i].destination);
    mt_text_printf(out, "}");
  }
  mt_text_printf(out, "]");
}

static void render_identity_config(const mt_config *c, mt_text *out, int *first) {
  if (c->has_control_plane) {
    int f = 1;
    json_key(out, first, "control_plane");
    mt_text_printf(out, "{");
    json_str(out, &f, "address", c->cp_address);
    json_str(out, &f, "spiffe_id", c->cp_spiffe_id);
    json_str(out, &f, "root_file", c->cp_root_file);
    json_str(out, &f, "token_file", c->cp_token_file);
    json_str(out, &f, "cluster_id", c->cp_cluster_id);
    json_str(out, &f, "node_id", c->cp_node_id);
    json_int(out, &f, "cert_ttl_s", c->cp_cert_ttl_s);
    json_key(out, &f, "watch");
    mt_text_printf(out, "%s}", c->cp_watch ? "true" : "false");
    json_str(out, first, "spiffe_id", c->spiffe_id);
    return;
  }
  int f = 1;
  json_key(out, first, "identity");
  mt_text_printf(out, "{");
  json_str(out, &f, "cert_file", c->cert_file);
  json_str(out, &f, "key_file", c->key_file);
  json_str(out, &f, "pkcs12_file", c->pkcs12_file);
  json_int(out, &f, "reload_interval_ms", c->reload_interval_ms);
  mt_text_printf(out, "}");
}

void mt_admin_render_config(const mt_admin_view *v, mt_text *out) {
  static const char *const levels[] = {"debug", "info", "warn", "error"};
  const mt_config *c = v->config;
  int first = 1;
  mt_text_printf(out, "{");
  json_str(out, &first, "path", c->path);
  json_str(out, &first, "trust_domain", c->trust_domain);
  json_int(out, &first, "workers", c->workers);
  json_int(out, &first, "max_connections", c->max_connections);
  json_str(out, &first, "log_level", levels[c->log_level]);
  json_str(out, &first, "access_log", c->access_log);
  render_identity_config(c, out, &first);
  json_key(out, &first, "trust_bundles");
  mt_text_printf(out, "[");
  for (size_t i = 0; i < c->num_trust_bundles; i++) {
    int f = 1;
    mt_text_printf(out, "%s{", i ? "," : "");
    json_str(out, &f, "trust_domain", c->trust_bundles[i].trust_domain);
    json_str(out, &f, "file", c->trust_bundles[i].file);
    mt_text_printf(out, "}");
  }
  mt_text_printf(out, "]");
  json_str(out, &first, "tls_min_version", c->tls_min_version == TLS1_3_VERSION ? "1.3" : "1.2");
  json_key(out, &first, "timeouts");
  mt_text_printf(out, "{\"handshake_ms\":%d,\"connect_ms\":%d,\"idle_ms\":%d,\"drain_ms\":%d}",
                 c->handshake_timeout_ms, c->connect_timeout_ms, c->idle_timeout_ms,
                 c->drain_timeout_ms);
  json_key(out, &first, "inbound_listeners");
  render_listeners(out, c->inbound_listeners, c->num_inbound_listeners, 1);
  json_address(out, &first, "inbound_app_address", &c->inbound_app_address);
  json_key(out, &first, "permissive_ports");
  mt_text_printf(out, "[");
  for (size_t i = 0; i < c->num_permissive_ports; i++)
    mt_text_printf(out, "%s%u", i ? "," : "", c->permissive_ports[i]);
  mt_text_printf(out, "]");
  json_key(out, &first, "outbound_listeners");
  render_listeners(out, c->outbound_listeners, c->num_outbound_listeners, 0);
  json_str(out, &first, "unknown_destination",
           mt_unknown_destination_str(c->unknown_destination));
  json_address(out, &first, "admin_address", &c->admin_address);
  if (c->has_admin_telemetry_address)
    json_address(out, &first, "admin_telemetry_address", &c->admin_telemetry_address);
  json_key(out, &first, "interception");
  mt_text_printf(out, "%s", c->has_interception ? "true" : "false");
  json_int(out, &first, "config_reloads", (long long)v->config_reloads);
  json_int(out, &first, "config_reload_failures", (long long)v->config_reload_failures);
  json_str(out, &first, "last_reload_error", v->last_reload_error ? v->last_reload_error : "");
  mt_text_printf(out, "}\n");
}

/* ---- /policy ---- */

/* The config key of a matcher kind: /policy reads like the YAML and like
 * the explain output of /policy?peer=. */
static const char *match_kind_name(mt_match_kind kind) {
  switch (kind) {
    case MT_MATCH_ANY: return "any";
    case MT_MATCH_EXACT: return "id";
    case MT_MATCH_PREFIX: return "prefix";
    case MT_MATCH_NAMESPACE: return "namespace";
    case MT_MATCH_TRUST_DOMAIN: return "trust_domain";
  }
  return "unknown";
}

static void render_rules(const mt_policy *policy, mt_text *out, int *first) {
  mt_policy_trace trace;
  mt_policy_trace_init(&trace, policy, NULL, 0); /* NULL peer: rules in position order */
  json_str(out, first, "default", mt_action_str(trace.default_action));
  json_key(out, first, "rules");
  mt_text_printf(out, "[");
  for (size_t i = 0; i < trace.num_rules; i++) {
    const mt_rule_trace *r = &trace.rules[i];
    int f = 1;
    mt_text_printf(out, "%s{", i ? "," : "");
    json_str(out, &f, "name", r->name);
    json_str(out, &f, "action", mt_action_str(r->action));
    json_key(out, &f, "ports");
    if (r->ports == NULL) {
      mt_text_printf(out, "\"*\"");
    } else {
      mt_text_printf(out, "[");
      for (size_t p = 0; p < r->num_ports; p++) mt_text_printf(out, "%s%u", p ? "," : "", r->ports[p]);
      mt_text_printf(out, "]");
    }
    json_key(out, &f, "from");
    mt_text_printf(out, "[");
    for (size_t m = 0; m < r->num_matchers; m++) {
      int g = 1;
      mt_text_printf(out, "%s{", m ? "," : "");
      const mt_matcher_trace *mt = &r->matchers[m];
      json_str(out, &g, "kind", match_kind_name(mt->kind));
      if (mt->kind == MT_MATCH_PREFIX && mt->value != NULL) {
        /* The policy keeps the prefix without its "*"; show it as configured. */
        size_t len = strlen(mt->value);
        char *configured = malloc(len + 2);
        if (configured != NULL) {
          memcpy(configured, mt->value, len);
          memcpy(configured + len, "*", 2);
        }
        json_str(out, &g, "value", configured);
        out->failed |= configured == NULL; /* the page is answered with a 500 */
        free(configured);
      } else {
        json_str(out, &g, "value", mt->value);
      }
      mt_text_printf(out, "}");
    }
    mt_text_printf(out, "]}");
  }
  mt_text_printf(out, "]");
  mt_policy_trace_dispose(&trace);
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
  mt_identity *id = v->workloads ? mt_workloads_find(v->workloads, (struct sockaddr *)&addr.addr)
                                 : NULL;
  *why = "no workload of this node with a valid certificate at that address";
  return id;
}

static void render_one_policy(const mt_admin_view *v, mt_identity *owner, mt_text *out,
                              int *first) {
  const mt_mesh *mesh = mt_identity_mesh(owner);
  json_str(out, first, "spiffe_id", mt_identity_spiffe_id(owner));
  json_str(out, first, "version", mt_mesh_version(mesh));
  render_rules(mt_mesh_policy(mesh), out, first);
  json_key(out, first, "permissive_ports");
  mt_text_printf(out, "[");
  for (size_t i = 0; i < v->config->num_permissive_ports; i++)
    mt_text_printf(out, "%s%u", i ? "," : "", v->config->permissive_ports[i]);
  mt_text_printf(out, "]");
  json_int(out, first, "destinations", (long long)mt_mesh_num_destinations(mesh));
  json_str(out, first, "unknown_destination",
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
    json_str(out, &first, "address", addr);
    render_one_policy(v, mt_workloads_identity_at(v->workloads, i), out, &first);
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
    json_str(out, &first, "error", why);
  else
    render_one_policy(v, owner, out, &first);
  mt_text_printf(out, "}\n");
}

int mt_admin_render_explain(const mt_admin_view *v, const char *workload, const char *peer_id,
                            uint16_t port, mt_text *out) {
  const char *why;
  mt_identity *owner = policy_owner(v, workload, &why);
  if (owner == NULL) {
    int first = 1;
    mt_text_printf(out, "{");
    json_str(out, &first, "decision", "deny");
    json_str(out, &first, "reason", why);
    mt_text_printf(out, "}\n");
    return 0;
  }
  const mt_mesh *mesh = mt_identity_mesh(owner);
  int permissive = 0;
  for (size_t i = 0; i < v->config->num_permissive_ports; i++)
    permissive |= v->config->permissive_ports[i] == port;
  mt_explain_query q = {
      .source = "the running agent",
      .version = mt_mesh_version(mesh),
      .may_be_replaced = v->control_plane != NULL && v->config->cp_watch,
      .peer_id = peer_id,
      .port = port,
      .permissive = permissive,
  };
  const mt_policy *policy = mt_mesh_policy(mesh);
  char probe[1];
  int need = mt_explain_render(policy, &q, 1, probe, sizeof(probe));
  char *buf = need >= 0 ? malloc((size_t)need + 1) : NULL;
  if (buf == NULL) {
    out->failed = 1;
    return 0;
  }
  mt_explain_render(policy, &q, 1, buf, (size_t)need + 1);
  mt_text_printf(out, "%s\n", buf);
  free(buf);
  return mt_explain_decide(policy, &q).action == MT_ACTION_ALLOW;
}
