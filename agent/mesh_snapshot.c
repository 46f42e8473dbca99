/* mesh_snapshot.c: MeshSnapshot -> a validated mt_mesh_update. */
#include "agent/mesh_snapshot.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent/mesh_delta.h"
#include "agent/policy_proto.h"
#include "agent/pem.h"
#include "agent/svid.h"
#include "proto/mtlsd/mesh.pb-c.h"

void mt_mesh_update_clear(mt_mesh_update *u) {
  mt_mesh_unref(u->mesh);
  for (size_t i = 0; i < u->num_bundles; i++) {
    free(u->bundles[i].trust_domain);
    sk_X509_pop_free(u->bundles[i].roots, X509_free);
  }
  free(u->bundles);
  for (size_t i = 0; i < u->num_workloads; i++) {
    free(u->workloads[i].spiffe_id);
    mt_mesh_unref(u->workloads[i].mesh);
  }
  free(u->workloads);
  for (size_t i = 0; i < u->num_node_workloads; i++) {
    free(u->node_workloads[i].spiffe_id);
    free(u->node_workloads[i].addresses);
    free(u->node_workloads[i].name);
  }
  free(u->node_workloads);
  memset(u, 0, sizeof(*u));
}

mt_mesh *mt_mesh_update_for(const mt_mesh_update *u, const char *spiffe_id) {
  for (size_t i = 0; spiffe_id != NULL && i < u->num_workloads; i++)
    if (strcmp(u->workloads[i].spiffe_id, spiffe_id) == 0) return u->workloads[i].mesh;
  return u->mesh;
}

static int decode_bundles(const Mtlsd__Mesh__V1__MeshSnapshot *s, mt_mesh_update *out, char *err,
                          size_t err_len) {
  out->bundles = calloc(s->n_trust_bundles + 1, sizeof(mt_bundle));
  if (out->bundles == NULL) return snprintf(err, err_len, "out of memory"), 0;
  for (size_t i = 0; i < s->n_trust_bundles; i++) {
    const Mtlsd__Mesh__V1__TrustBundle *b = s->trust_bundles[i];
    mt_spiffe_err e = mt_trust_domain_validate(b->trust_domain, strlen(b->trust_domain));
    if (e != MT_SPIFFE_OK)
      return snprintf(err, err_len, "trust_bundles[%zu]: invalid trust domain '%.64s': %s", i,
                      b->trust_domain, mt_spiffe_err_str(e)),
             0;
    for (size_t j = 0; j < i; j++) {
      if (strcmp(out->bundles[j].trust_domain, b->trust_domain) == 0)
        return snprintf(err, err_len, "trust domain '%.64s' has two bundles", b->trust_domain), 0;
    }
    mt_bundle *dst = &out->bundles[out->num_bundles++];
    dst->trust_domain = strdup(b->trust_domain);
    dst->roots = sk_X509_new_null();
    if (dst->trust_domain == NULL || dst->roots == NULL)
      return snprintf(err, err_len, "out of memory"), 0;
    for (size_t j = 0; j < b->n_roots_pem; j++) {
      if (mt_pem_append_certs(b->roots_pem[j], strlen(b->roots_pem[j]), dst->roots) == 0)
        return snprintf(err, err_len, "trust_bundles[%zu].roots_pem[%zu]: no PEM certificate", i,
                        j),
               0;
    }
    if (sk_X509_num(dst->roots) == 0)
      return snprintf(err, err_len, "trust domain '%.64s' has no roots", b->trust_domain), 0;
  }
  return 1;
}

/* A Service address's endpoints (Destination.endpoints): each an ip:port
 * of the address's family whose identity is one the address accepts. */
