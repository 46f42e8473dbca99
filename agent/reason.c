#include "agent/reason.h"

const char *mt_reason_str(mt_reason reason) {
  switch (reason) {
    case MT_REASON_OK: return "ok";
    case MT_REASON_POLICY_DENIED: return "policy_denied";
    case MT_REASON_UNKNOWN_TRUST_DOMAIN: return "unknown_trust_domain";
    case MT_REASON_CERT_EXPIRED: return "cert_expired";
    case MT_REASON_CERT_NOT_YET_VALID: return "cert_not_yet_valid";
    case MT_REASON_NO_CLIENT_CERT: return "no_client_cert";
    case MT_REASON_NO_URI_SAN: return "no_uri_san";
    case MT_REASON_MULTIPLE_URI_SANS: return "multiple_uri_sans";
    case MT_REASON_BAD_SPIFFE_ID: return "bad_spiffe_id";
    case MT_REASON_LEAF_IS_CA: return "leaf_is_ca";
    case MT_REASON_BAD_KEY_USAGE: return "bad_key_usage";
    case MT_REASON_UNKNOWN_CA: return "unknown_ca";
    case MT_REASON_BAD_CERT: return "bad_cert";
    case MT_REASON_UNEXPECTED_SERVER_ID: return "unexpected_server_id";
    case MT_REASON_PEER_DENIED: return "peer_denied";
    case MT_REASON_PEER_REJECTED_CERT: return "peer_rejected_cert";
    case MT_REASON_UNKNOWN_DESTINATION: return "unknown_destination";
    case MT_REASON_PLAINTEXT_ON_STRICT_PORT: return "plaintext_on_strict_port";
    case MT_REASON_HANDSHAKE_FAILED: return "handshake_failed";
    case MT_REASON_HANDSHAKE_TIMEOUT: return "handshake_timeout";
    case MT_REASON_CONNECT_FAILED: return "connect_failed";
    case MT_REASON_CONNECT_TIMEOUT: return "connect_timeout";
    case MT_REASON_IDLE_TIMEOUT: return "idle_timeout";
    case MT_REASON_NO_ORIGINAL_DST: return "no_original_dst";
    case MT_REASON_CONNECTION_LIMIT: return "connection_limit";
    case MT_REASON_NO_IDENTITY: return "no_identity";
    case MT_REASON_DOWNSTREAM_ERROR: return "downstream_error";
    case MT_REASON_UPSTREAM_ERROR: return "upstream_error";
    case MT_REASON_SHUTDOWN: return "shutdown";
    case MT_REASON_OUT_OF_MEMORY: return "out_of_memory";
    case MT_REASON_DESTINATION_UNRESOLVED: return "destination_unresolved";
    case MT_REASON_WEAK_KEY: return "weak_key";
    case MT_REASON_WEAK_SIGNATURE: return "weak_signature";
    case MT_REASON_SOURCE_LIMIT: return "source_limit";
    case MT_REASON_INTERNAL: return "internal_error";
  }
  return "internal_error";
}
