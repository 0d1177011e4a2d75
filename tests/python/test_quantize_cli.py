"""`moeq quantize` end to end: the CLI quantizes tiny random checkpoints in the hub layout, and a
real client (transformers 5.17.0 with compressed-tensors 0.20.0) loads what it wrote.

For every architecture and the schemes W4A16, W8A8-FP8-DYNAMIC, FP8-block, NVFP4 and W8A8-INT8:
transformers' `from_pretrained` loads the exported checkpoint and its logits on the evaluation
tokens match the logits of moeq's own fake-quantized forward (written by --save-eval-logits).
And each failure mode gives a clear error and leaves nothing under the output name.
"""
import importlib.util
import json
import os
import resource
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BUILD = os.environ.get("MOEQ_BUILD_DIR", os.path.join(ROOT, "build"))
MOEQ = os.path.join(BUILD, "tools", "cli", "moeq")
SCRIPT = os.path.join(ROOT, "tools", "fixtures", "make_tiny_moe.py")

# Dimensions divisible by 128 so that every scheme's group and block sizes hold (vLLM's
# constraints are checked by the exporter).
MODELS = {
    "mixtral": ("mixtral", dict(vocab_size=160, hidden_size=128, intermediate_size=256,
                                num_hidden_layers=2, num_attention_heads=4,
                                num_key_value_heads=2, num_local_experts=4,
                                num_experts_per_tok=2, max_position_embeddings=256,
                                rms_norm_eps=1e-5)),
    "qwen3_moe": ("qwen3_moe", dict(vocab_size=176, hidden_size=128, intermediate_size=256,
                                    moe_intermediate_size=128, num_hidden_layers=2,
                                    num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                                    num_experts=8, num_experts_per_tok=2, norm_topk_prob=True,
                                    max_position_embeddings=256, rope_theta=1000000.0)),
    "qwen2_moe": ("qwen2_moe", dict(vocab_size=192, hidden_size=128, intermediate_size=256,
                                    moe_intermediate_size=128,
                                    shared_expert_intermediate_size=256, num_hidden_layers=2,
                                    num_attention_heads=4, num_key_value_heads=4,
                                    num_experts=8, num_experts_per_tok=4, norm_topk_prob=False,
                                    max_position_embeddings=256, rope_theta=1000000.0)),
}
SCHEMES = ["W4A16", "W8A8-FP8-DYNAMIC", "FP8-block", "NVFP4", "W8A8-INT8"]
PRESETS = {"W4A16": "W4A16", "W8A8-FP8-DYNAMIC": "FP8_DYNAMIC", "FP8-block": "FP8_BLOCK",
           "NVFP4": "NVFP4", "W8A8-INT8": "W8A8"}

# transformers 5.17 fuses MoE experts in memory and decompresses per-expert compressed-tensors
# checkpoints into the fused parameters itself (core_model_loading.DecompressExperts). Measured
# here: that path is exact for integer weight-only schemes, but it ignores NVFP4's global scales
# (reported as UNEXPECTED keys, weights off by ~10^4), fails on FP8 block scales ("size of tensor
# a (256) must match ... (2)"), and runs the fused experts without the scheme's activation
# quantization. Those cases are expected failures of the client, kept strict so that a fixed
# transformers turns them into passes; the decompression test below covers every scheme.
CLIENT_LIMITS = {
    "W8A8-FP8-DYNAMIC": "transformers runs fused experts without activation quantization",
    "FP8-block": "transformers' DecompressExperts fails on FP8 block scales",
    "NVFP4": "transformers' DecompressExperts ignores NVFP4 global scales",
    "W8A8-INT8": "transformers runs fused experts without activation quantization",
}