static int decode_endpoints(const Mtlsd__Mesh__V1__Destination *d, size_t i,
                            mt_destination_config *dst, char *err, size_t err_len) {
  if (d->n_endpoints == 0) return 1;
  const struct sockaddr *service = (const struct sockaddr *)&dst->address.addr;
  if (mt_sockaddr_port(service) == 0)
    return snprintf(err, err_len,
                    "destinations[%zu] (%.64s): endpoints on an address without a port (only "
                    "a Service address has endpoints)",
                    i, d->address),
           0;
  dst->endpoints = calloc(d->n_endpoints, sizeof(*dst->endpoints));
  if (dst->endpoints == NULL) return snprintf(err, err_len, "out of memory"), 0;
  mt_expected_ids accepted = {(const char *const *)dst->spiffe_ids, dst->num_spiffe_ids};
  for (size_t j = 0; j < d->n_endpoints; j++) {
    const Mtlsd__Mesh__V1__Endpoint *e = d->endpoints[j];
    mt_service_endpoint *ep = &dst->endpoints[j];
    if (!mt_sockaddr_parse(e->address, &ep->address, 0) ||
        mt_sockaddr_port((const struct sockaddr *)&ep->address.addr) == 0 ||
        ep->address.addr.ss_family != service->sa_family)
      return snprintf(err, err_len,
                      "destinations[%zu] (%.64s): endpoints[%zu]: '%.64s' is not an IP:port of "
                      "the address's family",
                      i, d->address, j, e->address),
             0;
    mt_spiffe_err se = mt_spiffe_id_parse(e->spiffe_id, strlen(e->spiffe_id), NULL);
    if (se != MT_SPIFFE_OK)
      return snprintf(err, err_len,
                      "destinations[%zu] (%.64s): endpoints[%zu] (%.64s): invalid "
                      "SPIFFE ID: %s",
                      i, d->address, j, e->address, mt_spiffe_err_str(se)),
             0;
    if (!mt_expected_ids_contain(&accepted, e->spiffe_id))
      return snprintf(err, err_len,
                      "destinations[%zu] (%.64s): endpoints[%zu] (%.64s): %.128s is not one of "
                      "the address's SPIFFE IDs",
                      i, d->address, j, e->address, e->spiffe_id),
             0;
    ep->spiffe_id = e->spiffe_id;
    dst->num_endpoints = j + 1;
  }
  return 1;
}

/* Fills |dests| from the snapshot; the ID and endpoint arrays are
 * allocated here and freed by free_destinations, the strings borrowed from
 * |s| (mt_mesh_new copies them). */
static int decode_destinations(const Mtlsd__Mesh__V1__MeshSnapshot *s, mt_destination_config *dests,
                               char *err, size_t err_len) {
  for (size_t i = 0; i < s->n_destinations; i++) {
    const Mtlsd__Mesh__V1__Destination *d = s->destinations[i];
    if (!mt_sockaddr_parse(d->address, &dests[i].address, 0))
      return snprintf(err, err_len, "destinations[%zu]: '%.64s' is not IP:port or IP", i,
                      d->address),
             0;
    size_t n = (d->spiffe_id[0] != '\0') + d->n_spiffe_ids;
    if (n == 0) return snprintf(err, err_len, "destinations[%zu]: no SPIFFE ID", i), 0;
    dests[i].spiffe_ids = calloc(n, sizeof(char *));
    if (dests[i].spiffe_ids == NULL) return snprintf(err, err_len, "out of memory"), 0;
    for (size_t j = 0; j < n; j++) {
      char *id = d->spiffe_id[0] != '\0' ? (j == 0 ? d->spiffe_id : d->spiffe_ids[j - 1])
                                         : d->spiffe_ids[j];
      mt_spiffe_err e = mt_spiffe_id_parse(id, strlen(id), NULL);
      if (e != MT_SPIFFE_OK)
        return snprintf(err, err_len, "destinations[%zu]: invalid SPIFFE ID: %s", i,
                        mt_spiffe_err_str(e)),
               0;
      dests[i].spiffe_ids[dests[i].num_spiffe_ids++] = id;
    }
    if (!decode_endpoints(d, i, &dests[i], err, err_len)) return 0;
  }
  return 1;
}

