"""DeepSeek-V3 (the hard tier's worked example) against transformers 5.17.0, and through moeq
quantize.

tools/fixtures/make_tiny_deepseek.py writes a tiny random DeepSeek-V3 in the hub layout (MLA,
dense first layer, grouped routing with a correction bias, shared expert, an MTP layer) in bf16,
and the same weights as FP8 blocks with weight_scale_inv (the fixture's own encoder), with
transformers' reference (for FP8: transformers on the fixture's own dequantization).
"""
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BUILD = os.environ.get("MOEQ_BUILD_DIR", os.path.join(ROOT, "build"))
MOEQ = os.path.join(BUILD, "tools", "cli", "moeq")
SCRIPTS = [os.path.join(ROOT, "tools", "fixtures", n)
           for n in ("make_tiny_deepseek.py", "make_tiny_fused_moe.py", "make_tiny_moe.py")]


@pytest.fixture(scope="session")
def tiny_deepseek():
    out = os.path.join(BUILD, "fixtures", "tiny_deepseek")
    stamp = os.path.join(out, ".stamp")
    h = hashlib.sha256()
    for s in SCRIPTS:
        h.update(open(s, "rb").read())
    if not (os.path.exists(stamp) and open(stamp).read() == h.hexdigest()):
        subprocess.run([sys.executable, SCRIPTS[0], out], check=True, stdout=subprocess.DEVNULL)
        open(stamp, "w").write(h.hexdigest())
    return out


@pytest.fixture(scope="session")
def model_ops():
    torch.ops.load_library(os.path.join(BUILD, "kernels", "libmoeq_kernels.so"))
    torch.ops.load_library(os.path.join(BUILD, "registry", "libmoeq_registry.so"))
    return torch.ops.moeq


@pytest.mark.parametrize("name", ["deepseek_v3", "deepseek_v3_fp8"])
def test_fp32_cpu_parity(name, tiny_deepseek, model_ops):
    d = os.path.join(tiny_deepseek, name)
    ref = load_file(os.path.join(d, "reference.safetensors"))
    b, checked = 0, 0
    while f"input_ids_{b}" in ref:
        logits, ids, weights = model_ops.run_model(
            d, ref[f"input_ids_{b}"], ref.get(f"attention_mask_{b}"), ref.get(f"position_ids_{b}"),
            torch.float32, None, False, "")
        valid = ref[f"valid_{b}"].bool()
        got, want = logits[valid], ref[f"logits_{b}"][valid]
        assert (got - want).abs().max() <= 1e-4 * want.abs().max(), f"{name} batch {b}"
        layers = sorted(int(k.rsplit("_", 1)[1]) for k in ref if k.startswith(f"topk_ids_{b}_"))
        assert layers == [1, 2] and len(ids) == 2  # layer 0 is dense
        flat = valid.reshape(-1)
        for g, w, layer in zip(ids, weights, layers):
            order = g.argsort(-1)  # transformers' topk(sorted=False): compare as sets
            assert torch.equal(g.gather(-1, order)[flat], ref[f"topk_ids_{b}_{layer}"][flat])
            torch.testing.assert_close(w.float().gather(-1, order)[flat],
                                       ref[f"topk_weights_{b}_{layer}"][flat], rtol=1e-4, atol=1e-6)
        checked += int(valid.sum())
        b += 1
    assert checked > 40


def _calibration(path, vocab=128):
    g = torch.Generator().manual_seed(1)
    with open(path, "w") as f:
        for _ in range(8):
            f.write(json.dumps(torch.randint(vocab, (32,), generator=g).tolist()) + "\n")


