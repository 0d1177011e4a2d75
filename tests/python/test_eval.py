"""`moeq eval`: a quantized model against its original.

- The KL divergence it reports (mean, p50, p90, p99, max), both perplexities and the top-1
  agreement equal a direct computation with torch on the logits it saved.
- Reading moeq's own export (compressed-tensors, decompressed as a weight source) gives the same
  quantized logits, bit for bit in fp32, as the fake quantization moeq quantize ran in process:
  for weight-only, dynamic-activation and NVFP4 schemes, on a per-expert model (Qwen3-MoE) and a
  fused-expert one (GPT-OSS, whose stacks eval rebuilds from the exported experts).
- ModelOpt exports are read too; --scheme evaluates in process without writing a checkpoint;
  bad inputs give errors that name the file and the values.
"""
import importlib.util
import json
import os
import subprocess

import pytest
import torch
from safetensors.torch import load_file

from test_quantize_cli import MODELS, MOEQ, ROOT, _make_model, _write_tokens

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def qwen(tmp_path_factory):
    fixture, config = MODELS["qwen3_moe"]
    d = tmp_path_factory.mktemp("eval_qwen")
    _make_model(str(d), fixture, config)
    _write_tokens(d / "calib.jsonl", config["vocab_size"], 8, 32, 1)
    _write_tokens(d / "eval.jsonl", config["vocab_size"], 6, 24, 2)
    return d


@pytest.fixture(scope="module")
def gpt_oss(tmp_path_factory):
    from transformers import GptOssConfig, GptOssForCausalLM
    path = os.path.join(ROOT, "tools", "fixtures", "make_tiny_fused_moe.py")
    spec = importlib.util.spec_from_file_location("make_tiny_fused_moe", path)
    m = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(m)
    config = {**m.GPT_OSS, "hidden_size": 128, "intermediate_size": 128, "head_dim": 32}
    torch.manual_seed(0)
    model = GptOssForCausalLM(GptOssConfig(**config)).eval()
    m.randomize_fused(model, 0)
    d = tmp_path_factory.mktemp("eval_fused") / "gpt_oss"
    model.to(torch.bfloat16).save_pretrained(str(d))
    _write_tokens(d / "calib.jsonl", config["vocab_size"], 8, 32, 1)
    _write_tokens(d / "eval.jsonl", config["vocab_size"], 6, 24, 2)
    return d


def _moeq(*args):
    proc = subprocess.run([MOEQ, *map(str, args)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def _quantize(model, out, scheme, *extra):
    return _moeq("quantize", "--model", model, "--output", out, "--scheme", scheme,
                 "--calibration", model / "calib.jsonl", "--samples", "8", "--seq-len", "16",
                 "--batch-size", "4", "--device", "cpu", "--eval", model / "eval.jsonl",
                 "--eval-samples", "6", "--eval-seq-len", "16", "--save-eval-logits", *extra)


def _eval(model, quantized, report, *extra):
    return _moeq("eval", "--model", model, "--quantized", quantized, "--eval",
                 model / "eval.jsonl", "--eval-samples", "6", "--eval-seq-len", "16",
                 "--batch-size", "4", "--device", "cpu", "--report", report, "--save-logits",
                 *extra)


def _nearest_rank(sorted_values, q):
    n = sorted_values.numel()
    return sorted_values[min(n - 1, int(q * (n - 1) + 0.5))].item()


def test_kl_and_perplexity_equal_torch_on_the_same_logits(qwen, tmp_path):
    _quantize(qwen, tmp_path / "q", "W4A16")
    _eval(qwen, tmp_path / "q", tmp_path / "ev")
    report = json.load(open(tmp_path / "ev" / "report.json"))
    saved = load_file(str(tmp_path / "ev" / "eval_logits.safetensors"))
    ref = saved["logits_reference"].double()
    quant = saved["logits_quantized"].double()
    ids = saved["input_ids"]
    p = torch.log_softmax(ref, -1)
    q = torch.log_softmax(quant, -1)
    kl = (p.exp() * (p - q)).sum(-1).flatten()
    kl_torch = torch.nn.functional.kl_div(q, p, log_target=True, reduction="none").sum(-1)
    assert torch.allclose(kl, kl_torch.flatten(), atol=1e-12)
    ev = report["eval"]
    s = kl.sort().values
    assert ev["kl"]["mean"] == pytest.approx(kl.mean().item(), rel=1e-5, abs=1e-9)
    for key, quantile in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99)):
        assert ev["kl"][key] == pytest.approx(_nearest_rank(s, quantile), rel=1e-5, abs=1e-9)
    assert ev["kl"]["max"] == pytest.approx(s[-1].item(), rel=1e-5, abs=1e-9)
    targets = ids[:, 1:].flatten()

    def ppl(logits):
        nll = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), targets)
        return nll.exp().item()

    assert ev["ppl_reference"] == pytest.approx(ppl(ref), rel=1e-5)
    assert ev["ppl_quantized"] == pytest.approx(ppl(quant), rel=1e-5)
    agree = (ref.argmax(-1) == quant.argmax(-1)).double().mean().item()
    assert ev["top1_agreement"] == pytest.approx(agree, rel=1e-9)
    assert ev["kl"]["mean"] > 0
    # Per layer and per projection, and the HTML report.
    assert len(report["layers"]) == 2
    assert all(layer["output_error"] > 0 for layer in report["layers"])
    experts = [p for layer in report["layers"] for p in layer["projections"] if p["expert"] >= 0]
    assert len(experts) == 2 * 8 * 3 and all(p["weight_error"] > 0 for p in experts)
    assert (tmp_path / "ev" / "report.html").stat().st_size > 1000


