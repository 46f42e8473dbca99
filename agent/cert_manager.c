/* cert_manager.c: certificate lifecycle and mesh config from the control
 * plane, assembled into identity snapshots.
 *
 * Certificate states (one timer drives them):
 *   REQUESTING --ok--> VALID --renewal time--> REQUESTING
 *        |                                         |
 *        +--error--> BACKOFF --delay--> REQUESTING <+
 * Expiry is a separate timer: when the served certificate's notAfter
 * passes, the workers get "no identity" until a request succeeds. */
#include "agent/cert_manager.h"

#include <openssl/asn1.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "agent/ca_client.h"
#include "agent/cp_tls.h"
#include "agent/csr.h"
#include "agent/identity_files.h"
#include "agent/jitter.h"
#include "agent/log.h"
#include "agent/mesh_watch.h"
#include "agent/pem.h"
#include "agent/tls.h"
#include "agent/workloads.h"
#include "agent/x509_util.h"
#include "grpc/client.h"

enum {
  ERR_MAX = 512,
  JITTER_PERCENT = 10,         /* renewal: +-10% of the certificate's life */
  BACKOFF_JITTER_PERCENT = 20, /* retries: +-20% of the delay */
  DETAIL_SHOWN_MAX = 150,      /* of an ID or a reason quoted in a log line */
};

static const double MIN_RENEWAL_DELAY_S = 0.1;

typedef enum { CM_REQUESTING, CM_VALID, CM_BACKOFF } cm_state;

typedef struct {
  const struct sockaddr *address;
  const char *spiffe_id;
} node_entry;

/* One certificate we keep valid: our own (sidecar mode) or one workload's
 * (node mode, requested on its behalf). Each runs the state machine above. */
typedef struct {
  mt_cert_manager *m;
  char spiffe_id[MT_SPIFFE_ID_MAX_LEN + 1]; /* what we ask the CA for */
  int impersonate;                          /* node mode: on a workload's behalf */
  /* An application SVID (the Workload API's): its own key, never the
   * agent's; handed to sink.app_svid instead of the workers. */
  int for_application;
  cm_state state;
  mt_ca_request *request;
  EVP_PKEY *pending_key; /* the key the request in flight certifies */
  int backoff_ms;
  time_t renewal_due;    /* when the served certificate's renewal was scheduled */
  int renewal_failed;    /* an attempt since |renewal_due| failed: renewal overdue */
  ev_timer cert_timer;   /* renewal or retry */
  ev_timer expiry_timer; /* notAfter of the served certificate */
  /* Current credentials (NULL until the first success). */
  EVP_PKEY *key;
  X509 *leaf;
  STACK_OF(X509) * chain;
  time_t not_before, not_after;
  int serving;                              /* a valid identity from this slot is published */
  char issued_id[MT_SPIFFE_ID_MAX_LEN + 1]; /* what the CA granted ("" before) */
  mt_identity *identity;                    /* the last snapshot built (owned) */
} cert_slot;

struct mt_cert_manager {
  struct ev_loop *loop;
  mt_config *config; /* owned reference; replaced by mt_cert_manager_set_config */
  mt_cert_manager_sink sink;

  mt_cp_tls *cp_tls; /* verifies the control plane's certificate */
  mt_grpc_client *grpc;

  /* One (sidecar) or one per distinct node workload identity. Each slot is
   * its own allocation: its timers and its request in flight point at it,
   * and a reload may add or remove slots around it. */
  cert_slot **slots;
  size_t num_slots, cap_slots;
  STACK_OF(X509) * ca_roots; /* the CA's roots from its latest answer */

  /* Trust and mesh: from the Watch stream once it delivered, else config. */
  mt_bundle *static_bundles;
  size_t num_static_bundles;
  mt_mesh_update watched;
  int have_watched;
  mt_mesh_watch *watch;
  ev_timer watch_timer;
  int watch_backoff_ms;
  int resynced; /* the last stream ended for a resync, and no update came since */

  /* Node mode: the pods served, as (address, identity) pairs: the control
   * plane's list once a snapshot carried one, else node.workloads. Points
   * into |config| or |watched|; rebuilt whenever either is replaced. */
  node_entry *entries;
  size_t num_entries;
  int entries_pushed; /* 1: from the control plane */

  mt_cert_manager_stats stats;
};

static void request_certificate(cert_slot *slot);
static void start_watch(mt_cert_manager *m);
static void slot_dispose(cert_slot *slot);
static void update_node_workloads(mt_cert_manager *m);
static cert_slot *find_slot(const mt_cert_manager *m, const char *spiffe_id);
static cert_slot *find_app_slot(const mt_cert_manager *m, const char *spiffe_id);
static void tell_app_svid(cert_slot *slot);

/* ---- helpers ------------------------------------------------------------ */

const char *mt_cp_call_str(mt_cp_call call) {
  return call == MT_CP_CALL_WATCH ? "watch" : "certificate";
}

const char *mt_cp_refusal_str(mt_cp_refusal refusal) {
  switch (refusal) {
    case MT_CP_REFUSAL_UNAVAILABLE: return "unavailable";
    case MT_CP_REFUSAL_STALLED: return "stalled";
    case MT_CP_REFUSAL_TOO_LARGE: return "too_large";
    case MT_CP_REFUSAL_MALFORMED: return "malformed";
    case MT_CP_REFUSAL_ERROR_STATUS: return "error_status";
    case MT_CP_REFUSAL_KEY_MISMATCH: return "key_mismatch";
    case MT_CP_REFUSAL_WRONG_IDENTITY: return "wrong_identity";
    case MT_CP_REFUSAL_INVALID_CERTIFICATE: return "invalid_certificate";
    case MT_CP_REFUSAL_ROOT_REMOVED: return "root_removed";
    case MT_CP_REFUSAL_INVALID_MESH: return "invalid_mesh";
    case MT_CP_NUM_REFUSALS: break;
  }
  return "unknown";
}

/* How a call that ended with |status| is counted. The gRPC client reports
 * its own refusals as RESOURCE_EXHAUSTED (a message over the limit) and
 * INTERNAL / UNKNOWN (framing it cannot read). */
