#include "controlplane/k8s_objects.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Characters Kubernetes allows in object, namespace, node and service
 * account names (DNS subdomains, lowercase). Checked because these names
 * become SPIFFE ID path segments and log text. */
static int is_dns_name(const char *s) {
  if (s[0] == '\0') return 0;
  for (const char *p = s; *p; p++) {
    if (!((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '-' || *p == '.')) return 0;
  }
  return 1;
}

/* Label keys and values: alphanumerics and "-_./" (the API's syntax, loosely). */
static int is_label_text(const char *s, int allow_slash) {
  for (const char *p = s; *p; p++) {
    if ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
        *p == '-' || *p == '_' || *p == '.' || (allow_slash && *p == '/'))
      continue;
    return 0;
  }
  return 1;
}

static int fail(char *err, size_t err_len, const char *field, const char *why) {
  snprintf(err, err_len, "object refused: %s: %s", field, why);
  return 0;
}

enum { STR_OPTIONAL = 0, STR_REQUIRED = 1 };

static int copy_string(const json_t *v, size_t max, char **out, char *err, size_t err_len,
                       const char *field) {
  if (!json_is_string(v)) return fail(err, err_len, field, "not a string");
  if (json_string_length(v) > max) return fail(err, err_len, field, "too long");
  *out = strdup(json_string_value(v));
  return *out != NULL || fail(err, err_len, field, "out of memory");
}

/* Copies string member |key| of |obj| into |*out| (at most |max| bytes).
 * Absent or null: |fallback| when optional. */
static int take_string(const json_t *obj, const char *key, size_t max, int required,
                       const char *fallback, char **out, char *err, size_t err_len) {
  const json_t *v = json_is_object(obj) ? json_object_get(obj, key) : NULL;
  if (v == NULL || json_is_null(v)) {
    if (required) return fail(err, err_len, key, "missing");
    *out = strdup(fallback);
    return *out != NULL || fail(err, err_len, key, "out of memory");
  }
  return copy_string(v, max, out, err, err_len, key);
}

/* An IP address, stored in canonical text (inet_ntop) so that equal
 * addresses compare equal as strings. */
static int take_ip(const json_t *v, char **out, char *err, size_t err_len, const char *field) {
  char text[MT_K8S_IP_MAX];
  if (!json_is_string(v) || json_string_length(v) >= MT_K8S_IP_MAX)
    return fail(err, err_len, field, "not an IP address");
  if (!mt_k8s_canonical_ip(json_string_value(v), text, sizeof(text)))
    return fail(err, err_len, field, "not an IP address");
  *out = strdup(text);
  return *out != NULL || fail(err, err_len, field, "out of memory");
}

int mt_k8s_canonical_ip(const char *ip, char *out, size_t out_len) {
  unsigned char buf[sizeof(struct in6_addr)];
  if (inet_pton(AF_INET, ip, buf) == 1) return inet_ntop(AF_INET, buf, out, out_len) != NULL;
  if (inet_pton(AF_INET6, ip, buf) == 1) return inet_ntop(AF_INET6, buf, out, out_len) != NULL;
  return 0;
}

static const json_t *member(const json_t *obj, const char *key) {
  return json_is_object(obj) ? json_object_get(obj, key) : NULL;
}

/* An optional array member: NULL when absent or null, else must be an
 * array of at most |max| elements. */
static int optional_array(const json_t *obj, const char *key, size_t max, const json_t **out,
                          char *err, size_t err_len) {
  const json_t *v = member(obj, key);
  *out = NULL;
  if (v == NULL || json_is_null(v)) return 1;
  if (!json_is_array(v)) return fail(err, err_len, key, "not an array");
  if (json_array_size(v) > max) return fail(err, err_len, key, "too many entries");
  *out = v;
  return 1;
}

/* A map of label key -> value (metadata.labels, spec.selector) into
 * |*out| (|*num| pairs); on failure what was copied stays for the
 * caller's _clear to free. */
