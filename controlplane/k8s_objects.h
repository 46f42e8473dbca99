/* k8s_objects: Kubernetes API objects (JSON, jansson) -> the few fields
 * mtls-ca uses, as plain C structs it owns.
 *
 * Input is untrusted: every field is type-checked, every string is bounded
 * (names by Kubernetes' own limits, IPs parsed with inet_pton, ports in
 * 1..65535) and every array is capped, so a hostile or broken API server
 * costs at most a refusal ("object refused: <field>: <why>"), never a crash
 * or an unbounded allocation. Fields mtls-ca does not use are ignored, as a
 * client of a newer API must. Pure: no I/O, no state.
 *
 * Decoders fill |out| (zeroed first) and return 1, or return 0 with the
 * reason in |err| and |out| left empty. Every decoded struct is released
 * with its _clear function, which accepts an empty struct. */
#ifndef MT_CP_K8S_OBJECTS_H
#define MT_CP_K8S_OBJECTS_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum {
  MT_K8S_NAME_MAX = 253,      /* a DNS subdomain: object names, node names */
  MT_K8S_LABEL_KEY_MAX = 317, /* prefix (253) + "/" + name (63) */
  MT_K8S_LABEL_VALUE_MAX = 63,
  MT_K8S_MAX_LABELS = 128,
  MT_K8S_MAX_POD_IPS = 4, /* dual stack needs 2 */
  MT_K8S_MAX_CLUSTER_IPS = 4,
  MT_K8S_MAX_PORTS = 256,
  MT_K8S_MAX_ENDPOINTS = 1000, /* the EndpointSlice API's own cap */
  MT_K8S_MAX_ADDRESSES = 100,  /* per endpoint, also the API's cap */
  MT_K8S_IP_MAX = 46,          /* INET6_ADDRSTRLEN */
  MT_K8S_RV_MAX = 64,          /* resourceVersion: opaque, but bounded */
};

typedef struct {
  char *key;
  char *value;
} mt_k8s_label;

/* metadata: namespace is "" for cluster-scoped objects (Namespace). */
typedef struct {
  char *ns;
  char *name;
  char *resource_version;
  mt_k8s_label *labels;
  size_t num_labels;
  int deleting; /* metadata.deletionTimestamp is set */
} mt_k8s_meta;

typedef struct {
  mt_k8s_meta meta;
  char
      *service_account; /* spec.serviceAccountName; "default" when absent, as the API defaults it */
  char *node;           /* spec.nodeName; "" until scheduled */
  char *phase;          /* status.phase; "" when absent */
  int host_network;     /* spec.hostNetwork: shares the node's IP, no identity by address */
  int ready;            /* the Ready condition is "True" */
  char *ips[MT_K8S_MAX_POD_IPS]; /* status.podIPs (or status.podIP), in API order */
  size_t num_ips;
} mt_k8s_pod;

typedef struct {
  char *name;     /* "" when unnamed */
  uint16_t port;  /* Service: spec.ports[].port; EndpointSlice: ports[].port */
  char *protocol; /* "TCP" when absent, as the API defaults it */
} mt_k8s_port;

typedef struct {
  mt_k8s_meta meta;
  char *cluster_ips[MT_K8S_MAX_CLUSTER_IPS]; /* spec.clusterIPs (or clusterIP); none for headless */
  size_t num_cluster_ips;
  mt_k8s_port *ports;
  size_t num_ports;
  /* spec.selector: the pods whose labels hold every pair. Empty (absent,
   * or a Service with manually managed endpoints) selects no pod. */
  mt_k8s_label *selector;
  size_t num_selector;
} mt_k8s_service;

typedef struct {
  char **addresses;
  size_t num_addresses;
  int ready;      /* conditions.ready; absent counts as ready, as the API says consumers should */
  char *node;     /* nodeName; "" when absent */
  char *pod_name; /* targetRef of kind Pod; "" when the endpoint is not a pod */
} mt_k8s_endpoint;

typedef struct {
  mt_k8s_meta meta;
  char *service_name; /* label kubernetes.io/service-name; "" when absent */
  char *address_type; /* IPv4, IPv6 or FQDN */
  mt_k8s_endpoint *endpoints;
  size_t num_endpoints;
  mt_k8s_port *ports;
  size_t num_ports;
} mt_k8s_endpointslice;

typedef struct {
  mt_k8s_meta meta;
} mt_k8s_namespace;

/* |ip| (IPv4 or IPv6 text) in canonical form into |out| (MT_K8S_IP_MAX
 * bytes suffice); 0 when it is not an IP address. */
int mt_k8s_canonical_ip(const char *ip, char *out, size_t out_len);

int mt_k8s_meta_decode(const json_t *obj, int namespaced, mt_k8s_meta *out, char *err,
                       size_t err_len);
void mt_k8s_meta_clear(mt_k8s_meta *meta);
/* The value of label |key|, or NULL. Borrowed from |meta|. */
const char *mt_k8s_meta_label(const mt_k8s_meta *meta, const char *key);
/* metadata.|key| of an undecoded object when it is a string, else "" (for
 * log lines about objects that may not decode). Borrowed from |obj|. */
const char *mt_k8s_meta_string(const json_t *obj, const char *key);

int mt_k8s_pod_decode(const json_t *obj, mt_k8s_pod *out, char *err, size_t err_len);
void mt_k8s_pod_clear(mt_k8s_pod *pod);

/* 1 when |service|'s selector is not empty and every pair of it is among
 * |labels| (Kubernetes' rule for which pods a Service selects). */
int mt_k8s_service_selects(const mt_k8s_service *service, const mt_k8s_label *labels,
                           size_t num_labels);

int mt_k8s_service_decode(const json_t *obj, mt_k8s_service *out, char *err, size_t err_len);
void mt_k8s_service_clear(mt_k8s_service *service);

int mt_k8s_endpointslice_decode(const json_t *obj, mt_k8s_endpointslice *out, char *err,
                                size_t err_len);
void mt_k8s_endpointslice_clear(mt_k8s_endpointslice *slice);

int mt_k8s_namespace_decode(const json_t *obj, mt_k8s_namespace *out, char *err, size_t err_len);
void mt_k8s_namespace_clear(mt_k8s_namespace *ns);

#ifdef __cplusplus
}
#endif

#endif /* MT_CP_K8S_OBJECTS_H */
