#!/usr/bin/env bash
# mkpki.sh - development PKI for SPIFFE workloads (root -> intermediate -> leaves),
# plus deliberately broken certificates for tests (--bad).
#
# Needs only the openssl 3.x command line tool, coreutils and bash. No network.
# Everything it writes goes to the output directory (default certs/out, which is
# git-ignored). Private keys are unencrypted (this is a development PKI) and mode 600.
#
# See certs/README.md for the layout of the output directory.
set -euo pipefail

PROG=${0##*/}
SCRIPT_DIR=$(dirname -- "$(readlink -f -- "${BASH_SOURCE[0]}")")
REPO_ROOT=$(dirname -- "$SCRIPT_DIR")

usage() {
    cat <<EOF
usage: $PROG [--out DIR] [--trust-domain TD] [--validity-minutes N] [--bad] [--control-plane] WORKLOAD...

Creates (or reuses) a root CA and an intermediate CA in DIR and issues one X509-SVID
per WORKLOAD, signed by the intermediate.

  --out DIR               output directory (default: $REPO_ROOT/certs/out)
  --trust-domain TD       SPIFFE trust domain (default: example.org)
  --validity-minutes N    leaf lifetime in minutes (default: 60); the leaf's
                          notBefore is one minute in the past
  --bad                   also write the adversarial cases to DIR/bad/CASE/ (broken
                          or weak: RSA-1024, P-521, SHA-1 leaf or intermediate), and
                          strong non-default keys to DIR/strong/{rsa2048,p384}/
  --control-plane         also write what mtls-ca needs: DIR/control-plane/chain.pem
                          and key.pem (server SVID spiffe://TD/ns/mtls-system/sa/mtls-ca,
                          DNS SAN mtls-ca, signed by the intermediate, valid as long as
                          the CAs) and DIR/tokens/signer.key + signer.pub.pem (an ES256
                          P-256 key pair for signing test service-account tokens; kept
                          when it already exists)
  -h, --help              this text

WORKLOAD is NAME or NAME:NAMESPACE:SERVICEACCOUNT. A plain NAME means namespace
"default" and service account NAME. The SPIFFE ID is
spiffe://TD/ns/NAMESPACE/sa/SERVICEACCOUNT; files go to DIR/workloads/NAME/.

Re-running with the same --out keeps the existing root and intermediate, so new
leaves chain to the same root; the named leaves (and the bad cases) are re-issued.
EOF
}

die() {
    printf '%s: error: %s\n' "$PROG" "$*" >&2
    exit 1
}

# ---------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------
OUT="$REPO_ROOT/certs/out"
TD=example.org
VALIDITY_MIN=60
BAD=0
CONTROL_PLANE=0
WORKLOADS=()

while (($# > 0)); do
    case $1 in
    --out) (($# >= 2)) || die "--out needs a value"; OUT=$2; shift 2 ;;
    --out=*) OUT=${1#*=}; shift ;;
    --trust-domain) (($# >= 2)) || die "--trust-domain needs a value"; TD=$2; shift 2 ;;
    --trust-domain=*) TD=${1#*=}; shift ;;
    --validity-minutes) (($# >= 2)) || die "--validity-minutes needs a value"; VALIDITY_MIN=$2; shift 2 ;;
    --validity-minutes=*) VALIDITY_MIN=${1#*=}; shift ;;
    --bad) BAD=1; shift ;;
    --control-plane) CONTROL_PLANE=1; shift ;;
    -h | --help) usage; exit 0 ;;
    --) shift; WORKLOADS+=("$@"); break ;;
    -*) usage >&2; die "unknown option: $1" ;;
    *) WORKLOADS+=("$1"); shift ;;
    esac
done