def _fixture_module():
    spec = importlib.util.spec_from_file_location("make_tiny_moe", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _make_model(out_dir, fixture, config):
    m = _fixture_module()
    spec = dict(m.FIXTURES[fixture])
    torch.manual_seed(0)
    model = spec["cls"](spec["config_cls"](**config)).eval()
    m.randomize(model, 0)
    model = model.to(torch.bfloat16)  # published checkpoints are bf16
    m.save_hub_layout(model, out_dir)
    key = "num_local_experts" if fixture == "mixtral" else "num_experts"
    m.hub_style_config(out_dir, spec["config_style"], key)


def _write_tokens(path, vocab, rows, length, seed):
    g = torch.Generator().manual_seed(seed)
    with open(path, "w") as f:
        for _ in range(rows):
            f.write(json.dumps(torch.randint(vocab, (length,), generator=g).tolist()) + "\n")


@pytest.fixture(scope="session")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("quantize_models")
    out = {}
    for name, (fixture, config) in MODELS.items():
        d = root / name
        d.mkdir()
        _make_model(str(d), fixture, config)
        _write_tokens(d / "calib.jsonl", config["vocab_size"], 8, 32, 1)
        _write_tokens(d / "eval.jsonl", config["vocab_size"], 4, 24, 2)
        out[name] = d
    return out


def _quantize(model_dir, output, *extra, check=True, preexec=None):
    cmd = [MOEQ, "quantize", "--model", str(model_dir), "--output", str(output),
           "--calibration", str(model_dir / "calib.jsonl"), "--samples", "8", "--seq-len", "16",
           "--batch-size", "4", "--device", "cpu", *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, preexec_fn=preexec)
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def _siblings(path):
    """Everything next to `path` whose name starts with its name (temporaries included)."""
    parent, name = os.path.split(str(path))
    return sorted(n for n in os.listdir(parent) if n.startswith(name) or n.startswith("." + name))


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("arch", list(MODELS))
def test_decompressed_weights_equal_moeq_fake_quantized(models, tmp_path, arch, scheme):
    """compressed-tensors' own decompression of every exported module equals, bit for bit, the
    fake-quantized weight moeq's forward used."""
    from compressed_tensors.compressors import BaseCompressor
    from compressed_tensors.quantization import preset_name_to_scheme

    model_dir = models[arch]
    out = tmp_path / f"{arch}-{scheme}"
    _quantize(model_dir, out, "--scheme", scheme, "--save-fake-weights")
    qc = json.load(open(out / "config.json"))["quantization_config"]
    compressor = BaseCompressor.get_value_from_registry(qc["format"])
    ct_scheme = preset_name_to_scheme(PRESETS[scheme], ["Linear"])
    exported = load_file(str(out / "model.safetensors"))
    fake = load_file(str(out) + ".report/fake_weights.safetensors")
    assert len(fake) > 0
    experts = 0
    for name, expected in fake.items():
        module = name[: -len(".weight")]
        tensors = {k[len(module) + 1:]: v for k, v in exported.items()
                   if k.startswith(module + ".") and k[len(module) + 1:].startswith("weight")}
        # pack-quantized and nvfp4 write weight_packed; float/int-quantized keep the name
        # "weight" for the fp8/int8 values. Either way with a scale.
        assert "weight_scale" in tensors, f"{module}: exported unquantized"
        assert tensors.get("weight", tensors.get("weight_packed")).dtype != torch.bfloat16
        got = compressor.decompress(dict(tensors), ct_scheme)["weight"]
        assert got.dtype == torch.bfloat16
        assert torch.equal(got.float(), expected.float()), f"{arch} {scheme} {module}"
        experts += ".experts." in module
    assert experts > 0
    # Routers and the LM head stay in high precision and are listed in `ignore`.
    assert "lm_head" in qc["ignore"]
    assert all(k.endswith("weight") for k in exported if k.startswith("lm_head"))


@pytest.mark.parametrize("scheme", [
    pytest.param(s, marks=pytest.mark.xfail(reason=CLIENT_LIMITS[s], strict=True))
    if s in CLIENT_LIMITS else s for s in SCHEMES])
@pytest.mark.parametrize("arch", list(MODELS))
def test_transformers_loads_the_export_and_matches_moeq(models, tmp_path, arch, scheme):
    import transformers

    model_dir = models[arch]
    out = tmp_path / f"{arch}-{scheme}"
    _quantize(model_dir, out, "--scheme", scheme, "--eval", str(model_dir / "eval.jsonl"),
              "--eval-samples", "4", "--eval-seq-len", "16", "--save-eval-logits")
    config = json.load(open(out / "config.json"))
    qc = config["quantization_config"]
    assert qc["quant_method"] == "compressed-tensors"
    report = json.load(open(str(out) + ".report/report.json"))
    assert report["layers"], report
    saved = load_file(str(out) + ".report/eval_logits.safetensors")

    ids = saved["input_ids"]
    model = transformers.AutoModelForCausalLM.from_pretrained(str(out)).eval()
    with torch.no_grad():
        model(ids[:1, :2])  # compressed-tensors decompresses on the first forward
    # moeq's forward ran in fp32 on the bf16 fake-quantized weights: so does transformers here.
    for p in model.parameters():
        if p.is_floating_point():
            p.data = p.data.float()
    with torch.no_grad():
        logits = model(ids).logits.float()
    ref = saved["logits_quantized"]
    err = ((logits - ref).abs().max() / ref.abs().max()).item()
    # Same weights, fp32 both sides: only summation order differs.
    tolerance = 1e-5
    assert err < tolerance, f"{arch} {scheme}: max relative logit difference {err:.2e}"


def test_malformed_recipe_names_line_and_column(models, tmp_path):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(f"model:\n  path: {models['mixtral']}\n  colour: blue\nscheme: W4A16\n")
    out = tmp_path / "out"
    proc = _quantize(models["mixtral"], out, "--config", str(recipe), check=False)
    assert proc.returncode != 0
    assert "bad.yaml:3:3" in proc.stderr and "colour" in proc.stderr, proc.stderr
    assert _siblings(out) == []


def test_missing_shard_is_named(models, tmp_path):
    broken = tmp_path / "sharded"
    shutil.copytree(models["mixtral"], broken)
    # Make it sharded: an index pointing at a shard that is not there.
    from safetensors.torch import load_file as lf, save_file
    tensors = lf(str(broken / "model.safetensors"))
    names = sorted(tensors)
    half = len(names) // 2
    save_file({k: tensors[k] for k in names[:half]},
              str(broken / "model-00001-of-00002.safetensors"), metadata={"format": "pt"})
    os.remove(broken / "model.safetensors")
    index = {"metadata": {}, "weight_map": {
        k: ("model-00001-of-00002.safetensors" if i < half else "model-00002-of-00002.safetensors")
        for i, k in enumerate(names)}}
    (broken / "model.safetensors.index.json").write_text(json.dumps(index))
    out = tmp_path / "out"
    proc = _quantize(broken, out, "--scheme", "W4A16", check=False)
    assert proc.returncode != 0
    assert "model-00002-of-00002.safetensors" in proc.stderr, proc.stderr
    assert _siblings(out) == []


def test_unsupported_scheme_for_the_format_is_an_error(models, tmp_path):
    out = tmp_path / "out"
    proc = _quantize(models["mixtral"], out, "--scheme", "MXFP4", "--format", "modelopt",
                     check=False)
    assert proc.returncode != 0
    assert "MXFP4" in proc.stderr and "modelopt" in proc.stderr.lower(), proc.stderr
    assert _siblings(out) == []


def test_full_disk_leaves_no_partial_output(models, tmp_path):
    out = tmp_path / "out"

    def limit():  # a "disk" that fills after 64 KiB of any one file
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 << 10, 64 << 10))

    proc = _quantize(models["mixtral"], out, "--scheme", "W4A16", check=False, preexec=limit)
    assert proc.returncode != 0
    assert "error" in proc.stderr.lower(), proc.stderr
    assert _siblings(out) == []


