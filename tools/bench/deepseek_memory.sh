#!/usr/bin/env bash
# One DeepSeek-V3-shaped model (tools/bench/make_deepseek_shaped.py) through `moeq quantize` on
# the GPU, sampling the GPU's used memory every 200 ms. Usage: deepseek_memory.sh BUILD OUT
# [layers] [scheme] [samples of 512 tokens, default 32]. Writes OUT/deepseek_memory.{txt,csv}.
set -euo pipefail
build="$1"; out="$2"; layers="${3:-3}"; scheme="${4:-NVFP4}"; samples="${5:-32}"
model=/tmp/deepseek_shaped
[[ -f "$model/model.safetensors.index.json" ]] || python3 tools/bench/make_deepseek_shaped.py "$model" --layers "$layers"
python3 - <<'PY'
import json, random
random.seed(0)
with open("/tmp/deepseek_calib.jsonl", "w") as f:
    for _ in range(32):
        f.write(json.dumps([random.randrange(4096) for _ in range(512)]) + "\n")
PY
nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 > "$out/deepseek_memory.csv" &
smi=$!
trap 'kill $smi 2>/dev/null || true' EXIT
# Expandable segments: freed blocks are returned to the pool without fragmentation, so the sampled
# memory in use tracks what the run needs rather than what the caching allocator kept.
PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True /usr/bin/time -v "$build/tools/cli/moeq" quantize --model "$model" --output /tmp/deepseek_q \
  --scheme "$scheme" --calibration /tmp/deepseek_calib.jsonl --samples "$samples" --seq-len 512 \
  --batch-size 8 --device cuda --dtype bfloat16 --no-eval --overwrite 2>&1 | tee "$out/deepseek_memory.txt" || true
kill $smi
echo "peak GPU memory used (MiB): $(sort -n "$out/deepseek_memory.csv" | tail -1)" | tee -a "$out/deepseek_memory.txt"
# moeq's own measure: the caching allocator's peak per layer, load to release (report.json).
python3 - /tmp/deepseek_q.report/report.json <<'PY' | tee -a "$out/deepseek_memory.txt"
import json, sys
report = json.load(open(sys.argv[1]))
for layer in report["layers"]:
    phases = ", ".join(f"{k} {v:.1f}" for k, v in layer["phase_seconds"].items())
    print(f"layer {layer['index']}: {layer['seconds']:.1f} s ({phases}), peak GPU in tensors "
          f"{layer['peak_device_bytes'] / 2**30:.2f} GiB, allocator reserved "
          f"{layer['peak_device_reserved_bytes'] / 2**30:.2f} GiB")
print(f"run: {report['run']['seconds']:.1f} s, peak GPU in tensors "
      f"{report['run']['peak_device_bytes'] / 2**30:.2f} GiB")
PY
cp /tmp/deepseek_q.report/report.json "$out/deepseek_report.json" || true
du -sh "$model" /tmp/deepseek_q | tee -a "$out/deepseek_memory.txt"