@pytest.mark.parametrize("scheme", ["W4A16", "W8A8-FP8-DYNAMIC", "NVFP4", "FP8-block"])
def test_reading_the_export_equals_fake_quantization_in_process(qwen, tmp_path, scheme):
    _quantize(qwen, tmp_path / "q", scheme)
    _eval(qwen, tmp_path / "q", tmp_path / "ev")
    in_process = load_file(str(tmp_path / "q") + ".report/eval_logits.safetensors")
    from_export = load_file(str(tmp_path / "ev" / "eval_logits.safetensors"))
    assert torch.equal(in_process["input_ids"], from_export["input_ids"])
    assert torch.equal(in_process["logits_reference"], from_export["logits_reference"])
    assert torch.equal(in_process["logits_quantized"], from_export["logits_quantized"]), scheme


def test_fused_experts_are_rebuilt_from_the_exported_slices(gpt_oss, tmp_path):
    _quantize(gpt_oss, tmp_path / "q", "W4A16")
    _eval(gpt_oss, tmp_path / "q", tmp_path / "ev")
    in_process = load_file(str(tmp_path / "q") + ".report/eval_logits.safetensors")
    from_export = load_file(str(tmp_path / "ev" / "eval_logits.safetensors"))
    assert torch.equal(in_process["logits_quantized"], from_export["logits_quantized"])


E2M1 = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])


def _nvfp4_dequantize(packed, scale, scale_2):
    """ModelOpt's NVFP4 storage, decoded here independently: two E2M1 codes per byte (low nibble
    first, sign in bit 3), one E4M3 scale per 16 values, one fp32 scale per tensor."""
    codes = torch.stack([packed & 0xF, packed >> 4], -1).flatten(-2).long()
    values = E2M1[codes & 7] * torch.where(codes >= 8, -1.0, 1.0)
    blocks = values.unflatten(-1, (-1, 16)) * scale.float().unsqueeze(-1)
    return (blocks.flatten(-2) * scale_2.float()).to(torch.bfloat16)


def test_modelopt_export(qwen, tmp_path):
    """A ModelOpt NVFP4 (weight-only) export read by moeq eval equals the same weights decoded
    independently here: evaluated against a plain checkpoint holding those decoded weights, the
    KL divergence is zero up to the last bit of a few bf16 weights (the product of the three
    factors is associated differently) and every top-1 prediction agrees."""
    from safetensors.torch import save_file
    _moeq("quantize", "--model", qwen, "--output", tmp_path / "q", "--scheme", "NVFP4A16",
          "--format", "modelopt", "--calibration", qwen / "calib.jsonl", "--samples", "8",
          "--seq-len", "16", "--device", "cpu", "--no-eval")
    exported = load_file(str(tmp_path / "q" / "model.safetensors"))
    decoded = {}
    for name, tensor in exported.items():
        module = name[: -len(".weight")] if name.endswith(".weight") else None
        if module and module + ".weight_scale" in exported:
            decoded[name] = _nvfp4_dequantize(tensor, exported[module + ".weight_scale"],
                                              exported[module + ".weight_scale_2"])
        elif not any(name.endswith(s) for s in (".weight_scale", ".weight_scale_2",
                                                ".input_scale")):
            decoded[name] = tensor
    plain = tmp_path / "plain"
    plain.mkdir()
    save_file(decoded, str(plain / "model.safetensors"), metadata={"format": "pt"})
    for side in ("config.json", "generation_config.json"):
        if (qwen / side).exists():
            (plain / side).write_bytes((qwen / side).read_bytes())
    (plain / "eval.jsonl").write_bytes((qwen / "eval.jsonl").read_bytes())
    _eval(plain, tmp_path / "q", tmp_path / "ev")
    report = json.load(open(tmp_path / "ev" / "report.json"))
    assert "modelopt" in report["run"]["format"]
    assert report["eval"]["kl"]["max"] < 1e-5, report["eval"]
    assert report["eval"]["top1_agreement"] == 1.0
    # Against the original, the same export shows the quantization's real error.
    _eval(qwen, tmp_path / "q", tmp_path / "ev2")
    real = json.load(open(tmp_path / "ev2" / "report.json"))["eval"]["kl"]
    assert real["mean"] > 100 * report["eval"]["kl"]["max"], (real, report["eval"]["kl"])


