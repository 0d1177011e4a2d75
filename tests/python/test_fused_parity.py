"""Parity of the mid-tier models (fused 3-D experts) with transformers 5.17.0.

tools/fixtures/make_tiny_fused_moe.py writes tiny random GPT-OSS (bf16 experts, and MXFP4 experts
encoded by the fixture's own code) and Llama 4 checkpoints in the layouts transformers saves, with
transformers' logits and router choices. moeq runs them through torch.ops.moeq.run_model, which
builds the model from the in-tree plugins (gpt_oss, llama4), under every experts dispatch: the
per-expert matmul loop, one bmm over all experts, and the grouped matmul.

fp32 on CPU: logits within 1e-4 relative on every kept token, router top-k ids equal in order.
"""
import hashlib
import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BUILD = os.environ.get("MOEQ_BUILD_DIR", os.path.join(ROOT, "build"))
SCRIPTS = [os.path.join(ROOT, "tools", "fixtures", n)
           for n in ("make_tiny_fused_moe.py", "make_tiny_moe.py")]
FIXTURES = ["gpt_oss", "gpt_oss_mxfp4", "llama4"]
DISPATCHES = ["", "per_expert", "batched", "grouped"]


@pytest.fixture(scope="session")
def tiny_fused():
    out = os.path.join(BUILD, "fixtures", "tiny_fused_moe")
    stamp = os.path.join(out, ".stamp")
    h = hashlib.sha256()
    for s in SCRIPTS:
        with open(s, "rb") as f:
            h.update(f.read())
    version = h.hexdigest()
    if not (os.path.exists(stamp) and open(stamp).read() == version):
        subprocess.run([sys.executable, SCRIPTS[0], out], check=True, stdout=subprocess.DEVNULL)
        with open(stamp, "w") as f:
            f.write(version)
    return out


@pytest.fixture(scope="session")
def model_ops():
    torch.ops.load_library(os.path.join(BUILD, "kernels", "libmoeq_kernels.so"))
    torch.ops.load_library(os.path.join(BUILD, "registry", "libmoeq_registry.so"))
    return torch.ops.moeq


def _batches(ref):
    b = 0
    while f"input_ids_{b}" in ref:
        yield b, ref[f"input_ids_{b}"], ref.get(f"attention_mask_{b}"), ref.get(f"position_ids_{b}")
        b += 1


@pytest.mark.parametrize("dispatch", DISPATCHES)
@pytest.mark.parametrize("name", FIXTURES)
def test_fp32_cpu(name, dispatch, tiny_fused, model_ops):
    d = os.path.join(tiny_fused, name)
    ref = load_file(os.path.join(d, "reference.safetensors"))
    checked = 0
    for b, ids, mask, pos in _batches(ref):
        logits, topk_ids, topk_weights = model_ops.run_model(
            d, ids, mask, pos, torch.float32, None, False, dispatch)
        valid = ref[f"valid_{b}"].bool()
        got, want = logits[valid], ref[f"logits_{b}"][valid]
        err, scale = (got - want).abs().max(), want.abs().max()
        assert err <= 1e-4 * scale, f"{name}/{dispatch} batch {b}: |diff| {err:.3g} of {scale:.3g}"
        layers = sorted(int(k.rsplit("_", 1)[1]) for k in ref if k.startswith(f"topk_ids_{b}_"))
        assert len(topk_ids) == len(layers)
        flat = valid.reshape(-1)
        for got_ids, got_w, layer in zip(topk_ids, topk_weights, layers):
            assert torch.equal(got_ids[flat], ref[f"topk_ids_{b}_{layer}"][flat]), (
                f"{name} batch {b} layer {layer}: router choices differ")
            torch.testing.assert_close(got_w[flat].float(), ref[f"topk_weights_{b}_{layer}"][flat],
                                       rtol=1e-4, atol=1e-6)
        checked += int(valid.sum())
    assert checked > 40


def test_hub_layouts(tiny_fused):
    gpt = load_file(os.path.join(tiny_fused, "gpt_oss", "model.safetensors"))
    assert gpt["model.layers.0.mlp.experts.gate_up_proj"].shape == (4, 64, 128)
    assert gpt["model.layers.0.mlp.experts.down_proj_bias"].shape == (4, 64)
    assert gpt["model.layers.1.self_attn.sinks"].shape == (4,)
    mx = load_file(os.path.join(tiny_fused, "gpt_oss_mxfp4", "model.safetensors"))
    assert mx["model.layers.0.mlp.experts.gate_up_proj_blocks"].shape == (4, 128, 2, 16)
    assert mx["model.layers.0.mlp.experts.down_proj_scales"].dtype == torch.uint8
    assert "model.layers.0.mlp.experts.gate_up_proj" not in mx
    llama = load_file(os.path.join(tiny_fused, "llama4", "model.safetensors"))
    assert llama["model.layers.1.feed_forward.experts.gate_up_proj"].shape == (4, 64, 96)
    assert "model.layers.1.feed_forward.shared_expert.up_proj.weight" in llama
    assert "model.layers.0.feed_forward.down_proj.weight" in llama  # dense layer


