/* identity_files: the certificate-file identity source.
 *
 * Reads the files named in the config (workload chain + key as PEM or DER, or
 * one PKCS#12 bundle; trust bundles as PEM or DER) into an identity snapshot,
 * and tells when any of them changed on disk so the agent can swap in a new
 * snapshot. Runs on the main thread only (file I/O never happens on a worker
 * loop). Key bytes read from disk are zeroed before their buffer is freed. */
#ifndef MT_IDENTITY_FILES_H
#define MT_IDENTITY_FILES_H

#include <stddef.h>
#include <stdint.h>

#include "agent/config.h"
#include "agent/identity.h"

#include <openssl/x509.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Loads a snapshot. Returns NULL with "path: what is wrong" in |err|. */
mt_identity *mt_identity_files_load(const mt_config *config, char *err, size_t err_len);

/* Reads one or more certificates (PEM, or concatenated DER) from |path|.
 * Returns NULL with "path: what is wrong" in |err|. */
STACK_OF(X509) * mt_identity_files_load_certs(const char *path, char *err, size_t err_len);

/* A cheap digest of the files' inode, size and mtime: equal stamps mean
 * nothing changed. Missing files hash as such (and fail to load later). */
uint64_t mt_identity_files_stamp(const mt_config *config);
/* The same stamp for one file (symlinks followed, so a Kubernetes ConfigMap
 * or Secret update, which swaps a symlink, changes it). */
uint64_t mt_file_stamp(const char *path);

#ifdef __cplusplus
}
#endif

#endif /* MT_IDENTITY_FILES_H */
