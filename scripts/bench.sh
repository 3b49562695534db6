#!/usr/bin/env bash
# Benchmarks: numbers, never pass/fail. Release builds; everything on 127.0.0.1, bounded in time,
# and every process started here is stopped on exit.
#
#   scripts/bench.sh              revocation: CRL with 100,000 entries, OCSP answers per second
#   scripts/bench.sh issuance     durable issuance beside cfssl in the same run (about 5 minutes):
#                                 enroll (CI token), renew over mTLS with keep-alive, renew with a
#                                 new TLS connection each time; concurrency 1, 8, 32
#   scripts/bench.sh footprint    ca-agent idle RSS, ca-server RSS with 10,000 idle TLS connections,
#                                 `ca-agent issue` wall time, ca-server start time with 1,000,000
#                                 stored certificates (about 2 minutes)
#   scripts/bench.sh postgres     enroll (CI token) on SQLite (one server) beside PostgreSQL with one
#                                 and with three replicas sharing a throwaway cluster (the load
#                                 spread over the three); concurrency 8, 32 (about 3 minutes)
#   scripts/bench.sh all          all of them
#
# BENCH_SECONDS (default 10) is the length of one measured run; BENCH_ROUNDS (default 2) how many
# interleaved runs of each contender are taken per concurrency (the median is reported);
# BENCH_PROFILE=FILE also records a perf profile of the server (enroll, concurrency 8) and prints it.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib/pg.sh disable=SC1091
. scripts/lib/pg.sh
what="${1:-revocation}"

install_missing() {
    local need=()
    for pair in "$@"; do
        command -v "${pair%%:*}" >/dev/null 2>&1 || need+=("${pair##*:}")
    done
    if [ "${#need[@]}" -gt 0 ]; then
        local sudo=""
        [ "$(id -u)" -eq 0 ] || sudo="sudo"
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}"
    fi
}

# A temp dir ($tmp) and the processes started in it ($pids), both cleaned up when the calling
# subshell exits, and the throwaway PostgreSQL cluster if pg_start made one (after the servers).
scratch() {
    tmp=$(mktemp -d)
    pids=()
    trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; pg_stop; rm -rf "$tmp"' EXIT
}

