"""moeq quantize on the mid-tier models (GPT-OSS, Llama 4): fused 3-D experts are intercepted,
quantized per expert along each slice's input axis, and exported as per-expert 2-D modules under
the names vLLM maps to its w13/w2 stacks (experts.{e}.gate_proj / up_proj / down_proj), GPT-OSS's
interleaved gate/up columns separated, biases included.

Checked against compressed-tensors (the package that defines the format): its decompression of
every exported expert equals moeq's fake-quantized weight bit for bit, and that weight equals
quantizing the expert's 2-D slice on its own (the transposed stack changes nothing).
"""
import importlib.util
import json
import os
import subprocess

import pytest
import torch
from safetensors.torch import load_file

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BUILD = os.environ.get("MOEQ_BUILD_DIR", os.path.join(ROOT, "build"))
MOEQ = os.path.join(BUILD, "tools", "cli", "moeq")
SCRIPT = os.path.join(ROOT, "tools", "fixtures", "make_tiny_fused_moe.py")

SCHEMES = {"W4A16": "W4A16", "W8A8-FP8-DYNAMIC": "FP8_DYNAMIC", "NVFP4": "NVFP4"}
# Dimensions divisible by 128 (group and block sizes, vLLM's constraints).
SIZES = {
    "gpt_oss": dict(hidden_size=128, intermediate_size=128, head_dim=32),
    "llama4": dict(hidden_size=128, intermediate_size=128, intermediate_size_mlp=256, head_dim=32),
}