static mt_cp_refusal status_refusal(mt_grpc_status status) {
  switch (status) {
    case MT_GRPC_UNAVAILABLE: return MT_CP_REFUSAL_UNAVAILABLE;
    case MT_GRPC_DEADLINE_EXCEEDED: return MT_CP_REFUSAL_STALLED;
    case MT_GRPC_RESOURCE_EXHAUSTED: return MT_CP_REFUSAL_TOO_LARGE;
    case MT_GRPC_INTERNAL:
    case MT_GRPC_UNKNOWN: return MT_CP_REFUSAL_MALFORMED;
    default: return MT_CP_REFUSAL_ERROR_STATUS;
  }
}

/* Counts a refusal; a certificate's is kept for /ready (which says why
 * the certificate is not being renewed). */
static void note_refusal(mt_cert_manager *m, mt_cp_call call, mt_cp_refusal why,
                         const char *detail) {
  m->stats.refusals[call][why]++;
  if (call != MT_CP_CALL_CERTIFICATE) return;
  m->stats.last_error_at = time(NULL);
  snprintf(m->stats.last_error, sizeof(m->stats.last_error), "%s (%s): %.*s", mt_cp_call_str(call),
           mt_cp_refusal_str(why), (int)DETAIL_SHOWN_MAX, detail);
}

static void set_timer(mt_cert_manager *m, ev_timer *t, double seconds) {
  ev_timer_stop(m->loop, t);
  ev_timer_set(t, seconds < 0 ? 0 : seconds, 0.0);
  ev_timer_start(m->loop, t);
}

/* Merges |roots| for |td| into |list| (one entry per trust domain). */
static int bundle_add(mt_bundle **list, size_t *count, const char *td,
                      const STACK_OF(X509) * roots) {
  mt_bundle *b = NULL;
  for (size_t i = 0; i < *count; i++)
    if (strcmp((*list)[i].trust_domain, td) == 0) b = &(*list)[i];
  if (b == NULL) {
    mt_bundle *grown = realloc(*list, (*count + 1) * sizeof(**list));
    if (grown == NULL) return 0;
    *list = grown;
    b = &grown[(*count)++];
    b->trust_domain = strdup(td);
    b->roots = sk_X509_new_null();
    if (b->trust_domain == NULL || b->roots == NULL) return 0;
  }
  for (size_t i = 0; i < sk_X509_num(roots); i++) {
    X509 *x = sk_X509_value(roots, i);
    X509_up_ref(x);
    if (!sk_X509_push(b->roots, x)) {
      X509_free(x);
      return 0;
    }
  }
  return 1;
}

static void bundles_free(mt_bundle *list, size_t count) {
  for (size_t i = 0; i < count; i++) {
    free(list[i].trust_domain);
    sk_X509_pop_free(list[i].roots, X509_free);
  }
  free(list);
}

/* The trust the next snapshot uses: the mesh stream's bundles when it has
 * spoken (the control plane is the authority, which is what lets it retire
 * a root), else the configured bundles plus the CA's own roots. */
static mt_trust *assemble_trust(mt_cert_manager *m, const STACK_OF(X509) * ca_roots) {
  mt_bundle *list = NULL;
  size_t count = 0;
  int ok = 1;
  if (m->have_watched) {
    for (size_t i = 0; ok && i < m->watched.num_bundles; i++)
      ok = bundle_add(&list, &count, m->watched.bundles[i].trust_domain,
                      m->watched.bundles[i].roots);
  } else {
    for (size_t i = 0; ok && i < m->num_static_bundles; i++)
      ok = bundle_add(&list, &count, m->static_bundles[i].trust_domain, m->static_bundles[i].roots);
    if (ok && ca_roots != NULL && sk_X509_num(ca_roots) > 0)
      ok = bundle_add(&list, &count, m->config->trust_domain, ca_roots);
  }
  mt_trust *trust = ok ? mt_trust_new() : NULL;
  for (size_t i = 0; trust != NULL && i < count; i++) {
    if (!mt_trust_add(trust, list[i].trust_domain, list[i].roots)) {
      mt_trust_free(trust);
      trust = NULL;
    }
  }
  bundles_free(list, count);
  return trust;
}

/* The policy a slot's snapshot carries: the mesh stream's once it spoke
 * (the workload's own entry in it, if any), else the config's (node mode:
 * the workload's own `policy:`, if any). */
static mt_mesh *slot_mesh(const cert_slot *slot) {
  const mt_cert_manager *m = slot->m;
  const char *who = slot->issued_id[0] != '\0' ? slot->issued_id : slot->spiffe_id;
  if (m->have_watched) return mt_mesh_update_for(&m->watched, who);
  for (size_t w = 0; slot->impersonate && w < m->config->num_node_workloads; w++)
    if (strcmp(m->config->node_workloads[w].spiffe_id, slot->spiffe_id) == 0)
      return m->config->node_workloads[w].mesh;
  return m->config->mesh;
}

/* A snapshot of |key|, |leaf| and |chain| (borrowed) with the current
 * trust (|ca_roots| standing for the CA's) and policy; NULL with the
 * reason in |err| when we would not serve it. */
static mt_identity *build_identity(cert_slot *slot, EVP_PKEY *key, X509 *leaf,
                                   const STACK_OF(X509) * chain, const STACK_OF(X509) * ca_roots,
                                   char *err, size_t err_len) {
  mt_cert_manager *m = slot->m;
  time_t now = time(NULL);
  if (mt_x509_time(X509_get0_notAfter(leaf), now) <= now) {
    snprintf(err, err_len, "the certificate has already expired");
    return NULL;
  }
  mt_trust *trust = assemble_trust(m, ca_roots);
  STACK_OF(X509) *copy = chain ? mt_pem_dup_certs(chain) : NULL;
  if (trust == NULL || (chain != NULL && copy == NULL)) {
    mt_trust_free(trust);
    sk_X509_pop_free(copy, X509_free);
    snprintf(err, err_len, "out of memory assembling the identity");
    return NULL;
  }
  EVP_PKEY_up_ref(key);
  X509_up_ref(leaf);
  return mt_identity_new(m->config, key, leaf, copy, trust, slot_mesh(slot), err, err_len);
}

