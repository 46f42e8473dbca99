/* admin_metrics.c: /metrics, the workers' counters then the agent-wide gauges. */
#include "agent/admin_metrics.h"

#include <openssl/x509.h>

#include "agent/admin_pages.h"
#include "agent/x509_util.h"

#define MTLSD_VERSION_TEXT "0.1.0"

/* ---- the certificates being served ---- */

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
  mt_text_printf(out, "mtlsd_certificate_rotations_total{source=\"%s\"} %llu\n", v->identity_source,
                 (unsigned long long)v->identity_updates);
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

/* What the control plane sent that the agent did not take (or did not
 * send at all), and whether the served certificates are being renewed. */
static void render_control_plane_health(const mt_admin_view *v, mt_text *out) {
  const mt_cert_manager_stats *cp = v->control_plane;
  metric_header(out, "mtlsd_control_plane_refusals_total", "counter",
                "Control-plane answers refused or missing (the last good certificate and mesh "
                "config stayed), by call and reason.");
  for (int call = 0; call < MT_CP_NUM_CALLS; call++)
    for (int r = 0; r < MT_CP_NUM_REFUSALS; r++)
      mt_text_printf(out, "mtlsd_control_plane_refusals_total{call=\"%s\",reason=\"%s\"} %llu\n",
                     mt_cp_call_str((mt_cp_call)call), mt_cp_refusal_str((mt_cp_refusal)r),
                     (unsigned long long)cp->refusals[call][r]);
  metric_header(out, "mtlsd_certificate_last_issued_seconds", "gauge",
                "When the control plane's last certificate was put into service (Unix time; 0: "
                "none yet).");
  mt_text_printf(out, "mtlsd_certificate_last_issued_seconds %lld\n",
                 (long long)cp->last_issued_at);
  metric_header(out, "mtlsd_certificate_renewal_overdue_seconds", "gauge",
                "Seconds since a served certificate's renewal was due, once an attempt failed (0: "
                "renewals on time).");
  mt_text_printf(out, "mtlsd_certificate_renewal_overdue_seconds %lld\n",
                 (long long)(cp->renewal_overdue_since ? v->now - cp->renewal_overdue_since : 0));
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
  const struct {
    const char *name, *help;
    uint64_t value;
  } counters[] = {
      {"mtlsd_mesh_config_updates_total", "Mesh config snapshots applied from the control plane.",
       cp->mesh_updates},
      {"mtlsd_mesh_config_rejected_total",
       "Mesh config snapshots refused (the last good one stayed).", cp->mesh_rejected},
      {"mtlsd_mesh_config_deltas_total",
       "Of the mesh config updates applied, those sent as deltas.", cp->mesh_deltas},
      {"mtlsd_mesh_config_resyncs_total",
       "Mesh config streams ended to get a complete snapshot (a delta did not apply).",
       cp->mesh_resyncs},
      {"mtlsd_mesh_destinations_wanted_total",
       "Destinations on demand: addresses asked of the control plane (each once).",
       cp->destinations_wanted},
      {"mtlsd_mesh_want_failures_total",
       "Destinations on demand: Want calls that failed (their connections wait for the next "
       "stream).",
       cp->want_failures},
  };
  for (size_t i = 0; i < sizeof(counters) / sizeof(counters[0]); i++) {
    metric_header(out, counters[i].name, "counter", counters[i].help);
    mt_text_printf(out, "%s %llu\n", counters[i].name, (unsigned long long)counters[i].value);
  }
  metric_header(out, "mtlsd_policy_rules_reduced", "gauge",
                "Rules in the pushed workload policies that the control plane reduced for L4 "
                "(Istio rules with HTTP fields; see /policy).");
  mt_text_printf(out, "mtlsd_policy_rules_reduced %llu\n",
                 (unsigned long long)cp->rules_reduced);
  render_control_plane_health(v, out);
}

/* The SPIFFE Workload API served to the applications (workload_api.h). */
static void render_workload_api_metrics(const mt_admin_view *v, mt_text *out) {
  const mt_workload_api_stats *w = v->workload_api;
  if (w == NULL) return;
  metric_header(out, "mtlsd_workload_api_calls_total", "counter",
                "Workload API calls by method and final gRPC status (a stream counts when it "
                "ends).");
  for (int m = 0; m < MT_WL_NUM_METHODS; m++)
    for (int code = 0; code <= MT_GRPC_STATUS_MAX; code++)
      if (code == MT_GRPC_OK || w->calls[m][code] != 0)
        mt_text_printf(out, "mtlsd_workload_api_calls_total{method=\"%s\",code=\"%s\"} %llu\n",
                       mt_wl_method_name((mt_wl_method)m), mt_grpc_status_name(code),
                       (unsigned long long)w->calls[m][code]);
  metric_header(out, "mtlsd_workload_api_streams", "gauge",
                "Workload API streams open now (FetchX509SVID, FetchX509Bundles, "
                "FetchJWTBundles).");
  mt_text_printf(out, "mtlsd_workload_api_streams %llu\n", (unsigned long long)w->streams);
  const struct {
    const char *name, *help;
    uint64_t value;
  } counters[] = {
      {"mtlsd_workload_api_attestation_failures_total",
       "Workload API callers refused PERMISSION_DENIED (not admitted, or no identity).",
       w->attestation_failures},
      {"mtlsd_workload_api_x509_svid_updates_total", "FetchX509SVID messages sent.",
       w->x509_svid_updates},
      {"mtlsd_workload_api_bundle_updates_total",
       "FetchX509Bundles and FetchJWTBundles messages sent.", w->bundle_updates},
      {"mtlsd_workload_api_slow_readers_total",
       "Workload API streams closed because the client did not read its responses.",
       w->slow_readers},
      {"mtlsd_workload_api_app_svids_issued_total",
       "Application X509-SVIDs (keys of their own) issued or renewed by the control plane.",
       v->control_plane ? v->control_plane->app_svids_issued : 0},
  };
  for (size_t i = 0; i < sizeof(counters) / sizeof(counters[0]); i++) {
    metric_header(out, counters[i].name, "counter", counters[i].help);
    mt_text_printf(out, "%s %llu\n", counters[i].name, (unsigned long long)counters[i].value);
  }
}

