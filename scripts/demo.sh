#!/usr/bin/env bash
# The main job on a fresh machine: a CA server and an enrolled agent that keeps a certificate
# fresh, on the embedded SQLite store. Everything lives in target/demo (recreated each run).
# The agent asks for 2-minute certificates, so a renewal (new serial, new key) shows up about
# every 80 seconds in the status printed below. Ctrl-C stops both; DEMO_SECONDS=N stops after N s.
set -euo pipefail
cd "$(dirname "$0")/.."

command -v openssl >/dev/null 2>&1 || {
    sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq openssl
}

cargo build --locked --bins
bin=target/debug
demo="$PWD/target/demo"
rm -rf "$demo"
mkdir -p "$demo"

pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 0' INT TERM

init=$("$bin/ca-server" init --data-dir "$demo/ca" --policy policies/example.toml --insecure-no-passphrase --json 2>/dev/null)
fp=$(printf '%s' "$init" | sed -n 's/.*"root_fingerprint":"\([0-9a-f]*\)".*/\1/p')
echo "CA created; root SHA-256 $fp"

# Leaves backdated by 5 s only, so a 2-minute certificate lives 2 minutes.
printf 'backdate = "5s"\n' > "$demo/server.toml"
"$bin/ca-server" serve --data-dir "$demo/ca" --config "$demo/server.toml" \
    --listen 127.0.0.1:0 --http-listen 127.0.0.1:0 > "$demo/server.out" 2> "$demo/server.log" &
pids+=($!)
for _ in $(seq 100); do grep -q '^listening on https://' "$demo/server.out" 2>/dev/null && break; sleep 0.1; done
url=$(sed -n 's/^listening on \(https:[^ ]*\).*/\1/p' "$demo/server.out")
[ -n "$url" ] || { echo "the server did not start; see $demo/server.log" >&2; exit 1; }
echo "CA server at $url (log: $demo/server.log)"

"$bin/ca-server" token create --data-dir "$demo/ca" --env dev --service api 2>/dev/null > "$demo/token"
cat > "$demo/agent.toml" <<CONF
server = "$url"
root_fingerprint = "$fp"
state_dir = "$demo/agent-state"
token_file = "$demo/token"
backoff_initial = "1s"
backoff_max = "30s"
bundle_refresh = "1m"

[[cert]]
name = "api"
env = "dev"
service = "api"
dns = ["api.dev.svc.example.internal"]
ttl = "2m"
dir = "$demo/certs/api"
reload_command = ["sh", "-c", "echo \"\$(date -u +%H:%M:%S) reloaded with serial \$SERIAL\" >> $demo/reloads.log"]
CONF
"$bin/ca-agent" run --config "$demo/agent.toml" > "$demo/agent.out" 2> "$demo/agent.log" &
pids+=($!)
echo "agent started (log: $demo/agent.log); certificate files in $demo/certs/api"

deadline=$(( $(date +%s) + ${DEMO_SECONDS:-0} ))
while :; do
    sleep 10
    echo "--- $(date -u +%H:%M:%S)"
    "$bin/ca-agent" status --config "$demo/agent.toml" || true
    if [ -f "$demo/certs/api/cert.pem" ]; then
        openssl verify -CAfile "$demo/certs/api/bundle.pem" -untrusted "$demo/certs/api/chain.pem" \
            "$demo/certs/api/cert.pem" | sed 's/^/openssl: /'
    fi
    if [ "${DEMO_SECONDS:-0}" -gt 0 ] && [ "$(date +%s)" -ge "$deadline" ]; then break; fi
done
