/* admin_pages.c: /ready, /certs and /config bodies. */
#include "agent/admin_pages.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/bio.h>
#include <openssl/digest.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "agent/mesh.h"
#include "agent/x509_util.h"

enum { TEXT_MAX = 256 };

/* ---- readiness ---- */

/* Node mode: every pod the agent serves (node.workloads, or the control
 * plane's list) needs a valid certificate of its own. */
static int node_certificates_ready(const mt_admin_view *v, char *why, size_t why_len) {
  size_t count = mt_workloads_count(v->workloads), missing = 0;
  const char *first = NULL;
  if (v->workloads == NULL) {
    snprintf(why, why_len, "not ready: the node's workloads are not known yet");
    return 0;
  }
  for (size_t i = 0; i < count; i++) {
    mt_identity *id = mt_workloads_identity_at(v->workloads, i);
    if (id != NULL && mt_identity_not_after(id) > v->now) continue;
    if (missing++ == 0) first = mt_workloads_spiffe_id_at(v->workloads, i);
  }
  if (missing == 0) return 1;
  snprintf(why, why_len, "not ready: %zu of %zu workloads have no valid certificate (first: %s)",
           missing, count, first);
  return 0;
}

/* The Workload API source: why there is no identity, in the terms of its
 * X509-SVID stream (state and last refusal). */
static int workload_api_source_ready(const mt_admin_view *v, char *why, size_t why_len) {
  const mt_workload_api_source_stats *w = v->workload_api_source;
  /* Expired but not yet replaced by "no identity" (the expiry timer runs
   * within the second) reads the same. */
  if (v->identity != NULL && mt_identity_not_after(v->identity) > v->now) return 1;
  snprintf(why, why_len, "not ready: %s; Workload API %s: X509-SVID stream %s%s%s",
           w->last_served_at != 0 ? "the SVID expired without a replacement"
                                  : "no SVID from the Workload API yet",
           w->socket, mt_wlapi_state_str(w->state[MT_WLAPI_STREAM_X509_SVID]),
           w->last_error[0] != '\0' ? "; last error: " : "", w->last_error);
  return 0;
}

static int sidecar_certificate_ready(const mt_admin_view *v, char *why, size_t why_len) {
  const mt_cert_manager_stats *cp = v->control_plane;
  if (v->workload_api_source != NULL && !workload_api_source_ready(v, why, why_len)) return 0;
  if (v->identity == NULL && cp != NULL && cp->last_issued_at != 0) {
    snprintf(why, why_len,
             "not ready: the workload certificate expired without renewal; control plane: %s",
             cp->last_error[0] != '\0' ? cp->last_error : "no answer");
    return 0;
  }
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

/* Still ready (the certificate is valid), but the operator should know the
 * control plane has not renewed it: since when, and what it last did. */
static void renewal_overdue_note(const mt_admin_view *v, char *out, size_t out_len) {
  const mt_cert_manager_stats *cp = v->control_plane;
  if (cp == NULL || cp->renewal_overdue_since == 0) return;
  snprintf(out, out_len, "; certificate not renewed: renewal overdue for %lld s; control plane: %s",
           (long long)(v->now - cp->renewal_overdue_since),
           cp->last_error[0] != '\0' ? cp->last_error : "no answer yet");
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
  int n = 0;
  if (node)
    n = snprintf(why, why_len, "ready: serving %zu workloads", mt_workloads_count(v->workloads));
  else
    n = snprintf(why, why_len, "ready: serving as %s (serial %s, expires in %lld s)",
                 mt_identity_spiffe_id(v->identity), mt_identity_serial(v->identity),
                 (long long)(mt_identity_not_after(v->identity) - v->now));
  if (n > 0 && (size_t)n < why_len) renewal_overdue_note(v, why + n, why_len - (size_t)n);
  return 1;
}

/* ---- JSON members this module alone needs (the rest: text.h) ---- */

static void json_time(mt_text *out, int *first, const char *key, time_t t) {
  char text[32];
  struct tm tm;
  gmtime_r(&t, &tm);
  strftime(text, sizeof(text), "%Y-%m-%dT%H:%M:%SZ", &tm);
  mt_json_str(out, first, key, text);
}

static void json_address(mt_text *out, int *first, const char *key, const mt_sockaddr *a) {
  char text[64];
  mt_sockaddr_format((const struct sockaddr *)&a->addr, text, sizeof(text));
  mt_json_str(out, first, key, text);
}

/* An address whose port means nothing (a pod's IP), without the port. */
static void json_ip(mt_text *out, int *first, const char *key, const mt_sockaddr *a) {
  char text[INET6_ADDRSTRLEN] = "";
  if (a->addr.ss_family == AF_INET6)
    inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)&a->addr)->sin6_addr, text, sizeof(text));
  else
    inet_ntop(AF_INET, &((const struct sockaddr_in *)&a->addr)->sin_addr, text, sizeof(text));
  mt_json_str(out, first, key, text);
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
  mt_json_str(out, &first, "subject", text);
  cert_name(X509_get_issuer_name(cert), text, sizeof(text));
  mt_json_str(out, &first, "issuer", text);
  json_time(out, &first, "not_before", mt_x509_time(X509_get0_notBefore(cert), now));
  json_time(out, &first, "not_after", mt_x509_time(X509_get0_notAfter(cert), now));
  cert_fingerprint(cert, text, sizeof(text));
  mt_json_str(out, &first, "sha256", text);
  mt_text_printf(out, "}");
}

