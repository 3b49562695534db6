#!/usr/bin/env bash
# Try the PostgreSQL backend: a CA on a throwaway PostgreSQL cluster with three `ca-server serve`
# replicas sharing it, all on 127.0.0.1 and random ports. A development setup: CA keys are stored
# unencrypted (--insecure-no-passphrase) and PostgreSQL trusts every local connection. Everything
# (replicas, PostgreSQL, the temp dirs) is stopped and deleted on exit, Ctrl-C and errors alike.
#
#   scripts/cluster.sh                      runs until Ctrl-C
#   CLUSTER_SECONDS=60 scripts/cluster.sh   stops by itself after 60 s
#
# Installs PostgreSQL's server with apt-get if /usr/lib/postgresql/*/bin/initdb is missing (without
# creating a system cluster; an existing one is never touched) and builds ca-server (release).
# CLUSTER_REPLICAS (default 3) sets the number of replicas.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib/pg.sh disable=SC1091
. scripts/lib/pg.sh

seconds="${CLUSTER_SECONDS:-}"
replicas="${CLUSTER_REPLICAS:-3}"
[[ -z "$seconds" || "$seconds" =~ ^[0-9]+$ ]] || { echo "error: CLUSTER_SECONDS must be a number of seconds" >&2; exit 2; }
[[ "$replicas" =~ ^[1-9]$ ]] || { echo "error: CLUSTER_REPLICAS must be 1 to 9" >&2; exit 2; }
bin="$PWD/target/release/ca-server"

# Globals, for the EXIT trap (a function's `local` variables are gone by the time it runs).
work=""
replica_pids=()

cleanup() {
    local status=$?
    trap - EXIT INT TERM
    if [ "${#replica_pids[@]}" -gt 0 ]; then
        echo "stopping ${#replica_pids[@]} replica(s) and PostgreSQL" >&2
        local p _
        for p in "${replica_pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
        # Idle replicas stop at once; give in-flight requests up to 10 s, then kill.
        for _ in $(seq 1 100); do
            local alive=0
            for p in "${replica_pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
            [ "$alive" -eq 1 ] || break
            sleep 0.1
        done
        for p in "${replica_pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
        wait 2>/dev/null || true
    fi
    pg_stop
    [ -z "$work" ] || rm -rf "$work"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

echo "building ca-server (cargo build --release -p ca-server)" >&2
cargo build --release --locked -q -p ca-server --bin ca-server

work=$(mktemp -d "${TMPDIR:-/tmp}/ca-cluster-XXXXXX")
echo "starting a throwaway PostgreSQL cluster" >&2
pg_start
db_url=$(pg_create_db ca)

echo "creating the CA (ca-server init --insecure-no-passphrase: development only)" >&2
CA_LOG=error "$bin" init --database-url "$db_url" --policy policies/example.toml --insecure-no-passphrase \
    >"$work/init.out" 2>"$work/init.err" || { cat "$work/init.err" "$work/init.out" >&2; exit 1; }
CA_LOG=error "$bin" bundle --database-url "$db_url" --env dev >"$work/bundle.pem" 2>/dev/null

# The replicas share the database; scheduled jobs (CRL reissue, token pruning), here every
# minute, run on whichever replica claims the period first.
cat >"$work/serve.toml" <<'TOML'
crl_refresh = "0 * * * * *"
job_lease = "60s"

[database]
max_connections = 4
TOML

https_urls=()
http_urls=()
for i in $(seq 1 "$replicas"); do
    CA_LOG=info "$bin" serve --database-url "$db_url" --config "$work/serve.toml" \
        --listen 127.0.0.1:0 --http-listen 127.0.0.1:0 >"$work/replica-$i.out" 2>"$work/replica-$i.log" &
    replica_pids+=("$!")
done
for i in $(seq 1 "$replicas"); do
    pid=${replica_pids[$((i - 1))]}
    url=""
    for _ in $(seq 1 300); do
        url=$(sed -n 's/^listening on \(https:[^ ]*\).*$/\1/p' "$work/replica-$i.out" | head -n 1)
        [ -n "$url" ] && break
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if [ -z "$url" ]; then
        echo "error: replica $i did not start; its log:" >&2
        tail -n 20 "$work/replica-$i.log" >&2
        exit 1
    fi
    https_urls+=("$url")
    http_urls+=("$(sed -n 's/^listening on \(http:[^ ]*\).*$/\1/p' "$work/replica-$i.out" | head -n 1)")
    if command -v curl >/dev/null 2>&1; then
        curl -sf --max-time 5 --cacert "$work/bundle.pem" "$url/healthz" >/dev/null \
            || { echo "error: replica $i does not answer $url/healthz" >&2; exit 1; }
    fi
done

cat <<EOF

A CA on PostgreSQL with $replicas replicas is running. DEVELOPMENT SETUP: CA keys unencrypted
(--insecure-no-passphrase), PostgreSQL with trust authentication on 127.0.0.1, and everything
below is deleted when this script stops.

PostgreSQL:  $db_url
             (data and log in $PG_DIR)
EOF
for i in $(seq 1 "$replicas"); do
    printf 'replica %d:   %s   CRL/OCSP: %s   pid %s, log %s\n' "$i" "${https_urls[$((i - 1))]}" \
        "${http_urls[$((i - 1))]}" "${replica_pids[$((i - 1))]}" "$work/replica-$i.log"
done
fingerprint=$(sed -n 's/^Root SHA-256 fingerprint: //p' "$work/init.out")
cat <<EOF
root fingerprint: $fingerprint

Try, in another shell:
  export CA_DATABASE_URL=$db_url
  $bin token create --env dev --service api
  $bin certs list
EOF
for i in $(seq 1 "$replicas"); do
    echo "  curl --cacert $work/bundle.pem ${https_urls[$((i - 1))]}/healthz"
done
echo "  curl -so /dev/null -w '%{http_code}\\n' ${http_urls[0]}/crl/dev.crl"
cat <<EOF
  # a certificate through any replica (cargo build --profile agent -p ca-agent):
  $PWD/target/agent/ca-agent issue --server ${https_urls[0]} --root-fingerprint $fingerprint \\
      --token "\$($bin token create --env dev --service api 2>/dev/null)" \\
      --env dev --service api --dns api.dev.svc.example.internal --out /tmp/api-cert

EOF
if [ -n "$seconds" ]; then
    echo "running for $seconds s (CLUSTER_SECONDS); Ctrl-C stops earlier"
else
    echo "running until Ctrl-C (CLUSTER_SECONDS=N stops after N seconds)"
fi

start=$SECONDS
while [ -z "$seconds" ] || [ $((SECONDS - start)) -lt "$seconds" ]; do
    for i in $(seq 1 "$replicas"); do
        if ! kill -0 "${replica_pids[$((i - 1))]}" 2>/dev/null; then
            echo "error: replica $i exited; its log:" >&2
            tail -n 20 "$work/replica-$i.log" >&2
            exit 1
        fi
    done
    if [ -z "$(pg_postmaster_pid)" ] || ! kill -0 "$(pg_postmaster_pid)" 2>/dev/null; then
        echo "error: PostgreSQL exited" >&2
        exit 1
    fi
    sleep 1
done
echo "time is up (CLUSTER_SECONDS=$seconds)"