static int decode_label_map(const json_t *labels, const char *field, mt_k8s_label **out,
                            size_t *num, char *err, size_t err_len) {
  if (labels == NULL || json_is_null(labels)) return 1;
  if (!json_is_object(labels)) return fail(err, err_len, field, "not an object");
  if (json_object_size(labels) > MT_K8S_MAX_LABELS)
    return fail(err, err_len, field, "too many labels");
  *out = calloc(json_object_size(labels) + 1, sizeof(**out));
  if (*out == NULL) return fail(err, err_len, field, "out of memory");
  const char *key;
  json_t *value;
  json_object_foreach((json_t *)labels, key, value) {
    if (strlen(key) > MT_K8S_LABEL_KEY_MAX || !is_label_text(key, 1) || key[0] == '\0')
      return fail(err, err_len, field, "bad label key");
    if (!json_is_string(value) || json_string_length(value) > MT_K8S_LABEL_VALUE_MAX ||
        !is_label_text(json_string_value(value), 0))
      return fail(err, err_len, field, "bad label value");
    mt_k8s_label *l = &(*out)[(*num)++];
    l->key = strdup(key);
    l->value = strdup(json_string_value(value));
    if (l->key == NULL || l->value == NULL) return fail(err, err_len, field, "out of memory");
  }
  return 1;
}

static void labels_clear(mt_k8s_label *labels, size_t num) {
  for (size_t i = 0; i < num; i++) {
    free(labels[i].key);
    free(labels[i].value);
  }
  free(labels);
}

static int decode_labels(const json_t *labels, mt_k8s_meta *out, char *err, size_t err_len) {
  return decode_label_map(labels, "metadata.labels", &out->labels, &out->num_labels, err, err_len);
}

int mt_k8s_meta_decode(const json_t *obj, int namespaced, mt_k8s_meta *out, char *err,
                       size_t err_len) {
  memset(out, 0, sizeof(*out));
  const json_t *meta = member(obj, "metadata");
  int ok = json_is_object(meta) || fail(err, err_len, "metadata", "missing or not an object");
  ok = ok && take_string(meta, "name", MT_K8S_NAME_MAX, STR_REQUIRED, "", &out->name, err, err_len);
  ok = ok && (is_dns_name(out->name) || fail(err, err_len, "metadata.name", "not a DNS name"));
  if (ok && namespaced) {
    ok =
        take_string(meta, "namespace", MT_K8S_NAME_MAX, STR_REQUIRED, "", &out->ns, err, err_len) &&
        (is_dns_name(out->ns) || fail(err, err_len, "metadata.namespace", "not a DNS name"));
  } else if (ok) {
    out->ns = strdup("");
    ok = out->ns != NULL || fail(err, err_len, "metadata", "out of memory");
  }
  ok = ok && take_string(meta, "resourceVersion", MT_K8S_RV_MAX, STR_OPTIONAL, "",
                         &out->resource_version, err, err_len);
  ok = ok && decode_labels(member(meta, "labels"), out, err, err_len);
  if (ok) {
    const json_t *del = member(meta, "deletionTimestamp");
    out->deleting = del != NULL && !json_is_null(del);
  }
  if (!ok) mt_k8s_meta_clear(out);
  return ok;
}

void mt_k8s_meta_clear(mt_k8s_meta *meta) {
  if (meta == NULL) return;
  labels_clear(meta->labels, meta->num_labels);
  free(meta->ns);
  free(meta->name);
  free(meta->resource_version);
  memset(meta, 0, sizeof(*meta));
}

const char *mt_k8s_meta_string(const json_t *obj, const char *key) {
  const json_t *v = json_object_get(json_object_get(obj, "metadata"), key);
  return json_is_string(v) ? json_string_value(v) : "";
}

const char *mt_k8s_meta_label(const mt_k8s_meta *meta, const char *key) {
  for (size_t i = 0; i < meta->num_labels; i++) {
    if (strcmp(meta->labels[i].key, key) == 0) return meta->labels[i].value;
  }
  return NULL;
}