[[ -n $OUT ]] || die "--out must not be empty"
# SPIFFE trust domain: lowercase letters, digits, '.', '-', '_' (no port, no userinfo).
[[ $TD =~ ^[a-z0-9._-]+$ ]] || die "invalid trust domain '$TD' (allowed: a-z 0-9 . - _)"
((${#TD} <= 255)) || die "trust domain longer than 255 bytes"
if ! [[ $VALIDITY_MIN =~ ^[0-9]{1,7}$ ]] || ((10#$VALIDITY_MIN == 0)); then
    die "--validity-minutes must be an integer from 1 to 9999999, got '$VALIDITY_MIN'"
fi
VALIDITY_MIN=$((10#$VALIDITY_MIN))
if ((${#WORKLOADS[@]} == 0 && BAD == 0 && CONTROL_PLANE == 0)); then
    usage >&2
    die "no WORKLOAD given"
fi

# A SPIFFE path segment: one or more of [A-Za-z0-9._-], but not "." or "..".
valid_segment() {
    [[ $1 =~ ^[A-Za-z0-9._-]+$ && $1 != . && $1 != .. ]]
}

# Parse every WORKLOAD up front so that a typo fails before anything is written.
W_NAMES=() W_IDS=()
declare -A SEEN=()
for spec in "${WORKLOADS[@]}"; do
    IFS=: read -r -a parts <<<"$spec"
    case ${#parts[@]} in
    1) name=${parts[0]} ns=default sa=${parts[0]} ;;
    3) name=${parts[0]} ns=${parts[1]} sa=${parts[2]} ;;
    *) die "bad WORKLOAD '$spec' (want NAME or NAME:NAMESPACE:SERVICEACCOUNT)" ;;
    esac
    [[ $spec != *: ]] || die "bad WORKLOAD '$spec' (empty field)"
    [[ $name =~ ^[A-Za-z0-9_-][A-Za-z0-9._-]*$ ]] ||
        die "bad workload name '$name' in '$spec' (allowed: A-Z a-z 0-9 . - _, not starting with '.')"
    valid_segment "$ns" || die "bad namespace '$ns' in '$spec'"
    valid_segment "$sa" || die "bad service account '$sa' in '$spec'"
    [[ -z ${SEEN[$name]:-} ]] || die "workload '$name' given twice"
    SEEN[$name]=1
    W_NAMES+=("$name")
    W_IDS+=("spiffe://$TD/ns/$ns/sa/$sa")
done

command -v openssl >/dev/null || die "openssl not found in PATH"

# ---------------------------------------------------------------------------
# Working area, dates, helpers
# ---------------------------------------------------------------------------
umask 022
mkdir -p -- "$OUT"
OUT=$(cd -- "$OUT" && pwd -P)

# Serialise concurrent runs on the same output directory (flock is in util-linux).
if command -v flock >/dev/null; then
    exec 9>"$OUT/.mkpki.lock"
    flock 9
fi

TMP=$(mktemp -d "${TMPDIR:-/tmp}/mkpki.XXXXXXXX")
trap 'rm -rf -- "$TMP"' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Use our own minimal config for every openssl command so that a local
# /etc/ssl/openssl.cnf or $OPENSSL_CONF cannot change the result.
mkdir "$TMP/newcerts"
: >"$TMP/index.txt"
cat >"$TMP/openssl.cnf" <<EOF
[ ca ]
default_ca = devca

[ devca ]
dir             = $TMP
database        = \$dir/index.txt
new_certs_dir   = \$dir/newcerts
rand_serial     = yes
default_md      = sha256
unique_subject  = no
copy_extensions = none
email_in_dn     = no
preserve        = yes
policy          = policy_any

[ policy_any ]
organizationName = optional
commonName       = supplied

[ req ]
distinguished_name = req_dn
prompt             = no

[ req_dn ]
CN = unused
EOF
export OPENSSL_CONF="$TMP/openssl.cnf"

NOW=$(date -u +%s)
# asn1date OFFSET_SECONDS -> YYYYMMDDHHMMSSZ relative to NOW (UTC)
asn1date() {
    date -u -d "@$((NOW + $1))" +%Y%m%d%H%M%SZ
}
CA_START=$(asn1date -60)
CA_END=$(asn1date $((365 * 24 * 3600)))
LEAF_START=$(asn1date -60)
LEAF_END=$(asn1date $((VALIDITY_MIN * 60)))

# run CMD... : run quietly, show openssl's output only when it fails.
run() {
    if ! "$@" >"$TMP/run.log" 2>&1; then
        cat "$TMP/run.log" >&2
        die "command failed: $*"
    fi
}

# Key type and signature digest of what is made next; only the adversarial
# cases change them (KEYSPEC=rsa:1024 bad_case ...).
KEYSPEC=ec:P-256
SIGN_MD=sha256

# genkey FILE : new key as KEYSPEC says (ec:CURVE or rsa:BITS), PKCS#8 PEM,
# mode 600 from the start.
genkey() {
    (
        umask 077
        case $KEYSPEC in
            ec:*) run openssl genpkey -algorithm EC -pkeyopt "ec_paramgen_curve:${KEYSPEC#ec:}" \
                -pkeyopt ec_param_enc:named_curve -out "$1" ;;
            rsa:*) run openssl genpkey -algorithm RSA -pkeyopt "rsa_keygen_bits:${KEYSPEC#rsa:}" \
                -out "$1" ;;
            *) die "internal: bad KEYSPEC $KEYSPEC" ;;
        esac
    )
    chmod 600 -- "$1"
}

# extfile FILE BASIC KEYUSAGE EKU SAN : write an extension section "ext".
# Empty EKU or SAN means the extension is left out.
extfile() {
    {
        echo "[ ext ]"
        echo "basicConstraints = critical, $2"
        echo "keyUsage = critical, $3"
        [[ -z $4 ]] || echo "extendedKeyUsage = $4"
        [[ -z $5 ]] || echo "subjectAltName = $5"
        echo "subjectKeyIdentifier = hash"
        echo "authorityKeyIdentifier = keyid:always"
    } >"$1"
}

# sign KEY SUBJECT EXTFILE START END OUTCERT ISSUERCERT ISSUERKEY
#   ISSUERCERT "-" means self-signed with KEY (ISSUERKEY is ignored).
sign() {
    local key=$1 subj=$2 ext=$3 start=$4 end=$5 out=$6 icert=$7 ikey=$8
    run openssl req -new -key "$key" -subj "$subj" -out "$TMP/req.csr"
    local issuer=(-cert "$icert" -keyfile "$ikey")
    [[ $icert != - ]] || issuer=(-selfsign -keyfile "$key")
    run openssl ca -batch -notext -preserveDN -md "$SIGN_MD" \
        "${issuer[@]}" -in "$TMP/req.csr" -out "$out" \
        -startdate "$start" -enddate "$end" -extfile "$ext" -extensions ext
}

# install_file SRC DST [MODE] : atomic replace (rename within DST's directory).
install_file() {
    local tmpdst
    tmpdst="$(dirname -- "$2")/.$(basename -- "$2").tmp.$$"
    cp -- "$1" "$tmpdst"
    chmod "${3:-644}" -- "$tmpdst"
    mv -f -- "$tmpdst" "$2"
}

# san_uris CERT : print the URI SANs of CERT, one per line.
san_uris() {
    openssl x509 -in "$1" -noout -ext subjectAltName 2>/dev/null |
        tr ',' '\n' | sed -n 's/^[[:space:]]*URI://p'
}

CA_SAN="URI:spiffe://$TD"
CA_BASIC="CA:TRUE"
CA_KU="keyCertSign, cRLSign"
LEAF_BASIC="CA:FALSE"
LEAF_KU="digitalSignature, keyEncipherment"
LEAF_EKU="serverAuth, clientAuth"
ROOT_SUBJ="/O=mtlsd development/CN=mtlsd dev root $TD"
INT_SUBJ="/O=mtlsd development/CN=mtlsd dev intermediate $TD"

# make_root KEY CERT : new self-signed root CA.
make_root() {
    genkey "$1"
    extfile "$TMP/root.ext" "$CA_BASIC" "$CA_KU" "" "$CA_SAN"
    sign "$1" "$ROOT_SUBJ" "$TMP/root.ext" "$CA_START" "$CA_END" "$2" - -
}
# make_intermediate KEY CERT ROOTCERT ROOTKEY : new intermediate CA (pathlen 0).
make_intermediate() {
    genkey "$1"
    extfile "$TMP/int.ext" "$CA_BASIC, pathlen:0" "$CA_KU" "" "$CA_SAN"
    sign "$1" "$INT_SUBJ" "$TMP/int.ext" "$CA_START" "$CA_END" "$2" "$3" "$4"
}

# ---------------------------------------------------------------------------
# Root and intermediate (reused when present)
# ---------------------------------------------------------------------------
ROOT_PEM=$OUT/root.pem ROOT_KEY=$OUT/root.key
INT_PEM=$OUT/intermediate.pem INT_KEY=$OUT/intermediate.key

# check_ca CERT WHAT : an existing CA certificate must be for TD and still valid.
check_ca() {
    local uris
    uris=$(san_uris "$1") || true
    [[ $uris == "spiffe://$TD" ]] ||
        die "existing $2 $1 is for '${uris:-no SPIFFE ID}', not spiffe://$TD; use another --out or delete $OUT"
    openssl x509 -in "$1" -noout -checkend 0 >/dev/null ||
        die "existing $2 $1 has expired; delete $OUT and run again"
}

new_root=0
if [[ -s $ROOT_PEM && -s $ROOT_KEY ]]; then
    check_ca "$ROOT_PEM" "root"
    echo "reusing root CA $ROOT_PEM"
else
    make_root "$TMP/root.key" "$TMP/root.pem"
    install_file "$TMP/root.key" "$ROOT_KEY" 600
    install_file "$TMP/root.pem" "$ROOT_PEM"
    new_root=1
    echo "created root CA $ROOT_PEM"
fi

if ((new_root == 0)) && [[ -s $INT_PEM && -s $INT_KEY ]]; then
    check_ca "$INT_PEM" "intermediate"
    openssl verify -CAfile "$ROOT_PEM" "$INT_PEM" >/dev/null 2>&1 ||
        die "existing $INT_PEM does not verify against $ROOT_PEM; delete $OUT and run again"
    echo "reusing intermediate CA $INT_PEM"
else
    make_intermediate "$TMP/int.key" "$TMP/int.pem" "$ROOT_PEM" "$ROOT_KEY"
    install_file "$TMP/int.key" "$INT_KEY" 600
    install_file "$TMP/int.pem" "$INT_PEM"
    echo "created intermediate CA $INT_PEM"
fi

install_file "$ROOT_PEM" "$OUT/bundle.pem"
run openssl x509 -in "$ROOT_PEM" -outform DER -out "$TMP/bundle.der"
install_file "$TMP/bundle.der" "$OUT/bundle.der"

# ---------------------------------------------------------------------------
# Leaves
# ---------------------------------------------------------------------------
# issue KEY CERT CN SAN BASIC KU EKU START END [ISSUERCERT ISSUERKEY]
issue() {
    local icert=${10:-$INT_PEM} ikey=${11:-$INT_KEY}
    genkey "$1"
    extfile "$TMP/leaf.ext" "$5" "$6" "$7" "$4"
    sign "$1" "/CN=$3" "$TMP/leaf.ext" "$8" "$9" "$2" "$icert" "$ikey"
}

for i in "${!W_NAMES[@]}"; do
    name=${W_NAMES[$i]} id=${W_IDS[$i]}
    dir=$OUT/workloads/$name
    stage=$TMP/w
    rm -rf -- "$stage"
    mkdir -p -- "$stage" "$dir"
    issue "$stage/key.pem" "$stage/cert.pem" "$name" "URI:$id" \
        "$LEAF_BASIC" "$LEAF_KU" "$LEAF_EKU" "$LEAF_START" "$LEAF_END"
    cat "$stage/cert.pem" "$INT_PEM" >"$stage/chain.pem"
    run openssl x509 -in "$stage/cert.pem" -outform DER -out "$stage/cert.der"
    (umask 077 && run openssl pkcs8 -topk8 -nocrypt -in "$stage/key.pem" \
        -outform DER -out "$stage/key.der")
    (umask 077 && openssl rand -hex 16 >"$stage/id.p12.pass")
    # AES-256-CBC PBES2 (PBKDF2/HMAC-SHA256) for key and certs, SHA-256 MAC:
    # read by OpenSSL 3 and by BoringSSL's PKCS12_get_key_and_certs.
    (umask 077 && run openssl pkcs12 -export -name "$name" \
        -inkey "$stage/key.pem" -in "$stage/cert.pem" -certfile "$INT_PEM" \
        -keypbe AES-256-CBC -certpbe AES-256-CBC -macalg sha256 \
        -passout "file:$stage/id.p12.pass" -out "$stage/id.p12")
    printf '%s\n' "$id" >"$stage/spiffe_id"
    # Public files first, key material last; every file is replaced by a rename.
    for f in cert.pem cert.der chain.pem spiffe_id; do
        install_file "$stage/$f" "$dir/$f"
    done
    for f in key.der id.p12.pass id.p12 key.pem; do
        install_file "$stage/$f" "$dir/$f" 600
    done
    echo "issued $id -> $dir"
done

# ---------------------------------------------------------------------------
# Adversarial cases (--bad)
# ---------------------------------------------------------------------------
# bad_case CASE SPIFFE_ID_FILE_TEXT SAN BASIC KU START END [ISSUERCERT ISSUERKEY [CHAIN_TAIL]]
bad_case() {
    local case=$1 idtext=$2 san=$3 basic=$4 ku=$5 start=$6 end=$7
    local icert=${8:-$INT_PEM} ikey=${9:-$INT_KEY} tail=${10:-$INT_PEM}
    local dir=$OUT/${CASE_ROOT:-bad}/$case stage=$TMP/b
    rm -rf -- "$stage"
    mkdir -p -- "$stage" "$dir"
    issue "$stage/key.pem" "$stage/cert.pem" "bad-${case#bad-}" "$san" \
        "$basic" "$ku" "$LEAF_EKU" "$start" "$end" "$icert" "$ikey"
    cat "$stage/cert.pem" "$tail" >"$stage/chain.pem"
    printf '%s\n' "$idtext" >"$stage/spiffe_id"
    install_file "$stage/cert.pem" "$dir/cert.pem"
    install_file "$stage/chain.pem" "$dir/chain.pem"
    install_file "$stage/spiffe_id" "$dir/spiffe_id"
    install_file "$stage/key.pem" "$dir/key.pem" 600
    echo "bad case $case -> $dir"
}

if ((BAD)); then
    base=spiffe://$TD/ns/default/sa
    bad_case expired "$base/expired" "URI:$base/expired" \
        "$LEAF_BASIC" "$LEAF_KU" "$(asn1date -7200)" "$(asn1date -3600)"
    bad_case notyetvalid "$base/notyetvalid" "URI:$base/notyetvalid" \
        "$LEAF_BASIC" "$LEAF_KU" "$(asn1date 3600)" "$(asn1date 7200)"
    bad_case two-uri "$base/bad-a" "URI:$base/bad-a, URI:$base/bad-b" \
        "$LEAF_BASIC" "$LEAF_KU" "$LEAF_START" "$LEAF_END"
    bad_case no-uri none "DNS:bad.example" \
        "$LEAF_BASIC" "$LEAF_KU" "$LEAF_START" "$LEAF_END"
    bad_case ca-leaf "$base/ca-leaf" "URI:$base/ca-leaf" \
        "CA:TRUE" "digitalSignature, keyCertSign" "$LEAF_START" "$LEAF_END"
    bad_case other-td "spiffe://other.org/ns/default/sa/intruder" \
        "URI:spiffe://other.org/ns/default/sa/intruder" \
        "$LEAF_BASIC" "$LEAF_KU" "$LEAF_START" "$LEAF_END"
    bad_case bad-keyusage "$base/bad-keyusage" "URI:$base/bad-keyusage" \
        "$LEAF_BASIC" "keyCertSign" "$LEAF_START" "$LEAF_END"
    bad_case bad-spiffe-id "spiffe://$TD/ns//sa/x" "URI:spiffe://$TD/ns//sa/x" \
        "$LEAF_BASIC" "$LEAF_KU" "$LEAF_START" "$LEAF_END"

    # unknown-root: an impostor root and intermediate with the same names and
    # SPIFFE IDs as ours but other keys, issuing the ID of a legitimate workload.
    # Only the impostor root certificate is kept; its keys die with $TMP.
    make_root "$TMP/evil-root.key" "$TMP/evil-root.pem"
    make_intermediate "$TMP/evil-int.key" "$TMP/evil-int.pem" \
        "$TMP/evil-root.pem" "$TMP/evil-root.key"
    bad_case unknown-root "$base/frontend" "URI:$base/frontend" \
        "$LEAF_BASIC" "$LEAF_KU" "$LEAF_START" "$LEAF_END" \
        "$TMP/evil-int.pem" "$TMP/evil-int.key" "$TMP/evil-int.pem"
    install_file "$TMP/evil-root.pem" "$OUT/bad/unknown-root/root.pem"

    # Weak cryptography in an otherwise valid chain of our CA (the agent
    # refuses it as weak_key / weak_signature).
    KEYSPEC=rsa:1024 bad_case weak-rsa "$base/weak-rsa" "URI:$base/weak-rsa" \
        "$LEAF_BASIC" "$LEAF_KU" "$LEAF_START" "$LEAF_END"
    KEYSPEC=ec:P-521 bad_case p521 "$base/p521" "URI:$base/p521" \
        "$LEAF_BASIC" "$LEAF_KU" "$LEAF_START" "$LEAF_END"
    SIGN_MD=sha1 bad_case sha1-leaf "$base/sha1-leaf" "URI:$base/sha1-leaf" \
        "$LEAF_BASIC" "$LEAF_KU" "$LEAF_START" "$LEAF_END"
    # An intermediate of our root signed with SHA-1 (its own key is fine).
    genkey "$TMP/sha1-int.key"
    extfile "$TMP/int.ext" "$CA_BASIC, pathlen:0" "$CA_KU" "" "$CA_SAN"
    SIGN_MD=sha1 sign "$TMP/sha1-int.key" "/O=mtlsd development/CN=mtlsd dev SHA-1 intermediate $TD" \
        "$TMP/int.ext" "$CA_START" "$CA_END" "$TMP/sha1-int.pem" "$ROOT_PEM" "$ROOT_KEY"
    bad_case sha1-intermediate "$base/sha1-intermediate" "URI:$base/sha1-intermediate" \
        "$LEAF_BASIC" "$LEAF_KU" "$LEAF_START" "$LEAF_END" \
        "$TMP/sha1-int.pem" "$TMP/sha1-int.key" "$TMP/sha1-int.pem"

    # The strong alternatives to P-256, in DIR/strong/CASE/, are accepted
    # (their IDs are frontend's, so a policy that admits frontend admits them).
    CASE_ROOT=strong KEYSPEC=rsa:2048 bad_case rsa2048 "$base/frontend" "URI:$base/frontend" \
        "$LEAF_BASIC" "$LEAF_KU" "$LEAF_START" "$LEAF_END"
    CASE_ROOT=strong KEYSPEC=ec:P-384 bad_case p384 "$base/frontend" "URI:$base/frontend" \
        "$LEAF_BASIC" "$LEAF_KU" "$LEAF_START" "$LEAF_END"
fi

# ---------------------------------------------------------------------------
# Control plane (--control-plane): mtls-ca's server SVID and a token signer
# ---------------------------------------------------------------------------
if ((CONTROL_PLANE)); then
    cp_id=spiffe://$TD/ns/mtls-system/sa/mtls-ca
    dir=$OUT/control-plane stage=$TMP/cp
    rm -rf -- "$stage"
    mkdir -p -- "$stage" "$dir"
    # A long-running server: it lives as long as the intermediate (which may
    # be an older, reused one), not as the leaves.
    int_end=$(openssl x509 -in "$INT_PEM" -noout -enddate) || die "cannot read $INT_PEM"
    int_end=$(date -u -d "${int_end#notAfter=}" +%s) || die "cannot parse the end date of $INT_PEM"
    cp_end=$(date -u -d "@$int_end" +%Y%m%d%H%M%SZ)
    issue "$stage/key.pem" "$stage/cert.pem" mtls-ca "URI:$cp_id, DNS:mtls-ca" \
        "$LEAF_BASIC" "$LEAF_KU" "$LEAF_EKU" "$LEAF_START" "$cp_end"
    cat "$stage/cert.pem" "$INT_PEM" >"$stage/chain.pem"
    printf '%s\n' "$cp_id" >"$stage/spiffe_id"
    for f in cert.pem chain.pem spiffe_id; do
        install_file "$stage/$f" "$dir/$f"
    done
    install_file "$stage/key.pem" "$dir/key.pem" 600
    echo "issued $cp_id -> $dir"

    # Reused when present, so tokens minted earlier stay valid.
    tdir=$OUT/tokens
    mkdir -p -- "$tdir"
    if [[ -s $tdir/signer.key ]]; then
        echo "reusing token signer $tdir/signer.key"
    else
        genkey "$TMP/signer.key"
        install_file "$TMP/signer.key" "$tdir/signer.key" 600
        echo "created token signer $tdir/signer.key"
    fi
    run openssl pkey -in "$tdir/signer.key" -pubout -out "$TMP/signer.pub.pem"
    install_file "$TMP/signer.pub.pem" "$tdir/signer.pub.pem"
fi

echo "done: $OUT (trust domain $TD)"