/* Makes |id| (taken) the slot's served snapshot. */
static void install_identity(cert_slot *slot, mt_identity *id) {
  if (slot->for_application)
    MT_LOG_I("workload api: application certificate ready: %s serial %s", mt_identity_spiffe_id(id),
             mt_identity_serial(id));
  else
    MT_LOG_I("identity ready: %s serial %s, mesh version %s", mt_identity_spiffe_id(id),
             mt_identity_serial(id), mt_mesh_version(mt_identity_mesh(id)));
  /* The CA decides who we are (from the token); say so when that is not
   * what the config asked for, and use the granted ID from now on. */
  if (strcmp(slot->issued_id, mt_identity_spiffe_id(id)) != 0 &&
      strcmp(slot->spiffe_id, mt_identity_spiffe_id(id)) != 0)
    MT_LOG_W("control plane granted %s, not the requested %s", mt_identity_spiffe_id(id),
             slot->spiffe_id);
  snprintf(slot->issued_id, sizeof(slot->issued_id), "%s", mt_identity_spiffe_id(id));
  mt_identity_unref(slot->identity);
  slot->identity = id;
  slot->serving = 1;
}

/* Rebuilds the slot's snapshot from its current parts (new trust or
 * policy). Returns 1 when it has a servable one. */
static int build_slot(cert_slot *slot) {
  if (slot->leaf == NULL || slot->not_after <= time(NULL)) return 0;
  char err[ERR_MAX];
  mt_identity *id =
      build_identity(slot, slot->key, slot->leaf, slot->chain, slot->m->ca_roots, err, sizeof(err));
  if (id == NULL) {
    MT_LOG_E("control plane: cannot serve the certificate issued for %s: %s", slot->spiffe_id, err);
    return 0;
  }
  if (slot->for_application) mt_identity_allow_key_export(id);
  install_identity(slot, id);
  return 1;
}

/* Hands the workers what the slots hold now: the one identity (sidecar) or
 * the table of every workload with a valid certificate (node mode). Nothing
 * is handed over before the first mesh config (when one is watched for):
 * until then a connection would be judged by a policy and destinations the
 * control plane has not confirmed, so the workers keep holding it. */
static void publish_all(mt_cert_manager *m) {
  if (!m->stats.has_mesh_config) {
    MT_LOG_I("control plane: certificate ready; serving starts with the first mesh config");
    return;
  }
  if (!m->config->node_mode) {
    cert_slot *slot = find_slot(m, m->config->spiffe_id);
    if (slot == NULL) slot = m->slots[0]; /* the first slot is always ours */
    m->sink.publish(m->sink.arg, slot->serving ? mt_identity_ref(slot->identity) : NULL);
    return;
  }
  /* Every listed pod goes in, those without a valid certificate with no
   * identity: the workers then hold their traffic rather than treat them
   * as strangers. */
  mt_workloads *table = mt_workloads_new(m->num_entries);
  for (size_t e = 0; table != NULL && e < m->num_entries; e++) {
    const cert_slot *slot = find_slot(m, m->entries[e].spiffe_id);
    mt_identity *identity = slot != NULL && slot->serving ? slot->identity : NULL;
    if (!mt_workloads_add(table, m->entries[e].address, m->entries[e].spiffe_id, identity)) {
      mt_workloads_unref(table);
      table = NULL;
    }
  }
  if (table == NULL) MT_LOG_E("control plane: out of memory building the workload table");
  m->sink.publish_workloads(m->sink.arg, table);
}

/* Trust or policy changed: rebuild every servable slot and publish. */
static void rebuild_all(mt_cert_manager *m) {
  for (size_t i = 0; i < m->num_slots; i++)
    if (m->slots[i]->serving && build_slot(m->slots[i])) tell_app_svid(m->slots[i]);
  publish_all(m);
}

/* Application slots report to the Workload API, not to the workers. */
static void tell_app_svid(cert_slot *slot) {
  mt_cert_manager *m = slot->m;
  if (!slot->for_application || m->sink.app_svid == NULL) return;
  m->sink.app_svid(m->sink.arg, slot->spiffe_id, slot->serving ? slot->identity : NULL);
}

/* ---- certificate lifecycle ---------------------------------------------- */

static void set_slot_timer(cert_slot *slot, ev_timer *t, double seconds) {
  set_timer(slot->m, t, seconds);
}

static void schedule_retry(cert_slot *slot) {
  mt_cert_manager *m = slot->m;
  slot->state = CM_BACKOFF;
  m->stats.certificate_failures++;
  if (slot->serving) slot->renewal_failed = 1;
  double delay_s = mt_jitter(slot->backoff_ms / 1000.0, BACKOFF_JITTER_PERCENT);
  MT_LOG_W("control plane: retrying the certificate request for %s in %.1f s", slot->spiffe_id,
           delay_s);
  set_slot_timer(slot, &slot->cert_timer, delay_s);
  slot->backoff_ms *= 2;
  if (slot->backoff_ms > m->config->cp_retry_max_ms) slot->backoff_ms = m->config->cp_retry_max_ms;
}

/* Renew when about half of the remaining life is left, with jitter so a
 * fleet started together does not renew together. Counting from now rather
 * than from notBefore matters: CAs backdate notBefore for clock skew (60 s
 * for mtls-ca), which on a short-lived certificate would put "half of its
 * life" in the past and renew in a loop. */
static void schedule_renewal(cert_slot *slot) {
  slot->state = CM_VALID;
  slot->backoff_ms = slot->m->config->cp_retry_initial_ms;
  slot->renewal_failed = 0;
  double remaining = difftime(slot->not_after, time(NULL));
  double delay = mt_jitter(remaining / 2, JITTER_PERCENT);
  if (delay < MIN_RENEWAL_DELAY_S) delay = MIN_RENEWAL_DELAY_S;
  slot->renewal_due = time(NULL) + (time_t)delay;
  set_slot_timer(slot, &slot->cert_timer, delay);
  set_slot_timer(slot, &slot->expiry_timer, remaining);
}