/* status.podIPs[].ip, or the older status.podIP alone. */
static int decode_pod_ips(const json_t *status, mt_k8s_pod *out, char *err, size_t err_len) {
  const json_t *ips;
  if (!optional_array(status, "podIPs", MT_K8S_MAX_POD_IPS, &ips, err, err_len)) return 0;
  if (ips != NULL) {
    size_t i;
    const json_t *entry;
    json_array_foreach(ips, i, entry) {
      if (!take_ip(member(entry, "ip"), &out->ips[out->num_ips], err, err_len, "status.podIPs"))
        return 0;
      out->num_ips++;
    }
    return 1;
  }
  const json_t *ip = member(status, "podIP");
  if (ip == NULL || json_is_null(ip) || (json_is_string(ip) && json_string_length(ip) == 0))
    return 1;
  if (!take_ip(ip, &out->ips[0], err, err_len, "status.podIP")) return 0;
  out->num_ips = 1;
  return 1;
}

static int pod_is_ready(const json_t *status) {
  const json_t *conditions = member(status, "conditions");
  size_t i;
  const json_t *c;
  if (!json_is_array(conditions)) return 0;
  json_array_foreach(conditions, i, c) {
    const json_t *type = member(c, "type"), *st = member(c, "status");
    if (json_is_string(type) && strcmp(json_string_value(type), "Ready") == 0)
      return json_is_string(st) && strcmp(json_string_value(st), "True") == 0;
  }
  return 0;
}

int mt_k8s_pod_decode(const json_t *obj, mt_k8s_pod *out, char *err, size_t err_len) {
  memset(out, 0, sizeof(*out));
  const json_t *spec = member(obj, "spec"), *status = member(obj, "status");
  int ok = mt_k8s_meta_decode(obj, 1, &out->meta, err, err_len);
  ok = ok && (json_is_object(spec) || fail(err, err_len, "spec", "missing or not an object"));
  ok = ok && take_string(spec, "serviceAccountName", MT_K8S_NAME_MAX, STR_OPTIONAL, "default",
                         &out->service_account, err, err_len);
  ok = ok && (is_dns_name(out->service_account) ||
              fail(err, err_len, "spec.serviceAccountName", "not a DNS name"));
  ok = ok &&
       take_string(spec, "nodeName", MT_K8S_NAME_MAX, STR_OPTIONAL, "", &out->node, err, err_len);
  ok = ok && (out->node[0] == '\0' || is_dns_name(out->node) ||
              fail(err, err_len, "spec.nodeName", "not a DNS name"));
  ok = ok &&
       take_string(status, "phase", MT_K8S_NAME_MAX, STR_OPTIONAL, "", &out->phase, err, err_len);
  ok = ok && decode_pod_ips(status, out, err, err_len);
  if (ok) {
    out->host_network = json_is_true(member(spec, "hostNetwork"));
    out->ready = pod_is_ready(status);
  }
  if (!ok) mt_k8s_pod_clear(out);
  return ok;
}

void mt_k8s_pod_clear(mt_k8s_pod *pod) {
  if (pod == NULL) return;
  mt_k8s_meta_clear(&pod->meta);
  free(pod->service_account);
  free(pod->node);
  free(pod->phase);
  for (size_t i = 0; i < pod->num_ips; i++) free(pod->ips[i]);
  memset(pod, 0, sizeof(*pod));
}

static void ports_clear(mt_k8s_port *ports, size_t n) {
  for (size_t i = 0; i < n; i++) {
    free(ports[i].name);
    free(ports[i].protocol);
  }
  free(ports);
}

