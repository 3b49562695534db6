#!/usr/bin/env bash
# Benchmarks (numbers, not pass/fail): CRL build time with 100,000 revoked entries and OCSP
# answers per second. Release build; takes a couple of minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v openssl >/dev/null 2>&1 || {
    sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq openssl
}
cargo bench --locked -p ca-server --bench revocation