static void render_bundles(mt_text *out, const mt_trust *trust, time_t now) {
  mt_text_printf(out, "[");
  for (size_t i = 0; i < mt_trust_num_domains(trust); i++) {
    int first = 1;
    mt_text_printf(out, "%s{", i ? "," : "");
    mt_json_str(out, &first, "trust_domain", mt_trust_domain_at(trust, i));
    mt_json_key(out, &first, "roots");
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
  mt_json_str(out, first, "spiffe_id", mt_identity_spiffe_id(id));
  mt_json_str(out, first, "serial", mt_identity_serial(id));
  json_time(out, first, "not_before", mt_x509_time(X509_get0_notBefore(leaf), now));
  json_time(out, first, "not_after", not_after);
  mt_json_int(out, first, "seconds_to_expiry", (long long)(not_after - now));
  mt_json_key(out, first, "chain");
  mt_text_printf(out, "[");
  render_cert(out, leaf, now);
  const STACK_OF(X509) *chain = mt_identity_chain(id);
  for (size_t i = 0; chain != NULL && i < sk_X509_num(chain); i++) {
    mt_text_printf(out, ",");
    render_cert(out, sk_X509_value(chain, i), now);
  }
  mt_text_printf(out, "]");
  mt_json_str(out, first, "mesh_version", mt_mesh_version(mt_identity_mesh(id)));
}

/* Node mode: one entry per listed workload, with its certificate when it
 * has a valid one. */
static void render_node_certs(const mt_admin_view *v, mt_text *out, int *first) {
  mt_identity *any = NULL;
  mt_json_key(out, first, "workloads");
  mt_text_printf(out, "[");
  for (size_t i = 0; i < mt_workloads_count(v->workloads); i++) {
    mt_sockaddr address;
    memset(&address, 0, sizeof(address));
    const struct sockaddr *sa = mt_workloads_address_at(v->workloads, i);
    memcpy(&address.addr, sa,
           sa->sa_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in));
    mt_identity *id = mt_workloads_identity_at(v->workloads, i);
    if (id != NULL && mt_identity_not_after(id) <= v->now) id = NULL;
    int f = 1;
    mt_text_printf(out, "%s{", i ? "," : "");
    json_ip(out, &f, "address", &address);
    if (id != NULL) {
      render_identity_fields(out, &f, id, v->now);
      any = any ? any : id;
    } else {
      mt_json_str(out, &f, "spiffe_id", mt_workloads_spiffe_id_at(v->workloads, i));
      mt_json_str(out, &f, "serial", NULL);
      mt_json_str(out, &f, "error", "no valid certificate for this workload");
    }
    mt_text_printf(out, "}");
  }
  mt_text_printf(out, "]");
  if (any != NULL) {
    mt_json_key(out, first, "trust_bundles");
    render_bundles(out, mt_identity_trust(any), v->now);
  }
}

void mt_admin_render_certs(const mt_admin_view *v, mt_text *out) {
  int first = 1;
  mt_text_printf(out, "{");
  mt_json_str(out, &first, "source", v->identity_source);
  if (v->config->node_mode) {
    render_node_certs(v, out, &first);
  } else if (v->identity == NULL) {
    mt_json_str(out, &first, "spiffe_id", NULL);
    mt_json_str(out, &first, "error", "no valid workload certificate is being served");
  } else {
    render_identity_fields(out, &first, v->identity, v->now);
    mt_json_key(out, &first, "trust_bundles");
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
      mt_json_str(out, &first, "mode", "redirected");
    else if (inbound)
      mt_json_int(out, &first, "app_port", l[i].app_port);
    else
      json_address(out, &first, "destination", &l[i].destination);
    mt_text_printf(out, "}");
  }
  mt_text_printf(out, "]");
}

