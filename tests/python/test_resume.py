"""Journal and resume: `moeq quantize` killed with SIGKILL (after a layer, or in the middle of one
with shards already written) and resumed with --resume writes the same bytes, file for file, as a
run that was never interrupted; a killed run never leaves a directory under the final name; the
journal refuses to continue under other settings, naming the setting and both values.
"""
import filecmp
import json
import os
import signal
import subprocess

import pytest

from test_quantize_cli import MOEQ, _make_model, _write_tokens

LAYERS = 4
CONFIG = dict(vocab_size=160, hidden_size=128, intermediate_size=256, num_hidden_layers=LAYERS,
              num_attention_heads=4, num_key_value_heads=2, num_local_experts=4,
              num_experts_per_tok=2, max_position_embeddings=256, rms_norm_eps=1e-5)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    d = tmp_path_factory.mktemp("resume_model")
    _make_model(str(d), "mixtral", CONFIG)
    _write_tokens(d / "calib.jsonl", CONFIG["vocab_size"], 8, 32, 1)
    _write_tokens(d / "eval.jsonl", CONFIG["vocab_size"], 4, 24, 2)
    return d


def _recipe(tmp_path, model_dir, output, scheme="W4A16", fmt="compressed-tensors"):
    # Small shards: several per layer, so that a kill lands between shards and mid-shard.
    recipe = tmp_path / f"{os.path.basename(output)}-{scheme}-{fmt}.yaml"
    recipe.write_text(f"""\
model: {{path: {model_dir}, device: cpu}}
scheme: {scheme}
calibration: {{dataset: {model_dir}/calib.jsonl, samples: 8, seq_len: 16, batch_size: 4}}
evaluation: {{dataset: {model_dir}/eval.jsonl, samples: 4, seq_len: 16, batch_size: 2}}
export: {{output: {output}, shard_size: 60KB, format: {fmt}}}
""")
    return recipe


def _run(recipe, *extra, env=None):
    return subprocess.run([MOEQ, "quantize", "--config", str(recipe), *extra],
                          capture_output=True, text=True, env={**os.environ, **(env or {})})


def _partial(output):
    return output.parent / f".{output.name}.moeq-partial"


def _assert_same_tree(a, b):
    names_a = sorted(os.listdir(a))
    names_b = sorted(os.listdir(b))
    assert names_a == names_b
    assert sum(n.endswith(".safetensors") for n in names_a) > LAYERS  # several shards
    for name in names_a:
        assert filecmp.cmp(a / name, b / name, shallow=False), f"{name} differs"


def _report(output):
    report = json.load(open(f"{output}.report/report.json"))
    for layer in report["layers"]:
        layer.pop("seconds", None)
        layer.pop("tokens_per_second", None)
        layer.pop("phase_seconds", None)
    for key in ("seconds", "peak_host_bytes", "peak_device_bytes", "run"):
        report.pop(key, None)
    return report


_UNINTERRUPTED = {}


def _uninterrupted(model, tmp_path_factory, scheme, fmt):
    """The run that was never killed, once per scheme and format."""
    if (scheme, fmt) not in _UNINTERRUPTED:
        tmp = tmp_path_factory.mktemp("uninterrupted")
        out = tmp / "out"
        proc = _run(_recipe(tmp, model, out, scheme, fmt))
        assert proc.returncode == 0, proc.stderr
        assert not _partial(out).exists()
        _UNINTERRUPTED[(scheme, fmt)] = out
    return _UNINTERRUPTED[(scheme, fmt)]


@pytest.fixture(scope="module")
def uninterrupted(model, tmp_path_factory):
    return _uninterrupted(model, tmp_path_factory, "W4A16", "compressed-tensors")


# NVFP4 also carries shared scales across the kill: gate/up global scales and each block's
# input scales, checked against the modules exported before it.
@pytest.mark.parametrize("scheme,fmt,kill", [
    ("W4A16", "compressed-tensors", {"MOEQ_TEST_KILL_AFTER_LAYER": "0"}),
    ("W4A16", "compressed-tensors", {"MOEQ_TEST_KILL_AFTER_LAYER": "2"}),
    ("W4A16", "compressed-tensors",
     {"MOEQ_TEST_KILL_AT_MODULE": "model.layers.2.block_sparse_moe.experts.2.w3"}),
    ("NVFP4", "compressed-tensors",
     {"MOEQ_TEST_KILL_AT_MODULE": "model.layers.1.block_sparse_moe.experts.1.w1"}),
    ("NVFP4", "modelopt", {"MOEQ_TEST_KILL_AFTER_LAYER": "1"}),
], ids=["after-layer-0", "after-layer-2", "mid-layer-2", "nvfp4-mid-layer-1",
        "modelopt-after-layer-1"])
