/* svid: SPIFFE ID syntax and X509-SVID leaf rules. See svid.h. */
#include "agent/svid.h"

#include <openssl/bytestring.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <stdint.h>
#include <string.h>

static const char kMtSpiffeScheme[] = "spiffe://";
#define MT_SPIFFE_SCHEME_LEN (sizeof(kMtSpiffeScheme) - 1)

static int mt_is_lower_or_digit(uint8_t c) {
  return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
}

/* The spec's punctuation is the same in both parts of an ID: '.', '-', '_'. */
static int mt_is_spiffe_punct(uint8_t c) { return c == '.' || c == '-' || c == '_'; }

static int mt_is_trust_domain_char(uint8_t c) {
  return mt_is_lower_or_digit(c) || mt_is_spiffe_punct(c);
}

static int mt_is_path_char(uint8_t c) {
  return mt_is_lower_or_digit(c) || (c >= 'A' && c <= 'Z') || mt_is_spiffe_punct(c);
}

/* Length is checked before characters so that an over-long name is reported
 * as such, whatever it contains. */
static mt_spiffe_err mt_check_trust_domain(CBS td) {
  if (CBS_len(&td) == 0) {
    return MT_SPIFFE_EMPTY_TRUST_DOMAIN;
  }
  if (CBS_len(&td) > MT_TRUST_DOMAIN_MAX_LEN) {
    return MT_SPIFFE_TRUST_DOMAIN_TOO_LONG;
  }
  uint8_t c;
  while (CBS_get_u8(&td, &c)) {
    if (!mt_is_trust_domain_char(c)) {
      return MT_SPIFFE_BAD_TRUST_DOMAIN_CHAR;
    }
  }
  return MT_SPIFFE_OK;
}

/* "." and ".." would let a path be rewritten by a normalising consumer, so the
 * spec forbids them as whole segments (they are fine inside one: "a.b"). */
static int mt_is_dot_segment(const CBS *seg) {
  return CBS_mem_equal(seg, (const uint8_t *)".", 1) ||
         CBS_mem_equal(seg, (const uint8_t *)"..", 2);
}

static mt_spiffe_err mt_check_segment(CBS seg) {
  if (CBS_len(&seg) == 0) {
    return MT_SPIFFE_EMPTY_SEGMENT;
  }
  if (mt_is_dot_segment(&seg)) {
    return MT_SPIFFE_DOT_SEGMENT;
  }
  uint8_t c;
  while (CBS_get_u8(&seg, &c)) {
    if (!mt_is_path_char(c)) {
      return MT_SPIFFE_BAD_PATH_CHAR;
    }
  }
  return MT_SPIFFE_OK;
}

/* Splits |*in| at the first '/' (or its end) into |*out|; |*in| keeps the
 * rest, starting at the '/'. */
static void mt_cbs_take_until_slash(CBS *in, CBS *out) {
  if (!CBS_get_until_first(in, out, '/')) {
    /* No '/': the whole remainder is the piece. */
    *out = *in;
    CBS_init(in, CBS_data(in) + CBS_len(in), 0);
  }
}

/* |path| is "" or starts with '/'. Every '/' opens a segment, so a trailing
 * '/' yields an empty final segment and is refused as such. */
static mt_spiffe_err mt_check_path(CBS path) {
  while (CBS_len(&path) > 0) {
    CBS seg;
    CBS_skip(&path, 1); /* the '/' that opens this segment */
    mt_cbs_take_until_slash(&path, &seg);
    mt_spiffe_err err = mt_check_segment(seg);
    if (err != MT_SPIFFE_OK) {
      return err;
    }
  }
  return MT_SPIFFE_OK;
}