def _quantize(model_dir, output, calib, *extra):
    cmd = [MOEQ, "quantize", "--model", str(model_dir), "--output", str(output), "--calibration",
           str(calib), "--samples", "8", "--seq-len", "16", "--batch-size", "4", "--device", "cpu",
           "--no-eval", "--scheme", "W8A8-FP8-DYNAMIC", *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def test_fp8_source_quantizes_like_its_dequantized_twin_and_mtp_is_excluded(tiny_deepseek,
                                                                           tmp_path):
    calib = tmp_path / "calib.jsonl"
    _calibration(calib)
    fp8 = os.path.join(tiny_deepseek, "deepseek_v3_fp8")
    twin = tmp_path / "twin"
    shutil.copytree(os.path.join(fp8, "dequantized"), twin)
    _quantize(fp8, tmp_path / "a", calib)
    _quantize(twin, tmp_path / "b", calib)
    a = load_file(str(tmp_path / "a" / "model.safetensors"))
    b = load_file(str(tmp_path / "b" / "model.safetensors"))
    assert sorted(a) == sorted(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert not [k for k in a if k.endswith("_scale_inv")]
    # Every routed expert and the MLA projections are quantized, per expert, except kv_b_proj:
    # the plugin's quantization stage keeps it in high precision (the engines absorb it).
    assert a["model.layers.1.mlp.experts.5.up_proj.weight"].dtype == torch.float8_e4m3fn
    assert a["model.layers.2.self_attn.q_b_proj.weight"].dtype == torch.float8_e4m3fn
    assert a["model.layers.2.self_attn.kv_a_proj_with_mqa.weight"].dtype == torch.float8_e4m3fn
    assert a["model.layers.2.self_attn.kv_b_proj.weight"].dtype == torch.bfloat16
    # The MTP layer (model.layers.3) is copied through unquantized (dequantized from FP8) and
    # excluded in the config; the router and its correction bias stay as they were.
    assert a["model.layers.3.eh_proj.weight"].dtype == torch.bfloat16
    qc = json.load(open(tmp_path / "a" / "config.json"))["quantization_config"]
    assert qc["quant_method"] == "compressed-tensors"
    assert "model.layers.3.eh_proj" in qc["ignore"]
    assert "model.layers.1.mlp.gate" in qc["ignore"]
    assert "model.layers.2.self_attn.kv_b_proj" in qc["ignore"]
    assert a["model.layers.1.mlp.gate.e_score_correction_bias"].dtype == torch.float32


def test_mtp_layer_dropped_by_the_recipe(tiny_deepseek, tmp_path):
    calib = tmp_path / "calib.jsonl"
    _calibration(calib)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("scheme: W8A8-FP8-DYNAMIC\nquantize:\n  drop_excluded_layers: true\n")
    _quantize(os.path.join(tiny_deepseek, "deepseek_v3"), tmp_path / "out", calib,
              "--config", str(recipe))
    out = load_file(str(tmp_path / "out" / "model.safetensors"))
    assert not [k for k in out if k.startswith("model.layers.3.")]
    qc = json.load(open(tmp_path / "out" / "config.json"))["quantization_config"]
    assert not [m for m in qc["ignore"] if m.startswith("model.layers.3.")]


def test_inspect_shows_the_hard_tier(tiny_deepseek):
    proc = subprocess.run([MOEQ, "inspect", os.path.join(tiny_deepseek, "deepseek_v3_fp8"),
                           "--json"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert {(c["type"], c["tier"], c["experts"]) for c in out["claimed"]} == {
        ("DeepseekV3MoE", "hard", 8)}
    assert "FP8" in out["source"]
    assert "kv_b_proj" in out["pipeline_stages"] and "deepseek_v3" in out["pipeline_stages"]
    # The MTP layer's tensors are the only ones no module reads.
    assert out["unclaimed_tensors"] and all(
        t.startswith("model.layers.3.") for t in out["unclaimed_tensors"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", ["deepseek_v3", "deepseek_v3_fp8"])
def test_cuda_fp32_parity(name, tiny_deepseek, model_ops):
    """The FP8 source dequantized by the CUDA kernel, MLA and grouped routing on the GPU."""
    d = os.path.join(tiny_deepseek, name)
    ref = load_file(os.path.join(d, "reference.safetensors"))
    b = 0
    while f"input_ids_{b}" in ref:
        logits, _, _ = model_ops.run_model(
            d, ref[f"input_ids_{b}"], ref.get(f"attention_mask_{b}"), ref.get(f"position_ids_{b}"),
            torch.float32, torch.device("cuda"), False, "")
        valid = ref[f"valid_{b}"].bool()
        got, want = logits.cpu()[valid], ref[f"logits_{b}"][valid]
        assert (got - want).abs().max() <= 1e-4 * want.abs().max(), f"{name} batch {b}"
        b += 1


def _broken_copy(src, dst, edit_tensors=None, edit_config=None):
    from safetensors.torch import save_file
    os.makedirs(dst)
    config = json.load(open(os.path.join(src, "config.json")))
    if edit_config:
        edit_config(config)
    json.dump(config, open(os.path.join(dst, "config.json"), "w"))
    t = load_file(os.path.join(src, "model.safetensors"))
    if edit_tensors:
        edit_tensors(t)
    save_file(t, os.path.join(dst, "model.safetensors"))
    return dst


def _run(ops, d):
    return ops.run_model(d, torch.ones(1, 4, dtype=torch.long), None, None, torch.float32, None,
                         False, "")


def test_errors_name_the_tensor_or_key(tiny_deepseek, model_ops, tmp_path):
    fp8 = os.path.join(tiny_deepseek, "deepseek_v3_fp8")
    name = "model.layers.1.self_attn.o_proj.weight"
    d = _broken_copy(fp8, str(tmp_path / "scale_alone"), edit_tensors=lambda t: t.pop(name))
    with pytest.raises(RuntimeError, match=f"'{name}_scale_inv' has no weight '{name}' beside it"):
        _run(model_ops, d)

    def bad_groups(c):
        c["n_group"] = 3
    d = _broken_copy(fp8, str(tmp_path / "groups"), edit_config=bad_groups)
    with pytest.raises(RuntimeError, match="n_group 3 must divide n_routed_experts 8"):
        _run(model_ops, d)

    def bad_kv(c):
        c["num_key_value_heads"] = 2
    d = _broken_copy(fp8, str(tmp_path / "kv"), edit_config=bad_kv)
    with pytest.raises(RuntimeError, match="num_key_value_heads must equal num_attention_heads"):
        _run(model_ops, d)
    # DeepSeek-V2-style routing (softmax scores, greedy selection) is another model.
    for key, value, message in [
            ("scoring_func", "softmax", "DeepSeek-V3 routing is sigmoid, got scoring_func 'softmax'"),
            ("topk_method", "group_limited_greedy",
             "got topk_method 'group_limited_greedy'")]:
        d = _broken_copy(fp8, str(tmp_path / key), edit_config=lambda c: c.update({key: value}))
        with pytest.raises(RuntimeError, match=re.escape(message)):
            _run(model_ops, d)
    with pytest.raises(RuntimeError, match="experts_dispatch must be per_expert, batched or "
                                           "grouped, got 'fast'"):
        model_ops.run_model(fp8, torch.ones(1, 4, dtype=torch.long), None, None, torch.float32,
                            None, False, "fast")
