#!/usr/bin/env bash
# End-to-end timing of `moeq quantize` on the embedded default model, per scheme, on the device
# given (default cuda): wall time and the summary each run prints. Usage:
#   tools/bench/bench_quantize.sh BUILD_DIR OUT_DIR [device]
set -euo pipefail
build="$1"
out="$2"
device="${3:-cuda}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
mkdir -p "$out"
for scheme in W4A16 W8A8-FP8 NVFP4 FP8-block MXFP4; do
  start=$(date +%s%N)
  "$build/tools/cli/moeq" quantize --config "$root/tools/recipes/default.yaml" --scheme "$scheme" \
    --device "$device" --output "$out/default-$scheme" --overwrite >"$out/quantize-$scheme.txt" 2>&1
  end=$(date +%s%N)
  ms=$(((end - start) / 1000000))
  printf '%s\t%d.%03d s\n' "$scheme" $((ms / 1000)) $((ms % 1000)) | tee -a "$out/quantize-times.tsv"
  grep -E "time|eval|worst|quantized" "$out/quantize-$scheme.txt" | sed 's/^/    /'
done
