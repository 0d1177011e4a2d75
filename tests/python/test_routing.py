"""Routing agreement: the experts each evaluation token picks, original against quantized.

- --save-routing's reference top-k ids (and weights) are the runtime's own: equal to
  torch.ops.moeq.run_model's on the same batches, in process (--scheme) and reading an export
  (--quantized); moeq quantize's file equals moeq eval's on its export.
- report.json's per-layer agreement (top-k set unchanged, overlap, top-1 changed, tokens per
  expert, own and carried) and its eval.routing summary equal a computation in torch on the saved
  file.
- When the quantized model is the original (every module ignored) or its weights are exactly the
  original's (a W4A16 export against a checkpoint holding its own decompressed weights), the
  agreement is exactly 1.
- A --save-routing path that cannot be written is refused before the run, with the path named.
"""
import json
import os
import subprocess

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from test_quantize_cli import MODELS, MOEQ, ROOT, _make_model, _write_tokens

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

BUILD = os.environ.get("MOEQ_BUILD_DIR", os.path.join(ROOT, "build"))
if not os.path.isabs(BUILD):
    BUILD = os.path.join(ROOT, BUILD)
BATCH = 4
EVAL = ("--eval-samples", "6", "--eval-seq-len", "16", "--batch-size", str(BATCH))
CALIB = ("--samples", "8", "--seq-len", "16")


@pytest.fixture(scope="module")
def ops():
    torch.ops.load_library(os.path.join(BUILD, "kernels", "libmoeq_kernels.so"))
    torch.ops.load_library(os.path.join(BUILD, "registry", "libmoeq_registry.so"))
    return torch.ops.moeq


@pytest.fixture(scope="module", params=["qwen3_moe", "qwen2_moe"])
def model(request, tmp_path_factory):
    fixture, config = MODELS[request.param]
    d = tmp_path_factory.mktemp("routing") / request.param
    d.mkdir()
    _make_model(str(d), fixture, config)
    _write_tokens(d / "calib.jsonl", config["vocab_size"], 8, 32, 1)
    _write_tokens(d / "eval.jsonl", config["vocab_size"], 6, 24, 2)
    return d