/* Refuses the CA's answer for |slot|: counted, logged, retried later; the
 * served certificate stays. */
static void refuse_certificate(cert_slot *slot, mt_cp_refusal why, const char *detail) {
  note_refusal(slot->m, MT_CP_CALL_CERTIFICATE, why, detail);
  MT_LOG_E("control plane: refused the certificate issued for %s (%s): %s; keeping the current one",
           slot->spiffe_id, mt_cp_refusal_str(why), detail);
  schedule_retry(slot);
}

/* Checks the CA's answer for |key| and builds its snapshot, touching none
 * of the slot's state: NULL (refused, with the reason in |why| and |err|)
 * or the snapshot to serve. The leaf must certify our key, pass the same
 * checks a peer's would, and keep the identity this slot already serves
 * (node mode: the workload's own, from the start). */
static mt_identity *check_certificate(cert_slot *slot, EVP_PKEY *key, mt_ca_result *r,
                                      mt_cp_refusal *why, char *err, size_t err_len) {
  X509 *leaf = sk_X509_value(r->chain, 0);
  if (leaf == NULL || !X509_check_private_key(leaf, key)) {
    ERR_clear_error();
    *why = MT_CP_REFUSAL_KEY_MISMATCH;
    snprintf(err, err_len, "the issued certificate does not match the requested key");
    return NULL;
  }
  STACK_OF(X509) *intermediates = sk_X509_dup(r->chain);
  if (intermediates == NULL) {
    *why = MT_CP_REFUSAL_INVALID_CERTIFICATE;
    snprintf(err, err_len, "out of memory");
    return NULL;
  }
  (void)sk_X509_shift(intermediates);
  const STACK_OF(X509) *roots = sk_X509_num(r->roots) > 0 ? r->roots : slot->m->ca_roots;
  mt_identity *id = build_identity(slot, key, leaf, intermediates, roots, err, err_len);
  sk_X509_free(intermediates);
  if (id == NULL) {
    *why = MT_CP_REFUSAL_INVALID_CERTIFICATE;
    return NULL;
  }
  const char *keep = slot->impersonate ? slot->spiffe_id : slot->issued_id;
  if (keep[0] != '\0' && strcmp(keep, mt_identity_spiffe_id(id)) != 0) {
    *why = MT_CP_REFUSAL_WRONG_IDENTITY;
    snprintf(err, err_len, "the certificate is for %.*s, not %.*s", (int)DETAIL_SHOWN_MAX,
             mt_identity_spiffe_id(id), (int)DETAIL_SHOWN_MAX, keep);
    mt_identity_unref(id);
    return NULL;
  }
  return id;
}

/* Takes the checked answer: key, leaf, chain and (when sent) the CA's roots. */
static void take_certificate(cert_slot *slot, EVP_PKEY *key, mt_ca_result *r) {
  X509 *leaf = sk_X509_shift(r->chain);
  EVP_PKEY_free(slot->key);
  X509_free(slot->leaf);
  sk_X509_pop_free(slot->chain, X509_free);
  slot->key = key;
  slot->leaf = leaf;
  slot->chain = r->chain;
  r->chain = NULL;
  if (sk_X509_num(r->roots) > 0) {
    sk_X509_pop_free(slot->m->ca_roots, X509_free);
    slot->m->ca_roots = r->roots;
    r->roots = NULL;
  }
  time_t now = time(NULL);
  slot->not_before = mt_x509_time(X509_get0_notBefore(leaf), now);
  slot->not_after = mt_x509_time(X509_get0_notAfter(leaf), now);
}

static void on_ca_done(void *arg, mt_ca_result *r) {
  cert_slot *slot = arg;
  mt_cert_manager *m = slot->m;
  EVP_PKEY *key = slot->pending_key;
  slot->pending_key = NULL;
  slot->request = NULL;
  if (r->status != MT_GRPC_OK) {
    mt_cp_refusal why = r->refused ? MT_CP_REFUSAL_MALFORMED : status_refusal(r->status);
    note_refusal(m, MT_CP_CALL_CERTIFICATE, why, r->message);
    MT_LOG_E("control plane: certificate request failed: %s (identity %s, reason %s)", r->message,
             slot->spiffe_id, mt_cp_refusal_str(why));
    EVP_PKEY_free(key);
    schedule_retry(slot);
    return;
  }
  char err[ERR_MAX];
  mt_cp_refusal why = MT_CP_REFUSAL_INVALID_CERTIFICATE;
  mt_identity *id = check_certificate(slot, key, r, &why, err, sizeof(err));
  if (id == NULL) {
    EVP_PKEY_free(key);
    refuse_certificate(slot, why, err);
    return;
  }
  take_certificate(slot, key, r);
  if (slot->for_application) mt_identity_allow_key_export(id);
  install_identity(slot, id);
  if (slot->for_application) {
    m->stats.app_svids_issued++;
    tell_app_svid(slot);
  } else {
    publish_all(m);
    m->stats.certificates_issued++;
    m->stats.last_issued_at = time(NULL);
  }
  schedule_renewal(slot);
}

static void request_certificate(cert_slot *slot) {
  const mt_config *c = slot->m->config;
  char err[ERR_MAX];
  slot->state = CM_REQUESTING;
  slot->pending_key = mt_csr_generate_key();
  mt_ca_request_options o = {
      .spiffe_id = slot->spiffe_id,
      .ttl_s = c->cp_cert_ttl_s,
      .token_file = c->cp_token_file,
      .cluster_id = c->cp_cluster_id,
      .impersonate = slot->impersonate,
      .deadline_ms = c->cp_request_timeout_ms,
  };
  slot->request = slot->pending_key ? mt_ca_request_start(slot->m->grpc, slot->pending_key, &o,
                                                          on_ca_done, slot, err, sizeof(err))
                                    : NULL;
  if (slot->request == NULL) {
    MT_LOG_E("control plane: cannot send a certificate request: %s",
             slot->pending_key ? err : "key generation failed");
    EVP_PKEY_free(slot->pending_key);
    slot->pending_key = NULL;
    schedule_retry(slot);
  }
}

