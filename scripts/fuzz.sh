#!/usr/bin/env bash
# Fuzzes every target (or the ones named) for SECONDS each, default 60, one after another, and
# prints per target: executions, executions per second, crashes, corpus size. Exits non-zero when
# a target crashed, hung or broke a property; the input is kept in ca-server/fuzz/artifacts/ and
# named in the output (replay it with the `fuzz replay TARGET FILE` command printed there).
#
#   scripts/fuzz.sh [--no-grow] [SECONDS] [TARGET...]
#
# Inputs reaching a new outcome are added to ca-server/fuzz/corpus/<target>/ (commit the useful
# ones); --no-grow fuzzes a scratch copy of the corpus instead. Stable Rust only: the runner is
# the `fuzz` test binary of the ca-fuzz crate, built as `cargo test --workspace` builds it.
set -euo pipefail
cd "$(dirname "$0")/.."

grow=1
if [ "${1:-}" = "--no-grow" ]; then
    grow=0
    shift
fi
seconds="${1:-60}"
shift || true

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

start=$SECONDS
failed=()
for t in "${targets[@]}"; do
    mkdir -p "$corpus/$t"
    if ! "$exe" run "$t" --seconds "$seconds" --corpus "$corpus/$t" --artifacts ca-server/fuzz/artifacts; then
        failed+=("$t")
    fi
done
echo "fuzzed ${#targets[@]} targets for ${seconds} s each in $((SECONDS - start)) s"
if [ "${#failed[@]}" -gt 0 ]; then
    echo "error: crashes in: ${failed[*]} (inputs in ca-server/fuzz/artifacts/)" >&2
    exit 1
fi