static void free_destinations(mt_destination_config *dests, size_t n) {
  for (size_t i = 0; dests != NULL && i < n; i++) {
    free(dests[i].spiffe_ids);
    free(dests[i].endpoints);
  }
  free(dests);
}

/* Each workload's mesh shares the general one's destinations. */
static int decode_mtls_mode(Mtlsd__Mesh__V1__MtlsMode m, mt_mtls_mode *out) {
  switch (m) {
    case MTLSD__MESH__V1__MTLS_MODE__STRICT: *out = MT_MTLS_STRICT; return 1;
    case MTLSD__MESH__V1__MTLS_MODE__PERMISSIVE: *out = MT_MTLS_PERMISSIVE; return 1;
    case MTLSD__MESH__V1__MTLS_MODE__DISABLE: *out = MT_MTLS_DISABLE; return 1;
    default: return 0; /* UNSET never reaches an agent: the server resolves it */
  }
}

/* A workload's PeerAuthentication; NULL with the reason in |err|. */
static mt_peer_auth *decode_peer_auth(const Mtlsd__Mesh__V1__PeerAuthentication *p, char *err,
                                      size_t err_len) {
  mt_mtls_mode mode;
  if (!decode_mtls_mode(p->mode, &mode))
    return snprintf(err, err_len,
                    "peer_authentication.mode %d is not STRICT, PERMISSIVE or DISABLE", p->mode),
           NULL;
  mt_peer_auth *pa = mt_peer_auth_new(mode, p->source);
  if (pa == NULL) return snprintf(err, err_len, "out of memory"), NULL;
  for (size_t i = 0; i < p->n_ports; i++) {
    const Mtlsd__Mesh__V1__PortMtls *pm = p->ports[i];
    char why[128];
    if (pm->port == 0 || pm->port > 65535 || !decode_mtls_mode(pm->mode, &mode) ||
        !mt_peer_auth_add_port(pa, (uint16_t)pm->port, mode, pm->source, why, sizeof(why))) {
      snprintf(err, err_len, "peer_authentication.ports[%zu]: port %u, mode %d: %s", i, pm->port,
               pm->mode, pm->port == 0 || pm->port > 65535 ? "port out of range" : "refused");
      mt_peer_auth_free(pa);
      return NULL;
    }
  }
  return pa;
}

static int decode_workload_policies(const Mtlsd__Mesh__V1__MeshSnapshot *s, mt_mesh_update *out,
                                    char *err, size_t err_len) {
  out->workloads = calloc(s->n_workload_policies + 1, sizeof(mt_workload_mesh));
  if (out->workloads == NULL) return snprintf(err, err_len, "out of memory"), 0;
  for (size_t i = 0; i < s->n_workload_policies; i++) {
    const Mtlsd__Mesh__V1__WorkloadPolicy *w = s->workload_policies[i];
    mt_spiffe_err e = mt_spiffe_id_parse(w->spiffe_id, strlen(w->spiffe_id), NULL);
    if (e != MT_SPIFFE_OK)
      return snprintf(err, err_len, "workload_policies[%zu]: invalid SPIFFE ID: %s", i,
                      mt_spiffe_err_str(e)),
             0;
    if (w->policy == NULL) return snprintf(err, err_len, "workload_policies[%zu]: no policy", i), 0;
    for (size_t j = 0; j < out->num_workloads; j++)
      if (strcmp(out->workloads[j].spiffe_id, w->spiffe_id) == 0)
        return snprintf(err, err_len, "workload_policies: '%.128s' listed twice", w->spiffe_id), 0;
    char why[200];
    mt_policy *policy = mt_policy_from_proto(w->policy, why, sizeof(why));
    if (policy == NULL)
      return snprintf(err, err_len, "workload_policies[%zu] (%.128s): %s", i, w->spiffe_id, why), 0;
    mt_peer_auth *pa = NULL;
    if (w->peer_authentication != NULL &&
        (pa = decode_peer_auth(w->peer_authentication, why, sizeof(why))) == NULL) {
      mt_policy_free(policy);
      return snprintf(err, err_len, "workload_policies[%zu] (%.128s): %s", i, w->spiffe_id, why), 0;
    }
    mt_workload_mesh *dst = &out->workloads[out->num_workloads++];
    dst->spiffe_id = strdup(w->spiffe_id);
    dst->mesh = mt_mesh_with_policy(out->mesh, policy);
    if (dst->mesh != NULL)
      mt_mesh_set_peer_auth(dst->mesh, pa);
    else
      mt_peer_auth_free(pa);
    if (dst->spiffe_id == NULL || dst->mesh == NULL)
      return snprintf(err, err_len, "out of memory"), 0;
  }
  return 1;
}