static void on_cert_timer(struct ev_loop *loop, ev_timer *t, int revents) {
  (void)loop;
  (void)revents;
  request_certificate(t->data);
}

static void on_expiry(struct ev_loop *loop, ev_timer *t, int revents) {
  (void)loop;
  (void)revents;
  cert_slot *slot = t->data;
  time_t now = time(NULL);
  if (slot->not_after > now) { /* renewed meanwhile, or the timer ran early */
    set_slot_timer(slot, &slot->expiry_timer, difftime(slot->not_after, now));
    return;
  }
  MT_LOG_E(
      "control plane: the certificate for %s expired without renewal; refusing its new "
      "connections until the CA answers",
      slot->spiffe_id);
  slot->serving = 0;
  if (slot->for_application)
    tell_app_svid(slot);
  else
    publish_all(slot->m);
}

/* ---- mesh config stream -------------------------------------------------- */

/* Whether the trust bundles of |u| still verify every certificate served:
 * a bundle that drops the root in use would make every peer refuse us
 * (and us them) until a certificate from another root arrives. When one
 * fails, names it in |err|. */
static int bundles_keep_served_roots(mt_cert_manager *m, const mt_mesh_update *u, char *err,
                                     size_t err_len) {
  mt_trust *trust = mt_trust_new();
  int ok = trust != NULL;
  for (size_t i = 0; ok && i < u->num_bundles; i++)
    ok = mt_trust_add(trust, u->bundles[i].trust_domain, u->bundles[i].roots);
  if (!ok) {
    mt_trust_free(trust);
    snprintf(err, err_len, "out of memory checking its trust bundles");
    return 0;
  }
  for (size_t i = 0; ok && i < m->num_slots; i++) {
    cert_slot *slot = m->slots[i];
    if (!slot->serving) continue;
    mt_tls_peer self;
    memset(&self, 0, sizeof(self));
    if (!mt_tls_verify_svid(trust, slot->leaf, slot->chain, MT_SVID_ROLE_SERVER, &self)) {
      snprintf(err, err_len,
               "its trust bundles no longer verify the certificate served for %.*s (serial "
               "%s): %.*s",
               (int)DETAIL_SHOWN_MAX, slot->issued_id, mt_identity_serial(slot->identity),
               (int)DETAIL_SHOWN_MAX, self.detail);
      ok = 0;
    }
  }
  mt_trust_free(trust);
  return ok;
}

/* 1 when |prev| holds rule |name| of workload |id| with the same note. */
static int reduced_before(const mt_mesh_update *prev, const char *id, const char *name,
                          const char *note) {
  for (size_t w = 0; w < prev->num_workloads; w++) {
    if (strcmp(prev->workloads[w].spiffe_id, id) != 0) continue;
    const mt_policy *p = mt_mesh_policy(prev->workloads[w].mesh);
    const char *n, *r;
    for (size_t i = 0; mt_policy_rule_note(p, i, &n, &r); i++)
      if (r != NULL && strcmp(n, name) == 0 && strcmp(r, note) == 0) return 1;
  }
  return 0;
}

/* Rules the control plane reduced for L4 (Istio rules with HTTP fields):
 * counted, and each logged once, when it first appears. */
static uint64_t note_reduced_rules(const mt_mesh_update *now, const mt_mesh_update *prev) {
  enum { LOGGED_MAX = 32 }; /* per update: a mesh-wide policy would repeat per pod */
  uint64_t count = 0, logged = 0;
  for (size_t w = 0; w < now->num_workloads; w++) {
    const char *id = now->workloads[w].spiffe_id;
    const mt_policy *p = mt_mesh_policy(now->workloads[w].mesh);
    const char *name, *note;
    for (size_t i = 0; mt_policy_rule_note(p, i, &name, &note); i++) {
      if (note == NULL) continue;
      count++;
      if (reduced_before(prev, id, name, note) || ++logged > LOGGED_MAX) continue;
      MT_LOG_W("policy for %s: rule %s reduced for L4: %s", id, name, note);
    }
  }
  if (logged > LOGGED_MAX)
    MT_LOG_W("policy: %llu more reduced rules not logged (see /policy)",
             (unsigned long long)(logged - LOGGED_MAX));
  return count;
}

static void on_watch_update(void *arg, mt_mesh_update *u, int from_delta) {
  mt_cert_manager *m = arg;
  char err[ERR_MAX];
  if (!bundles_keep_served_roots(m, u, err, sizeof(err))) {
    note_refusal(m, MT_CP_CALL_WATCH, MT_CP_REFUSAL_ROOT_REMOVED, err);
    m->stats.mesh_rejected++;
    MT_LOG_E(
        "control plane: mesh config version %s refused (root_removed), keeping the last good "
        "one: %s",
        mt_mesh_version(u->mesh), err);
    return;
  }
  m->watch_backoff_ms = m->config->cp_retry_initial_ms;
  mt_mesh_update previous = m->watched; /* the node entries may point into it */
  m->watched = *u;
  memset(u, 0, sizeof(*u));
  m->have_watched = 1;
  m->stats.mesh_updates++;
  m->stats.mesh_deltas += from_delta != 0;
  m->stats.watch_state = MT_WATCH_STREAMING;
  m->stats.has_mesh_config = 1;
  m->resynced = 0;
  const char *how = from_delta ? " (from a delta)" : "";
  if (m->watched.has_node_workloads)
    MT_LOG_I(
        "mesh config version %s: %zu trust bundles, %zu destinations (%zu Service "
        "endpoints), %zu workloads on this node%s",
        mt_mesh_version(m->watched.mesh), m->watched.num_bundles,
        mt_mesh_num_destinations(m->watched.mesh), mt_mesh_num_service_endpoints(m->watched.mesh),
        m->watched.num_node_workloads, how);
  else
    MT_LOG_I("mesh config version %s: %zu trust bundles, %zu destinations%s",
             mt_mesh_version(m->watched.mesh), m->watched.num_bundles,
             mt_mesh_num_destinations(m->watched.mesh), how);
  m->stats.rules_reduced = note_reduced_rules(&m->watched, &previous);
  if (m->config->node_mode) update_node_workloads(m);
  mt_mesh_update_clear(&previous);
  rebuild_all(m);
}