static void render_identity_config(const mt_config *c, mt_text *out, int *first) {
  if (c->has_control_plane) {
    int f = 1;
    mt_json_key(out, first, "control_plane");
    mt_text_printf(out, "{");
    mt_json_str(out, &f, "address", c->cp_address);
    mt_json_str(out, &f, "spiffe_id", c->cp_spiffe_id);
    mt_json_str(out, &f, "root_file", c->cp_root_file);
    mt_json_str(out, &f, "token_file", c->cp_token_file);
    mt_json_str(out, &f, "cluster_id", c->cp_cluster_id);
    mt_json_str(out, &f, "node_id", c->cp_node_id);
    mt_json_int(out, &f, "cert_ttl_s", c->cp_cert_ttl_s);
    mt_json_key(out, &f, "watch");
    mt_text_printf(out, "%s}", c->cp_watch ? "true" : "false");
    mt_json_str(out, first, "spiffe_id", c->spiffe_id);
    return;
  }
  int f = 1;
  mt_json_key(out, first, "identity");
  mt_text_printf(out, "{");
  if (c->workload_api_source_socket != NULL) {
    mt_json_str(out, &f, "workload_api_socket", c->workload_api_source_socket);
    mt_json_str(out, &f, "spiffe_id", c->spiffe_id);
    mt_json_int(out, &f, "workload_api_retry_initial_ms", c->workload_api_source_retry_initial_ms);
    mt_json_int(out, &f, "workload_api_retry_max_ms", c->workload_api_source_retry_max_ms);
    mt_text_printf(out, "}");
    return;
  }
  mt_json_str(out, &f, "cert_file", c->cert_file);
  mt_json_str(out, &f, "key_file", c->key_file);
  mt_json_str(out, &f, "pkcs12_file", c->pkcs12_file);
  mt_json_int(out, &f, "reload_interval_ms", c->reload_interval_ms);
  mt_text_printf(out, "}");
}

void mt_admin_render_config(const mt_admin_view *v, mt_text *out) {
  static const char *const levels[] = {"debug", "info", "warn", "error"};
  const mt_config *c = v->config;
  int first = 1;
  mt_text_printf(out, "{");
  mt_json_str(out, &first, "path", c->path);
  mt_json_str(out, &first, "trust_domain", c->trust_domain);
  mt_json_int(out, &first, "workers", c->workers);
  mt_json_int(out, &first, "max_connections", c->max_connections);
  mt_json_str(out, &first, "log_level", levels[c->log_level]);
  mt_json_str(out, &first, "access_log", c->access_log);
  render_identity_config(c, out, &first);
  mt_json_key(out, &first, "trust_bundles");
  mt_text_printf(out, "[");
  for (size_t i = 0; i < c->num_trust_bundles; i++) {
    int f = 1;
    mt_text_printf(out, "%s{", i ? "," : "");
    mt_json_str(out, &f, "trust_domain", c->trust_bundles[i].trust_domain);
    mt_json_str(out, &f, "file", c->trust_bundles[i].file);
    mt_text_printf(out, "}");
  }
  mt_text_printf(out, "]");
  mt_json_str(out, &first, "tls_min_version", c->tls_min_version == TLS1_3_VERSION ? "1.3" : "1.2");
  mt_json_key(out, &first, "tls_session_resumption");
  mt_text_printf(out, "%s", c->tls_session_resumption ? "true" : "false");
  mt_json_int(out, &first, "tls_session_lifetime_s", c->tls_session_lifetime_s);
  mt_json_key(out, &first, "timeouts");
  mt_text_printf(out, "{\"handshake_ms\":%d,\"connect_ms\":%d,\"idle_ms\":%d,\"drain_ms\":%d}",
                 c->handshake_timeout_ms, c->connect_timeout_ms, c->idle_timeout_ms,
                 c->drain_timeout_ms);
  mt_json_key(out, &first, "inbound_listeners");
  render_listeners(out, c->inbound_listeners, c->num_inbound_listeners, 1);
  json_address(out, &first, "inbound_app_address", &c->inbound_app_address);
  mt_json_key(out, &first, "permissive_ports");
  mt_text_printf(out, "[");
  for (size_t i = 0; i < c->num_permissive_ports; i++)
    mt_text_printf(out, "%s%u", i ? "," : "", c->permissive_ports[i]);
  mt_text_printf(out, "]");
  mt_json_key(out, &first, "outbound_listeners");
  render_listeners(out, c->outbound_listeners, c->num_outbound_listeners, 0);
  mt_json_str(out, &first, "unknown_destination",
              mt_unknown_destination_str(c->unknown_destination));
  json_address(out, &first, "admin_address", &c->admin_address);
  if (c->has_admin_telemetry_address)
    json_address(out, &first, "admin_telemetry_address", &c->admin_telemetry_address);
  mt_json_key(out, &first, "interception");
  mt_text_printf(out, "%s", c->has_interception ? "true" : "false");
  mt_json_int(out, &first, "config_reloads", (long long)v->config_reloads);
  mt_json_int(out, &first, "config_reload_failures", (long long)v->config_reload_failures);
  mt_json_str(out, &first, "last_reload_error", v->last_reload_error ? v->last_reload_error : "");
  mt_text_printf(out, "}\n");
}