mt_spiffe_err mt_spiffe_id_parse(const char *id, size_t len, mt_spiffe_id_view *out) {
  if (id == NULL || len == 0) {
    return MT_SPIFFE_EMPTY;
  }
  if (len > MT_SPIFFE_ID_MAX_LEN) {
    return MT_SPIFFE_TOO_LONG;
  }
  CBS cbs, scheme, td;
  CBS_init(&cbs, (const uint8_t *)id, len);
  if (!CBS_get_bytes(&cbs, &scheme, MT_SPIFFE_SCHEME_LEN) ||
      !CBS_mem_equal(&scheme, (const uint8_t *)kMtSpiffeScheme, MT_SPIFFE_SCHEME_LEN)) {
    return MT_SPIFFE_BAD_SCHEME;
  }
  mt_cbs_take_until_slash(&cbs, &td);
  mt_spiffe_err err = mt_check_trust_domain(td);
  if (err == MT_SPIFFE_OK) {
    err = mt_check_path(cbs);
  }
  if (err == MT_SPIFFE_OK && out != NULL) {
    out->trust_domain = (const char *)CBS_data(&td);
    out->trust_domain_len = CBS_len(&td);
    /* An empty path points at a literal so callers never see a pointer one
     * past the caller's buffer. */
    out->path = CBS_len(&cbs) > 0 ? (const char *)CBS_data(&cbs) : "";
    out->path_len = CBS_len(&cbs);
  }
  return err;
}

mt_spiffe_err mt_trust_domain_validate(const char *td, size_t len) {
  CBS cbs;
  CBS_init(&cbs, (const uint8_t *)(td != NULL ? td : ""), td != NULL ? len : 0);
  return mt_check_trust_domain(cbs);
}

const char *mt_spiffe_err_str(mt_spiffe_err err) {
  switch (err) {
    case MT_SPIFFE_OK: return "valid SPIFFE ID";
    case MT_SPIFFE_EMPTY: return "SPIFFE ID is empty";
    case MT_SPIFFE_TOO_LONG: return "SPIFFE ID is longer than 2048 bytes";
    case MT_SPIFFE_BAD_SCHEME: return "SPIFFE ID does not start with \"spiffe://\"";
    case MT_SPIFFE_EMPTY_TRUST_DOMAIN: return "trust domain is empty";
    case MT_SPIFFE_TRUST_DOMAIN_TOO_LONG: return "trust domain is longer than 255 bytes";
    case MT_SPIFFE_BAD_TRUST_DOMAIN_CHAR: return "trust domain has a character outside [a-z0-9._-]";
    case MT_SPIFFE_EMPTY_SEGMENT: return "path has an empty segment (\"//\" or a trailing \"/\")";
    case MT_SPIFFE_DOT_SEGMENT: return "path has a \".\" or \"..\" segment";
    case MT_SPIFFE_BAD_PATH_CHAR: return "path has a character outside [A-Za-z0-9._-]";
  }
  return "unknown SPIFFE ID error";
}

const char *mt_svid_err_str(mt_svid_err err) {
  switch (err) {
    case MT_SVID_OK: return "valid X509-SVID leaf";
    case MT_SVID_NO_URI_SAN: return "certificate has no URI SAN";
    case MT_SVID_MULTIPLE_URI_SANS: return "certificate has more than one URI SAN";
    case MT_SVID_BAD_SPIFFE_ID: return "URI SAN is not a valid SPIFFE ID";
    case MT_SVID_LEAF_IS_CA: return "leaf certificate is a CA (basicConstraints cA=TRUE)";
    case MT_SVID_BAD_KEY_USAGE: return "keyUsage lacks digitalSignature or has keyCertSign/cRLSign";
    case MT_SVID_BAD_EXT_KEY_USAGE: return "extendedKeyUsage does not allow this TLS role";
    case MT_SVID_UNPARSABLE: return "certificate extensions could not be decoded";
  }
  return "unknown X509-SVID error";
}

/* The rules on basicConstraints, keyUsage and extendedKeyUsage, read from
 * BoringSSL's decoded extension cache. A malformed extension there marks the
 * whole certificate invalid rather than silently dropping the extension. */
