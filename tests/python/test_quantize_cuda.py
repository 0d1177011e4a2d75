"""`moeq quantize` on a GPU, where a layer's weights are held once: each projection is quantized
from the resident weight, exported, and its slot overwritten with the fake-quantized values.

- Weight-only round-to-nearest depends on the stored weights alone, and the CUDA kernels agree
  with the CPU references bit for bit: so the W4A16 checkpoint written on the GPU (in place) is
  byte-identical to the one written on the CPU (separate copies), and NVFP4's weight tensors are
  identical. An export read after its slot was overwritten would differ.
- The quantized forward on the GPU runs on the fake-quantized weights: its logits agree with the
  CPU's quantized logits far better than with the original model's.
"""
import filecmp
import json
import subprocess

import pytest
import torch
from safetensors.torch import load_file

from test_quantize_cli import MODELS, MOEQ, _make_model, _write_tokens

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    fixture, config = MODELS["qwen3_moe"]
    d = tmp_path_factory.mktemp("cuda_model")
    _make_model(str(d), fixture, config)
    _write_tokens(d / "calib.jsonl", config["vocab_size"], 8, 32, 1)
    _write_tokens(d / "eval.jsonl", config["vocab_size"], 4, 24, 2)
    return d


def _run(model_dir, out, device, scheme, *extra):
    cmd = [MOEQ, "quantize", "--model", str(model_dir), "--output", str(out), "--calibration",
           str(model_dir / "calib.jsonl"), "--samples", "8", "--seq-len", "16", "--batch-size",
           "4", "--scheme", scheme, "--device", device, "--dtype", "bfloat16", *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def test_w4a16_export_on_gpu_is_byte_identical_to_cpu(model, tmp_path):
    _run(model, tmp_path / "cpu", "cpu", "W4A16", "--no-eval")
    _run(model, tmp_path / "gpu", "cuda", "W4A16", "--no-eval")
    assert filecmp.cmp(tmp_path / "cpu" / "model.safetensors",
                       tmp_path / "gpu" / "model.safetensors", shallow=False)


def test_nvfp4_weights_on_gpu_equal_cpu(model, tmp_path):
    _run(model, tmp_path / "cpu", "cpu", "NVFP4", "--no-eval")
    _run(model, tmp_path / "gpu", "cuda", "NVFP4", "--no-eval")
    cpu = load_file(str(tmp_path / "cpu" / "model.safetensors"))
    gpu = load_file(str(tmp_path / "gpu" / "model.safetensors"))
    assert sorted(cpu) == sorted(gpu)
    weights = [k for k in cpu if ".weight" in k and "input" not in k]
    assert any(k.endswith("weight_packed") for k in weights)
    for k in weights:
        assert torch.equal(cpu[k].view(torch.uint8) if cpu[k].dtype == torch.float8_e4m3fn
                           else cpu[k],
                           gpu[k].view(torch.uint8) if gpu[k].dtype == torch.float8_e4m3fn
                           else gpu[k]), k


def test_quantized_forward_on_gpu_runs_the_fake_weights(model, tmp_path):
    logits = {}
    for device in ("cpu", "cuda"):
        out = tmp_path / device
        _run(model, out, device, "W4A16", "--eval", str(model / "eval.jsonl"), "--eval-samples",
             "4", "--eval-seq-len", "16", "--save-eval-logits")
        logits[device] = load_file(str(out) + ".report/eval_logits.safetensors")
    cpu, gpu = logits["cpu"], logits["cuda"]
    # bf16 matmuls accumulate differently on the two devices, and a few logits of a tiny random
    # model differ by a tenth: compare means, where that noise averages out and running the
    # original weights instead of the fake ones would show as the whole quantization effect.
    quantization_effect = (gpu["logits_quantized"] - gpu["logits_reference"]).abs().mean()
    device_difference = (gpu["logits_quantized"] - cpu["logits_quantized"]).abs().mean()
    print(f"mean |gpu - cpu| quantized logits {device_difference:.4f}, mean quantization effect "
          f"{quantization_effect:.4f}, max |gpu - cpu| "
          f"{(gpu['logits_quantized'] - cpu['logits_quantized']).abs().max():.4f}")
    assert quantization_effect > 0
    assert device_difference < 0.25 * quantization_effect, (device_difference,
                                                            quantization_effect)


def test_a_layer_is_held_about_once_on_the_gpu(tmp_path):
    """report.json's per-layer GPU peak (the caching allocator's, load to release) against the
    layer's weight bytes: the one-copy path holds each layer's weights once, plus one projection's
    transient quantization and the (small) activations. Separate stored and fake copies would
    make it 2-3x."""
    fixture, config = MODELS["qwen3_moe"]
    config = dict(config, vocab_size=512, hidden_size=1024, moe_intermediate_size=512,
                  num_experts=32, num_experts_per_tok=4, num_hidden_layers=3, head_dim=64,
                  num_attention_heads=8, num_key_value_heads=4)
    model = tmp_path / "model"
    _make_model(str(model), fixture, config)
    _write_tokens(model / "calib.jsonl", config["vocab_size"], 8, 32, 1)
    out = tmp_path / "out"
    _run(model, out, "cuda", "NVFP4", "--no-eval")
    report = json.load(open(f"{out}.report/report.json"))
    stored = load_file(str(model / "model.safetensors"))
    for layer in report["layers"]:
        prefix = f"model.layers.{layer['index']}."
        layer_bytes = sum(t.numel() * t.element_size() for k, t in stored.items()
                          if k.startswith(prefix))
        # bf16 stored and computed, so resident equals stored (the router's fp32 copy aside).
        assert layer_bytes <= layer["weight_bytes"] < 1.01 * layer_bytes
        peak = layer["peak_device_bytes"]
        print(f"layer {layer['index']}: weights {layer_bytes / 2**20:.1f} MiB, "
              f"peak {peak / 2**20:.1f} MiB ({peak / layer_bytes:.2f}x), reserved "
              f"{layer['peak_device_reserved_bytes'] / 2**20:.1f} MiB")
        assert layer_bytes <= peak < 1.5 * layer_bytes + 32 * 2**20, (layer, layer_bytes)
    assert report["run"]["peak_device_bytes"] >= max(l["peak_device_bytes"]
                                                     for l in report["layers"])
