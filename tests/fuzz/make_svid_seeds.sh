#!/usr/bin/env bash
# Regenerates the DER certificate seeds in tests/fuzz/seeds/svid/ with the
# openssl command line tool: self-signed EC P-256 certificates covering each
# X509-SVID leaf rule (valid leaves for both roles, CA leaf, bad keyUsage,
# client-only EKU, anyExtendedKeyUsage, no / two URI SANs, bad SPIFFE ID).
# Keys live in a temporary directory and are thrown away: only certificates
# are written to the seeds folder. Not run by run.sh; the seeds are committed.
set -euo pipefail
DIR=$(cd "$(dirname "$0")" && pwd)/seeds/svid
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
mkdir -p "$DIR"
export OPENSSL_CONF="$TMP/openssl.cnf"

# cert NAME "extension lines..."
cert() {
  local name=$1 ext=$2
  {
    echo "[ req ]"
    echo "distinguished_name = dn"
    echo "prompt = no"
    echo "[ dn ]"
    echo "CN = $name"
    echo "[ ext ]"
    printf '%b\n' "$ext"
  } >"$OPENSSL_CONF"
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$TMP/key.pem" 2>/dev/null
  openssl req -new -x509 -key "$TMP/key.pem" -days 3650 -sha256 -extensions ext \
    -outform DER -out "$DIR/$name.der"
}

ID=spiffe://example.org/ns/default/sa/frontend
LEAF="basicConstraints = critical, CA:FALSE\nkeyUsage = critical, digitalSignature"
cert leaf_both_roles "$LEAF\nextendedKeyUsage = serverAuth, clientAuth\nsubjectAltName = critical, URI:$ID"
cert leaf_client_only "$LEAF\nextendedKeyUsage = clientAuth\nsubjectAltName = URI:$ID"
cert leaf_no_eku "$LEAF\nsubjectAltName = URI:spiffe://example.org"
cert leaf_any_eku "$LEAF\nextendedKeyUsage = anyExtendedKeyUsage\nsubjectAltName = URI:$ID, DNS:frontend.example.org"
cert leaf_minimal "subjectAltName = URI:spiffe://td/p"
cert ca_leaf "basicConstraints = critical, CA:TRUE\nkeyUsage = critical, digitalSignature, keyCertSign, cRLSign\nsubjectAltName = URI:spiffe://example.org"
cert bad_key_usage "basicConstraints = CA:FALSE\nkeyUsage = keyEncipherment\nsubjectAltName = URI:$ID"
cert two_uri_sans "$LEAF\nsubjectAltName = URI:$ID, URI:spiffe://example.org/other"
cert dns_san_only "$LEAF\nsubjectAltName = DNS:frontend.example.org"
cert no_extensions "subjectKeyIdentifier = hash"
cert bad_spiffe_id "$LEAF\nsubjectAltName = URI:spiffe://Example.org/ns//x"
