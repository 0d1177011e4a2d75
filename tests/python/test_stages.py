"""The hard tier's pipeline stages (core/pipeline/include/moeq/pipeline/stages.h), driven through a
real plugin: tests/plugins/stages_probe overrides all five stages of MixtralForCausalLM (source
renaming, calibration routing, quantization, export naming, layers to skip) and the exported
checkpoint shows each one.
"""
import json
import os
import subprocess

import pytest
import torch
from safetensors.torch import load_file, save_file

from test_quantize_cli import BUILD, MOEQ, _make_model, _write_tokens

PROBE = os.path.join(BUILD, "tests", "plugins", "libmoeq_plugin_stages_probe.so")
CONFIG = dict(vocab_size=160, hidden_size=128, intermediate_size=256, num_hidden_layers=3,
              num_attention_heads=4, num_key_value_heads=2, num_local_experts=4,
              num_experts_per_tok=2, max_position_embeddings=256, rms_norm_eps=1e-5)


@pytest.fixture(scope="module")
def vendor_model(tmp_path_factory):
    """A Mixtral checkpoint whose tensors are stored as "transformer.*" instead of "model.*"."""
    d = tmp_path_factory.mktemp("stages_model")
    _make_model(str(d), "mixtral", CONFIG)
    _write_tokens(d / "calib.jsonl", CONFIG["vocab_size"], 8, 32, 1)
    for name in os.listdir(d):
        if name.endswith(".safetensors"):
            tensors = load_file(str(d / name))
            renamed = {("transformer." + k[6:] if k.startswith("model.") else k): v
                       for k, v in tensors.items()}
            save_file(renamed, str(d / name), metadata={"format": "pt"})
        if name.endswith(".index.json"):
            index = json.load(open(d / name))
            index["weight_map"] = {("transformer." + k[6:] if k.startswith("model.") else k): v
                                   for k, v in index["weight_map"].items()}
            json.dump(index, open(d / name, "w"))
    return d


def _quantize(model_dir, output, *plugins):
    args = []
    for p in plugins:
        args += ["--plugin", p]
    return subprocess.run(
        [MOEQ, "quantize", "--model", str(model_dir), "--output", str(output), "--scheme",
         "W4A16", "--calibration", str(model_dir / "calib.jsonl"), "--samples", "8",
         "--seq-len", "16", "--batch-size", "4", "--device", "cpu", "--no-eval", *args],
        capture_output=True, text=True)


def test_every_stage_override_shows_in_the_export(vendor_model, tmp_path):
    out = tmp_path / "out"
    proc = _quantize(vendor_model, out, "mixtral", PROBE)
    assert proc.returncode == 0, proc.stderr
    assert "the probe keeps expert 0's down projection" in proc.stderr
    tensors = load_file(str(out / "model.safetensors"))
    qc = json.load(open(out / "config.json"))["quantization_config"]
    ignore = set(qc["ignore"])

    # 4. Export naming: everything the model read as model.* is written as vendor.*.
    assert not [k for k in tensors if k.startswith(("model.", "transformer."))]
    assert "vendor.embed_tokens.weight" in tensors and "lm_head.weight" in tensors
    # 1. Source renaming: every stored tensor was found (it was read and written).
    assert len([k for k in tensors if k.startswith("vendor.layers.0.")]) > 0

    for layer in (0, 2):
        block = f"vendor.layers.{layer}.block_sparse_moe"
        # 3. Quantization: expert 0's w2 stays in high precision and is listed as ignored ...
        assert tensors[f"{block}.experts.0.w2.weight"].dtype == torch.bfloat16
        assert f"{block}.experts.0.w2" in ignore
        # ... while the rest is quantized.
        assert f"{block}.experts.0.w1.weight_packed" in tensors
        assert f"{block}.experts.1.w2.weight_packed" in tensors
        assert f"vendor.layers.{layer}.self_attn.q_proj.weight_packed" in tensors
    # 5. Layers to skip: layer 1 is copied through unquantized, its projections ignored.
    for proj in ("self_attn.q_proj", "block_sparse_moe.experts.3.w1"):
        assert tensors[f"vendor.layers.1.{proj}.weight"].dtype == torch.bfloat16
        assert f"vendor.layers.1.{proj}" in ignore

    report = json.load(open(f"{out}.report/report.json"))
    layers = {layer["index"]: layer for layer in report["layers"]}
    assert layers[1]["skipped"] and not layers[0]["skipped"]
    # 2. Calibration routing: no adapter attached, so no block reports expert coverage.
    assert all(not layer["blocks"] for layer in report["layers"]), report["layers"][0]


def test_without_the_stages_the_renamed_checkpoint_is_refused(vendor_model, tmp_path):
    out = tmp_path / "out"
    proc = _quantize(vendor_model, out, "mixtral")
    assert proc.returncode != 0
    assert "missing tensor 'model.embed_tokens.weight'" in proc.stderr, proc.stderr
    assert not out.exists()


def test_stage_returning_no_source_is_named(vendor_model, tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    for name in os.listdir(vendor_model):
        os.symlink(vendor_model / name, model / name)
    config = json.load(open(vendor_model / "config.json"))
    config["stages_probe_no_source"] = True
    os.unlink(model / "config.json")
    json.dump(config, open(model / "config.json", "w"))
    out = tmp_path / "out"
    proc = _quantize(model, out, "mixtral", PROBE)
    assert proc.returncode != 0
    assert "the pipeline stages of 'MixtralForCausalLM' returned no weight source" in proc.stderr, \
        proc.stderr
    assert not out.exists()
    assert not [p for p in os.listdir(tmp_path) if "moeq-partial" in p]


def test_plugins_lists_the_stages_as_hard(tmp_path):
    proc = subprocess.run([MOEQ, "plugins", "--plugin", PROBE], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    line = [x for x in proc.stdout.splitlines() if "pipeline stages" in x]
    assert line and "MixtralForCausalLM" in line[0] and "[hard]" in line[0], proc.stdout
