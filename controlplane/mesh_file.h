/* mesh_file: the mesh configuration mtls-ca streams to agents (trust
 * bundles, inbound policy, per-workload inbound policies, destination
 * identities), read from a YAML file
 * and the PEM root files it names, validated as strictly as the agent
 * validates the same values, and encoded once as a MeshSnapshot message
 * (proto/mtlsd/mesh.proto) without a version.
 *
 * Relative paths in the file are taken from the file's own directory.
 * Errors read "file:line: what is wrong". A loaded value is immutable. */
#ifndef MT_CP_MESH_FILE_H
#define MT_CP_MESH_FILE_H

#include <stddef.h>
#include <stdint.h>

#include "proto/mtlsd/mesh.pb-c.h"

#ifdef __cplusplus
extern "C" {
#endif

enum {
  MT_MESH_DIGEST_LEN = 32,     /* SHA-256 */
  MT_MESH_MAX_RULE_PORTS = 64, /* as the agent's config */
  MT_MESH_MAX_RULE_MATCHERS = 64,
  MT_MESH_MAX_ROOTS_FILES = 64, /* per trust bundle */
  /* Largest encoded snapshot: an agent's gRPC message limit (4 MiB) less
   * room for the version string and framing. */
  MT_MESH_SNAPSHOT_MAX_BYTES = 4 * 1024 * 1024 - 4096,
};

typedef struct mt_mesh_file mt_mesh_file;

/* Parses |path|. |own_trust_domain| (may be NULL) must have a bundle: an
 * agent replaces its bundles with the snapshot's, so leaving out the mesh's
 * own domain would cut every agent off. It is also the domain every
 * workload_policies entry must name an identity in (when NULL, any valid
 * SPIFFE ID with a path will do). Returns NULL with the reason in |err|. */
mt_mesh_file *mt_mesh_file_load(const char *path, const char *own_trust_domain, char *err,
                                size_t err_len);
void mt_mesh_file_free(mt_mesh_file *mesh); /* accepts NULL */

/* The snapshot content, encoded with an empty version. Borrowed. */
const uint8_t *mt_mesh_file_content(const mt_mesh_file *mesh, size_t *len);

/* SHA-256 of the content: equal digests mean nothing an agent sees changed. */
const uint8_t *mt_mesh_file_digest(const mt_mesh_file *mesh);

/* The parsed content as a protobuf-c message (version empty): borrowed,
 * immutable, valid while |mesh| lives. For builders that combine it with
 * other sources (mesh_view.h) without parsing the content again. */
const Mtlsd__Mesh__V1__MeshSnapshot *mt_mesh_file_message(const mt_mesh_file *mesh);

/* The files the content was built from (the YAML file, then every roots
 * file), for change detection. Borrowed. */
size_t mt_mesh_file_sources(const mt_mesh_file *mesh, const char *const **paths);

/* The encoded snapshot with |version| set: malloc'd, length in |*len|.
 * NULL when out of memory. */
uint8_t *mt_mesh_file_encode(const mt_mesh_file *mesh, const char *version, size_t *len);

#ifdef __cplusplus
}
#endif

#endif /* MT_CP_MESH_FILE_H */
