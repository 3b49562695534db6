#!/usr/bin/env bash
# Fuzzes every target (or the ones named) for SECONDS each, default 60, one after another, and
# prints per target: executions, executions per second, crashes, corpus size. Exits non-zero when
# a target crashed, hung or broke a property; the input is kept in ca-server/fuzz/artifacts/ and
# named in the output.
#
#   scripts/fuzz.sh [--no-grow] [--libfuzzer] [SECONDS] [TARGET...]
#
# Inputs reaching a new outcome are added to ca-server/fuzz/corpus/<target>/ (commit the useful
# ones); --no-grow fuzzes a scratch copy of the corpus instead.
#
# The default engine is the ca-fuzz crate's mutation loop: the `fuzz` test binary, built as
# `cargo test --workspace` builds it, stable Rust only. --libfuzzer runs the same targets under
# libFuzzer with coverage feedback instead: libfuzzer-sys compiles libFuzzer with the C++ compiler,
# and stable rustc instruments with SanitizerCoverage (-C passes=sancov-module; no sanitizer, so
# no nightly). It rebuilds every crate instrumented in target/libfuzzer, which takes minutes the
# first time.
set -euo pipefail
cd "$(dirname "$0")/.."

grow=1
engine=mutate
while [ "$#" -gt 0 ]; do
    case "$1" in
        --no-grow) grow=0; shift ;;
        --libfuzzer) engine=libfuzzer; shift ;;
        *) break ;;
    esac
done
seconds="${1:-60}"
shift || true

artifacts=ca-server/fuzz/artifacts
if [ "$engine" = libfuzzer ]; then
    host=$(rustc -vV | sed -n 's/^host: //p')
    flags="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4"
    flags+=" -Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table"
    flags+=" -Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions -Coverflow-checks"
    # With --target, RUSTFLAGS reach only the crates of the fuzz binaries, not build scripts.
    CARGO_TARGET_DIR=target/libfuzzer RUSTFLAGS="$flags" CARGO_PROFILE_RELEASE_LTO=false \
        cargo build --locked --release -p ca-fuzz --features libfuzzer --bins --target "$host"
    bindir="target/libfuzzer/$host/release"
fi
cargo test --workspace --locked --test fuzz --no-run
exe=$(cargo test --workspace --locked --test fuzz --no-run --message-format=json 2>/dev/null |
    sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -n 1)
if [ -z "$exe" ] || [ ! -x "$exe" ]; then
    echo "error: cannot find the fuzz runner binary" >&2
    exit 2
fi

if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <("$exe" list)
fi

corpus=ca-server/fuzz/corpus
if [ "$grow" -eq 0 ]; then
    scratch=$(mktemp -d)
    trap 'rm -rf "$scratch"' EXIT
    cp -r "$corpus/." "$scratch/"
    corpus="$scratch"
fi

# One libFuzzer run; prints the same summary line as the mutation engine.
libfuzzer_run() {
    local t=$1 log status=0
    log=$(mktemp)
    mkdir -p "$artifacts"
    "$bindir/$t" "$corpus/$t" -max_total_time="$seconds" -timeout=30 -rss_limit_mb=4096 \
        -artifact_prefix="$artifacts/libfuzzer-$t-" -print_final_stats=1 >"$log" 2>&1 || status=$?
    local execs rate
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")
    printf '%-13s execs %9s  %8s/s  crashes %s  corpus %s  (libFuzzer)\n' "$t" "${execs:-?}" \
        "${rate:-?}" "$([ "$status" -eq 0 ] && echo 0 || echo 1)" "$(find "$corpus/$t" -type f | wc -l)"
    if [ "$status" -ne 0 ]; then
        grep -E 'ERROR|panicked|Test unit written' "$log" >&2 || tail -n 20 "$log" >&2
        rm -f "$log"
        return 1
    fi
    rm -f "$log"
}

start=$SECONDS
failed=()
for t in "${targets[@]}"; do
    mkdir -p "$corpus/$t"
    if [ "$engine" = libfuzzer ]; then
        libfuzzer_run "$t" || failed+=("$t")
    elif ! "$exe" run "$t" --seconds "$seconds" --corpus "$corpus/$t" --artifacts "$artifacts"; then
        failed+=("$t")
    fi
done
echo "fuzzed ${#targets[@]} targets for ${seconds} s each in $((SECONDS - start)) s"
if [ "${#failed[@]}" -gt 0 ]; then
    echo "error: crashes in: ${failed[*]} (inputs in $artifacts/)" >&2
    exit 1
fi