def _moeq(*args):
    proc = subprocess.run([MOEQ, *map(str, args)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def _fails(*args):
    proc = subprocess.run([MOEQ, *map(str, args)], capture_output=True, text=True)
    assert proc.returncode != 0, proc.stdout
    return proc.stderr


def _eval_scheme(model, report, routing, scheme="W4A16", *extra):
    return _moeq("eval", "--model", model, "--scheme", scheme, "--calibration",
                 model / "calib.jsonl", *CALIB, "--eval", model / "eval.jsonl", *EVAL, "--device",
                 "cpu", "--report", report, "--save-routing", routing, *extra)


def _eval_export(model, quantized, report, routing):
    return _moeq("eval", "--model", model, "--quantized", quantized, "--eval",
                 model / "eval.jsonl", *EVAL, "--device", "cpu", "--report", report,
                 "--save-routing", routing)


def _quantize(model, out, scheme, *extra):
    return _moeq("quantize", "--model", model, "--output", out, "--scheme", scheme,
                 "--calibration", model / "calib.jsonl", *CALIB, "--batch-size", str(BATCH),
                 "--device", "cpu", "--eval", model / "eval.jsonl", "--eval-samples", "6",
                 "--eval-seq-len", "16", *extra)


def _layers(saved):
    return sorted({int(k.split(".")[1]) for k in saved if k.startswith("layers.")})


def _agreement(ref_ids, ref_w, ids, w, num_experts):
    """The agreement of one side with the reference, from the saved tensors alone."""
    tokens, k = ref_ids.shape
    overlap = torch.tensor([len(set(a.tolist()) & set(b.tolist())) for a, b in zip(ref_ids, ids)])
    top1_ref = ref_ids.gather(1, ref_w.argmax(1, keepdim=True))
    top1 = ids.gather(1, w.argmax(1, keepdim=True))
    return {"same_set": (overlap == k).sum().item() / tokens,
            "overlap": overlap.sum().item() / (tokens * k),
            "top1_changed": (top1 != top1_ref).sum().item() / tokens,
            "expert_tokens": torch.bincount(ids.flatten().long(), minlength=num_experts).tolist()}


def _check_report_against_file(report, saved):
    """report.json's routing numbers equal those computed here from the saved choices."""
    routed = [layer for layer in report["layers"] if layer["routing"]]
    assert [layer["index"] for layer in routed] == _layers(saved)
    sums = {side: {"same_set": 0, "overlap": 0, "top1_changed": 0} for side in ("own", "carried")}
    tokens = picks = 0
    for layer in routed:
        (r,) = layer["routing"]
        p = f"layers.{layer['index']}"
        ref_ids, ref_w = saved[f"{p}.reference.topk_ids"], saved[f"{p}.reference.topk_weights"]
        assert ref_ids.dtype == torch.int32 and ref_w.dtype == torch.float32
        assert list(ref_ids.shape) == [r["tokens"], r["top_k"]] == [saved["input_ids"].numel(),
                                                                     r["top_k"]]
        assert r["reference"]["expert_tokens"] == torch.bincount(
            ref_ids.flatten().long(), minlength=r["num_experts"]).tolist()
        for side, key in (("carried", "quantized"), ("own", "quantized_own")):
            expected = _agreement(ref_ids, ref_w, saved[f"{p}.{key}.topk_ids"],
                                  saved[f"{p}.{key}.topk_weights"], r["num_experts"])
            assert r[side] == expected, (layer["index"], side, r[side], expected)
            sums[side]["same_set"] += round(expected["same_set"] * r["tokens"])
            sums[side]["overlap"] += round(expected["overlap"] * r["tokens"] * r["top_k"])
            sums[side]["top1_changed"] += round(expected["top1_changed"] * r["tokens"])
        tokens += r["tokens"]
        picks += r["tokens"] * r["top_k"]
    summary = report["eval"]["routing"]
    assert summary["blocks"] == len(routed)
    for side in ("own", "carried"):
        assert summary[side] == {"same_set": sums[side]["same_set"] / tokens,
                                 "overlap": sums[side]["overlap"] / picks,
                                 "top1_changed": sums[side]["top1_changed"] / tokens}, side
    worst = min(routed, key=lambda layer: layer["routing"][0]["carried"]["same_set"])
    assert summary["worst"]["layer"] == worst["index"]


def _run_model_routes(ops, model, input_ids):
    """run_model's top-k ids and weights per MoE layer, batch by batch as moeq eval runs them."""
    ids, weights = None, None
    for batch in input_ids.split(BATCH):
        _, topk_ids, topk_weights = ops.run_model(str(model), batch, None, None, torch.float32,
                                                  None, False, "", None)
        ids = topk_ids if ids is None else [torch.cat(p) for p in zip(ids, topk_ids)]
        weights = topk_weights if weights is None else [torch.cat(p)
                                                        for p in zip(weights, topk_weights)]
    return ids, weights


def test_reference_choices_equal_run_model_and_the_report_equals_the_file(model, ops, tmp_path):
    _eval_scheme(model, tmp_path / "ev", tmp_path / "in_process.safetensors")
    _quantize(model, tmp_path / "q", "W4A16", "--save-routing", tmp_path / "quantize.safetensors")
    _eval_export(model, tmp_path / "q", tmp_path / "ev2", tmp_path / "export.safetensors")
    files = {name: load_file(str(tmp_path / f"{name}.safetensors"))
             for name in ("in_process", "quantize", "export")}
    saved = files["in_process"]
    ids, weights = _run_model_routes(ops, model, saved["input_ids"])
    layers = _layers(saved)
    assert len(layers) == len(ids) == 2
    for i, (run_ids, run_weights) in zip(layers, zip(ids, weights)):
        for name, f in files.items():
            assert torch.equal(f["input_ids"], saved["input_ids"]), name
            assert torch.equal(f[f"layers.{i}.reference.topk_ids"], run_ids.int()), (name, i)
            assert torch.equal(f[f"layers.{i}.reference.topk_weights"], run_weights.float()), name
        # moeq's export read back is its fake quantization, bit for bit (test_eval.py): the same
        # expert choices.
        for side in ("quantized", "quantized_own"):
            for t in ("topk_ids", "topk_weights"):
                key = f"layers.{i}.{side}.{t}"
                assert torch.equal(files["export"][key], files["in_process"][key]), key
                assert torch.equal(files["export"][key], files["quantize"][key]), key
    with safe_open(str(tmp_path / "export.safetensors"), "pt") as f:
        meta = f.metadata()
    assert meta["moeq_routing"] == "1" and meta["layers.1.block"] == "model.layers.1.mlp"
    for report_dir, name in (("ev", "in_process"), ("ev2", "export"), ("q.report", "quantize")):
        report = json.load(open(tmp_path / report_dir / "report.json"))
        _check_report_against_file(report, files[name])
    # W4A16 moves some choices in the second layer (its input carries the first layer's error) but
    # not all: the numbers measure something.
    carried = [layer["routing"][0]["carried"] for layer in report["layers"]]
    assert 0.5 < carried[1]["same_set"] < 1.0, carried
    # The first layer's inputs are the embeddings on both sides: own and carried agree.
    first = report["layers"][0]["routing"][0]
    assert first["own"] == first["carried"]


def test_console_and_html_name_the_routing(model, tmp_path):
    proc = _eval_scheme(model, tmp_path / "ev", tmp_path / "r.safetensors", "W8A8-FP8-DYNAMIC")
    line = next(s for s in proc.stdout.splitlines() if "routing over" in s)
    summary = json.load(open(tmp_path / "ev" / "report.json"))["eval"]["routing"]
    assert f"top-k set unchanged {100 * summary['carried']['same_set']:.2f} %" in line, line
    html = (tmp_path / "ev" / "report.html").read_text()
    assert "<h2>Routing agreement</h2>" in html and "model.layers.1.mlp" in html
    assert "http" not in html.replace("http://www.w3.org/2000/svg", "")


def test_zero_error_routes_like_the_original(model, tmp_path):
    # Nothing quantized: the quantized stream is the original's, token for token.
    _eval_scheme(model, tmp_path / "none", tmp_path / "none.safetensors", "W4A16", "--ignore",
                 "re:.*")
    # A weight-only export against a checkpoint that holds exactly its decompressed weights.
    _quantize(model, tmp_path / "q", "W4A16", "--save-fake-weights")
    fake = load_file(str(tmp_path / "q") + ".report/fake_weights.safetensors")
    original = load_file(str(model / "model.safetensors"))
    plain = tmp_path / "plain"
    plain.mkdir()
    save_file({k: fake.get(k, v).to(v.dtype) for k, v in original.items()},
              str(plain / "model.safetensors"), metadata={"format": "pt"})
    for side in ("config.json", "eval.jsonl"):
        (plain / side).write_bytes((model / side).read_bytes())
    _eval_export(plain, tmp_path / "q", tmp_path / "exact", tmp_path / "exact.safetensors")
    for name in ("none", "exact"):
        report = json.load(open(tmp_path / name / "report.json"))
        assert report["eval"]["kl"]["max"] == 0.0, (name, report["eval"]["kl"])
        summary = report["eval"]["routing"]
        assert summary["blocks"] == 2
        for side in ("own", "carried"):
            assert summary[side] == {"same_set": 1.0, "overlap": 1.0, "top1_changed": 0.0}
        for layer in report["layers"]:
            (r,) = layer["routing"]
            assert r["own"]["expert_tokens"] == r["carried"]["expert_tokens"] == \
                r["reference"]["expert_tokens"]
        saved = load_file(str(tmp_path / f"{name}.safetensors"))
        for i in _layers(saved):
            for side in ("quantized", "quantized_own"):
                for t in ("topk_ids", "topk_weights"):
                    assert torch.equal(saved[f"layers.{i}.{side}.{t}"],
                                       saved[f"layers.{i}.reference.{t}"]), (name, i, side, t)


def test_unwritable_routing_paths_are_refused_before_the_run(tmp_path):
    fixture, config = MODELS["qwen3_moe"]
    model = tmp_path / "m"
    model.mkdir()
    _make_model(str(model), fixture, config)
    _write_tokens(model / "calib.jsonl", config["vocab_size"], 8, 32, 1)
    _write_tokens(model / "eval.jsonl", config["vocab_size"], 6, 24, 2)
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    a_dir = tmp_path / "a_dir.safetensors"
    a_dir.mkdir()
    cases = [
        (a_file / "routing.safetensors", f"'{a_file}' is not a directory"),
        (a_file / "sub" / "routing.safetensors", f"'{a_file}' is not a directory"),
        (a_dir, f"--save-routing '{a_dir}' is a directory"),
        (tmp_path / "routing.pt", "the file name must end in .safetensors"),
    ]
    for path, message in cases:
        for command in ("eval", "quantize"):
            report = tmp_path / f"report-{command}"
            if command == "eval":
                err = _fails("eval", "--model", model, "--scheme", "W4A16", "--calibration",
                             model / "calib.jsonl", *CALIB, "--eval", model / "eval.jsonl", *EVAL,
                             "--device", "cpu", "--report", report, "--save-routing", path)
            else:
                err = _fails("quantize", "--model", model, "--output", tmp_path / "out",
                             "--scheme", "W4A16", "--calibration", model / "calib.jsonl", *CALIB,
                             "--device", "cpu", "--eval", model / "eval.jsonl", "--report",
                             report, "--save-routing", path)
            assert message in err and str(path) in err, (command, path, err)
            # Refused before calibrating: no report, no checkpoint.
            assert not report.exists() and not (tmp_path / "out").exists(), command
    # Checkpoint evaluation checks the path too.
    _quantize(model, tmp_path / "q", "W4A16", "--no-eval")
    err = _fails("eval", "--model", model, "--quantized", tmp_path / "q", "--eval",
                 model / "eval.jsonl", *EVAL, "--device", "cpu", "--report", tmp_path / "r",
                 "--save-routing", a_dir)
    assert f"'{a_dir}' is a directory" in err, err
    # Without evaluation tokens there are no choices to save.
    err = _fails("quantize", "--model", model, "--output", tmp_path / "out", "--scheme", "W4A16",
                 "--calibration", model / "calib.jsonl", *CALIB, "--device", "cpu", "--no-eval",
                 "--save-routing", tmp_path / "r.safetensors")
    assert "recorded on the evaluation tokens" in err and "r.safetensors" in err, err


def test_a_resumed_run_refuses_to_save_routing_it_did_not_keep(tmp_path):
    """The journal keeps each finished layer's routing numbers (test_resume.py compares the
    resumed report with an uninterrupted one), not every token's choices."""
    fixture, config = MODELS["qwen3_moe"]
    model = tmp_path / "m"
    model.mkdir()
    _make_model(str(model), fixture, config)
    _write_tokens(model / "calib.jsonl", config["vocab_size"], 8, 32, 1)
    _write_tokens(model / "eval.jsonl", config["vocab_size"], 6, 24, 2)
    args = [MOEQ, "quantize", "--model", model, "--output", tmp_path / "q", "--scheme", "W4A16",
            "--calibration", model / "calib.jsonl", *CALIB, "--device", "cpu", "--eval",
            model / "eval.jsonl", *EVAL, "--resume"]
    killed = subprocess.run(list(map(str, args)), capture_output=True, text=True,
                            env={**os.environ, "MOEQ_TEST_KILL_AFTER_LAYER": "0"})
    assert killed.returncode != 0
    err = _fails(*args[1:], "--save-routing", tmp_path / "r.safetensors")
    assert "resumes with 1 layers done" in err and "--save-routing" in err and "--restart" in err, err
    assert not (tmp_path / "r.safetensors").exists()
    # Without it the run continues, and its report has every layer's routing.
    _moeq(*args[1:])
    report = json.load(open(str(tmp_path / "q") + ".report/report.json"))
    assert [len(layer["routing"]) for layer in report["layers"]] == [1, 1]