static void on_watch_rejected(void *arg, const char *why) {
  mt_cert_manager *m = arg;
  m->stats.mesh_rejected++;
  note_refusal(m, MT_CP_CALL_WATCH, MT_CP_REFUSAL_INVALID_MESH, why);
  MT_LOG_E("control plane: mesh config rejected, keeping the last good one: %s", why);
}

static void on_watch_end(void *arg, mt_grpc_status status, const char *message) {
  mt_cert_manager *m = arg;
  m->watch = NULL;
  m->stats.watch_state = MT_WATCH_RETRYING;
  if (status == MT_GRPC_UNIMPLEMENTED) { /* static config is all there will be */
    m->stats.watch_state = MT_WATCH_UNSUPPORTED;
    if (!m->stats.has_mesh_config) {
      m->stats.has_mesh_config = 1;
      publish_all(m); /* what was held back for the first mesh config */
    }
  }
  if (status == MT_MESH_WATCH_RESYNC) m->stats.mesh_resyncs++;
  /* Ours, to get a complete snapshot: reopen at once, unless the last
   * resync got no update either (a server that keeps sending deltas that
   * do not apply gets the usual backoff). */
  if (status == MT_MESH_WATCH_RESYNC && !m->resynced) {
    m->resynced = 1;
    MT_LOG_W("control plane: mesh config stream: %s; keeping the last good config", message);
    set_timer(m, &m->watch_timer, 0.);
    return;
  }
  if (status != MT_GRPC_OK && status != MT_GRPC_UNIMPLEMENTED && status != MT_MESH_WATCH_RESYNC) {
    mt_cp_refusal why = status_refusal(status);
    note_refusal(m, MT_CP_CALL_WATCH, why, message);
    MT_LOG_W(
        "control plane: mesh config stream ended (%s: %s, reason %s); keeping the last good "
        "config",
        mt_grpc_status_name(status), message, mt_cp_refusal_str(why));
  } else {
    MT_LOG_W("control plane: mesh config stream ended (%s: %s); keeping the last good config",
             mt_grpc_status_name(status), message);
  }
  double delay_s = mt_jitter(m->watch_backoff_ms / 1000.0, BACKOFF_JITTER_PERCENT);
  m->watch_backoff_ms *= 2;
  if (m->watch_backoff_ms > m->config->cp_retry_max_ms)
    m->watch_backoff_ms = m->config->cp_retry_max_ms;
  set_timer(m, &m->watch_timer, delay_s);
}

/* The authorization header for a control-plane call into |md|; 0 (with
 * the reason logged) when the token cannot be read. */
static int bearer_metadata(mt_cert_manager *m, char auth[MT_CA_AUTH_HEADER_MAX],
                           mt_grpc_metadata *md, size_t *num_md, const char *what) {
  char err[ERR_MAX];
  *num_md = 0;
  if (m->config->cp_token_file == NULL) return 1;
  if (!mt_ca_read_bearer(m->config->cp_token_file, auth, MT_CA_AUTH_HEADER_MAX, err, sizeof(err))) {
    MT_LOG_E("control plane: cannot %s: %s", what, err);
    return 0;
  }
  md[(*num_md)++] = (mt_grpc_metadata){"authorization", auth};
  return 1;
}

static void on_want_failed(void *arg, mt_grpc_status status, const char *message) {
  mt_cert_manager *m = arg;
  m->stats.want_failures++;
  MT_LOG_W(
      "control plane: asking for destinations failed (%s: %s); their connections wait "
      "for the next stream",
      mt_grpc_status_name(status), message);
}

/* destination_demand's sender: new addresses go out on the open stream;
 * without one they wait for the next, which starts with every address. */
static void send_wants(void *arg, const char *const *addresses, size_t n) {
  mt_cert_manager *m = arg;
  m->stats.destinations_wanted += n;
  if (m->watch == NULL) return;
  char auth[MT_CA_AUTH_HEADER_MAX];
  mt_grpc_metadata md[1];
  size_t num_md = 0;
  if (!bearer_metadata(m, auth, md, &num_md, "ask for destinations") ||
      !mt_mesh_watch_want(m->watch, addresses, n, md, num_md))
    on_want_failed(m, MT_GRPC_INTERNAL, "cannot start the Want call");
  OPENSSL_cleanse(auth, sizeof(auth));
}

static void start_watch(mt_cert_manager *m) {
  static const mt_mesh_watch_handlers handlers = {on_watch_update, on_watch_rejected, on_watch_end,
                                                  on_want_failed};
  char auth[MT_CA_AUTH_HEADER_MAX];
  mt_grpc_metadata md[1];
  size_t num_md = 0;
  if (!bearer_metadata(m, auth, md, &num_md, "watch mesh config")) {
    on_watch_end(m, MT_GRPC_UNAUTHENTICATED, "no token");
    return;
  }
  const char *version = m->have_watched ? mt_mesh_version(m->watched.mesh) : "";
  /* Node mode watches as the node agent itself; sidecars as the granted ID. */
  const char *issued = m->config->node_mode ? "" : m->slots[0]->issued_id;
  const char *who = issued[0] != '\0' ? issued : m->config->spiffe_id;
  mt_mesh_watch_scope scope = {0, NULL, 0};
  if (m->sink.demand != NULL) {
    scope.on_demand = 1;
    scope.wanted = mt_demand_all(m->sink.demand, &scope.num_wanted);
  }
  m->stats.watch_state = MT_WATCH_CONNECTING;
  m->watch = mt_mesh_watch_start(m->grpc, m->config->cp_node_id, who, version, &scope, md, num_md,
                                 &handlers, m);
  OPENSSL_cleanse(auth, sizeof(auth));
  if (m->watch == NULL) on_watch_end(m, MT_GRPC_INTERNAL, "cannot start the Watch call");
}

