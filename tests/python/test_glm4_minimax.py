"""GLM-4.5 (Glm4MoeForCausalLM) and MiniMax-M2 (MiniMaxM2ForCausalLM) against transformers 5.17.0,
and through moeq quantize.

tools/fixtures/make_tiny_glm4_minimax.py writes tiny random checkpoints in the hub layout under the
published tensor names: GLM-4.5 (partial RoPE, q/k norm, attention biases, dense first layer,
grouped sigmoid routing with a correction bias, shared expert, an MTP layer) and MiniMax-M2
(full-width q/k norm, partial RoPE, sigmoid routing with the block's correction bias, experts
w1/w2/w3) in bf16 and as FP8 blocks with weight_scale_inv, with transformers' reference (for FP8:
transformers on the fixture's own dequantization).

GLM-4.5-FP8 as published (glm4_moe_fp8: a compressed-tensors float-quantized release, FP8 weights
with per-channel weight_scale, dynamic per-token activations, lm_head and routers ignored, written
by compressed-tensors' own compressor) is read as a source: moeq's unquantized forward on it equals
transformers' on compressed-tensors' decompression of it, and `moeq quantize --scheme W4A16` of it
is byte-identical to quantizing that decompression as a plain bf16 checkpoint, with the compiled
plugin and with the YAML-declared model.
"""
import hashlib
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BUILD = os.environ.get("MOEQ_BUILD_DIR", os.path.join(ROOT, "build"))
MOEQ = os.path.join(BUILD, "tools", "cli", "moeq")
SCRIPTS = [os.path.join(ROOT, "tools", "fixtures", n)
           for n in ("make_tiny_glm4_minimax.py", "make_tiny_deepseek.py",
                     "make_tiny_fused_moe.py", "make_tiny_moe.py")]
MOE_LAYERS = {"glm4_moe": [1, 2], "minimax_m2": [0, 1], "minimax_m2_fp8": [0, 1]}


@pytest.fixture(scope="session")
def tiny_models():
    out = os.path.join(BUILD, "fixtures", "tiny_glm4_minimax")
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


def _parity(ops, d, ref, layers, device=None):
    """Max relative logit error over the reference batches; router choices must be identical."""
    worst, checked, b = 0.0, 0, 0
    while f"input_ids_{b}" in ref:
        logits, ids, weights = ops.run_model(
            d, ref[f"input_ids_{b}"], ref.get(f"attention_mask_{b}"), ref.get(f"position_ids_{b}"),
            torch.float32, device, False, "")
        valid = ref[f"valid_{b}"].bool()
        got, want = logits.cpu()[valid], ref[f"logits_{b}"][valid]
        worst = max(worst, float((got - want).abs().max() / want.abs().max()))
        assert sorted(int(k.rsplit("_", 1)[1]) for k in ref
                      if k.startswith(f"topk_ids_{b}_")) == layers
        assert len(ids) == len(layers)
        flat = valid.reshape(-1)
        for g, w, layer in zip(ids, weights, layers):
            g, w = g.cpu(), w.cpu()
            order = g.argsort(-1)  # transformers' topk(sorted=False): compare as sets
            assert torch.equal(g.gather(-1, order)[flat], ref[f"topk_ids_{b}_{layer}"][flat]), (
                f"{d} batch {b} layer {layer}: expert choices differ")
            torch.testing.assert_close(w.float().gather(-1, order)[flat],
                                       ref[f"topk_weights_{b}_{layer}"][flat], rtol=1e-4, atol=1e-6)
        checked += int(valid.sum())
        b += 1
    assert checked > 40
    return worst


@pytest.mark.parametrize("name", ["glm4_moe", "minimax_m2", "minimax_m2_fp8"])
def test_fp32_cpu_parity(name, tiny_models, model_ops):
    d = os.path.join(tiny_models, name)
    ref = load_file(os.path.join(d, "reference.safetensors"))
    worst = _parity(model_ops, d, ref, MOE_LAYERS[name])
    print(f"{name}: max relative logit error {worst:.3g}")
    assert worst <= 1e-4, name


