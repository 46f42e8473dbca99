/* workload_api_response: what a SPIFFE Workload API server (a SPIRE agent)
 * sends on FetchX509SVID and FetchX509Bundles (PROTOCOL.md 4), decoded and
 * checked for shape into BoringSSL objects.
 *
 * Pure: no I/O, no clock, no state. Every input is untrusted: lengths and
 * counts are bounded, DER is parsed with CBS, trust-domain keys are checked
 * against the SPIFFE rules, and any failure refuses the whole message with
 * a reason and a text naming what was wrong (never a partial result). What
 * needs the trust bundles or the clock (chain, dates, trust domain) is
 * checked later, by mt_identity_new, exactly as for any other source.
 *
 * Bundle map keys are trust-domain SPIFFE IDs ("spiffe://example.org");
 * a bare "example.org" is accepted too, as some servers send it. */
#ifndef MT_WORKLOAD_API_RESPONSE_H
#define MT_WORKLOAD_API_RESPONSE_H

#include <stddef.h>
#include <stdint.h>

#include <openssl/base.h>
#include <openssl/x509.h>

#include "agent/svid.h"

#ifdef __cplusplus
extern "C" {
#endif

enum {
  /* Largest response message taken off the stream (gRPC's own default is
   * 4 MiB; an SVID, its chain and a few hundred roots fit in far less). */
  MT_WLAPI_MAX_MESSAGE_BYTES = 1024 * 1024,
  MT_WLAPI_MAX_SVIDS = 64,         /* SVIDs in one X509SVIDResponse */
  MT_WLAPI_MAX_TRUST_DOMAINS = 64, /* bundles in one response */
  MT_WLAPI_MAX_CERTS = 64,         /* certificates in one DER list (chain or bundle) */
};

/* Why a message (or the stream) was not taken. Counted and logged by the
 * source; the last good identity stays in every case. */
typedef enum {
  MT_WLAPI_REFUSAL_UNAVAILABLE,         /* no socket, connection lost */
  MT_WLAPI_REFUSAL_TOO_LARGE,           /* a message over MT_WLAPI_MAX_MESSAGE_BYTES */
  MT_WLAPI_REFUSAL_ERROR_STATUS,        /* the server ended the call with an error status */
  MT_WLAPI_REFUSAL_MALFORMED,           /* undecodable protobuf, DER, key or map key */
  MT_WLAPI_REFUSAL_NO_SVID,             /* no SVID, or none for identity.spiffe_id */
  MT_WLAPI_REFUSAL_KEY_MISMATCH,        /* the private key is not the leaf's */
  MT_WLAPI_REFUSAL_INVALID_CERTIFICATE, /* fails the SVID checks (chain, trust domain, dates) */
  MT_WLAPI_REFUSAL_ROOT_REMOVED,        /* bundles that no longer verify the served SVID */
  MT_WLAPI_NUM_REFUSALS
} mt_wlapi_refusal;

const char *mt_wlapi_refusal_str(mt_wlapi_refusal refusal); /* "key_mismatch", ... */

/* The roots of one trust domain. */
typedef struct {
  char *trust_domain; /* "example.org" (never the spiffe:// form) */
  STACK_OF(X509) * roots;
} mt_wlapi_bundle;

typedef struct {
  mt_wlapi_bundle *items;
  size_t count;
} mt_wlapi_bundles;

void mt_wlapi_bundles_clear(mt_wlapi_bundles *bundles); /* frees the contents; reusable */

/* Sets (replacing) the roots of |trust_domain| to |roots| (borrowed; each
 * certificate gets a reference). Returns 1, or 0 when out of memory. */
int mt_wlapi_bundles_set(mt_wlapi_bundles *bundles, const char *trust_domain,
                         const STACK_OF(X509) * roots);

/* The roots of |trust_domain| (borrowed), or NULL. */
const STACK_OF(X509) *
    mt_wlapi_bundles_get(const mt_wlapi_bundles *bundles, const char *trust_domain);

/* 1 when |a| and |b| trust the same roots for the same trust domains
 * (order aside). */
int mt_wlapi_bundles_equal(const mt_wlapi_bundles *a, const mt_wlapi_bundles *b);

/* The trust two messages leave together: every trust domain either names,
 * with |newer|'s roots for a domain both name. Returns 1, or 0 when out of
 * memory (|out| then holds nothing). */
int mt_wlapi_bundles_merge(const mt_wlapi_bundles *older, const mt_wlapi_bundles *newer,
                           mt_wlapi_bundles *out);

/* A deep copy (certificates are shared by reference). 0 when out of memory. */
int mt_wlapi_bundles_copy(const mt_wlapi_bundles *from, mt_wlapi_bundles *to);

/* One X509SVIDResponse, reduced to the SVID the agent serves. */
typedef struct {
  char spiffe_id[MT_SPIFFE_ID_MAX_LEN + 1]; /* as the response names it */
  char trust_domain[MT_TRUST_DOMAIN_MAX_LEN + 1];
  EVP_PKEY *key;
  X509 *leaf;
  STACK_OF(X509) * intermediates; /* never NULL; may be empty */
  STACK_OF(X509) * bundle;        /* roots of |trust_domain|; NULL when the SVID carried none */
  mt_wlapi_bundles federated;     /* other trust domains */
} mt_wlapi_svid_update;

void mt_wlapi_svid_update_clear(mt_wlapi_svid_update *update); /* accepts a zeroed one */

/* Decodes an X509SVIDResponse and picks the SVID to serve: the one whose
 * spiffe_id is |want_id|, or the first when |want_id| is NULL. Checks that
 * the key (PKCS#8) is the leaf's. Key bytes copied out of the message are
 * wiped. Returns 1, or 0 with the reason in |why| and |err| (|update| then
 * holds nothing). */
int mt_wlapi_decode_svid_response(const uint8_t *msg, size_t len, const char *want_id,
                                  mt_wlapi_svid_update *update, mt_wlapi_refusal *why, char *err,
                                  size_t err_len);

/* Decodes an X509BundlesResponse: every trust domain's roots. Returns 1,
 * or 0 with the reason in |err| (always MT_WLAPI_REFUSAL_MALFORMED). */
int mt_wlapi_decode_bundles_response(const uint8_t *msg, size_t len, mt_wlapi_bundles *out,
                                     char *err, size_t err_len);

/* A bundle map key as a trust domain name: "spiffe://example.org" or
 * "example.org" -> "example.org" in |out| (MT_TRUST_DOMAIN_MAX_LEN + 1
 * bytes). 0 with the reason in |err| for anything else (a path, a bad
 * character, empty). */
int mt_wlapi_trust_domain_of_key(const char *key, char *out, size_t out_len, char *err,
                                 size_t err_len);

#ifdef __cplusplus
}
#endif

#endif /* MT_WORKLOAD_API_RESPONSE_H */
