#!/usr/bin/env bash
# The main job on a fresh machine: build, create a development CA from policies/example.toml on
# the embedded SQLite store, issue a certificate for dev/api, and verify it with openssl.
# Everything lands in target/demo (recreated on each run).
set -euo pipefail
cd "$(dirname "$0")/.."

command -v openssl >/dev/null 2>&1 || {
    sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq openssl
}

cargo build --locked --bin ca-server
bin=target/debug/ca-server
demo=target/demo
rm -rf "$demo"
mkdir -p "$demo"

"$bin" init --data-dir "$demo/ca" --policy policies/example.toml --insecure-no-passphrase
"$bin" issue --data-dir "$demo/ca" --env dev --service api \
    --dns api.dev.svc.example.internal --ttl 1h --out "$demo/api"
openssl verify -CAfile "$demo/api/bundle.pem" -untrusted "$demo/api/chain.pem" "$demo/api/cert.pem"
"$bin" certs list --data-dir "$demo/ca"
echo "certificate, key and chain for dev/api are in $demo/api"