static int decode_one_workload(const Mtlsd__Mesh__V1__Workload *w, size_t i,
                               mt_pushed_workload *out, char *err, size_t err_len) {
  mt_spiffe_err e = mt_spiffe_id_parse(w->spiffe_id, strlen(w->spiffe_id), NULL);
  if (e != MT_SPIFFE_OK)
    return snprintf(err, err_len, "node_workloads[%zu]: invalid SPIFFE ID: %s", i,
                    mt_spiffe_err_str(e)),
           0;
  if (w->n_ips == 0)
    return snprintf(err, err_len, "node_workloads[%zu] (%.128s): no IP", i, w->spiffe_id), 0;
  out->spiffe_id = strdup(w->spiffe_id);
  out->addresses = calloc(w->n_ips, sizeof(*out->addresses));
  size_t name_len = strlen(w->namespace_) + strlen(w->pod) + 2;
  out->name = malloc(name_len);
  if (out->spiffe_id == NULL || out->addresses == NULL || out->name == NULL)
    return snprintf(err, err_len, "out of memory"), 0;
  snprintf(out->name, name_len, "%s%s%s", w->namespace_, w->pod[0] ? "/" : "", w->pod);
  for (size_t j = 0; j < w->n_ips; j++) {
    if (!mt_sockaddr_parse(w->ips[j], &out->addresses[j], 0) ||
        mt_sockaddr_port((const struct sockaddr *)&out->addresses[j].addr) != 0)
      return snprintf(err, err_len, "node_workloads[%zu] (%.128s): '%.64s' is not an IP", i,
                      w->spiffe_id, w->ips[j]),
             0;
    out->num_addresses = j + 1;
  }
  return 1;
}

typedef struct {
  const mt_sockaddr *address;
  size_t workload;
} address_owner;

static int compare_owners(const void *a, const void *b) {
  const mt_sockaddr *x = ((const address_owner *)a)->address;
  const mt_sockaddr *y = ((const address_owner *)b)->address;
  if (x->addr.ss_family != y->addr.ss_family) return x->addr.ss_family < y->addr.ss_family ? -1 : 1;
  return memcmp(&x->addr, &y->addr, sizeof(x->addr));
}

/* No IP may belong to two workloads: which certificate would serve it? */
static int check_addresses_unique(const mt_mesh_update *out, char *err, size_t err_len) {
  size_t total = 0;
  for (size_t i = 0; i < out->num_node_workloads; i++)
    total += out->node_workloads[i].num_addresses;
  address_owner *owners = calloc(total + 1, sizeof(*owners));
  if (owners == NULL) return snprintf(err, err_len, "out of memory"), 0;
  size_t n = 0;
  for (size_t i = 0; i < out->num_node_workloads; i++)
    for (size_t j = 0; j < out->node_workloads[i].num_addresses; j++)
      owners[n++] = (address_owner){&out->node_workloads[i].addresses[j], i};
  qsort(owners, n, sizeof(*owners), compare_owners);
  int ok = 1;
  for (size_t i = 1; ok && i < n; i++) {
    if (compare_owners(&owners[i - 1], &owners[i]) != 0) continue;
    char text[MT_SOCKADDR_TEXT_MAX];
    mt_sockaddr_format((const struct sockaddr *)&owners[i].address->addr, text, sizeof(text));
    snprintf(err, err_len, "node_workloads: address %s belongs to %.128s and %.128s", text,
             out->node_workloads[owners[i - 1].workload].spiffe_id,
             out->node_workloads[owners[i].workload].spiffe_id);
    ok = 0;
  }
  free(owners);
  return ok;
}

