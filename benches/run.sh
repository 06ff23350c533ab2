#!/usr/bin/env bash
# Throughput, latency, memory and idle-CPU benchmark of tagd against a
# single-process Pillow + onnxruntime + sqlite3 reference. `make bench`
# builds tagd in release mode and runs this from the repository root.
#
# Settings (environment variables):
#   MODEL         model folder                       [models/fashion-mnist]
#   BENCH_OUT     scratch folder for photos, catalogues, logs, results.md [bench-out]
#   SMALL, LARGE  photos at 1600x1200 and at 4000x3000 (12 MP)            [300, 60]
#   ROUNDS        throughput rounds per set, alternating which goes first [5]
#   SETTLE_MS     tagd's watch.settle_ms during the latency run           [100]
#   IDLE_SECONDS  idle period sampled for CPU use                         [15]
#   TAGD          the binary                                              [target/release/tagd]
#   ORT_DYLIB_PATH  ONNX Runtime library   [.ort/libonnxruntime.so.1.31.1]
# Anything else is passed to benches/bench.py (see --help there).
set -euo pipefail
cd "$(dirname "$0")/.."

venv=benches/.venv
requirements="pillow==13.0.0 numpy==2.4.6 scipy==1.17.1 onnxruntime==1.31.1"
if [ ! -f "$venv/.requirements" ] || [ "$(cat "$venv/.requirements")" != "$requirements" ]; then
    echo "bench: setting up $venv ($requirements)"
    rm -rf "$venv"
    python3 -m venv "$venv" || {
        echo "bench: cannot make a virtual environment; on Debian: apt-get install python3-venv" >&2
        exit 1
    }
    # shellcheck disable=SC2086
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check $requirements
    echo "$requirements" > "$venv/.requirements"
fi

exec "$venv/bin/python" benches/bench.py \
    --model "${MODEL:-models/fashion-mnist}" \
    --out "${BENCH_OUT:-bench-out}" \
    --small "${SMALL:-300}" \
    --large "${LARGE:-60}" \
    --rounds "${ROUNDS:-5}" \
    --settle-ms "${SETTLE_MS:-100}" \
    --idle-seconds "${IDLE_SECONDS:-15}" \
    --tagd "${TAGD:-target/release/tagd}" \
    --onnxruntime "${ORT_DYLIB_PATH:-.ort/libonnxruntime.so.1.31.1}" \
    "$@"
