#!/usr/bin/env bash
# Benchmarks: numbers, never pass/fail. Release builds; everything on 127.0.0.1, bounded in time,
# and every process started here is stopped on exit.
#
#   scripts/bench.sh              revocation: CRL with 100,000 entries, OCSP answers per second
#   scripts/bench.sh issuance     durable issuance beside cfssl in the same run (about 5 minutes):
#                                 enroll (CI token), renew over mTLS with keep-alive, renew with a
#                                 new TLS connection each time; concurrency 1, 8, 32
#   scripts/bench.sh all          both
#
# BENCH_SECONDS (default 10) is the length of one measured run; BENCH_ROUNDS (default 2) how many
# interleaved runs of ours and cfssl are taken per concurrency (the median is reported);
# BENCH_PROFILE=FILE also records a perf profile of the server (enroll, concurrency 8) and prints it.
set -euo pipefail
cd "$(dirname "$0")/.."
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

revocation() {
    install_missing openssl:openssl
    cargo bench --locked -p ca-server --bench revocation
}

issuance() {
    install_missing openssl:openssl curl:curl sqlite3:sqlite3 cfssl:golang-cfssl python3:python3
    local seconds="${BENCH_SECONDS:-10}" rounds="${BENCH_ROUNDS:-2}"
    cargo build --release --locked -p ca-server --bin ca-server
    local load
    load=$(cargo bench --locked -p ca-server --bench issuance_load --no-run --message-format=json 2>/dev/null \
        | grep -o '"executable":"[^"]*issuance_load[^"]*"' | tail -1 | cut -d'"' -f4)
    [ -x "$load" ] || { echo "error: the load generator did not build" >&2; exit 1; }
    local bin=target/release/ca-server
    local tmp
    tmp=$(mktemp -d)
    local pids=()
    cleanup() {
        for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
        wait 2>/dev/null || true
        rm -rf "$tmp"
    }
    trap cleanup EXIT

    # Which block device holds the databases, for its flush counter.
    local src disk
    src=$(df --output=source "$tmp" | tail -1)
    disk=$(basename "$src")
    [ -e "/sys/block/$disk/stat" ] || disk=$(lsblk -no pkname "$src" 2>/dev/null | head -1)
    [ -e "/sys/block/$disk/stat" ] || disk=""

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
    CA_LOG=error $bin serve "${ca[@]}" --listen 127.0.0.1:0 > "$tmp/serve.out" 2> "$tmp/serve.err" &
    local ours_pid=$!
    pids+=("$ours_pid")
    local url=""
    for _ in $(seq 1 100); do
        url=$(sed -n 's/^listening on \(https:.*\)$/\1/p' "$tmp/serve.out" | head -1)
        [ -n "$url" ] && break
        sleep 0.1
    done
    [ -n "$url" ] || { echo "error: ca-server did not start: $(cat "$tmp/serve.err")" >&2; exit 1; }

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

case "$what" in
    revocation) revocation ;;
    issuance) issuance ;;
    all) revocation; issuance ;;
    *) echo "usage: scripts/bench.sh [revocation|issuance|all]" >&2; exit 2 ;;
esac
