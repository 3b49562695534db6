#!/usr/bin/env bash
# The one test command: installs the system tools the tests drive (openssl, curl, nginx, and pebble with
# pebble-challtestsrv as the ACME peer), then runs every test of the workspace. Exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v sqlite3 >/dev/null 2>&1 || need+=(sqlite3)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx-light)
{ command -v pebble && command -v pebble-challtestsrv; } >/dev/null 2>&1 || need+=(pebble)
if [ "${#need[@]}" -gt 0 ]; then
    echo "installing: ${need[*]}"
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}"
fi

# ring is the only crypto backend: no second TLS or crypto stack may sneak into the build.
if cargo tree --workspace -e normal --locked | grep -E 'aws-lc|openssl-sys|native-tls'; then
    echo "error: a second crypto stack is in the dependency tree (see above)" >&2
    exit 1
fi

cargo test --workspace --locked "$@"
