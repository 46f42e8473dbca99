/* oidc_discovery.c: the "issuer" member of an OpenID provider configuration. */
#include "controlplane/oidc_discovery.h"

#include <jansson.h>
#include <stdio.h>
#include <string.h>

enum { SHOWN_MAX = 64 };

static const char kHttps[] = "https://";

/* A printable, bounded rendering of untrusted text for messages. */
static const char *shown(const char *text, char *buf, size_t cap) {
  size_t n = 0;
  for (const char *p = text; *p != '\0' && n + 4 < cap && n < SHOWN_MAX; p++)
    buf[n++] = (*p >= 0x20 && *p < 0x7f) ? *p : '?';
  if (strlen(text) > n) {
    memcpy(buf + n, "...", 3);
    n += 3;
  }
  buf[n] = '\0';
  return buf;
}

int mt_oidc_issuer_check(const char *url, char *err, size_t err_len) {
  char buf[SHOWN_MAX + 8];
  size_t len = strlen(url);
  if (len > MT_OIDC_ISSUER_MAX_LEN)
    return snprintf(err, err_len, "issuer is longer than %d bytes", MT_OIDC_ISSUER_MAX_LEN), 0;
  for (const char *p = url; *p != '\0'; p++) {
    unsigned char c = (unsigned char)*p;
    if (c <= 0x20 || c >= 0x7f)
      return snprintf(err, err_len, "issuer \"%s\" holds a space, control or non-ASCII character",
                      shown(url, buf, sizeof(buf))),
             0;
  }
  if (strncmp(url, kHttps, sizeof(kHttps) - 1) != 0)
    return snprintf(err, err_len, "issuer \"%s\" is not an https:// URL",
                    shown(url, buf, sizeof(buf))),
           0;
  const char *host = url + sizeof(kHttps) - 1;
  if (*host == '\0' || *host == '/' || *host == ':')
    return snprintf(err, err_len, "issuer \"%s\" has no host", shown(url, buf, sizeof(buf))), 0;
  if (strpbrk(url, "?#") != NULL)
    return snprintf(err, err_len, "issuer \"%s\" has a query or fragment",
                    shown(url, buf, sizeof(buf))),
           0;
  return 1;
}

int mt_oidc_discovery_issuer(const char *json, size_t len, char *issuer, size_t issuer_len,
                             char *err, size_t err_len) {
  if (len > MT_OIDC_DISCOVERY_MAX_BYTES)
    return snprintf(err, err_len, "discovery document larger than %d bytes",
                    MT_OIDC_DISCOVERY_MAX_BYTES),
           0;
  json_error_t jerr;
  json_t *doc = json_loadb(json, len, JSON_REJECT_DUPLICATES, &jerr);
  if (doc == NULL)
    return snprintf(err, err_len, "discovery document is not JSON: %s", jerr.text), 0;
  const json_t *member = json_is_object(doc) ? json_object_get(doc, "issuer") : NULL;
  const char *value = json_string_value(member);
  int ok = 0;
  if (!json_is_object(doc))
    snprintf(err, err_len, "discovery document is not a JSON object");
  else if (member == NULL)
    snprintf(err, err_len, "discovery document has no \"issuer\"");
  else if (value == NULL)
    snprintf(err, err_len, "discovery document's \"issuer\" is not a string");
  else if (mt_oidc_issuer_check(value, err, err_len)) {
    if (strlen(value) < issuer_len) {
      memcpy(issuer, value, strlen(value) + 1);
      ok = 1;
    } else {
      snprintf(err, err_len, "issuer does not fit the caller's buffer");
    }
  }
  json_decref(doc);
  return ok;
}
