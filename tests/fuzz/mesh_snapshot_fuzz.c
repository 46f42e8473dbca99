/* libFuzzer target: mt_mesh_decode_snapshot on arbitrary bytes, i.e. a
 * MeshSnapshot from a broken or hostile control plane.
 *
 * Oracles, besides "never crashes" and "never leaks" (ASan/UBSan/LSan):
 *  - on failure the reason is a non-empty NUL-terminated string and the
 *    update holds nothing;
 *  - on success the update holds a mesh with a non-empty version, every
 *    trust bundle has a valid trust domain and at least one root, every
 *    workload entry has a valid SPIFFE ID, appears once, shares the
 *    snapshot's version and is what mt_mesh_update_for returns for it,
 *    every policy decides with a named rule, and every Service address's
 *    endpoints (re-read from the message) are stored as sent: IP:port of
 *    the address's family, an ID the address accepts, and the endpoint
 *    mt_mesh_choose_endpoint picks is one of them, in every workload view. */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent/mesh_snapshot.h"
#include "agent/policy.h"
#include "agent/svid.h"
#include "proto/mtlsd/mesh.pb-c.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void invariant(int ok, const char *what) {
  if (ok) return;
  fprintf(stderr, "invariant failed at mesh_snapshot_fuzz: %s\n", what);
  abort();
}

static void check_policy(const mt_mesh *mesh) {
  mt_decision d = mt_policy_decide(mt_mesh_policy(mesh), "spiffe://example.org/ns/a/sa/b", 8080);
  invariant(d.rule != NULL && d.rule[0] != '\0', "a decision without a rule name");
}

/* The endpoints of every destination of |msg| as |mesh| holds them. */
static void check_endpoints(const mt_mesh *mesh, const uint8_t *data, size_t size) {
  Mtlsd__Mesh__V1__MeshSnapshot *s = mtlsd__mesh__v1__mesh_snapshot__unpack(NULL, size, data);
  invariant(s != NULL, "accepted bytes that do not unpack");
  for (size_t i = 0; i < s->n_destinations; i++) {
    const Mtlsd__Mesh__V1__Destination *d = s->destinations[i];
    mt_sockaddr service;
    invariant(mt_sockaddr_parse(d->address, &service, 0), "accepted a bad address");
    const struct sockaddr *sa = (const struct sockaddr *)&service.addr;
    const mt_service_endpoint *eps = NULL;
    size_t n = mt_mesh_service_endpoints(mesh, sa, &eps);
    invariant(n == d->n_endpoints, "endpoints lost or invented");
    mt_expected_ids ids;
    invariant(n == 0 || mt_mesh_expected_ids(mesh, sa, &ids), "endpoints of an unknown address");
    for (size_t j = 0; j < n; j++) {
      const struct sockaddr *ea = (const struct sockaddr *)&eps[j].address.addr;
      invariant(ea->sa_family == sa->sa_family && mt_sockaddr_port(ea) != 0,
                "an endpoint that is not an IP:port of the address's family");
      invariant(strcmp(eps[j].spiffe_id, d->endpoints[j]->spiffe_id) == 0, "endpoint ID differs");
      invariant(mt_expected_ids_contain(&ids, eps[j].spiffe_id), "an endpoint ID not accepted");
    }
    const mt_service_endpoint *chosen = mt_mesh_choose_endpoint(mesh, sa, (uint64_t)size * 31);
    invariant(n == 0 ? chosen == NULL : chosen >= eps && chosen < eps + n,
              "chose something that is not an endpoint");
  }
  mtlsd__mesh__v1__mesh_snapshot__free_unpacked(s, NULL);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  mt_mesh_update u;
  char err[256];
  memset(err, 'x', sizeof(err));
  if (!mt_mesh_decode_snapshot(data, size, &u, err, sizeof(err))) {
    invariant(memchr(err, '\0', sizeof(err)) != NULL && err[0] != '\0', "empty reason");
    invariant(u.mesh == NULL && u.num_bundles == 0 && u.num_workloads == 0,
              "a refused snapshot left parts behind");
    return 0;
  }
  invariant(u.mesh != NULL && mt_mesh_version(u.mesh)[0] != '\0', "no mesh or no version");
  check_policy(u.mesh);
  check_endpoints(u.mesh, data, size);
  for (size_t i = 0; i < u.num_bundles; i++) {
    const char *td = u.bundles[i].trust_domain;
    invariant(mt_trust_domain_validate(td, strlen(td)) == MT_SPIFFE_OK, "invalid trust domain");
    invariant(sk_X509_num(u.bundles[i].roots) > 0, "a bundle without roots");
  }
  for (size_t i = 0; i < u.num_workloads; i++) {
    const mt_workload_mesh *w = &u.workloads[i];
    invariant(mt_spiffe_id_parse(w->spiffe_id, strlen(w->spiffe_id), NULL) == MT_SPIFFE_OK,
              "invalid workload SPIFFE ID");
    invariant(mt_mesh_update_for(&u, w->spiffe_id) == w->mesh, "workload entry not found");
    invariant(strcmp(mt_mesh_version(w->mesh), mt_mesh_version(u.mesh)) == 0, "version differs");
    check_policy(w->mesh);
    check_endpoints(w->mesh, data, size);
  }
  mt_mesh_update_clear(&u);
  return 0;
}
