#!/usr/bin/env bash
# Installs, from Debian's packages only, whatever mtlsd needs to build, test
# and run its demo. Idempotent and quiet when everything is already present.
set -euo pipefail

PACKAGES=(
  build-essential
  bazel-bootstrap
  android-libboringssl-dev
  libnghttp2-dev
  libprotobuf-c-dev
  protobuf-c-compiler
  libprotobuf-dev
  libev-dev
  libyaml-dev
  libjansson-dev
  libseccomp-dev
  googletest
  clang
  libclang-rt-14-dev
  libgtest-dev
  openssl
  curl
  iproute2
  iptables
  python3
  python3-pytest
  python3-yaml
  python3-grpcio
  python3-jwt
  python3-protobuf
  python3-cryptography
  python3-h2
  python3-prometheus-client
  python3-kubernetes
  yamllint
)

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ "${#missing[@]}" -eq 0 ]; then
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "install_deps: missing packages: ${missing[*]}" >&2
  echo "install_deps: run as root (or install them with apt-get) and retry" >&2
  exit 1
fi

echo "install_deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