def test_mxfp4_source_error_names_tensor(tiny_fused, model_ops, tmp_path):
    """A blocks tensor without its scales is an error naming both."""
    from safetensors.torch import save_file
    import shutil
    src = os.path.join(tiny_fused, "gpt_oss_mxfp4")
    dst = tmp_path / "broken"
    dst.mkdir()
    shutil.copy(os.path.join(src, "config.json"), dst / "config.json")
    t = load_file(os.path.join(src, "model.safetensors"))
    del t["model.layers.1.mlp.experts.down_proj_scales"]
    save_file(t, str(dst / "model.safetensors"))
    with pytest.raises(RuntimeError, match="down_proj_blocks.*down_proj_scales"):
        model_ops.run_model(str(dst), torch.ones(1, 4, dtype=torch.long), None, None,
                            torch.float32, None, False, "")


def test_inspect_shows_the_mid_tier(tiny_fused):
    """moeq inspect: the experts are claimed by the mid adapter with their count, and the MXFP4
    blocks/scales are read through the dequantizing source (no tensor left unread)."""
    import json as _json
    moeq = os.path.join(BUILD, "tools", "cli", "moeq")
    proc = subprocess.run([moeq, "inspect", os.path.join(tiny_fused, "gpt_oss_mxfp4"), "--json"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    out = _json.loads(proc.stdout)
    tiers = {(c["type"], c["tier"], c["experts"]) for c in out["claimed"]}
    assert tiers == {("GptOssMLP", "easy", 4), ("GptOssExperts", "mid", 4)}
    assert out["unclaimed_tensors"] == []
    assert "MXFP4" in out["source"]
    assert out["moe_modules_without_adapter"] == []


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dispatch", ["per_expert", "batched", "grouped"])
@pytest.mark.parametrize("name", FIXTURES)
def test_cuda(name, dispatch, tiny_fused, model_ops):
    """On CUDA: fp32 within the CPU test's tolerance of transformers' fp32 reference under every
    dispatch; bf16 (the grouped dispatch uses torch's _grouped_mm there) close to fp32: mean
    |diff| <= 1e-2 * max|logit| on tokens whose choices agree with the reference."""
    d = os.path.join(tiny_fused, name)
    ref = load_file(os.path.join(d, "reference.safetensors"))
    cuda = torch.device("cuda")
    for b, ids, mask, pos in _batches(ref):
        valid = ref[f"valid_{b}"].bool()
        want = ref[f"logits_{b}"][valid]
        logits, _, _ = model_ops.run_model(d, ids, mask, pos, torch.float32, cuda, False, dispatch)
        got = logits.cpu()[valid]
        assert (got - want).abs().max() <= 1e-4 * want.abs().max(), f"{name}/{dispatch} b{b}"
        logits16, ids16, _ = model_ops.run_model(d, ids, mask, pos, torch.bfloat16, cuda, False,
                                                 dispatch)
        assert logits16.dtype == torch.bfloat16
        diff = (logits16.float().cpu()[valid] - want).abs()
        assert diff.mean() <= 1e-2 * want.abs().max(), f"{name}/{dispatch} b{b} bf16"


def test_layer_types_errors_name_the_key(tiny_fused, model_ops, tmp_path):
    import json as _json
    for name, bad in (("gpt_oss", "chunked_attention"), ("llama4", "sliding_attention")):
        src = os.path.join(tiny_fused, name)
        d = tmp_path / name
        d.mkdir()
        shutil.copy(os.path.join(src, "model.safetensors"), d / "model.safetensors")
        config = _json.load(open(os.path.join(src, "config.json")))
        config["layer_types"] = [bad] * config["num_hidden_layers"]
        _json.dump(config, open(d / "config.json", "w"))
        with pytest.raises(RuntimeError, match=f"layer_types\\[0\\] is '{bad}'"):
            model_ops.run_model(str(d), torch.ones(1, 4, dtype=torch.long), None, None,
                                torch.float32, None, False, "")
