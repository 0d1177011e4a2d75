"""`moeq inspect`: the architecture and its plugin, the adapters and tiers that claim each MoE
block, and checkpoint tensors no module reads."""
import json
import os
import shutil
import subprocess

import torch
from safetensors.torch import load_file, save_file

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BUILD = os.environ.get("MOEQ_BUILD_DIR", os.path.join(ROOT, "build"))
MOEQ = os.path.join(BUILD, "tools", "cli", "moeq")
MODEL = os.path.join(ROOT, "tools", "default_model", "model")


def _inspect(model_dir, *extra):
    return subprocess.run([MOEQ, "inspect", str(model_dir), *extra], capture_output=True,
                          text=True)


def test_claimed_blocks_and_an_unclaimed_tensor(tmp_path):
    d = tmp_path / "model"
    shutil.copytree(MODEL, d)
    tensors = load_file(str(d / "model.safetensors"))
    tensors["model.layers.4.eh_proj.weight"] = torch.zeros(4, 4, dtype=torch.bfloat16)  # an MTP-ish extra
    save_file(tensors, str(d / "model.safetensors"), metadata={"format": "pt"})
    proc = _inspect(d, "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["architecture"]["key"] == "MixtralForCausalLM"
    assert "plugin 'mixtral'" in out["architecture"]["origin"]
    assert [c["module"] for c in out["claimed"]] == [
        f"model.layers.{i}.block_sparse_moe" for i in range(4)]
    assert all(c["tier"] == "easy" and c["experts"] == 8 for c in out["claimed"])
    assert out["moe_modules_without_adapter"] == []
    assert out["unclaimed_tensors"] == ["model.layers.4.eh_proj.weight"]
    text = _inspect(d).stdout
    assert "MixtralSparseMoeBlock [easy] 8 experts in 4 layers" in text
    assert "model.layers.4.eh_proj.weight" in text


def test_unknown_architecture_lists_the_known_ones(tmp_path):
    d = tmp_path / "model"
    shutil.copytree(MODEL, d)
    config = json.loads((d / "config.json").read_text())
    config["architectures"] = ["NotAModelForCausalLM"]
    (d / "config.json").write_text(json.dumps(config))
    proc = _inspect(d)
    assert proc.returncode != 0
    assert "NotAModelForCausalLM" in proc.stderr
    for known in ("MixtralForCausalLM", "Qwen2MoeForCausalLM", "Qwen3MoeForCausalLM"):
        assert known in proc.stderr, proc.stderr
