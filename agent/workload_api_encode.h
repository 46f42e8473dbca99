/* workload_api_encode: the SPIFFE Workload API's answers, encoded: the
 * X.509 ones from an identity snapshot (identity.h), the JWT ones from
 * jwt_svid.h's results.
 *
 * Pure: no I/O, no state. X509SVIDResponse carries one SVID: the leaf and
 * its intermediates as concatenated DER (leaf first), the key as PKCS#8 DER
 * (only from a snapshot marked exportable: an application SVID, never the
 * agent's own), the roots of the SVID's trust domain as concatenated DER,
 * and every other trust domain's roots in federated_bundles keyed by the
 * trust domain's SPIFFE ID ("spiffe://example.org"). X509BundlesResponse
 * carries every trust domain's roots under the same keys. */
#ifndef MT_WORKLOAD_API_ENCODE_H
#define MT_WORKLOAD_API_ENCODE_H

#include <stddef.h>
#include <stdint.h>

#include "agent/identity.h"
#include "agent/jwt_bundles.h"
#include "google/protobuf/struct.pb-c.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Each returns 1 with a malloc'd message in |*out| (|*out_len| bytes; the
 * caller frees it: the SVID response holds a private key, so cleanse it
 * first), or 0 when out of memory or the key is not exportable. */
int mt_wl_encode_x509_svid(const mt_identity *svid, uint8_t **out, size_t *out_len);
int mt_wl_encode_x509_bundles(const mt_trust *trust, uint8_t **out, size_t *out_len);

/* JWTSVIDResponse with one JWT-SVID (a bearer token: cleanse it too). */
int mt_wl_encode_jwt_svid(const char *spiffe_id, const char *token, uint8_t **out, size_t *out_len);
/* JWTBundlesResponse: each bundle's JWKS as received, keyed by its trust
 * domain's SPIFFE ID. */
int mt_wl_encode_jwt_bundles(const mt_jwt_bundles *bundles, uint8_t **out, size_t *out_len);
/* ValidateJWTSVIDResponse (|claims| borrowed). */
int mt_wl_encode_validated(const char *spiffe_id, const Google__Protobuf__Struct *claims,
                           uint8_t **out, size_t *out_len);

#ifdef __cplusplus
}
#endif

#endif /* MT_WORKLOAD_API_ENCODE_H */
