/* jwks_source.c: the JWKS as a k8s_document whose body is parsed by jwks.h. */
#include "controlplane/jwks_source.h"

#include <stdio.h>
#include <stdlib.h>

#include "controlplane/jwks.h"
#include "controlplane/k8s_document.h"

enum { LINE_MAX_BYTES = 768 };

struct mt_jwks_source {
  mt_k8s_document *doc;
  mt_jwks_source_callbacks cb;
  void *ctx;
};

static int on_body(void *ctx, const char *body, size_t len, char *why, size_t why_len) {
  mt_jwks_source *s = ctx;
  size_t skipped = 0;
  mt_jwt_keys *keys = mt_jwks_parse(body, len, &skipped, why, why_len);
  if (keys == NULL) return 0;
  s->cb.on_keys(s->ctx, keys, skipped);
  return 1;
}

static void on_error(void *ctx, const char *why, double retry_s) {
  mt_jwks_source *s = ctx;
  char line[LINE_MAX_BYTES];
  snprintf(line, sizeof(line),
           "token keys: GET %s failed, the keys in force stay: %s; retrying in %.1f s",
           MT_JWKS_PATH, why, retry_s);
  if (s->cb.on_error) s->cb.on_error(s->ctx, line);
}

mt_jwks_source *mt_jwks_source_new(struct ev_loop *loop, mt_k8s_client *client, int64_t refresh_ms,
                                   int64_t min_interval_ms,
                                   const mt_jwks_source_callbacks *callbacks, void *ctx) {
  static const mt_k8s_document_callbacks doc_cb = {on_body, on_error};
  mt_jwks_source *s = calloc(1, sizeof(*s));
  if (s == NULL) return NULL;
  s->cb = *callbacks;
  s->ctx = ctx;
  mt_k8s_document_config config = {MT_JWKS_PATH,
                                   MT_JWKS_MAX_BYTES,
                                   refresh_ms,
                                   min_interval_ms,
                                   MT_K8S_ISSUER_DISCOVERY_ROLE_HINT,
                                   NULL};
  s->doc = mt_k8s_document_new(loop, client, &config, &doc_cb, s);
  if (s->doc == NULL) {
    free(s);
    return NULL;
  }
  return s;
}

void mt_jwks_source_free(mt_jwks_source *s) {
  if (s == NULL) return;
  mt_k8s_document_free(s->doc);
  free(s);
}

void mt_jwks_source_refresh_soon(mt_jwks_source *s) {
  if (s != NULL) mt_k8s_document_refresh_soon(s->doc);
}

void mt_jwks_source_get_stats(const mt_jwks_source *s, mt_jwks_source_stats *out) {
  mt_k8s_document_stats st;
  mt_k8s_document_get_stats(s->doc, &st);
  out->fetches = st.fetches;
  out->loaded = st.accepted;
  out->failures = st.failures;
}