/* The Workload API source: each stream's state, its changes and calls,
 * what was refused, and when the last new SVID was put into service. */
static void render_workload_api_source_metrics(const mt_admin_view *v, mt_text *out) {
  const mt_workload_api_source_stats *w = v->workload_api_source;
  if (w == NULL) return;
  metric_header(out, "mtlsd_workload_api_source_stream_state", "gauge",
                "State of each Workload API stream (1 for the current state).");
  for (int st = 0; st < MT_WLAPI_NUM_STREAMS; st++)
    for (int s = 0; s < MT_WLAPI_NUM_STATES; s++)
      mt_text_printf(out, "mtlsd_workload_api_source_stream_state{stream=\"%s\",state=\"%s\"} %d\n",
                     mt_wlapi_stream_str((mt_wlapi_stream)st),
                     mt_wlapi_state_str((mt_wlapi_state)s), w->state[st] == (mt_wlapi_state)s);
  metric_header(out, "mtlsd_workload_api_source_state_changes_total", "counter",
                "State changes of each Workload API stream (each is logged once).");
  for (int st = 0; st < MT_WLAPI_NUM_STREAMS; st++)
    mt_text_printf(out, "mtlsd_workload_api_source_state_changes_total{stream=\"%s\"} %llu\n",
                   mt_wlapi_stream_str((mt_wlapi_stream)st),
                   (unsigned long long)w->state_changes[st]);
  metric_header(out, "mtlsd_workload_api_source_calls_total", "counter",
                "Workload API calls started (the first and every reconnect), by stream.");
  for (int st = 0; st < MT_WLAPI_NUM_STREAMS; st++)
    mt_text_printf(out, "mtlsd_workload_api_source_calls_total{stream=\"%s\"} %llu\n",
                   mt_wlapi_stream_str((mt_wlapi_stream)st),
                   (unsigned long long)w->calls_started[st]);
  metric_header(
      out, "mtlsd_workload_api_source_updates_total", "counter",
      "Workload API messages that passed every check (a new SVID, new trust, or a repeat).");
  mt_text_printf(out, "mtlsd_workload_api_source_updates_total %llu\n",
                 (unsigned long long)w->updates_taken);
  metric_header(out, "mtlsd_workload_api_source_refusals_total", "counter",
                "Workload API messages refused or calls failed (the last good identity and trust "
                "stayed), by stream and reason.");
  for (int st = 0; st < MT_WLAPI_NUM_STREAMS; st++)
    for (int r = 0; r < MT_WLAPI_NUM_REFUSALS; r++)
      mt_text_printf(
          out, "mtlsd_workload_api_source_refusals_total{stream=\"%s\",reason=\"%s\"} %llu\n",
          mt_wlapi_stream_str((mt_wlapi_stream)st), mt_wlapi_refusal_str((mt_wlapi_refusal)r),
          (unsigned long long)w->refusals[st][r]);
  metric_header(out, "mtlsd_certificate_last_issued_seconds", "gauge",
                "When the last new SVID was put into service (Unix time; 0: none yet).");
  mt_text_printf(out, "mtlsd_certificate_last_issued_seconds %lld\n", (long long)w->last_served_at);
}

/* The admin endpoint's own traffic: what reached a page, what its HTTP
 * server refused by itself (malformed, too large, too slow, too many). */
static void render_admin_http_metrics(const mt_admin_view *v, mt_text *out) {
  if (v->num_http == 0) return;
  metric_header(out, "mtlsd_admin_requests_total", "counter",
                "Admin HTTP requests handed to an endpoint, by listener.");
  for (size_t i = 0; i < v->num_http; i++)
    mt_text_printf(out, "mtlsd_admin_requests_total{listener=\"%s\"} %llu\n", v->http[i].listener,
                   (unsigned long long)v->http[i].stats->requests);
  metric_header(out, "mtlsd_admin_refused_total", "counter",
                "Admin HTTP requests the server answered itself with an error (bad or too large "
                "input, too slow, too many connections), by listener and status.");
  for (size_t i = 0; i < v->num_http; i++)
    for (size_t j = 0; j < MT_HTTP_NUM_REFUSALS; j++)
      mt_text_printf(out, "mtlsd_admin_refused_total{listener=\"%s\",status=\"%d\"} %llu\n",
                     v->http[i].listener, mt_http_refusal_status[j],
                     (unsigned long long)v->http[i].stats->refused[j]);
}

void mt_admin_render_metrics(const mt_admin_view *v, mt_text *out) {
  char why[MT_ADMIN_READY_TEXT_MAX];
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
  render_workload_api_metrics(v, out);
  render_workload_api_source_metrics(v, out);
  metric_header(out, "mtlsd_config_reloads_total", "counter",
                "Configuration reloads (SIGHUP, file change or POST /reload), by result.");
  mt_text_printf(out, "mtlsd_config_reloads_total{result=\"success\"} %llu\n",
                 (unsigned long long)v->config_reloads);
  mt_text_printf(out, "mtlsd_config_reloads_total{result=\"failure\"} %llu\n",
                 (unsigned long long)v->config_reload_failures);
  render_admin_http_metrics(v, out);
}