def test_killed_run_resumes_to_identical_bytes(model, tmp_path_factory, tmp_path, scheme, fmt,
                                              kill):
    reference = _uninterrupted(model, tmp_path_factory, scheme, fmt)
    out = tmp_path / "out"
    recipe = _recipe(tmp_path, model, out, scheme, fmt)
    proc = _run(recipe, env=kill)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert not out.exists(), "a killed run left a directory under the final name"
    assert (_partial(out) / ".journal" / "journal.json").exists()

    # Without --resume the interrupted run is neither continued nor thrown away.
    again = _run(recipe)
    assert again.returncode != 0
    assert "--resume" in again.stderr and str(_partial(out)) in again.stderr, again.stderr
    assert (_partial(out) / ".journal" / "journal.json").exists()

    resumed = _run(recipe, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stderr
    assert not _partial(out).exists()
    assert not (out / ".journal").exists()
    _assert_same_tree(reference, out)
    assert _report(out) == _report(reference)


def test_resume_under_other_settings_is_refused(model, tmp_path):
    out = tmp_path / "out"
    proc = _run(_recipe(tmp_path, model, out), env={"MOEQ_TEST_KILL_AFTER_LAYER": "1"})
    assert proc.returncode == -signal.SIGKILL
    other = _run(_recipe(tmp_path, model, out, scheme="W8A16"), "--resume")
    assert other.returncode != 0
    assert "scheme" in other.stderr and "--restart" in other.stderr, other.stderr
    assert (_partial(out) / ".journal" / "journal.json").exists(), "the journal was lost"
    # --restart discards it and starts over.
    fresh = _run(_recipe(tmp_path, model, out, scheme="W8A16"), "--restart")
    assert fresh.returncode == 0, fresh.stderr
    assert out.exists() and not _partial(out).exists()


def test_resume_without_journal_starts_fresh(model, uninterrupted, tmp_path):
    out = tmp_path / "out"
    proc = _run(_recipe(tmp_path, model, out), "--resume")
    assert proc.returncode == 0, proc.stderr
    _assert_same_tree(uninterrupted, out)


def test_truncated_shard_is_named(model, tmp_path):
    out = tmp_path / "out"
    recipe = _recipe(tmp_path, model, out)
    proc = _run(recipe, env={"MOEQ_TEST_KILL_AFTER_LAYER": "2"})
    assert proc.returncode == -signal.SIGKILL
    shard = sorted(_partial(out).glob(".model-*.safetensors.tmp"))[0]
    with open(shard, "r+b") as f:
        f.truncate(100)
    resumed = _run(recipe, "--resume")
    assert resumed.returncode != 0
    assert shard.name in resumed.stderr and "100 bytes" in resumed.stderr, resumed.stderr
    assert not out.exists()


def test_damaged_journal_is_named(model, tmp_path):
    out = tmp_path / "out"
    recipe = _recipe(tmp_path, model, out)
    proc = _run(recipe, env={"MOEQ_TEST_KILL_AFTER_LAYER": "1"})
    assert proc.returncode == -signal.SIGKILL
    journal = _partial(out) / ".journal" / "journal.json"
    saved = journal.read_text()
    # Its activations gone.
    hidden = sorted((_partial(out) / ".journal").glob("hidden-*.safetensors"))
    assert len(hidden) == 1
    hidden[0].rename(hidden[0].with_suffix(".moved"))
    resumed = _run(recipe, "--resume")
    assert resumed.returncode != 0
    assert "activations" in resumed.stderr and hidden[0].name in resumed.stderr, resumed.stderr
    # Not JSON at all.
    journal.write_text(saved[: len(saved) // 2])
    resumed = _run(recipe, "--resume")
    assert resumed.returncode != 0
    assert "malformed journal" in resumed.stderr and str(journal) in resumed.stderr
    assert not out.exists()


def test_journal_that_does_not_fit_the_run_is_named(model, tmp_path):
    import json
    out = tmp_path / "out"
    recipe = _recipe(tmp_path, model, out)
    proc = _run(recipe, env={"MOEQ_TEST_KILL_AFTER_LAYER": "1"})
    assert proc.returncode == -signal.SIGKILL
    journal_dir = _partial(out) / ".journal"
    journal = journal_dir / "journal.json"
    saved = json.loads(journal.read_text())
    # More layers done than the model has.
    journal.write_text(json.dumps({**saved, "layers_done": LAYERS + 3}))
    resumed = _run(recipe, "--resume")
    assert resumed.returncode != 0
    assert f"it finished {LAYERS + 3} layers, the model has {LAYERS}" in resumed.stderr
    # The shared scales it names are gone.
    journal.write_text(json.dumps(saved))
    scales = journal_dir / saved["exporter"]["scales"]["file"]
    scales.unlink()
    resumed = _run(recipe, "--resume")
    assert resumed.returncode != 0
    assert str(scales) in resumed.stderr and "is missing" in resumed.stderr, resumed.stderr
    assert not out.exists()


def test_filesystem_failures_around_the_partial_directory_are_named(model, tmp_path):
    # The output's parent is a regular file: its folder cannot be made.
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    out = blocker / "out"
    proc = _run(_recipe(tmp_path, model, out))
    assert proc.returncode != 0
    assert f"cannot create the output's parent '{blocker}'" in proc.stderr, proc.stderr
    assert "Not a directory" in proc.stderr
    # The partial directory cannot be made next to the output (/proc refuses even root).
    out = "/proc/moeq-out"
    proc = _run(_recipe(tmp_path, model, out))
    assert proc.returncode != 0
    assert "cannot create '/proc/.moeq-out.moeq-partial' next to the output" in proc.stderr, \
        proc.stderr
    # An interrupted run in the way that cannot be removed: a file named like the journal folder
    # inside a partial directory that is itself read-only to everyone is still removable by
    # root, so the refusal without --resume/--restart is what protects it; --restart removes it.
    out = tmp_path / "kept"
    _partial(out).mkdir()
    (_partial(out) / "notes.txt").write_text("someone's work")
    proc = _run(_recipe(tmp_path, model, out))
    assert proc.returncode != 0
    assert "holds an interrupted run" in proc.stderr and "--restart" in proc.stderr
    assert (_partial(out) / "notes.txt").read_text() == "someone's work"