static int decode_ports(const json_t *parent, const char *field, mt_k8s_port **out, size_t *num,
                        char *err, size_t err_len) {
  const json_t *ports;
  if (!optional_array(parent, "ports", MT_K8S_MAX_PORTS, &ports, err, err_len)) return 0;
  if (ports == NULL) return 1;
  *out = calloc(json_array_size(ports) + 1, sizeof(**out));
  if (*out == NULL) return fail(err, err_len, field, "out of memory");
  size_t i;
  const json_t *p;
  json_array_foreach(ports, i, p) {
    const json_t *port = member(p, "port");
    if (!json_is_integer(port) || json_integer_value(port) < 1 ||
        json_integer_value(port) > UINT16_MAX)
      return fail(err, err_len, field, "port is not in 1..65535");
    mt_k8s_port *dst = &(*out)[(*num)++];
    dst->port = (uint16_t)json_integer_value(port);
    if (!take_string(p, "name", MT_K8S_NAME_MAX, STR_OPTIONAL, "", &dst->name, err, err_len) ||
        !take_string(p, "protocol", MT_K8S_NAME_MAX, STR_OPTIONAL, "TCP", &dst->protocol, err,
                     err_len))
      return 0;
  }
  return 1;
}

/* spec.clusterIPs, or spec.clusterIP alone; "None" (headless) is no IP. */
static int decode_cluster_ips(const json_t *spec, mt_k8s_service *out, char *err, size_t err_len) {
  const json_t *ips;
  if (!optional_array(spec, "clusterIPs", MT_K8S_MAX_CLUSTER_IPS, &ips, err, err_len)) return 0;
  json_t *single = NULL;
  if (ips == NULL) {
    const json_t *ip = member(spec, "clusterIP");
    if (ip == NULL || json_is_null(ip)) return 1;
    single = json_pack("[O]", ip);
    if (single == NULL) return fail(err, err_len, "spec.clusterIP", "out of memory");
    ips = single;
  }
  size_t i;
  const json_t *ip;
  int ok = 1;
  json_array_foreach(ips, i, ip) {
    if (json_is_string(ip) &&
        (strcmp(json_string_value(ip), "None") == 0 || json_string_length(ip) == 0))
      continue;
    if (!take_ip(ip, &out->cluster_ips[out->num_cluster_ips], err, err_len, "spec.clusterIPs")) {
      ok = 0;
      break;
    }
    out->num_cluster_ips++;
  }
  json_decref(single);
  return ok;
}

int mt_k8s_service_decode(const json_t *obj, mt_k8s_service *out, char *err, size_t err_len) {
  memset(out, 0, sizeof(*out));
  const json_t *spec = member(obj, "spec");
  int ok = mt_k8s_meta_decode(obj, 1, &out->meta, err, err_len);
  ok = ok && (json_is_object(spec) || fail(err, err_len, "spec", "missing or not an object"));
  ok = ok && decode_cluster_ips(spec, out, err, err_len);
  ok = ok && decode_ports(spec, "spec.ports", &out->ports, &out->num_ports, err, err_len);
  ok = ok && decode_label_map(member(spec, "selector"), "spec.selector", &out->selector,
                              &out->num_selector, err, err_len);
  if (!ok) mt_k8s_service_clear(out);
  return ok;
}

void mt_k8s_service_clear(mt_k8s_service *service) {
  if (service == NULL) return;
  mt_k8s_meta_clear(&service->meta);
  for (size_t i = 0; i < service->num_cluster_ips; i++) free(service->cluster_ips[i]);
  ports_clear(service->ports, service->num_ports);
  labels_clear(service->selector, service->num_selector);
  memset(service, 0, sizeof(*service));
}

int mt_k8s_service_selects(const mt_k8s_service *service, const mt_k8s_label *labels,
                           size_t num_labels) {
  if (service->num_selector == 0) return 0;
  for (size_t i = 0; i < service->num_selector; i++) {
    const mt_k8s_label *want = &service->selector[i];
    size_t j = 0;
    while (j < num_labels &&
           (strcmp(labels[j].key, want->key) != 0 || strcmp(labels[j].value, want->value) != 0))
      j++;
    if (j == num_labels) return 0;
  }
  return 1;
}

static void endpoint_clear(mt_k8s_endpoint *e) {
  for (size_t i = 0; i < e->num_addresses; i++) free(e->addresses[i]);
  free(e->addresses);
  free(e->node);
  free(e->pod_name);
}

