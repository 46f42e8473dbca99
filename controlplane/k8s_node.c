/* k8s_node.c: a Node's pod CIDRs, read strictly. See k8s_node.h. */
#include "controlplane/k8s_node.h"

#include <arpa/inet.h>
#include <jansson.h>
#include <stdio.h>
#include <string.h>

enum {
  IPV4_BITS = 32,
  IPV6_BITS = 128,
  PREFIX_DIGITS_MAX = 3,
  ERROR_TEXT_MAX = 160,
};

static int refuse(char *err, size_t err_len, const char *field, const char *why) {
  snprintf(err, err_len, "node refused: %s: %s", field, why);
  return 0;
}

static int is_dns_subdomain(const char *s) {
  if (s[0] == '\0' || strlen(s) > MT_K8S_NAME_MAX) return 0;
  for (const char *p = s; *p; p++)
    if (!((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '-' || *p == '.')) return 0;
  return 1;
}

/* The prefix length after the '/': 1 to 3 digits, no sign, no space. */
static int parse_prefix(const char *p, int max_bits, int *out) {
  int len = 0;
  size_t n = 0;
  for (; p[n] >= '0' && p[n] <= '9' && n < PREFIX_DIGITS_MAX + 1; n++)
    len = len * 10 + (p[n] - '0');
  if (n == 0 || n > PREFIX_DIGITS_MAX || p[n] != '\0' || len > max_bits) return 0;
  *out = len;
  return 1;
}

int mt_k8s_canonical_cidr(const char *text, char *out, size_t out_len, char *why, size_t why_len) {
  char host[INET6_ADDRSTRLEN];
  unsigned char addr[sizeof(struct in6_addr)];
  const char *slash = strchr(text, '/');
  size_t hlen = slash != NULL ? (size_t)(slash - text) : 0;
  if (slash == NULL || hlen == 0 || hlen >= sizeof(host)) {
    snprintf(why, why_len, "not address/prefix");
    return 0;
  }
  memcpy(host, text, hlen);
  host[hlen] = '\0';
  int family = AF_INET, bits = IPV4_BITS, prefix = 0;
  if (inet_pton(AF_INET, host, addr) != 1) {
    family = AF_INET6;
    bits = IPV6_BITS;
    if (inet_pton(AF_INET6, host, addr) != 1) {
      snprintf(why, why_len, "not an IP address before the '/'");
      return 0;
    }
  }
  if (!parse_prefix(slash + 1, bits, &prefix)) {
    snprintf(why, why_len, "the prefix length is not a number from 0 to %d", bits);
    return 0;
  }
  for (int b = prefix; b < bits; b++) {
    if (addr[b / 8] & (0x80 >> (b % 8))) {
      snprintf(why, why_len, "address bits are set beyond the /%d prefix", prefix);
      return 0;
    }
  }
  if (inet_ntop(family, addr, host, sizeof(host)) == NULL ||
      (size_t)snprintf(out, out_len, "%s/%d", host, prefix) >= out_len) {
    snprintf(why, why_len, "too long");
    return 0;
  }
  return 1;
}

static int add_cidr(const json_t *v, const char *field, mt_k8s_node *out, char *err,
                    size_t err_len) {
  char why[ERROR_TEXT_MAX];
  char text[MT_K8S_CIDR_MAX];
  if (!json_is_string(v) || json_string_length(v) >= sizeof(text))
    return refuse(err, err_len, field, "not a CIDR string");
  if (!mt_k8s_canonical_cidr(json_string_value(v), text, sizeof(text), why, sizeof(why)))
    return refuse(err, err_len, field, why);
  for (size_t i = 0; i < out->num_pod_cidrs; i++)
    if (strcmp(out->pod_cidrs[i], text) == 0) return refuse(err, err_len, field, "listed twice");
  memcpy(out->pod_cidrs[out->num_pod_cidrs++], text, sizeof(text));
  return 1;
}

/* spec.podCIDRs when present (the API keeps podCIDR equal to its first
 * entry), else spec.podCIDR; neither (or empty ones) means none. */
static int decode_cidrs(const json_t *spec, mt_k8s_node *out, char *err, size_t err_len) {
  if (spec == NULL || json_is_null(spec)) return 1;
  if (!json_is_object(spec)) return refuse(err, err_len, "spec", "not an object");
  const json_t *list = json_object_get(spec, "podCIDRs");
  if (list != NULL && !json_is_null(list)) {
    if (!json_is_array(list)) return refuse(err, err_len, "spec.podCIDRs", "not an array");
    if (json_array_size(list) > MT_K8S_MAX_POD_CIDRS)
      return refuse(err, err_len, "spec.podCIDRs", "too many entries");
    size_t i;
    const json_t *v;
    json_array_foreach(list, i, v) {
      if (!add_cidr(v, "spec.podCIDRs", out, err, err_len)) return 0;
    }
    if (out->num_pod_cidrs > 0) return 1;
  }
  const json_t *one = json_object_get(spec, "podCIDR");
  if (one == NULL || json_is_null(one) || (json_is_string(one) && json_string_length(one) == 0))
    return 1;
  return add_cidr(one, "spec.podCIDR", out, err, err_len);
}

static int decode_node(const json_t *obj, mt_k8s_node *out, char *err, size_t err_len) {
  if (!json_is_object(obj)) return refuse(err, err_len, "object", "not a JSON object");
  const json_t *kind = json_object_get(obj, "kind");
  if (kind != NULL && !(json_is_string(kind) && strcmp(json_string_value(kind), "Node") == 0))
    return refuse(err, err_len, "kind", "not Node");
  const json_t *meta = json_object_get(obj, "metadata");
  const json_t *name = json_is_object(meta) ? json_object_get(meta, "name") : NULL;
  if (!json_is_string(name) || !is_dns_subdomain(json_string_value(name)))
    return refuse(err, err_len, "metadata.name", "missing or not a DNS subdomain");
  snprintf(out->name, sizeof(out->name), "%s", json_string_value(name));
  return decode_cidrs(json_object_get(obj, "spec"), out, err, err_len);
}

int mt_k8s_node_parse(const char *json, size_t len, mt_k8s_node *out, char *err, size_t err_len) {
  memset(out, 0, sizeof(*out));
  if (len > MT_K8S_NODE_MAX_BYTES) return refuse(err, err_len, "object", "too large");
  json_error_t jerr;
  json_t *doc = json_loadb(json, len, JSON_REJECT_DUPLICATES, &jerr);
  if (doc == NULL) {
    snprintf(err, err_len, "node refused: not JSON: %s at byte %d", jerr.text, jerr.position);
    return 0;
  }
  int ok = decode_node(doc, out, err, err_len);
  json_decref(doc);
  if (!ok) memset(out, 0, sizeof(*out));
  return ok;
}