# Starts `ca-server serve` on data dir or postgres:// URL $1 (stdout to $2, its pid in $2.pid;
# further arguments go to serve) and prints its URL once it listens.
start_server() {
    local where=(--data-dir "$1")
    [[ "$1" == postgres://* ]] && where=(--database-url "$1")
    CA_LOG=error target/release/ca-server serve "${where[@]}" --listen 127.0.0.1:0 "${@:3}" > "$2" 2>/dev/null &
    echo $! > "$2.pid"
    for _ in $(seq 1 200); do
        local url
        url=$(sed -n 's/^listening on \(https:.*\)$/\1/p' "$2" | head -1)
        [ -n "$url" ] && { echo "$url"; return; }
        sleep 0.05
    done
    echo "error: ca-server did not start" >&2
    exit 1
}

revocation() {
    install_missing openssl:openssl
    cargo bench --locked -p ca-server --bench revocation
}

# Builds bench binary $1 of ca-server/benches/ (default: the load generator, issuance_load) and
# prints its path.
load_generator() {
    local name="${1:-issuance_load}" load
    load=$(cargo bench --locked -p ca-server --bench "$name" --no-run --message-format=json 2>/dev/null \
        | grep -o "\"executable\":\"[^\"]*$name[^\"]*\"" | tail -1 | cut -d'"' -f4)
    [ -x "$load" ] || { echo "error: $name did not build" >&2; exit 1; }
    echo "$load"
}

# The block device holding directory $1, for its flush counter (empty if unknown).
block_device() {
    local src disk
    src=$(df --output=source "$1" | tail -1)
    disk=$(basename "$src")
    [ -e "/sys/block/$disk/stat" ] || disk=$(lsblk -no pkname "$src" 2>/dev/null | head -1)
    [ -e "/sys/block/$disk/stat" ] || disk=""
    echo "$disk"
}

issuance() {
    install_missing openssl:openssl curl:curl sqlite3:sqlite3 cfssl:golang-cfssl python3:python3
    local seconds="${BENCH_SECONDS:-10}" rounds="${BENCH_ROUNDS:-2}"
    cargo build --release --locked -p ca-server --bin ca-server
    local load
    load=$(load_generator)
    local bin=target/release/ca-server
    scratch

    # Which block device holds the databases, for its flush counter.
    local disk
    disk=$(block_device "$tmp")

    # Ours: SQLite (WAL, synchronous=FULL), CI token with room for the whole run.
    sed -e 's/^max_uses = .*/max_uses = 100000000/' policies/example.toml > "$tmp/policy.toml"
    CA_LOG=error $bin init --data-dir "$tmp/ca" --policy "$tmp/policy.toml" --insecure-no-passphrase >/dev/null 2>&1
    local ca=(--data-dir "$tmp/ca")
    local token
    token=$(CA_LOG=error $bin token create "${ca[@]}" --env ci --service api --uses 100000000 --ttl 24h 2>/dev/null)
    $bin bundle "${ca[@]}" --env ci > "$tmp/bundle.pem" 2>/dev/null
    $bin issue "${ca[@]}" --env ci --service api --dns api.ci.svc.example.internal --ttl 2h --out "$tmp/client" >/dev/null 2>&1
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$tmp/req.key" \
        -out "$tmp/req.csr" -subj /CN=api >/dev/null 2>&1
    local url ours_pid
    url=$(start_server "$tmp/ca" "$tmp/serve.out")
    ours_pid=$(cat "$tmp/serve.out.pid")
    pids+=("$ours_pid")

    # cfssl 1.2: its own P-256 CA, `serve` with a SQLite certdb in WAL mode with synchronous=FULL,
    # as ours. The Go SQLite driver defaults to synchronous=NORMAL (no flush per commit: a power
    # loss can lose certificates it already handed out), so the DSN asks for FULL explicitly.
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$tmp/cfssl-ca-key.pem" \
        -out "$tmp/cfssl-ca.pem" -subj "/CN=cfssl bench CA" -days 2 >/dev/null 2>&1
    cat > "$tmp/cfssl.json" <<'JSON'
{"signing": {"default": {"expiry": "2h", "usages": ["digital signature", "key encipherment", "server auth", "client auth"]}}}
JSON
    sqlite3 "$tmp/cfssl.db" <<'SQL' >/dev/null
PRAGMA journal_mode=WAL;
CREATE TABLE certificates (
  serial_number blob NOT NULL, authority_key_identifier blob NOT NULL, ca_label blob,
  status blob NOT NULL, reason int, expiry timestamp, revoked_at timestamp, pem blob NOT NULL,
  PRIMARY KEY(serial_number, authority_key_identifier));
CREATE TABLE ocsp_responses (
  serial_number blob NOT NULL, authority_key_identifier blob NOT NULL, body blob NOT NULL,
  expiry timestamp, PRIMARY KEY(serial_number, authority_key_identifier));
SQL
    printf '{"driver":"sqlite3","data_source":"file:%s?_sync=FULL&_journal=WAL"}' "$tmp/cfssl.db" > "$tmp/db.json"
    local cport
    cport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    cfssl serve -address 127.0.0.1 -port "$cport" -ca "$tmp/cfssl-ca.pem" -ca-key "$tmp/cfssl-ca-key.pem" \
        -config "$tmp/cfssl.json" -db-config "$tmp/db.json" -loglevel 5 > "$tmp/cfssl.log" 2>&1 &
    local cfssl_pid=$!
    pids+=("$cfssl_pid")
    for _ in $(seq 1 100); do
        curl -s -o /dev/null "http://127.0.0.1:$cport/api/v1/cfssl/scaninfo" && break
        sleep 0.1
    done

    local results="$tmp/results.jsonl"
    run() { # name mode concurrency [extra args]
        local name=$1 mode=$2 c=$3
        shift 3
        local line
        line=$("$load" --mode "$mode" --concurrency "$c" --seconds "$seconds" --csr "$tmp/req.csr" \
            ${disk:+--disk "$disk"} "$@")
        echo "{\"name\":\"$name\",\"result\":$line}" >> "$results"
        echo "  $name c=$c: $line" >&2
    }
    echo "Measuring ${seconds}s runs, ${rounds} interleaved rounds (disk: ${disk:-unknown})" >&2
    for c in 1 8 32; do
        for _ in $(seq 1 "$rounds"); do
            run ours-enroll enroll "$c" --url "$url" --ca-bundle "$tmp/bundle.pem" --token "$token" \
                --dns api.ci.svc.example.internal --pid "$ours_pid"
            run cfssl cfssl "$c" --url "http://127.0.0.1:$cport" --pid "$cfssl_pid"
        done
        run ours-renew renew "$c" --url "$url" --ca-bundle "$tmp/bundle.pem" \
            --cert "$tmp/client/chain.pem" --key "$tmp/client/key.pem" --pid "$ours_pid"
        run ours-renew-new-conn renew-new-conn "$c" --url "$url" --ca-bundle "$tmp/bundle.pem" \
            --cert "$tmp/client/chain.pem" --key "$tmp/client/key.pem" --pid "$ours_pid"
    done
    if [ -n "${BENCH_PROFILE:-}" ] && command -v perf >/dev/null 2>&1; then
        # A flat CPU profile of the server under enrollment at concurrency 8.
        perf record -F 999 -p "$ours_pid" -o "$BENCH_PROFILE" -- sleep "$seconds" >/dev/null 2>&1 &
        local perf_pid=$!
        run ours-enroll-profiled enroll 8 --url "$url" --ca-bundle "$tmp/bundle.pem" --token "$token" \
            --dns api.ci.svc.example.internal --pid "$ours_pid"
        wait "$perf_pid" || true
        perf report -i "$BENCH_PROFILE" --no-children --stdio --sort dso,symbol --percent-limit 0.7 2>/dev/null \
            | grep -v '^$' | head -70 >&2
    fi
    python3 - "$results" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
def med(name, c, key):
    vals = [r["result"][key] for r in rows if r["name"] == name and r["result"]["concurrency"] == c and r["result"][key] is not None]
    return statistics.median(vals) if vals else None
def fmt(v, d=1):
    return "-" if v is None else f"{v:,.{d}f}"
print()
print("| concurrency | ours enroll/s | p50 / p99 ms | CPU ms/cert | flushes/cert | cfssl sign/s | p50 / p99 ms | CPU ms/cert | flushes/cert | ours / cfssl |")
print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
for c in (1, 8, 32):
    o, f = med("ours-enroll", c, "per_second"), med("cfssl", c, "per_second")
    ratio = "-" if not o or not f else f"{o / f:.2f}"
    print(f"| {c} | {fmt(o)} | {fmt(med('ours-enroll', c, 'p50_ms'), 2)} / {fmt(med('ours-enroll', c, 'p99_ms'), 2)} | "
          f"{fmt(med('ours-enroll', c, 'server_cpu_ms_per_cert'), 3)} | {fmt(med('ours-enroll', c, 'flushes_per_cert'), 3)} | "
          f"{fmt(f)} | {fmt(med('cfssl', c, 'p50_ms'), 2)} / {fmt(med('cfssl', c, 'p99_ms'), 2)} | "
          f"{fmt(med('cfssl', c, 'server_cpu_ms_per_cert'), 3)} | {fmt(med('cfssl', c, 'flushes_per_cert'), 3)} | {ratio} |")
print()
print("| concurrency | renew keep-alive/s | p50 / p99 ms | CPU ms/cert | renew, new TLS each/s | p50 / p99 ms | CPU ms/cert |")
print("| --- | --- | --- | --- | --- | --- | --- |")
for c in (1, 8, 32):
    a, b = "ours-renew", "ours-renew-new-conn"
    print(f"| {c} | {fmt(med(a, c, 'per_second'))} | {fmt(med(a, c, 'p50_ms'), 2)} / {fmt(med(a, c, 'p99_ms'), 2)} | {fmt(med(a, c, 'server_cpu_ms_per_cert'), 3)} | "
          f"{fmt(med(b, c, 'per_second'))} | {fmt(med(b, c, 'p50_ms'), 2)} / {fmt(med(b, c, 'p99_ms'), 2)} | {fmt(med(b, c, 'server_cpu_ms_per_cert'), 3)} |")
errors = sum(r["result"]["errors"] for r in rows)
print(f"\nfailed requests over all runs: {errors}")
PY
}

footprint() {
    install_missing openssl:openssl sqlite3:sqlite3 python3:python3
    cargo build --release --locked -p ca-server
    # The agent as it is meant to ship: the size-optimised `agent` profile (Cargo.toml).
    cargo build --profile agent --locked -p ca-agent
    local bin=target/release/ca-server agent=target/agent/ca-agent
    scratch
    local fp
    fp=$(CA_LOG=error $bin init --data-dir "$tmp/ca" --policy policies/example.toml --insecure-no-passphrase --json 2>/dev/null \
        | python3 -c 'import json,sys; print(json.load(sys.stdin)["root_fingerprint"])')
    local url
    url=$(start_server "$tmp/ca" "$tmp/serve.out")
    pids+=("$(cat "$tmp/serve.out.pid")")

    # ca-agent run, one certificate of an hour, idle after enrolling.
    $bin token create --data-dir "$tmp/ca" --env dev --service api > "$tmp/token" 2>/dev/null
    cat > "$tmp/agent.toml" <<TOML
server = "$url"
root_fingerprint = "$fp"
state_dir = "$tmp/agent-state"
token_file = "$tmp/token"
[[cert]]
name = "api"
env = "dev"
service = "api"
dns = ["api.dev.svc.example.internal"]
ttl = "1h"
dir = "$tmp/agent-out"
TOML
    CA_AGENT_LOG=warn $agent run --config "$tmp/agent.toml" >/dev/null 2>&1 &
    local agent_pid=$!
    pids+=("$agent_pid")
    for _ in $(seq 1 100); do
        [ -e "$tmp/agent-out/current" ] && break
        sleep 0.1
    done
    sleep 3
    awk '/^(VmRSS|RssAnon|RssFile)/ {kb[$1] = $2}
        END {printf "ca-agent run, idle with one certificate: RSS %.1f MiB (private %.1f MiB; %.1f MiB are pages of the binary and libc, shared)\n", kb["VmRSS:"]/1024, kb["RssAnon:"]/1024, kb["RssFile:"]/1024}' \
        "/proc/$agent_pid/status"

    # ca-server serve with 10,000 idle TLS connections (each sent one request, then nothing).
    local idle
    idle=$(load_generator idle_connections)
    $bin bundle --data-dir "$tmp/ca" --env dev > "$tmp/bundle.pem" 2>/dev/null
    "$idle" --url "$url" --ca-bundle "$tmp/bundle.pem" --pid "$(cat "$tmp/serve.out.pid")" \
        --connections "${BENCH_IDLE_CONNECTIONS:-10000}" --hold 15 \
        | python3 -c 'import json,sys; r=json.load(sys.stdin); print("ca-server serve with %d idle TLS connections (%d failed%s, opened in %.1f s): RSS %.1f MiB, %.1f MiB before, %.1f KiB per connection; %d of its descriptors still open after %d s idle (%d before)" % (r["connections_open"], r["failures"], ": " + r["first_error"] if r["first_error"] else "", r["opened_in_s"], r["server_rss_with_mib"], r["server_rss_before_mib"], r["kib_per_connection"], r["server_fds_after_hold"], r["held_s"], r["server_fds_before"]))'

    # ca-agent issue, one-shot: 20 runs, median wall time.
    local times=()
    for i in $(seq 1 20); do
        local t
        t=$($bin token create --data-dir "$tmp/ca" --env dev --service api 2>/dev/null)
        local start end
        start=$(date +%s%N)
        $agent issue --server "$url" --root-fingerprint "$fp" --token "$t" --env dev --service api \
            --dns api.dev.svc.example.internal --out "$tmp/issue-$i" >/dev/null 2>&1
        end=$(date +%s%N)
        times+=($(( (end - start) / 1000 )))
    done
    printf '%s\n' "${times[@]}" | sort -n | awk '{a[NR]=$1} END {printf "ca-agent issue, one-shot: median %.1f ms, min %.1f ms, max %.1f ms (20 runs, including process start and the pinned-root fetch)\n", a[int((NR+1)/2)]/1000, a[1]/1000, a[NR]/1000}'

    # ca-server serve start with 1,000,000 stored certificates (rows made with SQL; the start does
    # not read them). The server is stopped and waited for: it holds the database until it exits.
    local server_pid
    server_pid=$(cat "$tmp/serve.out.pid")
    kill "$server_pid" 2>/dev/null || true
    for _ in $(seq 1 300); do
        kill -0 "$server_pid" 2>/dev/null || break
        sleep 0.1
    done
    local pem
    pem=$(sed -n '1,/END CERTIFICATE/p' "$tmp/issue-1/cert.pem")
    sqlite3 "$tmp/ca/ca.db" > /dev/null <<SQL
PRAGMA journal_mode=WAL;
BEGIN;
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1000000)
INSERT INTO serials (serial, reserved_at) SELECT printf('7f%030x', i), 0 FROM n;
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1000000)
INSERT INTO certificates (serial, issuer_id, env, service, spiffe_id, dns_names, ip_addresses, key_type,
  key_fingerprint, fingerprint, not_before, not_after, cert_pem, issued_via, issued_by, created_at)
SELECT printf('7f%030x', i), 'dev', 'dev', 'api', 'spiffe://example.internal/dev/api',
  '["api.dev.svc.example.internal"]', '[]', 'p256', printf('%064x', i), printf('%064x', i),
  strftime('%s','now') - 60, strftime('%s','now') + 3600 + (i % 86400), '$pem', 'enroll', 'bench',
  strftime('%s','now') FROM n;
COMMIT;
PRAGMA wal_checkpoint(TRUNCATE);
SQL
    local count
    count=$(sqlite3 "$tmp/ca/ca.db" 'SELECT COUNT(*) FROM certificates')
    local ms=()
    for i in 1 2 3 4 5; do
        local start end
        start=$(date +%s%N)
        start_server "$tmp/ca" "$tmp/serve-$i.out" >/dev/null
        end=$(date +%s%N)
        kill "$(cat "$tmp/serve-$i.out.pid")" 2>/dev/null || true
        wait "$(cat "$tmp/serve-$i.out.pid")" 2>/dev/null || true
        ms+=($(( (end - start) / 1000000 )))
    done
    printf '%s\n' "${ms[@]}" | sort -n | awk -v n="$count" '{a[NR]=$1} END {printf "ca-server serve start with %d certificates: median %d ms to the listening line (5 runs, min %d, max %d; includes polling every 50 ms)\n", n, a[3], a[1], a[5]}'
}

