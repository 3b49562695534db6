#!/usr/bin/env bash
# The one test command: installs the system tools the tests drive (openssl, curl, nginx, pebble with
# pebble-challtestsrv as the ACME peer, certbot and lego as ACME clients, PostgreSQL's server without
# a system cluster), then runs every test of the workspace and a short fuzzing run. Exits non-zero on
# any failure.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v sqlite3 >/dev/null 2>&1 || need+=(sqlite3)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx-light)
{ command -v pebble && command -v pebble-challtestsrv; } >/dev/null 2>&1 || need+=(pebble)
# Real ACME clients driven against our ACME server (tests/e2e_acme_server.rs).
command -v certbot >/dev/null 2>&1 || need+=(certbot)
command -v lego >/dev/null 2>&1 || need+=(lego)
# PostgreSQL's server for the throwaway clusters of tests/support/postgres.rs (initdb in a temp dir).
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
# setpriv runs PostgreSQL as nobody when the tests run as root (it refuses to run as root).
command -v setpriv >/dev/null 2>&1 || need+=(util-linux)
if [ "${#need[@]}" -gt 0 ]; then
    echo "installing: ${need[*]}"
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    if [[ " ${need[*]} " == *" postgresql "* ]]; then
        # No system cluster: Debian would otherwise create and start "main" on port 5432.
        $sudo mkdir -p /etc/postgresql-common/createcluster.d
        echo "create_main_cluster = false" | $sudo tee /etc/postgresql-common/createcluster.d/00-no-main.conf >/dev/null
    fi
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}"
fi

# ring is the only crypto backend: no second TLS or crypto stack may sneak into the build.
if cargo tree --workspace -e normal --locked | grep -E 'aws-lc|openssl-sys|native-tls'; then
    echo "error: a second crypto stack is in the dependency tree (see above)" >&2
    exit 1
fi

cargo test --workspace --locked "$@"

# A few seconds of fuzzing per target on a scratch copy of the corpus (`cargo test` above already
# replayed every kept input); a crash fails the run and its input is kept in ca-server/fuzz/artifacts.
if [ "$#" -eq 0 ]; then
    scripts/fuzz.sh --no-grow "${FUZZ_SECONDS:-3}"
fi