def _fixtures():
    spec = importlib.util.spec_from_file_location("make_tiny_fused_moe", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def models(tmp_path_factory):
    from transformers import GptOssConfig, GptOssForCausalLM, Llama4ForCausalLM, Llama4TextConfig
    m = _fixtures()
    root = tmp_path_factory.mktemp("fused_models")
    out = {}
    for name, (cls, config_cls, base) in {
            "gpt_oss": (GptOssForCausalLM, GptOssConfig, m.GPT_OSS),
            "llama4": (Llama4ForCausalLM, Llama4TextConfig, m.LLAMA4)}.items():
        torch.manual_seed(0)
        model = cls(config_cls(**{**base, **SIZES[name]})).eval()
        m.randomize_fused(model, 0)
        d = root / name
        model.to(torch.bfloat16).save_pretrained(str(d))
        g = torch.Generator().manual_seed(1)
        with open(d / "calib.jsonl", "w") as f:
            for _ in range(8):
                f.write(json.dumps(torch.randint(base["vocab_size"], (32,), generator=g).tolist()))
                f.write("\n")
        out[name] = d
    return out


def _quantize(model_dir, output, *extra):
    cmd = [MOEQ, "quantize", "--model", str(model_dir), "--output", str(output),
           "--calibration", str(model_dir / "calib.jsonl"), "--samples", "8", "--seq-len", "16",
           "--batch-size", "4", "--device", "cpu", "--no-eval", *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def _experts_prefix(arch, layer):
    return f"model.layers.{layer}.{'mlp' if arch == 'gpt_oss' else 'feed_forward'}.experts"


@pytest.mark.parametrize("scheme", list(SCHEMES))
@pytest.mark.parametrize("arch", list(SIZES))
def test_per_expert_export_decompresses_to_moeq_fake_weights(models, tmp_path, arch, scheme,
                                                             moeq_quant_ops):
    from compressed_tensors.compressors import BaseCompressor
    from compressed_tensors.quantization import preset_name_to_scheme

    model_dir = models[arch]
    out = tmp_path / f"{arch}-{scheme}"
    _quantize(model_dir, out, "--scheme", scheme, "--save-fake-weights")
    qc = json.load(open(out / "config.json"))["quantization_config"]
    compressor = BaseCompressor.get_value_from_registry(qc["format"])
    ct_scheme = preset_name_to_scheme(SCHEMES[scheme], ["Linear"])
    exported = load_file(str(out / "model.safetensors"))
    fake = load_file(str(out) + ".report/fake_weights.safetensors")
    source = load_file(str(model_dir / "model.safetensors"))
    # No fused stack is left: every expert is its own set of 2-D modules.
    assert not [k for k in exported if k.endswith("gate_up_proj") or k.endswith("experts.down_proj")]
    num_experts = 4
    moe_layers = [0, 1] if arch == "gpt_oss" else [1, 3]
    checked = 0
    for layer in moe_layers:
        prefix = _experts_prefix(arch, layer)
        stack_gu = source[f"{prefix}.gate_up_proj"]  # [E, H, 2I]
        stack_d = source[f"{prefix}.down_proj"]      # [E, I, H]
        inter = stack_d.shape[1]
        for e in range(num_experts):
            if arch == "gpt_oss":  # interleaved columns
                slices = {"gate_proj": stack_gu[e][:, 0::2], "up_proj": stack_gu[e][:, 1::2]}
            else:  # concatenated halves
                slices = {"gate_proj": stack_gu[e][:, :inter], "up_proj": stack_gu[e][:, inter:]}
            slices["down_proj"] = stack_d[e]
            for proj, w_in_out in slices.items():
                module = f"{prefix}.{e}.{proj}"
                tensors = {k[len(module) + 1:]: v for k, v in exported.items()
                           if k.startswith(module + ".weight")}
                assert "weight_scale" in tensors, f"{module}: not exported quantized"
                got = compressor.decompress(dict(tensors), ct_scheme)["weight"]
                expected = fake[module + ".weight"]
                assert got.shape == (w_in_out.shape[1], w_in_out.shape[0])
                assert torch.equal(got.float(), expected.float()), f"{scheme} {module}"
                # The expert's own 2-D weight [out, in], quantized alone, gives the same values
                # (weight-only statistics: W4A16's groups, FP8's channels).
                if scheme != "NVFP4":  # NVFP4's global scale is shared by gate and up
                    args = json.dumps(ct_scheme.weights.model_dump(mode="json"))
                    alone = moeq_quant_ops.fake_quantize_weight(w_in_out.t().contiguous(), args)
                    assert torch.equal(alone.float(), expected.float()), f"{scheme} {module} alone"
                if arch == "gpt_oss":
                    bias = source[f"{prefix}.{'gate_up_proj' if proj != 'down_proj' else 'down_proj'}_bias"][e]
                    if proj == "gate_proj":
                        bias = bias[0::2]
                    elif proj == "up_proj":
                        bias = bias[1::2]
                    assert torch.equal(exported[module + ".bias"], bias), f"{module}.bias"
                checked += 1
    assert checked == len(moe_layers) * num_experts * 3
    assert qc["format"] in ("pack-quantized", "float-quantized", "nvfp4-pack-quantized")
    if scheme == "NVFP4":  # gate and up of each expert share the global scale (vLLM's w13)
        for e in range(num_experts):
            p = f"{_experts_prefix(arch, moe_layers[0])}.{e}"
            assert torch.equal(exported[f"{p}.gate_proj.weight_global_scale"],
                               exported[f"{p}.up_proj.weight_global_scale"])


def test_report_lists_every_expert_and_router_stays_bf16(models, tmp_path):
    out = tmp_path / "gpt_oss-w4a16"
    proc = _quantize(models["gpt_oss"], out, "--scheme", "W4A16")
    report = json.load(open(str(out) + ".report/report.json"))
    projections = [p for layer in report["layers"] for p in layer["projections"]]
    experts = [p for p in projections if p["expert"] >= 0]
    assert len(experts) == 2 * 4 * 3
    assert all(p["rows_seen"] > 0 for p in experts)  # all-expert calibration reached each
    exported = load_file(str(out / "model.safetensors"))
    assert exported["model.layers.0.mlp.router.weight"].dtype == torch.bfloat16
    assert "model.layers.0.self_attn.sinks" in exported
    qc = json.load(open(out / "config.json"))["quantization_config"]
    assert "model.layers.0.mlp.router" in qc["ignore"]


def test_mxfp4_source_is_dequantized_and_requantized(models, tmp_path):
    """A GPT-OSS checkpoint with MXFP4 experts quantizes like its dequantized twin."""
    from safetensors.torch import save_file
    import shutil
    m = _fixtures()
    src = models["gpt_oss"]
    mx = tmp_path / "gpt_oss_mxfp4"
    mx.mkdir()
    tensors = load_file(str(src / "model.safetensors"))
    packed, deq = {}, {}
    for k, t in tensors.items():
        if k.endswith("experts.gate_up_proj") or k.endswith("experts.down_proj"):
            blocks, scales = m.mxfp4_encode(t.transpose(1, 2))
            packed[k + "_blocks"], packed[k + "_scales"] = blocks, scales
            deq[k] = m.mxfp4_decode(blocks, scales).transpose(1, 2).to(t.dtype).contiguous()
        else:
            packed[k] = deq[k] = t
    save_file({k: v.contiguous() for k, v in packed.items()}, str(mx / "model.safetensors"))
    config = json.load(open(src / "config.json"))
    config["quantization_config"] = {"quant_method": "mxfp4"}
    json.dump(config, open(mx / "config.json", "w"))
    shutil.copy(src / "calib.jsonl", mx / "calib.jsonl")
    twin = tmp_path / "gpt_oss_deq"
    twin.mkdir()
    save_file(deq, str(twin / "model.safetensors"))
    shutil.copy(src / "config.json", twin / "config.json")
    shutil.copy(src / "calib.jsonl", twin / "calib.jsonl")
    _quantize(mx, tmp_path / "a", "--scheme", "W4A16")
    _quantize(twin, tmp_path / "b", "--scheme", "W4A16")
    a = load_file(str(tmp_path / "a" / "model.safetensors"))
    b = load_file(str(tmp_path / "b" / "model.safetensors"))
    assert sorted(a) == sorted(b)
    assert not [k for k in a if k.endswith("_blocks") or k.endswith("_scales")]
    for k in a:
        assert torch.equal(a[k], b[k]), k
    qc = json.load(open(tmp_path / "a" / "config.json"))["quantization_config"]
    assert qc["quant_method"] == "compressed-tensors"