def _copy(src, dst, edit_config=None, edit_tensors=None):
    os.makedirs(dst)
    config = json.load(open(os.path.join(src, "config.json")))
    if edit_config:
        edit_config(config)
    json.dump(config, open(os.path.join(dst, "config.json"), "w"))
    if edit_tensors:
        t = load_file(os.path.join(src, "model.safetensors"))
        edit_tensors(t)
        save_file(t, os.path.join(dst, "model.safetensors"))
    else:
        shutil.copy(os.path.join(src, "model.safetensors"), dst)
    return dst


def test_glm4_partial_rotary_defaults_to_half(tiny_models, model_ops, tmp_path):
    """Glm4MoeConfig defaults partial_rotary_factor to 0.5: a config without it is the same model."""
    src = os.path.join(tiny_models, "glm4_moe")

    def drop(c):
        c.pop("partial_rotary_factor")
        c["rope_parameters"].pop("partial_rotary_factor")
    d = _copy(src, str(tmp_path / "glm"), edit_config=drop)
    ref = load_file(os.path.join(src, "reference.safetensors"))
    assert _parity(model_ops, d, ref, MOE_LAYERS["glm4_moe"]) <= 1e-4


def test_minimax_rotary_dim_alone(tiny_models, model_ops, tmp_path):
    """The published MiniMax-M2 config spells the rotary width rotary_dim; alone it gives the same
    partial RoPE as transformers' partial_rotary_factor."""
    src = os.path.join(tiny_models, "minimax_m2")

    def drop(c):
        c["rope_parameters"].pop("partial_rotary_factor")
    d = _copy(src, str(tmp_path / "mm"), edit_config=drop)
    ref = load_file(os.path.join(src, "reference.safetensors"))
    assert _parity(model_ops, d, ref, MOE_LAYERS["minimax_m2"]) <= 1e-4


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


def test_glm4_quantize_exports_every_expert_and_copies_the_mtp_layer(tiny_models, tmp_path):
    calib = tmp_path / "calib.jsonl"
    _calibration(calib)
    _quantize(os.path.join(tiny_models, "glm4_moe"), tmp_path / "out", calib)
    out = load_file(str(tmp_path / "out" / "model.safetensors"))
    for e in range(8):
        for proj in ("gate_proj", "up_proj", "down_proj"):
            assert out[f"model.layers.2.mlp.experts.{e}.{proj}.weight"].dtype == torch.float8_e4m3fn
    assert out["model.layers.1.mlp.shared_experts.down_proj.weight"].dtype == torch.float8_e4m3fn
    assert out["model.layers.0.mlp.gate_proj.weight"].dtype == torch.float8_e4m3fn  # dense layer
    assert out["model.layers.1.self_attn.q_proj.weight"].dtype == torch.float8_e4m3fn
    assert out["model.layers.1.self_attn.q_proj.bias"].dtype == torch.bfloat16
    assert out["model.layers.1.mlp.gate.e_score_correction_bias"].dtype == torch.float32
    # The MTP layer (model.layers.3) is copied through unquantized and excluded in the config.
    assert out["model.layers.3.eh_proj.weight"].dtype == torch.bfloat16
    qc = json.load(open(tmp_path / "out" / "config.json"))["quantization_config"]
    assert qc["quant_method"] == "compressed-tensors"
    assert "model.layers.3.eh_proj" in qc["ignore"]
    assert "model.layers.1.mlp.gate" in qc["ignore"]


def test_minimax_fp8_source_quantizes_like_its_dequantized_twin(tiny_models, tmp_path):
    calib = tmp_path / "calib.jsonl"
    _calibration(calib)
    fp8 = os.path.join(tiny_models, "minimax_m2_fp8")
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
    for e in range(8):
        assert a[f"model.layers.1.block_sparse_moe.experts.{e}.w2.weight"].dtype == (
            torch.float8_e4m3fn)
    assert a["model.layers.0.self_attn.k_proj.weight"].dtype == torch.float8_e4m3fn
    assert a["model.layers.0.self_attn.q_norm.weight"].dtype == torch.bfloat16
    assert a["model.layers.0.block_sparse_moe.gate.weight"].dtype == torch.bfloat16
    assert a["model.layers.0.block_sparse_moe.e_score_correction_bias"].dtype == torch.float32
    qc = json.load(open(tmp_path / "a" / "config.json"))["quantization_config"]
    assert qc["quant_method"] == "compressed-tensors"
    assert "model.layers.0.block_sparse_moe.gate" in qc["ignore"]