static int decode_node_workloads(const Mtlsd__Mesh__V1__MeshSnapshot *s, mt_mesh_update *out,
                                 char *err, size_t err_len) {
  if (s->node_workloads == NULL) return 1;
  const Mtlsd__Mesh__V1__NodeWorkloads *nw = s->node_workloads;
  out->has_node_workloads = 1;
  out->node_workloads = calloc(nw->n_workloads + 1, sizeof(*out->node_workloads));
  if (out->node_workloads == NULL) return snprintf(err, err_len, "out of memory"), 0;
  for (size_t i = 0; i < nw->n_workloads; i++) {
    out->num_node_workloads = i + 1;
    if (!decode_one_workload(nw->workloads[i], i, &out->node_workloads[i], err, err_len)) return 0;
  }
  return check_addresses_unique(out, err, err_len);
}

/* Where the general mesh's destinations come from: the snapshot itself,
 * or (|delta| set) the held mesh changed by a delta. */
typedef struct {
  const Mtlsd__Mesh__V1__MeshSnapshot *delta;
  const mt_mesh *held;
  const mt_mesh_entries *held_entries;
} dest_source;

/* The held mesh's destinations changed by |src->delta|; takes |policy|. */
static mt_mesh *patch_destinations(const Mtlsd__Mesh__V1__MeshSnapshot *s, const dest_source *src,
                                   mt_policy *policy, char *err, size_t err_len) {
  const Mtlsd__Mesh__V1__MeshSnapshot *d = src->delta;
  mt_destination_config *changed = calloc(d->n_destinations + 1, sizeof(*changed));
  int *replaces = calloc(d->n_destinations + 1, sizeof(*replaces));
  mt_sockaddr *removed = calloc(d->n_removed + 1, sizeof(*removed));
  size_t num_removed = 0;
  int ok = changed != NULL && replaces != NULL && removed != NULL;
  if (!ok) snprintf(err, err_len, "out of memory");
  if (ok) ok = decode_destinations(d, changed, err, err_len);
  for (size_t i = 0; ok && i < d->n_destinations; i++) {
    const char *a = d->destinations[i]->address;
    replaces[i] = mt_mesh_entries_has(src->held_entries, MT_MESH_FIELD_DESTINATIONS, a, strlen(a));
  }
  for (size_t i = 0; ok && i < d->n_removed; i++) {
    if (d->removed[i]->field != MT_MESH_FIELD_DESTINATIONS) continue;
    ok = mt_sockaddr_parse(d->removed[i]->key, &removed[num_removed++], 0);
    if (!ok)
      snprintf(err, err_len, "removed destination '%.64s' is not IP:port or IP",
               d->removed[i]->key);
  }
  mt_mesh *m = NULL;
  if (ok)
    m = mt_mesh_patched(src->held, s->version, policy, changed, replaces, d->n_destinations,
                        removed, num_removed, err, err_len);
  else
    mt_policy_free(policy);
  free_destinations(changed, d->n_destinations);
  free(replaces);
  free(removed);
  return m;
}

/* The general mesh: policy and destinations (validated). */
static mt_mesh *decode_general(const Mtlsd__Mesh__V1__MeshSnapshot *s, const dest_source *src,
                               char *err, size_t err_len) {
  mt_policy *policy = mt_policy_from_proto(s->policy, err, err_len);
  if (policy == NULL) return NULL;
  if (src->delta != NULL) return patch_destinations(s, src, policy, err, err_len);
  mt_destination_config *dests = calloc(s->n_destinations + 1, sizeof(*dests));
  mt_mesh *m = NULL;
  if (dests == NULL) {
    snprintf(err, err_len, "out of memory");
  } else if (decode_destinations(s, dests, err, err_len)) {
    m = mt_mesh_new(s->version, policy, dests, s->n_destinations);
    policy = NULL;
    if (m == NULL) snprintf(err, err_len, "out of memory");
  }
  mt_policy_free(policy);
  free_destinations(dests, s->n_destinations);
  char twice[MT_SOCKADDR_TEXT_MAX];
  if (m != NULL && mt_mesh_duplicate_destination(m, twice, sizeof(twice))) {
    snprintf(err, err_len, "destinations: address %s listed twice", twice);
    mt_mesh_unref(m);
    m = NULL;
  }
  return m;
}

