/* issuer_source.c: the discovery document as a k8s_document whose body is
 * read by oidc_discovery.h. */
#include "controlplane/issuer_source.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "controlplane/k8s_document.h"

enum { LINE_MAX_BYTES = 768 };

/* kube-apiserver registers the discovery endpoints only when its
 * --service-account-issuer is an https URL. */
static const char kNotFoundHint[] =
    "the API server serves it only when its --service-account-issuer is an https URL; "
    "set tokens.issuer";

struct mt_issuer_source {
  mt_k8s_document *doc;
  mt_issuer_source_callbacks cb;
  void *ctx;
  int have_issuer;
  char issuer[MT_OIDC_ISSUER_MAX_LEN + 1];
};

static int on_body(void *ctx, const char *body, size_t len, char *why, size_t why_len) {
  mt_issuer_source *s = ctx;
  char issuer[MT_OIDC_ISSUER_MAX_LEN + 1];
  if (!mt_oidc_discovery_issuer(body, len, issuer, sizeof(issuer), why, why_len)) return 0;
  int changed = !s->have_issuer || strcmp(issuer, s->issuer) != 0;
  memcpy(s->issuer, issuer, sizeof(issuer));
  s->have_issuer = 1;
  s->cb.on_issuer(s->ctx, s->issuer, changed);
  return 1;
}

static void on_error(void *ctx, const char *why, double retry_s) {
  mt_issuer_source *s = ctx;
  char line[LINE_MAX_BYTES];
  snprintf(line, sizeof(line), "token issuer: GET %s failed, %s: %s; retrying in %.1f s",
           MT_OIDC_DISCOVERY_PATH,
           s->have_issuer ? "the issuer discovered before stays" : "no issuer discovered yet", why,
           retry_s);
  if (s->cb.on_error) s->cb.on_error(s->ctx, line);
}

mt_issuer_source *mt_issuer_source_new(struct ev_loop *loop, mt_k8s_client *client,
                                       int64_t refresh_ms, int64_t min_interval_ms,
                                       const mt_issuer_source_callbacks *callbacks, void *ctx) {
  static const mt_k8s_document_callbacks doc_cb = {on_body, on_error};
  mt_issuer_source *s = calloc(1, sizeof(*s));
  if (s == NULL) return NULL;
  s->cb = *callbacks;
  s->ctx = ctx;
  mt_k8s_document_config config = {
      MT_OIDC_DISCOVERY_PATH, MT_OIDC_DISCOVERY_MAX_BYTES,       refresh_ms,
      min_interval_ms,        MT_K8S_ISSUER_DISCOVERY_ROLE_HINT, kNotFoundHint};
  s->doc = mt_k8s_document_new(loop, client, &config, &doc_cb, s);
  if (s->doc == NULL) {
    free(s);
    return NULL;
  }
  return s;
}

void mt_issuer_source_free(mt_issuer_source *s) {
  if (s == NULL) return;
  mt_k8s_document_free(s->doc);
  free(s);
}

void mt_issuer_source_refresh_soon(mt_issuer_source *s) {
  if (s != NULL) mt_k8s_document_refresh_soon(s->doc);
}

const char *mt_issuer_source_issuer(const mt_issuer_source *s) {
  return s->have_issuer ? s->issuer : NULL;
}

void mt_issuer_source_get_stats(const mt_issuer_source *s, mt_issuer_source_stats *out) {
  mt_k8s_document_stats st;
  mt_k8s_document_get_stats(s->doc, &st);
  out->fetches = st.fetches;
  out->loaded = st.accepted;
  out->failures = st.failures;
}