def test_inspect_claims_the_blocks(tiny_models):
    expect = {"glm4_moe": ("Glm4MoeMoE", 8), "minimax_m2_fp8": ("MiniMaxM2SparseMoeBlock", 8)}
    for name, (block, experts) in expect.items():
        proc = subprocess.run([MOEQ, "inspect", os.path.join(tiny_models, name), "--json"],
                              capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        out = json.loads(proc.stdout)
        assert {(c["type"], c["tier"], c["experts"]) for c in out["claimed"]} == {
            (block, "easy", experts)}
        if name == "glm4_moe":  # only the MTP layer's tensors are read by no module
            assert out["unclaimed_tensors"] and all(
                t.startswith("model.layers.3.") for t in out["unclaimed_tensors"])
        else:
            assert "FP8" in out["source"]
            assert not out["unclaimed_tensors"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", ["glm4_moe", "minimax_m2", "minimax_m2_fp8"])
def test_cuda_fp32_parity(name, tiny_models, model_ops):
    d = os.path.join(tiny_models, name)
    ref = load_file(os.path.join(d, "reference.safetensors"))
    assert _parity(model_ops, d, ref, MOE_LAYERS[name], torch.device("cuda")) <= 1e-4


def _run(ops, d):
    return ops.run_model(d, torch.ones(1, 4, dtype=torch.long), None, None, torch.float32, None,
                         False, "")


def test_errors_name_the_key_or_tensor(tiny_models, model_ops, tmp_path):
    glm = os.path.join(tiny_models, "glm4_moe")

    def bad_groups(c):
        c["n_group"] = 3
    d = _copy(glm, str(tmp_path / "groups"), edit_config=bad_groups)
    with pytest.raises(RuntimeError, match="n_group 3 must divide n_routed_experts 8"):
        _run(model_ops, d)

    def bad_dense(c):
        c["first_k_dense_replace"] = 5
    d = _copy(glm, str(tmp_path / "dense"), edit_config=bad_dense)
    with pytest.raises(RuntimeError, match=r"first_k_dense_replace must be in \[0, "
                                           r"num_hidden_layers 3\], got 5"):
        _run(model_ops, d)

    mm = os.path.join(tiny_models, "minimax_m2_fp8")

    def bad_rotary(c):
        c["rotary_dim"] = 4
    d = _copy(mm, str(tmp_path / "rotary"), edit_config=bad_rotary)
    with pytest.raises(RuntimeError, match="rotary_dim 4 disagrees with partial_rotary_factor 0.5"):
        _run(model_ops, d)

    def per_head(c):
        c["qk_norm_type"] = "per_head"
    d = _copy(mm, str(tmp_path / "qknorm"), edit_config=per_head)
    with pytest.raises(RuntimeError, match="qk_norm_type 'per_head' is not supported"):
        _run(model_ops, d)

    name = "model.layers.1.block_sparse_moe.experts.2.w3.weight"
    d = _copy(mm, str(tmp_path / "scale_alone"), edit_tensors=lambda t: t.pop(name))
    with pytest.raises(RuntimeError, match=f"'{name}_scale_inv' has no weight '{name}' beside it"):
        _run(model_ops, d)


# ---- GLM-4.5-FP8 as published: a compressed-tensors release read as the source ------------------

GLM_YAML = os.path.join(ROOT, "tools", "recipes", "models", "glm4_moe.yaml")
W4A16_RUN = ["--scheme", "W4A16", "--samples", "8", "--seq-len", "16", "--batch-size", "4",
             "--device", "cpu", "--dtype", "float32", "--eval-samples", "4", "--eval-seq-len",
             "16", "--save-eval-logits"]


@pytest.fixture(scope="module")
def glm_fp8(tiny_models, tmp_path_factory):
    """moeq quantize --scheme W4A16 (fp32, CPU, with the evaluation's logits and routing) of the FP8
    release with the compiled plugin and with the declared model, and of compressed-tensors'
    decompression of it: {run: output directory}."""
    release = os.path.join(tiny_models, "glm4_moe_fp8")
    work = tmp_path_factory.mktemp("glm_fp8")
    tokens = work / "tokens.jsonl"
    _calibration(tokens)
    runs = {"release": (release, []), "decompressed": (os.path.join(release, "dequantized"), []),
            "declared": (release, ["--plugin", GLM_YAML])}
    out = {}
    for name, (model, extra) in runs.items():
        out[name] = work / name
        proc = subprocess.run(
            [MOEQ, "quantize", "--model", model, "--output", str(out[name]), "--calibration",
             str(tokens), "--eval", str(tokens), *W4A16_RUN, "--save-routing",
             str(work / f"{name}.routing.safetensors"), *extra], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        if model == release:  # read through the decompression, not as stored
            assert "is a compressed-tensors float-quantized checkpoint" in proc.stderr, proc.stderr
    return release, work, out


def test_glm4_fp8_release_is_what_compressed_tensors_writes(glm_fp8):
    release, _, _ = glm_fp8
    qc = json.load(open(os.path.join(release, "config.json")))["quantization_config"]
    assert (qc["quant_method"], qc["format"], qc["quantization_status"]) == (
        "compressed-tensors", "float-quantized", "compressed")
    (group,) = qc["config_groups"].values()
    assert group["targets"] == ["Linear"]
    w, a = group["weights"], group["input_activations"]
    assert (w["type"], w["num_bits"], w["strategy"], w["dynamic"]) == ("float", 8, "channel", False)
    assert (a["type"], a["num_bits"], a["strategy"], a["dynamic"]) == ("float", 8, "token", True)
    assert sorted(qc["ignore"]) == ["lm_head", "model.layers.1.mlp.gate", "model.layers.2.mlp.gate"]
    t = load_file(os.path.join(release, "model.safetensors"))
    for name in ("model.layers.2.mlp.experts.7.down_proj", "model.layers.1.self_attn.q_proj",
                 "model.layers.0.mlp.gate_proj", "model.layers.3.eh_proj"):
        assert t[name + ".weight"].dtype == torch.float8_e4m3fn, name
        assert t[name + ".weight_scale"].shape == (t[name + ".weight"].shape[0], 1), name
    for name in ("model.layers.1.mlp.gate", "lm_head"):
        assert t[name + ".weight"].dtype == torch.bfloat16 and name + ".weight_scale" not in t
    assert t["model.layers.1.mlp.gate.e_score_correction_bias"].dtype == torch.float32


@torch.no_grad()
def _transformers_forward(model_dir, input_ids):
    """transformers' fp32 logits and each MoE layer's router top-k ids (sorted per token)."""
    import transformers
    model = transformers.AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=torch.float32, attn_implementation="eager",
        experts_implementation="eager").eval()
    routed = {}
    handles = [layer.mlp.gate.register_forward_hook(
        lambda m, args, out, i=i: routed.__setitem__(i, out[2]))
        for i, layer in enumerate(model.model.layers) if hasattr(layer.mlp, "gate")]
    logits = model(input_ids).logits
    for h in handles:
        h.remove()
    return logits, {i: ids.reshape(-1, ids.shape[-1]).sort(-1).values for i, ids in routed.items()}


@pytest.mark.parametrize("run", ["release", "declared"])
def test_glm4_fp8_release_forward_equals_transformers_on_its_decompression(glm_fp8, run):
    release, work, out = glm_fp8
    saved = load_file(str(out[run]) + ".report/eval_logits.safetensors")
    routing = load_file(str(work / f"{run}.routing.safetensors"))
    logits, routed = _transformers_forward(os.path.join(release, "dequantized"),
                                           saved["input_ids"])
    ours = saved["logits_reference"]
    assert ours.shape == logits.shape and ours.shape[0] * ours.shape[1] == 64
    err = float((ours - logits).abs().max() / logits.abs().max())
    print(f"glm4_moe_fp8 ({run}): moeq vs transformers on compressed-tensors' decompression, "
          f"fp32 CPU logits {tuple(ours.shape)}: max relative error {err:.3g}")
    assert err <= 1e-4
    assert sorted(routed) == MOE_LAYERS["glm4_moe"]
    for i, ids in routed.items():
        assert torch.equal(routing[f"layers.{i}.reference.topk_ids"].long().sort(-1).values,
                           ids), f"layer {i}: expert choices differ"


def test_glm4_fp8_release_requantizes_like_its_decompression(glm_fp8):
    _, _, out = glm_fp8
    for run in ("release", "declared"):
        for f in ("model.safetensors", "config.json"):
            assert (out[run] / f).read_bytes() == (out["decompressed"] / f).read_bytes(), (run, f)
    t = load_file(str(out["release"] / "model.safetensors"))
    assert not [k for k in t if k.endswith(".weight") and t[k].dtype == torch.float8_e4m3fn]
    assert t["model.layers.2.mlp.experts.7.down_proj.weight_packed"].dtype == torch.int32
    assert t["model.layers.3.eh_proj.weight"].dtype == torch.bfloat16  # MTP: decompressed, copied
    assert t["model.layers.1.mlp.gate.weight"].dtype == torch.bfloat16
    qc = json.load(open(out["release"] / "config.json"))["quantization_config"]
    assert qc["format"] == "pack-quantized"
    assert "model.layers.1.mlp.gate" in qc["ignore"]


def test_glm4_fp8_release_runs_and_evaluates_decompressed(glm_fp8, model_ops, tmp_path):
    """run_model and moeq eval read the release as moeq quantize does: the same numbers as its
    decompression, never the FP8 codes as values."""
    release, work, out = glm_fp8
    ids = torch.randint(128, (2, 12), generator=torch.Generator().manual_seed(3))
    a = _run_ids(model_ops, release, ids)
    b = _run_ids(model_ops, os.path.join(release, "dequantized"), ids)
    assert torch.equal(a[0], b[0])
    for x, y in zip(a[1], b[1]):
        assert torch.equal(x, y)
    saved = {}
    for name, model in (("release", release), ("decompressed", os.path.join(release,
                                                                             "dequantized"))):
        proc = subprocess.run(
            [MOEQ, "eval", "--model", model, "--quantized", str(out["release"]), "--eval",
             str(work / "tokens.jsonl"), "--eval-samples", "4", "--eval-seq-len", "16",
             "--device", "cpu", "--dtype", "float32", "--report", str(tmp_path / name),
             "--save-logits"], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        saved[name] = load_file(str(tmp_path / name / "eval_logits.safetensors"))
    for key in ("logits_reference", "logits_quantized"):
        assert torch.equal(saved["release"][key], saved["decompressed"][key]), key


def _run_ids(ops, d, ids):
    return ops.run_model(d, ids, None, None, torch.float32, None, False, "")


def test_fp8_codes_the_reader_does_not_decode_are_an_error(glm_fp8, model_ops, tmp_path):
    """The same tensors under a quantization_config moeq does not decode (not compressed-tensors):
    the plugin gets the stored FP8 codes, and loading them is an error naming the tensor."""
    release, _, _ = glm_fp8

    def other_method(c):
        c["quantization_config"]["quant_method"] = "fp8"
    d = _copy(release, str(tmp_path / "fp8"), edit_config=other_method)
    with pytest.raises(RuntimeError, match=r"tensor 'model\.layers\.0\.self_attn\.q_proj\.weight' is "
                                           r"stored as Float8_e4m3fn \(quantized\), and this source "
                                           r"does not decompress it"):
        _run(model_ops, d)