/* Destinations on demand: the flag and the unresolved addresses. */
static int decode_on_demand(const Mtlsd__Mesh__V1__MeshSnapshot *s, mt_mesh *mesh, char *err,
                            size_t err_len) {
  if (!s->on_demand_destinations) {
    if (s->n_unresolved == 0) return 1;
    return snprintf(err, err_len, "unresolved addresses without on_demand_destinations"), 0;
  }
  mt_sockaddr *addresses = calloc(s->n_unresolved + 1, sizeof(*addresses));
  if (addresses == NULL) return snprintf(err, err_len, "out of memory"), 0;
  int ok = 1;
  for (size_t i = 0; ok && i < s->n_unresolved; i++) {
    const char *a = s->unresolved[i]->address;
    ok = mt_sockaddr_parse(a, &addresses[i], 1);
    if (!ok) snprintf(err, err_len, "unresolved[%zu]: '%.64s' is not IP:port", i, a);
  }
  if (ok && !mt_mesh_set_on_demand(mesh, addresses, s->n_unresolved)) {
    snprintf(err, err_len, "out of memory");
    ok = 0;
  }
  free(addresses);
  return ok;
}

static int decode(const uint8_t *msg, size_t len, const dest_source *src, mt_mesh_update *out,
                  char *err, size_t err_len) {
  memset(out, 0, sizeof(*out));
  Mtlsd__Mesh__V1__MeshSnapshot *s = mtlsd__mesh__v1__mesh_snapshot__unpack(NULL, len, msg);
  if (s == NULL) return snprintf(err, err_len, "malformed MeshSnapshot"), 0;
  int ok = s->version[0] != '\0';
  if (!ok) snprintf(err, err_len, "snapshot has no version");
  if (ok) ok = decode_bundles(s, out, err, err_len);
  if (ok) ok = (out->mesh = decode_general(s, src, err, err_len)) != NULL;
  if (ok) ok = decode_on_demand(s, out->mesh, err, err_len);
  if (ok) ok = decode_workload_policies(s, out, err, err_len);
  if (ok) ok = decode_node_workloads(s, out, err, err_len);
  mtlsd__mesh__v1__mesh_snapshot__free_unpacked(s, NULL);
  if (!ok) mt_mesh_update_clear(out);
  return ok;
}

int mt_mesh_decode_snapshot(const uint8_t *msg, size_t len, mt_mesh_update *out, char *err,
                            size_t err_len) {
  dest_source src = {NULL, NULL, NULL};
  return decode(msg, len, &src, out, err, err_len);
}

int mt_mesh_decode_patched(const uint8_t *rest, size_t rest_len, const uint8_t *delta,
                           size_t delta_len, const mt_mesh *held,
                           const mt_mesh_entries *held_entries, mt_mesh_update *out, char *err,
                           size_t err_len) {
  memset(out, 0, sizeof(*out));
  Mtlsd__Mesh__V1__MeshSnapshot *d = mtlsd__mesh__v1__mesh_snapshot__unpack(NULL, delta_len, delta);
  if (d == NULL || !d->delta) {
    if (d != NULL) mtlsd__mesh__v1__mesh_snapshot__free_unpacked(d, NULL);
    return snprintf(err, err_len, "malformed delta"), 0;
  }
  dest_source src = {d, held, held_entries};
  int ok = decode(rest, rest_len, &src, out, err, err_len);
  mtlsd__mesh__v1__mesh_snapshot__free_unpacked(d, NULL);
  return ok;
}