def test_scheme_in_process_writes_no_checkpoint(qwen, tmp_path):
    report_dir = tmp_path / "ev"
    proc = _moeq("eval", "--model", qwen, "--scheme", "W4A16", "--calibration",
                 qwen / "calib.jsonl", "--samples", "8", "--seq-len", "16", "--eval",
                 qwen / "eval.jsonl", "--eval-samples", "6", "--eval-seq-len", "16",
                 "--batch-size", "4", "--device", "cpu", "--report", report_dir)
    assert "KL" in proc.stdout
    report = json.load(open(report_dir / "report.json"))
    assert report["eval"]["kl"]["mean"] > 0
    assert sorted(os.listdir(tmp_path)) == ["ev"]


def test_errors_name_the_file_and_the_values(qwen, tmp_path):
    def fails(*args):
        proc = subprocess.run([MOEQ, *map(str, args)], capture_output=True, text=True)
        assert proc.returncode != 0
        return proc.stderr

    # Not a quantized checkpoint: the original itself.
    err = fails("eval", "--model", qwen, "--quantized", qwen, "--eval", qwen / "eval.jsonl",
                "--eval-seq-len", "16", "--device", "cpu", "--report", tmp_path / "r")
    assert "is not a quantized checkpoint" in err and str(qwen) in err, err
    # Both or neither of --quantized and --scheme.
    err = fails("eval", "--model", qwen, "--eval", qwen / "eval.jsonl")
    assert "--quantized DIR" in err and "--scheme NAME" in err, err
    # A checkpoint of another architecture.
    other = tmp_path / "other"
    fixture, config = MODELS["mixtral"]
    other.mkdir()
    _make_model(str(other), fixture, config)
    _write_tokens(other / "calib.jsonl", config["vocab_size"], 8, 32, 1)
    _moeq("quantize", "--model", other, "--output", tmp_path / "oq", "--scheme", "W4A16",
          "--calibration", other / "calib.jsonl", "--samples", "8", "--seq-len", "16",
          "--device", "cpu", "--no-eval")
    err = fails("eval", "--model", qwen, "--quantized", tmp_path / "oq", "--eval",
                qwen / "eval.jsonl", "--eval-seq-len", "16", "--device", "cpu", "--report",
                tmp_path / "r")
    assert "MixtralForCausalLM" in err and "Qwen3MoeForCausalLM" in err, err
    # A config group whose targets miss a quantized module.
    bad = tmp_path / "bad"
    _quantize(qwen, bad, "W4A16")
    config_file = bad / "config.json"
    cfg = json.load(open(config_file))
    for group in cfg["quantization_config"]["config_groups"].values():
        group["targets"] = ["re:.*self_attn.*"]
    json.dump(cfg, open(config_file, "w"))
    err = fails("eval", "--model", qwen, "--quantized", bad, "--eval", qwen / "eval.jsonl",
                "--eval-seq-len", "16", "--device", "cpu", "--report", tmp_path / "r")
    assert "no config group targets it" in err and "experts" in err, err