static void on_watch_timer(struct ev_loop *loop, ev_timer *t, int revents) {
  (void)loop;
  (void)revents;
  start_watch(t->data);
}

static int load_static_bundles(mt_cert_manager *m, char *err, size_t err_len) {
  for (size_t i = 0; i < m->config->num_trust_bundles; i++) {
    const mt_trust_bundle_config *b = &m->config->trust_bundles[i];
    STACK_OF(X509) *roots = mt_identity_files_load_certs(b->file, err, err_len);
    int ok = roots != NULL &&
             bundle_add(&m->static_bundles, &m->num_static_bundles, b->trust_domain, roots);
    sk_X509_pop_free(roots, X509_free);
    if (!ok) return 0;
  }
  return 1;
}

static void slot_init(mt_cert_manager *m, cert_slot *slot, const char *spiffe_id, int impersonate) {
  slot->m = m;
  snprintf(slot->spiffe_id, sizeof(slot->spiffe_id), "%s", spiffe_id);
  slot->impersonate = impersonate;
  slot->backoff_ms = m->config->cp_retry_initial_ms;
  ev_init(&slot->cert_timer, on_cert_timer);
  ev_init(&slot->expiry_timer, on_expiry);
  slot->cert_timer.data = slot->expiry_timer.data = slot;
}

static cert_slot *find_kind(const mt_cert_manager *m, const char *spiffe_id, int for_application) {
  for (size_t i = 0; i < m->num_slots; i++)
    if (m->slots[i]->for_application == for_application &&
        strcmp(m->slots[i]->spiffe_id, spiffe_id) == 0)
      return m->slots[i];
  return NULL;
}

/* The agent's own certificate for |spiffe_id| (node mode: a workload's). */
static cert_slot *find_slot(const mt_cert_manager *m, const char *spiffe_id) {
  return find_kind(m, spiffe_id, 0);
}

static cert_slot *find_app_slot(const mt_cert_manager *m, const char *spiffe_id) {
  return find_kind(m, spiffe_id, 1);
}

static cert_slot *add_slot(mt_cert_manager *m, const char *spiffe_id, int impersonate) {
  if (m->num_slots == m->cap_slots) {
    size_t cap = m->cap_slots ? 2 * m->cap_slots : 4;
    cert_slot **grown = realloc(m->slots, cap * sizeof(*grown));
    if (grown == NULL) return NULL;
    m->slots = grown;
    m->cap_slots = cap;
  }
  cert_slot *slot = calloc(1, sizeof(*slot));
  if (slot == NULL) return NULL;
  slot_init(m, slot, spiffe_id, impersonate);
  m->slots[m->num_slots++] = slot;
  return slot;
}

/* Node mode: lists the pods to serve from the control plane's latest
 * snapshot when it carried node workloads, else from node.workloads.
 * Returns 0 when out of memory (the previous list stays). */
static int refresh_node_entries(mt_cert_manager *m) {
  const mt_config *c = m->config;
  int pushed = m->have_watched && m->watched.has_node_workloads;
  size_t n = 0;
  if (pushed)
    for (size_t w = 0; w < m->watched.num_node_workloads; w++)
      n += m->watched.node_workloads[w].num_addresses;
  else
    n = c->num_node_workloads;
  node_entry *entries = calloc(n + 1, sizeof(*entries));
  if (entries == NULL) return 0;
  size_t k = 0;
  if (pushed) {
    for (size_t w = 0; w < m->watched.num_node_workloads; w++) {
      const mt_pushed_workload *pw = &m->watched.node_workloads[w];
      for (size_t a = 0; a < pw->num_addresses; a++)
        entries[k++] = (node_entry){(const struct sockaddr *)&pw->addresses[a].addr, pw->spiffe_id};
    }
  } else {
    for (size_t w = 0; w < c->num_node_workloads; w++)
      entries[k++] = (node_entry){(const struct sockaddr *)&c->node_workloads[w].address.addr,
                                  c->node_workloads[w].spiffe_id};
  }
  free(m->entries);
  m->entries = entries;
  m->num_entries = k;
  if (pushed != m->entries_pushed)
    MT_LOG_I("node workloads now come from %s",
             pushed ? "the control plane" : "the config file (node.workloads)");
  m->entries_pushed = pushed;
  return 1;
}

/* Node mode: pods came and went. Identities no longer listed lose their
 * slot (and their certificate) at once; new ones get a slot and a request;
 * the rest keep their certificate. */
static void reconcile_node_slots(mt_cert_manager *m) {
  size_t kept = 0;
  for (size_t i = 0; i < m->num_slots; i++) {
    cert_slot *slot = m->slots[i];
    size_t e = 0;
    while (e < m->num_entries && strcmp(m->entries[e].spiffe_id, slot->spiffe_id) != 0) e++;
    if (e == m->num_entries) {
      MT_LOG_I("node workload identity %s is gone; dropping its %scertificate", slot->spiffe_id,
               slot->for_application ? "application " : "");
      if (slot->for_application && slot->serving) {
        slot->serving = 0;
        tell_app_svid(slot);
      }
      slot_dispose(slot);
      continue;
    }
    m->slots[kept++] = slot;
  }
  m->num_slots = kept;
  for (size_t e = 0; e < m->num_entries; e++) {
    const char *id = m->entries[e].spiffe_id;
    if (find_slot(m, id) != NULL) continue;
    cert_slot *slot = add_slot(m, id, 1);
    if (slot == NULL) {
      MT_LOG_E("control plane: out of memory adding node workload %s", id);
      continue;
    }
    MT_LOG_I("new node workload identity %s; requesting its certificate", id);
    if (m->grpc != NULL) request_certificate(slot);
  }
}

/* The list of pods may have changed: re-list them and reconcile the slots.
 * Out of memory serves no pod at all (fail closed) rather than a stale list
 * whose storage is about to go. */
static void update_node_workloads(mt_cert_manager *m) {
  if (!refresh_node_entries(m)) {
    MT_LOG_E("control plane: out of memory listing node workloads; serving none");
    free(m->entries);
    m->entries = NULL;
    m->num_entries = 0;
  }
  reconcile_node_slots(m);
}