# Enrollment with a CI token, SQLite beside PostgreSQL (one replica, three replicas), all in
# one run. Every server runs throughout (idle when not measured); SQLite and PostgreSQL flush
# every commit (synchronous=FULL; fsync=on, synchronous_commit=on), both on the same disk.
postgres() {
    install_missing openssl:openssl python3:python3
    local seconds="${BENCH_SECONDS:-10}" rounds="${BENCH_ROUNDS:-2}"
    local conns="${BENCH_PG_CONNECTIONS:-4}"
    cargo build --release --locked -p ca-server --bin ca-server
    local load
    load=$(load_generator)
    local bin=target/release/ca-server
    scratch
    pg_start
    local disk pgdisk
    disk=$(block_device "$tmp")
    pgdisk=$(block_device "$PG_DIR")
    [ "$disk" = "$pgdisk" ] || echo "note: SQLite on ${disk:-?}, PostgreSQL on ${pgdisk:-?}" >&2

    sed -e 's/^max_uses = .*/max_uses = 100000000/' policies/example.toml > "$tmp/policy.toml"
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$tmp/req.key" \
        -out "$tmp/req.csr" -subj /CN=api >/dev/null 2>&1

    # SQLite, one server.
    CA_LOG=error $bin init --data-dir "$tmp/ca" --policy "$tmp/policy.toml" --insecure-no-passphrase >/dev/null 2>&1
    local sqlite_token sqlite_url sqlite_pid
    sqlite_token=$(CA_LOG=error $bin token create --data-dir "$tmp/ca" --env ci --service api --uses 100000000 --ttl 24h 2>/dev/null)
    $bin bundle --data-dir "$tmp/ca" --env ci > "$tmp/sqlite-bundle.pem" 2>/dev/null
    sqlite_url=$(start_server "$tmp/ca" "$tmp/sqlite.out")
    sqlite_pid=$(cat "$tmp/sqlite.out.pid")
    pids+=("$sqlite_pid")

    # PostgreSQL: one CA, three replicas; [database] max_connections per replica.
    local db
    db=$(pg_create_db ca)
    CA_LOG=error $bin init --database-url "$db" --policy "$tmp/policy.toml" --insecure-no-passphrase >/dev/null 2>&1
    local pg_token
    pg_token=$(CA_LOG=error $bin token create --database-url "$db" --env ci --service api --uses 100000000 --ttl 24h 2>/dev/null)
    $bin bundle --database-url "$db" --env ci > "$tmp/pg-bundle.pem" 2>/dev/null
    printf '[database]\nmax_connections = %s\n' "$conns" > "$tmp/pg-serve.toml"
    local pg_urls=() pg_pids=() i
    for i in 1 2 3; do
        pg_urls+=("$(start_server "$db" "$tmp/pg-$i.out" --config "$tmp/pg-serve.toml")")
        pg_pids+=("$(cat "$tmp/pg-$i.out.pid")")
        pids+=("${pg_pids[-1]}")
    done
    local postmaster all_urls all_pids
    postmaster=$(pg_postmaster_pid)
    all_urls=$(IFS=,; echo "${pg_urls[*]}")
    all_pids=$(IFS=,; echo "${pg_pids[*]}")

    local results="$tmp/results.jsonl"
    run() { # name concurrency [extra args]
        local name=$1 c=$2
        shift 2
        local line
        line=$("$load" --mode enroll --concurrency "$c" --seconds "$seconds" --csr "$tmp/req.csr" \
            --dns api.ci.svc.example.internal ${disk:+--disk "$disk"} "$@")
        echo "{\"name\":\"$name\",\"result\":$line}" >> "$results"
        echo "  $name c=$c: $line" >&2
    }
    echo "Measuring ${seconds}s runs, ${rounds} interleaved rounds (disk: ${disk:-unknown};" \
        "PostgreSQL $(basename "$(dirname "$PG_BIN")"), [database] max_connections = $conns per replica;" \
        "load average before: $(cut -d' ' -f1-3 /proc/loadavg))" >&2
    for c in 8 32; do
        for _ in $(seq 1 "$rounds"); do
            run sqlite "$c" --url "$sqlite_url" --ca-bundle "$tmp/sqlite-bundle.pem" --token "$sqlite_token" \
                --pid "$sqlite_pid"
            run pg1 "$c" --url "${pg_urls[0]}" --ca-bundle "$tmp/pg-bundle.pem" --token "$pg_token" \
                --pid "${pg_pids[0]},$postmaster"
            run pg3 "$c" --url "$all_urls" --ca-bundle "$tmp/pg-bundle.pem" --token "$pg_token" \
                --pid "$all_pids,$postmaster"
        done
    done
    echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
    python3 - "$results" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
def med(name, c, key):
    vals = [r["result"][key] for r in rows if r["name"] == name and r["result"]["concurrency"] == c and r["result"][key] is not None]
    return statistics.median(vals) if vals else None
def fmt(v, d=1):
    return "-" if v is None else f"{v:,.{d}f}"
print()
print("| backend | replicas | concurrency | certs/s | p50 ms | p99 ms | CPU ms/cert | flushes/cert | / SQLite |")
print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
for c in (8, 32):
    base = med("sqlite", c, "per_second")
    for name, backend, n in (("sqlite", "SQLite", 1), ("pg1", "PostgreSQL", 1), ("pg3", "PostgreSQL", 3)):
        v = med(name, c, "per_second")
        ratio = "-" if not v or not base else f"{v / base:.2f}"
        print(f"| {backend} | {n} | {c} | {fmt(v)} | {fmt(med(name, c, 'p50_ms'), 2)} | {fmt(med(name, c, 'p99_ms'), 2)} | "
              f"{fmt(med(name, c, 'server_cpu_ms_per_cert'), 3)} | {fmt(med(name, c, 'flushes_per_cert'), 3)} | {ratio} |")
errors = sum(r["result"]["errors"] for r in rows)
print("\nCPU ms/cert: the ca-server process(es); for PostgreSQL also its postmaster and backends.")
print(f"failed requests over all runs: {errors}")
PY
}

# Each in a subshell, so each stops what it started when it ends.
case "$what" in
    revocation) (revocation) ;;
    issuance) (issuance) ;;
    footprint) (footprint) ;;
    postgres) (postgres) ;;
    all) (revocation); (issuance); (footprint); (postgres) ;;
    *) echo "usage: scripts/bench.sh [revocation|issuance|footprint|postgres|all]" >&2; exit 2 ;;
esac