def test_existing_output_is_kept_without_overwrite(models, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    proc = _quantize(models["mixtral"], out, "--scheme", "W4A16", check=False)
    assert proc.returncode != 0
    assert "exists" in proc.stderr, proc.stderr
    assert (out / "keep.txt").read_text() == "mine"


@pytest.mark.parametrize("dtype,factor", [("bfloat16", 1), ("float32", 2)])
def test_report_gives_each_layers_weight_bytes(models, tmp_path, dtype, factor):
    """report.json's weight_bytes is what the layer holds once loaded, in the compute dtype (the
    stored bf16 tensors, twice that in fp32; the router's fp32 copy is counted as held); on the
    CPU no GPU peak is measured. Each layer's time comes split into its phases."""
    out = tmp_path / "out"
    _quantize(models["mixtral"], out, "--scheme", "W4A16", "--dtype", dtype, "--no-eval")
    report = json.load(open(f"{out}.report/report.json"))
    stored = load_file(str(models["mixtral"] / "model.safetensors"))
    assert report["run"]["peak_device_bytes"] == 0
    for layer in report["layers"]:
        prefix = f"model.layers.{layer['index']}."
        layer_bytes = sum(t.numel() * t.element_size() for k, t in stored.items()
                          if k.startswith(prefix))
        router = stored[f"{prefix}block_sparse_moe.gate.weight"]
        held = layer["weight_bytes"]
        assert factor * layer_bytes <= held <= factor * layer_bytes + 2 * router.numel() * 2, \
            (layer["index"], held, layer_bytes)
        assert layer["peak_device_bytes"] == 0 and layer["peak_device_reserved_bytes"] == 0
        # Where the layer's time went: four consecutive phases, each timed, within the total.
        phases = layer["phase_seconds"]
        assert set(phases) == {"load", "calibrate", "quantize", "forward"}
        assert all(v > 0 for v in phases.values()), phases
        assert sum(phases.values()) <= layer["seconds"] + 1e-6, (phases, layer["seconds"])
        assert sum(phases.values()) > 0.9 * layer["seconds"], (phases, layer["seconds"])


def test_peak_host_memory_does_not_grow_with_the_layers(tmp_path):
    """A layer's mapped checkpoint pages leave the resident set when the layer is released: the
    peak host memory of a run over 8 layers is about that of a run over 2, not 6 layers more
    (bf16 on the CPU, where the resident weights are views of the mapped file)."""
    fixture, base = MODELS["qwen3_moe"]
    peaks, layer_bytes = {}, 0
    for layers in (2, 8):
        config = dict(base, vocab_size=256, hidden_size=512, moe_intermediate_size=512,
                      num_experts=16, num_hidden_layers=layers, head_dim=64,
                      num_attention_heads=8, num_key_value_heads=4)
        model = tmp_path / f"model{layers}"
        _make_model(str(model), fixture, config)
        _write_tokens(model / "calib.jsonl", config["vocab_size"], 8, 16, 1)
        out = tmp_path / f"out{layers}"
        recipe = tmp_path / f"recipe{layers}.yaml"  # small shards: little output held pending
        recipe.write_text(f"export:\n  output: {out}\n  shard_size: 8MB\n")
        # A fixed malloc mmap threshold: glibc otherwise raises it as large blocks are freed and
        # keeps later ones on its heap, which shows as growth in a model this small.
        cmd = [MOEQ, "quantize", "--model", str(model), "--output", str(out), "--config",
               str(recipe), "--calibration", str(model / "calib.jsonl"), "--samples", "8",
               "--seq-len", "16", "--batch-size", "4", "--device", "cpu", "--scheme", "W4A16",
               "--dtype", "bfloat16", "--no-eval"]
        proc = subprocess.run(cmd, capture_output=True, text=True,
                              env=dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072"))
        assert proc.returncode == 0, proc.stderr
        peaks[layers] = json.load(open(f"{out}.report/report.json"))["run"]["peak_host_bytes"]
        stored = load_file(str(model / "model.safetensors"))
        layer_bytes = sum(t.numel() * t.element_size() for k, t in stored.items()
                          if k.startswith("model.layers.0."))
    growth = peaks[8] - peaks[2]
    print(f"layer {layer_bytes / 2**20:.1f} MiB, peak host 2 layers {peaks[2] / 2**20:.1f} MiB, "
          f"8 layers {peaks[8] / 2**20:.1f} MiB")
    assert growth < 1.5 * layer_bytes, (growth, layer_bytes)