static mt_svid_err mt_check_usage(X509 *leaf, mt_svid_role role) {
  uint32_t flags = X509_get_extension_flags(leaf);
  if (flags & EXFLAG_INVALID) {
    return MT_SVID_UNPARSABLE;
  }
  if ((flags & EXFLAG_BCONS) && (flags & EXFLAG_CA)) {
    return MT_SVID_LEAF_IS_CA;
  }
  if (flags & EXFLAG_KUSAGE) {
    uint32_t ku = X509_get_key_usage(leaf);
    if (!(ku & KU_DIGITAL_SIGNATURE) || (ku & (KU_KEY_CERT_SIGN | KU_CRL_SIGN))) {
      return MT_SVID_BAD_KEY_USAGE;
    }
  }
  if (flags & EXFLAG_XKUSAGE) {
    uint32_t xku = X509_get_extended_key_usage(leaf);
    uint32_t want = role == MT_SVID_ROLE_CLIENT ? XKU_SSL_CLIENT : XKU_SSL_SERVER;
    if (!(xku & (want | XKU_ANYEKU))) {
      return MT_SVID_BAD_EXT_KEY_USAGE;
    }
  }
  return MT_SVID_OK;
}

/* Finds the single URI SAN in |names|; other name types are ignored. */
static mt_svid_err mt_find_uri_san(const GENERAL_NAMES *names, const ASN1_IA5STRING **out) {
  size_t count = 0;
  for (size_t i = 0; i < sk_GENERAL_NAME_num(names); i++) {
    const GENERAL_NAME *name = sk_GENERAL_NAME_value(names, i);
    if (name->type == GEN_URI) {
      *out = name->d.uniformResourceIdentifier;
      count++;
    }
  }
  if (count == 0) {
    return MT_SVID_NO_URI_SAN;
  }
  return count == 1 ? MT_SVID_OK : MT_SVID_MULTIPLE_URI_SANS;
}

/* Validates the URI SAN as a SPIFFE ID and copies it out. The parser works on
 * the DER length, not on C-string length, so an embedded NUL is seen and
 * refused as a bad character instead of truncating the ID. */
static mt_svid_err mt_take_spiffe_id(const ASN1_IA5STRING *uri, char *out_id,
                                     mt_spiffe_err *out_id_err) {
  const char *data = (const char *)ASN1_STRING_get0_data(uri);
  int len = ASN1_STRING_length(uri);
  mt_spiffe_err id_err = len < 0 ? MT_SPIFFE_EMPTY : mt_spiffe_id_parse(data, (size_t)len, NULL);
  if (id_err != MT_SPIFFE_OK) {
    if (out_id_err != NULL) {
      *out_id_err = id_err;
    }
    return MT_SVID_BAD_SPIFFE_ID;
  }
  if (out_id != NULL) {
    memcpy(out_id, data, (size_t)len);
    out_id[len] = '\0';
  }
  return MT_SVID_OK;
}

static mt_svid_err mt_check_san(X509 *leaf, char *out_id, mt_spiffe_err *out_id_err) {
  int crit = -1;
  GENERAL_NAMES *names = X509_get_ext_d2i(leaf, NID_subject_alt_name, &crit, NULL);
  if (names == NULL) {
    /* -1 means "absent"; anything else is a malformed or duplicated SAN. */
    return crit == -1 ? MT_SVID_NO_URI_SAN : MT_SVID_UNPARSABLE;
  }
  const ASN1_IA5STRING *uri = NULL;
  mt_svid_err err = mt_find_uri_san(names, &uri);
  if (err == MT_SVID_OK) {
    err = mt_take_spiffe_id(uri, out_id, out_id_err);
  }
  GENERAL_NAMES_free(names);
  return err;
}

mt_svid_err mt_svid_check_leaf(X509 *leaf, mt_svid_role role, char *out_id, size_t out_size,
                               mt_spiffe_err *out_id_err) {
  if (out_id_err != NULL) {
    *out_id_err = MT_SPIFFE_OK;
  }
  /* Fail closed on a buffer that could not hold every valid ID: accepting
   * only the IDs that happen to fit would hide the bug until a long ID. */
  if (out_id != NULL) {
    if (out_size == 0) {
      return MT_SVID_UNPARSABLE;
    }
    out_id[0] = '\0';
    if (out_size < MT_SPIFFE_ID_MAX_LEN + 1) {
      return MT_SVID_UNPARSABLE;
    }
  }
  if (leaf == NULL) {
    return MT_SVID_UNPARSABLE;
  }
  mt_svid_err err = mt_check_usage(leaf, role);
  if (err != MT_SVID_OK) {
    return err;
  }
  return mt_check_san(leaf, out_id, out_id_err);
}
