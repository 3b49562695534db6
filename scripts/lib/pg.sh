# shellcheck shell=bash
# A throwaway PostgreSQL cluster for scripts/cluster.sh and scripts/bench.sh (the Rust tests have
# their own in tests/support/postgres.rs, doing the same). Source it, then:
#
#   pg_start            install PostgreSQL's server if need be (without a system cluster), initdb
#                       into a fresh temp dir (trust authentication, 127.0.0.1 only, a random free
#                       port, the Unix socket in the temp dir, fsync on) and start it; sets PG_DIR,
#                       PG_PORT and PG_URL (the `postgres` database, superuser `postgres`)
#   pg_create_db NAME   CREATE DATABASE NAME; prints its URL
#   pg_postmaster_pid   the postmaster's pid (empty when not running)
#   pg_stop             pg_ctl stop -m fast (SIGKILL of the postmaster if it does not go), then
#                       removes PG_DIR; safe to call more than once and before pg_start, so call
#                       it from an EXIT trap
#
# The system cluster (if any) is never touched. PostgreSQL refuses to run as root, so as root
# every PostgreSQL program runs as nobody:nogroup through setpriv and PG_DIR belongs to nobody.
# Every program is bounded in time.

PG_BIN=""
PG_DIR=""
PG_PORT=""
PG_URL=""
PG_AS=()

# Installs PostgreSQL's server (and setpriv) with apt-get when missing. Debian would create and
# start a system cluster "main" on port 5432 on installation: createcluster.d says not to.
pg_install() {
    local need=()
    compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || need+=(postgresql)
    command -v setpriv >/dev/null 2>&1 || need+=(util-linux)
    command -v timeout >/dev/null 2>&1 || need+=(coreutils)
    [ "${#need[@]}" -gt 0 ] || return 0
    echo "installing: ${need[*]}" >&2
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    if [[ " ${need[*]} " == *" postgresql "* ]]; then
        $sudo mkdir -p /etc/postgresql-common/createcluster.d
        echo "create_main_cluster = false" | $sudo tee /etc/postgresql-common/createcluster.d/00-no-main.conf >/dev/null
    fi
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >&2
}

# Runs PostgreSQL program $1 of the version in use, at most $PG_LIMIT seconds (default 60): as
# nobody when root, in PG_DIR, without the PG* variables that would steer it elsewhere.
pg_run() {
    local prog=$1
    shift
    (
        cd "$PG_DIR"
        unset PGHOST PGHOSTADDR PGPORT PGDATA PGUSER PGPASSWORD PGPASSFILE PGDATABASE PGSERVICE \
            PGSERVICEFILE PGOPTIONS PGSSLMODE PGCONNECT_TIMEOUT PGTZ PGCLIENTENCODING PSQLRC
        HOME="$PG_DIR" LC_ALL=C exec timeout -k 5 "${PG_LIMIT:-60}" "${PG_AS[@]}" "$PG_BIN/$prog" "$@"
    )
}

pg_start() {
    pg_install
    local bin
    for bin in $(compgen -G '/usr/lib/postgresql/*/bin' | sort -V); do
        [ -x "$bin/initdb" ] && [ -x "$bin/pg_ctl" ] && [ -x "$bin/psql" ] && PG_BIN=$bin
    done
    [ -n "$PG_BIN" ] || { echo "error: no PostgreSQL server under /usr/lib/postgresql/*/bin" >&2; return 1; }
    PG_DIR=$(mktemp -d "${TMPDIR:-/tmp}/ca-script-pg-XXXXXX")
    chmod 700 "$PG_DIR"
    if [ "$(id -u)" -eq 0 ]; then
        PG_AS=(setpriv --reuid=nobody --regid=nogroup --clear-groups --)
        chown nobody:nogroup "$PG_DIR"
    fi
    if ! pg_run initdb -D "$PG_DIR/data" -U postgres --auth=trust -E UTF8 --locale=C --no-sync \
        >"$PG_DIR/initdb.log" 2>&1; then
        cat "$PG_DIR/initdb.log" >&2
        [ "${#PG_AS[@]}" -eq 0 ] || echo "(run as nobody: every parent of $PG_DIR must be traversable by nobody)" >&2
        return 1
    fi
    # The port is given to pg_ctl, so that a retry on another one needs no edit.
    cat >>"$PG_DIR/data/postgresql.conf" <<CONF

# scripts/lib/pg.sh: throwaway cluster
listen_addresses = '127.0.0.1'
unix_socket_directories = '$PG_DIR'
max_connections = 100
fsync = on
logging_collector = off
CONF
    # A random port below the ephemeral range (where the servers' port 0 lands); another one
    # when it turns out to be taken.
    local attempt port seen
    for attempt in 1 2 3 4 5; do
        port=$((20000 + RANDOM % 12000))
        # The log is written by the server's user: not created here, only read from where it was.
        seen=$(stat -c %s "$PG_DIR/postgres.log" 2>/dev/null || echo 0)
        if pg_run pg_ctl start -D "$PG_DIR/data" -l "$PG_DIR/postgres.log" -w -t 30 -o "-p $port" \
            >"$PG_DIR/pg_ctl.log" 2>&1; then
            PG_PORT=$port
            PG_URL="postgres://postgres@127.0.0.1:$port/postgres"
            if PG_LIMIT=10 pg_run psql -X -q -w -d "$PG_URL" -c 'SELECT 1' >/dev/null 2>&1; then
                return 0
            fi
            echo "error: PostgreSQL started but does not answer on 127.0.0.1:$port" >&2
            return 1
        fi
        if tail -c +"$((seen + 1))" "$PG_DIR/postgres.log" 2>/dev/null | grep -q "Address already in use" \
            && [ "$attempt" -lt 5 ]; then
            pg_stop_server
            continue
        fi
        echo "error: PostgreSQL did not start on 127.0.0.1:$port:" >&2
        cat "$PG_DIR/pg_ctl.log" >&2
        tail -c +"$((seen + 1))" "$PG_DIR/postgres.log" 2>/dev/null | tail -n 20 >&2
        return 1
    done
}

pg_create_db() {
    PG_LIMIT=30 pg_run psql -X -q -w -v ON_ERROR_STOP=1 -d "$PG_URL" -c "CREATE DATABASE \"$1\"" >/dev/null
    echo "postgres://postgres@127.0.0.1:$PG_PORT/$1"
}

pg_postmaster_pid() {
    [ -n "$PG_DIR" ] && [ -f "$PG_DIR/data/postmaster.pid" ] && head -n 1 "$PG_DIR/data/postmaster.pid"
    return 0
}

# Stops the server of PG_DIR, if one runs; keeps PG_DIR.
pg_stop_server() {
    local pid
    pid=$(pg_postmaster_pid)
    if [ -n "$pid" ]; then
        PG_LIMIT=20 pg_run pg_ctl stop -D "$PG_DIR/data" -m fast -w -t 15 >/dev/null 2>&1 || true
        if kill -0 "$pid" 2>/dev/null; then
            kill -KILL "$pid" 2>/dev/null || true
            local _
            for _ in $(seq 1 50); do
                kill -0 "$pid" 2>/dev/null || break
                sleep 0.1
            done
        fi
    fi
}

pg_stop() {
    [ -n "$PG_DIR" ] || return 0
    pg_stop_server
    rm -rf "$PG_DIR"
    PG_DIR=""
    PG_PORT=""
    PG_URL=""
}