def test_a_quantized_release_is_quantized_again(qwen, tmp_path):
    """moeq quantize reads a compressed-tensors release as its source, decompressed per layer:
    requantizing an FP8 export to W4A16 writes exactly what quantizing a plain checkpoint that
    holds the same (decompressed) weights writes."""
    from safetensors.torch import save_file
    release = tmp_path / "release"
    _moeq("quantize", "--model", qwen, "--output", release, "--scheme", "W8A8-FP8-DYNAMIC",
          "--calibration", qwen / "calib.jsonl", "--samples", "8", "--seq-len", "16",
          "--device", "cpu", "--no-eval", "--save-fake-weights")
    fake = load_file(str(release) + ".report/fake_weights.safetensors")
    original = load_file(str(qwen / "model.safetensors"))
    plain = tmp_path / "plain"
    plain.mkdir()
    # The fake weights come in the compute dtype (fp32 here) holding the stored dtype's values.
    save_file({k: fake.get(k, v).to(v.dtype) for k, v in original.items()},
              str(plain / "model.safetensors"),
              metadata={"format": "pt"})
    (plain / "config.json").write_bytes((qwen / "config.json").read_bytes())
    outputs = {}
    for name, source in (("from_release", release), ("from_plain", plain)):
        out = tmp_path / name
        _moeq("quantize", "--model", source, "--output", out, "--scheme", "W4A16",
              "--calibration", qwen / "calib.jsonl", "--samples", "8", "--seq-len", "16",
              "--device", "cpu", "--no-eval")
        outputs[name] = out
    a = (outputs["from_release"] / "model.safetensors").read_bytes()
    b = (outputs["from_plain"] / "model.safetensors").read_bytes()
    assert a == b
    qc = json.load(open(outputs["from_release"] / "config.json"))["quantization_config"]
    assert qc["format"] == "pack-quantized"


def test_unreadable_quantized_checkpoints_are_named(qwen, tmp_path):
    """Each way an export can be unreadable: the message names the file, key or tensor."""
    from safetensors.torch import save_file

    def fails(quantized):
        proc = subprocess.run([MOEQ, "eval", "--model", str(qwen), "--quantized", str(quantized),
                               "--eval", str(qwen / "eval.jsonl"), "--eval-seq-len", "16",
                               "--device", "cpu", "--report", str(tmp_path / "r")],
                              capture_output=True, text=True)
        assert proc.returncode != 0
        return proc.stderr

    # Not a directory.
    assert "is not a directory" in fails(tmp_path / "nowhere")
    # Another quant_method.
    fp8 = tmp_path / "fp8"
    _quantize(qwen, fp8, "W8A8-FP8")
    cfg = json.load(open(fp8 / "config.json"))
    cfg["quantization_config"]["quant_method"] = "fp8"
    json.dump(cfg, open(fp8 / "config.json", "w"))
    err = fails(fp8)
    assert "quant_method is 'fp8'" in err and "config.json" in err, err
    # A static input scale missing from the tensors.
    cfg["quantization_config"]["quant_method"] = "compressed-tensors"
    json.dump(cfg, open(fp8 / "config.json", "w"))
    tensors = load_file(str(fp8 / "model.safetensors"))
    gone = next(k for k in tensors if k.endswith(".input_scale"))
    del tensors[gone]
    save_file(tensors, str(fp8 / "model.safetensors"), metadata={"format": "pt"})
    err = fails(fp8)
    assert "static scale" in err and gone in err, err
    # No tensor stored quantized.
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "config.json").write_text(json.dumps(cfg))
    (plain / "model.safetensors").write_bytes((qwen / "model.safetensors").read_bytes())
    assert "no tensor is stored quantized" in fails(plain)
    # ModelOpt: an algorithm moeq does not read, and a pre_quant_scale it does not apply.
    mo = tmp_path / "mo"
    _moeq("quantize", "--model", qwen, "--output", mo, "--scheme", "NVFP4A16", "--format",
          "modelopt", "--calibration", qwen / "calib.jsonl", "--samples", "8", "--seq-len", "16",
          "--device", "cpu", "--no-eval")
    hq = json.load(open(mo / "hf_quant_config.json"))
    hq["quantization"]["quant_algo"] = "INT8_SQ"
    json.dump(hq, open(mo / "hf_quant_config.json", "w"))
    err = fails(mo)
    assert "quant_algo 'INT8_SQ'" in err and "hf_quant_config.json" in err, err
    hq["quantization"]["quant_algo"] = "W4A16_NVFP4"
    json.dump(hq, open(mo / "hf_quant_config.json", "w"))
    tensors = load_file(str(mo / "model.safetensors"))
    module = next(k for k in tensors if k.endswith(".weight_scale_2"))[: -len(".weight_scale_2")]
    tensors[module + ".pre_quant_scale"] = torch.ones(128, dtype=torch.bfloat16)
    save_file(tensors, str(mo / "model.safetensors"), metadata={"format": "pt"})
    err = fails(mo)
    assert "pre_quant_scale" in err and module in err, err