static int decode_endpoint(const json_t *src, int ip_addresses, mt_k8s_endpoint *dst, char *err,
                           size_t err_len) {
  const json_t *addresses;
  if (!optional_array(src, "addresses", MT_K8S_MAX_ADDRESSES, &addresses, err, err_len)) return 0;
  dst->addresses = calloc((addresses ? json_array_size(addresses) : 0) + 1, sizeof(char *));
  if (dst->addresses == NULL) return fail(err, err_len, "endpoints", "out of memory");
  size_t i;
  const json_t *a;
  if (addresses != NULL) {
    json_array_foreach(addresses, i, a) {
      char **slot = &dst->addresses[dst->num_addresses];
      if (ip_addresses) {
        if (!take_ip(a, slot, err, err_len, "endpoints[].addresses")) return 0;
      } else if (!copy_string(a, MT_K8S_NAME_MAX, slot, err, err_len, "endpoints[].addresses")) {
        return 0;
      }
      dst->num_addresses++;
    }
  }
  const json_t *ready = member(member(src, "conditions"), "ready");
  dst->ready = ready == NULL || json_is_null(ready) || json_is_true(ready);
  if (!take_string(src, "nodeName", MT_K8S_NAME_MAX, STR_OPTIONAL, "", &dst->node, err, err_len))
    return 0;
  const json_t *ref = member(src, "targetRef");
  const json_t *kind = member(ref, "kind");
  int is_pod = json_is_string(kind) && strcmp(json_string_value(kind), "Pod") == 0;
  return take_string(is_pod ? ref : NULL, "name", MT_K8S_NAME_MAX, STR_OPTIONAL, "", &dst->pod_name,
                     err, err_len);
}

int mt_k8s_endpointslice_decode(const json_t *obj, mt_k8s_endpointslice *out, char *err,
                                size_t err_len) {
  memset(out, 0, sizeof(*out));
  int ok = mt_k8s_meta_decode(obj, 1, &out->meta, err, err_len);
  ok = ok && take_string(obj, "addressType", MT_K8S_NAME_MAX, STR_REQUIRED, "", &out->address_type,
                         err, err_len);
  if (ok) {
    const char *svc = mt_k8s_meta_label(&out->meta, "kubernetes.io/service-name");
    out->service_name = strdup(svc ? svc : "");
    ok = out->service_name != NULL || fail(err, err_len, "metadata.labels", "out of memory");
  }
  const json_t *endpoints = NULL;
  ok = ok && optional_array(obj, "endpoints", MT_K8S_MAX_ENDPOINTS, &endpoints, err, err_len);
  if (ok && endpoints != NULL) {
    int ip_addresses = strcmp(out->address_type, "FQDN") != 0;
    out->endpoints = calloc(json_array_size(endpoints) + 1, sizeof(*out->endpoints));
    ok = out->endpoints != NULL || fail(err, err_len, "endpoints", "out of memory");
    size_t i;
    const json_t *e;
    json_array_foreach(endpoints, i, e) {
      if (!ok) break;
      ok = decode_endpoint(e, ip_addresses, &out->endpoints[out->num_endpoints++], err, err_len);
    }
  }
  ok = ok && decode_ports(obj, "ports", &out->ports, &out->num_ports, err, err_len);
  if (!ok) mt_k8s_endpointslice_clear(out);
  return ok;
}

void mt_k8s_endpointslice_clear(mt_k8s_endpointslice *slice) {
  if (slice == NULL) return;
  mt_k8s_meta_clear(&slice->meta);
  free(slice->service_name);
  free(slice->address_type);
  for (size_t i = 0; i < slice->num_endpoints; i++) endpoint_clear(&slice->endpoints[i]);
  free(slice->endpoints);
  ports_clear(slice->ports, slice->num_ports);
  memset(slice, 0, sizeof(*slice));
}

int mt_k8s_namespace_decode(const json_t *obj, mt_k8s_namespace *out, char *err, size_t err_len) {
  memset(out, 0, sizeof(*out));
  return mt_k8s_meta_decode(obj, 0, &out->meta, err, err_len);
}

void mt_k8s_namespace_clear(mt_k8s_namespace *ns) {
  if (ns == NULL) return;
  mt_k8s_meta_clear(&ns->meta);
}