/* Sidecar: one slot, our own identity. Node mode: one slot per distinct
 * workload identity (pods of one service account share a certificate). */
static int make_slots(mt_cert_manager *m) {
  if (!m->config->node_mode) return add_slot(m, m->config->spiffe_id, 0) != NULL;
  if (!refresh_node_entries(m)) return 0;
  for (size_t e = 0; e < m->num_entries; e++) {
    const char *id = m->entries[e].spiffe_id;
    if (find_slot(m, id) == NULL && add_slot(m, id, 1) == NULL) return 0;
  }
  return 1;
}

mt_cert_manager *mt_cert_manager_start(struct ev_loop *loop, mt_config *config,
                                       const mt_cert_manager_sink *sink, char *err,
                                       size_t err_len) {
  mt_cert_manager *m = calloc(1, sizeof(*m));
  if (m == NULL) return NULL;
  m->loop = loop;
  m->config = mt_config_ref(config);
  m->sink = *sink;
  if (sink->demand != NULL) mt_demand_set_sender(sink->demand, send_wants, m);
  m->watch_backoff_ms = config->cp_retry_initial_ms;
  ev_init(&m->watch_timer, on_watch_timer);
  m->watch_timer.data = m;
  if (!make_slots(m)) {
    snprintf(err, err_len, "out of memory");
    mt_cert_manager_free(m);
    return NULL;
  }
  m->cp_tls = mt_cp_tls_new(config->cp_root_file, config->cp_spiffe_id, err, err_len);
  if (m->cp_tls == NULL || !load_static_bundles(m, err, err_len)) {
    mt_cert_manager_free(m);
    return NULL;
  }
  mt_grpc_client_options o;
  memset(&o, 0, sizeof(o));
  o.target = config->cp_address;
  o.ssl_ctx = mt_cp_tls_ctx(m->cp_tls);
  o.connect_timeout_ms = config->cp_request_timeout_ms;
  o.keepalive_interval_ms = config->cp_keepalive_ms;
  m->grpc = mt_grpc_client_new(loop, &o);
  if (m->grpc == NULL) {
    snprintf(err, err_len, "control_plane.address '%s' is not usable", config->cp_address);
    mt_cert_manager_free(m);
    return NULL;
  }
  for (size_t i = 0; i < m->num_slots; i++) request_certificate(m->slots[i]);
  if (config->cp_watch) {
    start_watch(m);
  } else {
    m->stats.watch_state = MT_WATCH_DISABLED;
    m->stats.has_mesh_config = 1;
  }
  return m;
}

static void slot_dispose(cert_slot *slot) {
  ev_timer_stop(slot->m->loop, &slot->cert_timer);
  ev_timer_stop(slot->m->loop, &slot->expiry_timer);
  mt_ca_request_cancel(slot->request);
  EVP_PKEY_free(slot->pending_key);
  EVP_PKEY_free(slot->key);
  X509_free(slot->leaf);
  sk_X509_pop_free(slot->chain, X509_free);
  mt_identity_unref(slot->identity);
  free(slot);
}

void mt_cert_manager_free(mt_cert_manager *m) {
  if (m == NULL) return;
  for (size_t i = 0; i < m->num_slots; i++) slot_dispose(m->slots[i]);
  free(m->slots);
  ev_timer_stop(m->loop, &m->watch_timer);
  mt_mesh_watch_cancel(m->watch);
  mt_grpc_client_free(m->grpc);
  mt_cp_tls_free(m->cp_tls);
  sk_X509_pop_free(m->ca_roots, X509_free);
  bundles_free(m->static_bundles, m->num_static_bundles);
  mt_mesh_update_clear(&m->watched);
  free(m->entries);
  mt_config_free(m->config);
  free(m);
}

int mt_cert_manager_want_app_svid(mt_cert_manager *m, const char *spiffe_id) {
  if (find_app_slot(m, spiffe_id) != NULL) return 1;
  /* Only an identity the agent serves itself: the CA would refuse others
   * anyway, and a caller must not make us ask for arbitrary ones. */
  if (find_slot(m, spiffe_id) == NULL) return 0;
  cert_slot *slot = add_slot(m, spiffe_id, m->config->node_mode);
  if (slot == NULL) return 0;
  slot->for_application = 1;
  MT_LOG_I("workload api: requesting an application certificate for %s", spiffe_id);
  request_certificate(slot);
  return 1;
}

mt_identity *mt_cert_manager_app_svid(const mt_cert_manager *m, const char *spiffe_id) {
  const cert_slot *slot = find_app_slot(m, spiffe_id);
  return slot != NULL && slot->serving ? slot->identity : NULL;
}

void mt_cert_manager_set_config(mt_cert_manager *m, mt_config *config) {
  mt_config *previous = m->config; /* the node entries may point into it */
  m->config = mt_config_ref(config);
  if (config->node_mode) update_node_workloads(m);
  mt_config_free(previous);
  rebuild_all(m); /* the static policy, TLS settings and timeouts may have changed */
}

const char *mt_watch_state_str(mt_watch_state state) {
  switch (state) {
    case MT_WATCH_DISABLED: return "disabled";
    case MT_WATCH_CONNECTING: return "connecting";
    case MT_WATCH_STREAMING: return "streaming";
    case MT_WATCH_RETRYING: return "retrying";
    case MT_WATCH_UNSUPPORTED: return "unsupported";
  }
  return "unknown";
}

void mt_cert_manager_get_stats(const mt_cert_manager *m, mt_cert_manager_stats *out) {
  *out = m->stats;
  out->renewal_overdue_since = 0;
  for (size_t i = 0; i < m->num_slots; i++) {
    const cert_slot *slot = m->slots[i];
    if (slot->serving && slot->renewal_failed &&
        (out->renewal_overdue_since == 0 || slot->renewal_due < out->renewal_overdue_since))
      out->renewal_overdue_since = slot->renewal_due;
  }
}

mt_grpc_client *mt_cert_manager_grpc(mt_cert_manager *m) { return m->grpc; }
