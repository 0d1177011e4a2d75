"""Models declared in YAML (the easy tier without compiled code, registry/declared_model.h).

tools/recipes/models/glm4_moe.yaml declares Glm4MoeForCausalLM and minimax_m2.yaml
MiniMaxM2ForCausalLM (full-width q/k norm, FP8 block-scaled source). On the tiny fixtures
(tools/fixtures/make_tiny_glm4_minimax.py; MiniMax-M2 in bf16 and as FP8 blocks) each declared
model and its compiled plugin (plugins/glm4_moe, plugins/minimax_m2) give bit-identical fp32 CPU
logits and routing, both match transformers 5.17.0, and `moeq quantize` writes byte-identical
checkpoints with either. Malformed stanzas fail with the file, line, column, key path and the bad
value. A stanza's `requires` refuses a config.json variant it does not implement (MiniMax-M2's
scoring_func and qk_norm_type, as the compiled plugin does; GLM-4.5's DeepSeek-style routing keys),
naming the stanza entry, the key, the value found and the accepted values.
"""
import json
import os
import re
import shutil
import subprocess

import pytest
import torch
from safetensors.torch import load_file

from test_glm4_minimax import MOE_LAYERS, _calibration, _parity, tiny_models  # noqa: F401

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BUILD = os.environ.get("MOEQ_BUILD_DIR", os.path.join(ROOT, "build"))
if not os.path.isabs(BUILD):
    BUILD = os.path.join(ROOT, BUILD)
MOEQ = os.path.join(BUILD, "tools", "cli", "moeq")
GLM_YAML = os.path.join(ROOT, "tools", "recipes", "models", "glm4_moe.yaml")
GLM_TEXT = open(GLM_YAML).read()
MM_YAML = os.path.join(ROOT, "tools", "recipes", "models", "minimax_m2.yaml")
MM_TEXT = open(MM_YAML).read()
MINIMAX = ["minimax_m2", "minimax_m2_fp8"]  # the same weights, in bf16 and as FP8 blocks


@pytest.fixture(scope="module")
def ops():
    torch.ops.load_library(os.path.join(BUILD, "kernels", "libmoeq_kernels.so"))
    torch.ops.load_library(os.path.join(BUILD, "registry", "libmoeq_registry.so"))
    return torch.ops.moeq


def _run(ops, model_dir, ref, b, plugins, dtype=torch.float32):
    return ops.run_model(model_dir, ref[f"input_ids_{b}"], ref.get(f"attention_mask_{b}"),
                         ref.get(f"position_ids_{b}"), dtype, None, False, "", plugins)


def _assert_declared_equals_compiled(ops, d, ref, yaml, plugin, layers):
    # bf16 as well as fp32: options that only change which dtype a step runs in (MiniMax-M2's
    # router logits in the compute dtype) are invisible in fp32.
    for dtype in (torch.float32, torch.bfloat16):
        b = 0
        while f"input_ids_{b}" in ref:
            declared = _run(ops, d, ref, b, [yaml], dtype)
            compiled = _run(ops, d, ref, b, [plugin], dtype)
            assert torch.equal(declared[0], compiled[0]), f"{dtype} batch {b}: logits differ"
            assert len(declared[1]) == len(compiled[1]) == len(layers)
            for x, y in zip(declared[1], compiled[1]):
                assert torch.equal(x, y), f"{dtype} batch {b}: expert choices differ"
            for x, y in zip(declared[2], compiled[2]):
                assert torch.equal(x, y), f"{dtype} batch {b}: routing weights differ"
            b += 1
        assert b >= 3


def _declared_parity(ops, d, ref, yaml, layers):
    class Declared:  # _parity's ops, with the declared model as the only plugin
        @staticmethod
        def run_model(*args):
            return ops.run_model(*args, [yaml])
    return _parity(Declared, d, ref, layers)


def test_declared_glm4_equals_the_compiled_plugin_bit_for_bit(tiny_models, ops):
    d = os.path.join(tiny_models, "glm4_moe")
    ref = load_file(os.path.join(d, "reference.safetensors"))
    _assert_declared_equals_compiled(ops, d, ref, GLM_YAML, "glm4_moe", MOE_LAYERS["glm4_moe"])


def test_declared_glm4_matches_transformers(tiny_models, ops):
    d = os.path.join(tiny_models, "glm4_moe")
    ref = load_file(os.path.join(d, "reference.safetensors"))
    worst = _declared_parity(ops, d, ref, GLM_YAML, MOE_LAYERS["glm4_moe"])
    print(f"declared glm4_moe: max relative logit error {worst:.3g}")
    assert worst <= 1e-4


@pytest.mark.parametrize("name", MINIMAX)
def test_declared_minimax_equals_the_compiled_plugin_bit_for_bit(tiny_models, ops, name):
    d = os.path.join(tiny_models, name)
    ref = load_file(os.path.join(d, "reference.safetensors"))
    _assert_declared_equals_compiled(ops, d, ref, MM_YAML, "minimax_m2", MOE_LAYERS[name])


@pytest.mark.parametrize("name", MINIMAX)
def test_declared_minimax_matches_transformers(tiny_models, ops, name):
    d = os.path.join(tiny_models, name)
    ref = load_file(os.path.join(d, "reference.safetensors"))
    worst = _declared_parity(ops, d, ref, MM_YAML, MOE_LAYERS[name])
    print(f"declared {name}: max relative logit error {worst:.3g}")
    assert worst <= 1e-4


def test_declared_minimax_reads_rotary_dim_alone(tiny_models, ops, tmp_path):
    """The published config spells the rotary width rotary_dim only: the stanza's rope.rotary_dim
    gives the compiled plugin's partial RoPE."""
    def drop(c):
        c["rope_parameters"].pop("partial_rotary_factor")
    d = _copy_model(tiny_models, "minimax_m2_fp8", str(tmp_path / "m"), drop)
    ref = load_file(os.path.join(tiny_models, "minimax_m2_fp8", "reference.safetensors"))
    _assert_declared_equals_compiled(ops, d, ref, MM_YAML, "minimax_m2",
                                      MOE_LAYERS["minimax_m2_fp8"])
    assert _declared_parity(ops, d, ref, MM_YAML, MOE_LAYERS["minimax_m2_fp8"]) <= 1e-4


def _quantize(model_dir, output, calib, plugin):
    cmd = [MOEQ, "quantize", "--model", str(model_dir), "--output", str(output), "--calibration",
           str(calib), "--samples", "8", "--seq-len", "16", "--batch-size", "4", "--device", "cpu",
           "--no-eval", "--scheme", "W8A8-FP8-DYNAMIC", "--plugin", plugin]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def _quantize_both_ways(model, tmp_path, yaml, plugin):
    """Quantizes `model` with the declared and the compiled model; the outputs are byte-identical.
    Returns the declared output's tensors."""
    calib = tmp_path / "calib.jsonl"
    _calibration(calib)
    _quantize(model, tmp_path / "declared", calib, yaml)
    _quantize(model, tmp_path / "compiled", calib, plugin)
    files = sorted(os.listdir(tmp_path / "declared"))
    assert files == sorted(os.listdir(tmp_path / "compiled"))
    assert "model.safetensors" in files and "config.json" in files
    for f in files:
        a = (tmp_path / "declared" / f).read_bytes()
        assert a == (tmp_path / "compiled" / f).read_bytes(), f
    return load_file(str(tmp_path / "declared" / "model.safetensors"))


def test_quantize_with_the_declared_model_is_byte_identical(tiny_models, tmp_path):
    out = _quantize_both_ways(os.path.join(tiny_models, "glm4_moe"), tmp_path, GLM_YAML,
                              "glm4_moe")
    assert out["model.layers.2.mlp.experts.7.down_proj.weight"].dtype == torch.float8_e4m3fn
    assert out["model.layers.3.eh_proj.weight"].dtype == torch.bfloat16  # MTP copied through


@pytest.mark.parametrize("name", MINIMAX)
def test_quantize_with_the_declared_minimax_is_byte_identical(tiny_models, tmp_path, name):
    out = _quantize_both_ways(os.path.join(tiny_models, name), tmp_path, MM_YAML, "minimax_m2")
    assert out["model.layers.1.block_sparse_moe.experts.7.w2.weight"].dtype == (
        torch.float8_e4m3fn)
    assert out["model.layers.0.self_attn.q_norm.weight"].shape == (64,)  # full width: 4 x 16
    assert not [k for k in out if k.endswith("_scale_inv")]  # the FP8 source was dequantized


def test_recipe_lists_the_yaml_and_plugins_shows_its_origin(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    shutil.copy(GLM_YAML, tmp_path / "glm.yaml")
    recipe.write_text("plugins: [glm.yaml]\n")
    proc = subprocess.run([MOEQ, "plugins", "--config", str(recipe)], capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr
    assert "glm4_moe_declared" in proc.stdout
    line = GLM_TEXT.splitlines().index("  - architecture: Glm4MoeForCausalLM") + 1
    assert f"glm.yaml:{line}" in proc.stdout, proc.stdout
    assert "Glm4MoeForCausalLM" in proc.stdout and "Glm4MoeMoE" in proc.stdout


def test_inspect_claims_the_declared_block(tiny_models):
    proc = subprocess.run([MOEQ, "inspect", os.path.join(tiny_models, "glm4_moe"), "--plugin",
                           GLM_YAML, "--json"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert {(c["type"], c["tier"], c["experts"]) for c in out["claimed"]} == {
        ("Glm4MoeMoE", "easy", 8)}


def test_both_ways_at_once_is_a_duplicate(tiny_models, ops):
    d = os.path.join(tiny_models, "glm4_moe")
    with pytest.raises(RuntimeError, match=r"architecture 'Glm4MoeForCausalLM' is already "
                                           r"registered by plugin 'glm4_moe'.*glm4_moe\.yaml:9\)"):
        ops.run_model(d, torch.ones(1, 4, dtype=torch.long), None, None, torch.float32, None,
                      False, "", ["glm4_moe", GLM_YAML])


# ---- malformed stanzas: file:line:col, key path, bad value --------------------------------------

def _edit(old, new, count=1):
    assert GLM_TEXT.count(old) >= count, old
    return GLM_TEXT.replace(old, new, count)


def _where(text, needle):
    """1-based line and column of `needle` in `text`."""
    for i, line in enumerate(text.splitlines()):
        if needle in line:
            return i + 1, line.index(needle) + 1
    raise AssertionError(needle)


EXPERT_GATE = "model.layers.{layer}.mlp.experts.{expert}.gate_proj.weight"
BAD_STANZAS = [
    # (id, edited text, the bad value's text to locate, key path, message)
    ("kind", _edit("kind: sigmoid_topk", "kind: sigmoid_top"), "sigmoid_top",
     "models[0].router.kind",
     "expected one of 'softmax_topk', 'sigmoid_topk', got 'sigmoid_top' (did you mean "
     "'sigmoid_topk'?)"),
    ("unknown key", _edit("    moe_layers:", "    moe_layer:"), "moe_layer:", "models[0]",
     "unknown key"),
    ("literal type", _edit("norm_eps: 1e-20", "norm_eps: tiny"), "tiny",
     "models[0].router.norm_eps", "expected a number, got 'tiny'"),
    ("literal range", _edit("count: {config: n_shared_experts, default: 1}", "count: -1"), "-1",
     "models[0].shared_experts.count", "expected a value >= 0, got -1"),
    ("default type", _edit("n_group: {config: n_group, default: 1}",
                           "n_group: {config: n_group, default: two}"), "two",
     "models[0].router.n_group.default", "expected an integer, got 'two'"),
    ("config missing", _edit("n_group: {config: n_group, default: 1}", "n_group: {default: 1}"),
     "{default: 1}", "models[0].router.n_group", "missing required field 'config'"),
    ("config not a key", _edit("top_k: {config: num_experts_per_tok}", "top_k: {config: []}"),
     "[]", "models[0].router.top_k.config",
     "expected a config.json key or a non-empty list of keys"),
    ("activation", _edit("    excluded_layers:", "    activation: gelu\n    excluded_layers:"),
     "gelu", "models[0].activation", "expected one of 'silu', got 'gelu'"),
    ("option of the other kind",
     _edit("kind: sigmoid_topk", "kind: softmax_topk"), "{config: n_group, default: 1}",
     "models[0].router.n_group",
     "only used with kind 'sigmoid_topk' (kind is 'softmax_topk')"),
    ("router bias missing", _edit(
        "      router_bias: model.layers.{layer}.mlp.gate.e_score_correction_bias\n", ""),
     "router: model.layers", "models[0].tensors",
     "missing required field 'router_bias' (router kind 'sigmoid_topk' reads a score-correction "
     "bias)"),
    ("no {expert}", _edit(EXPERT_GATE, "model.layers.{layer}.mlp.experts.gate_proj.weight"),
     "model.layers.{layer}.mlp.experts.gate_proj.weight", "models[0].tensors.experts.gate",
     "'model.layers.{layer}.mlp.experts.gate_proj.weight' must contain {expert} exactly once"),
    ("unknown placeholder", _edit(EXPERT_GATE, "model.layers.{layer}.mlp.experts.{e}.gate_proj"
                                               ".weight"),
     "model.layers.{layer}.mlp.experts.{e}", "models[0].tensors.experts.gate",
     "unknown placeholder '{e}' (patterns know {layer} and {expert})"),
    ("not under a layer", _edit("router: model.layers.{layer}.mlp.gate.weight",
                                "router: layers.{layer}.mlp.gate.weight"),
     "layers.{layer}.mlp.gate.weight", "models[0].tensors.router",
     "'layers.{layer}.mlp.gate.weight' must start with 'model.layers.{layer}.'"),
    ("not a weight", _edit("router: model.layers.{layer}.mlp.gate.weight",
                           "router: model.layers.{layer}.mlp.gate"),
     "model.layers.{layer}.mlp.gate\n", "models[0].tensors.router",
     "'model.layers.{layer}.mlp.gate' must be the router's tensor name ending in '.weight'"),
    ("router outside the block", _edit("router: model.layers.{layer}.mlp.gate.weight",
                                       "router: model.layers.{layer}.gate.weight"),
     "model.layers.{layer}.gate.weight", "models[0].tensors.router",
     "the router must be inside the MoE block"),
    ("projections apart", _edit("up: model.layers.{layer}.mlp.experts.{expert}.up_proj.weight",
                                "up: model.layers.{layer}.mlp.expert.{expert}.up_proj.weight"),
     "model.layers.{layer}.mlp.expert.{expert}", "models[0].tensors.experts.up",
     "is not under the same module as models[0].tensors.experts.gate "
     "('model.layers.{layer}.mlp.experts')"),
    ("expert in a shared name", _edit("gate: model.layers.{layer}.mlp.shared_experts.gate_proj",
                                      "gate: model.layers.{layer}.mlp.shared_experts.{expert}."
                                      "gate_proj"),
     "model.layers.{layer}.mlp.shared_experts.{expert}", "models[0].tensors.shared_experts.gate",
     "is not per expert: {expert} is not allowed here"),
    ("shared gate name", _edit("      dense_mlp:\n        gate:",
                               "      shared_expert_gate: model.layers.{layer}.mlp.gate2.weight\n"
                               "      dense_mlp:\n        gate:"),
     "model.layers.{layer}.mlp.gate2.weight", "models[0].tensors.shared_expert_gate",
     "must be 'model.layers.{layer}.mlp.shared_experts_gate.weight'"),
    ("plugin name", _edit("name: glm4_moe_declared", "name: glm4-moe"), "glm4-moe", "name",
     "expected a plugin name (letters, digits and '_'), got 'glm4-moe'"),
]


def _edit_mm(old, new):
    assert MM_TEXT.count(old) == 1, old
    return MM_TEXT.replace(old, new)


MM_BLOCK = "weight_block_size: {config: quantization_config.weight_block_size, default: [128, 128]}"
BAD_STANZAS += [
    # The full-width q/k norm, the FP8 block-scaled source and rope.rotary_dim (minimax_m2.yaml).
    ("qk norm scope", _edit_mm("qk_norm_scope: full_width", "qk_norm_scope: per_layer"),
     "per_layer          # q_norm", "models[0].attention.qk_norm_scope",
     "expected one of 'per_head', 'full_width', got 'per_layer'"),
    ("source format", _edit_mm("format: fp8_block_scaled", "format: fp8_block_scale"),
     "fp8_block_scale", "models[0].source.format",
     "expected one of 'as_stored', 'fp8_block_scaled', got 'fp8_block_scale' (did you mean "
     "'fp8_block_scaled'?)"),
    ("unknown source key", _edit_mm(MM_BLOCK, MM_BLOCK.replace("weight_block_size", "block_size")),
     "block_size:", "models[0].source.block_size",
     "unknown key; known keys: format, weight_block_size"),
    ("block size length", _edit_mm(MM_BLOCK, MM_BLOCK.replace("[128, 128]", "[128, 128, 1]")),
     "[128, 128, 1]", "models[0].source.weight_block_size.default",
     "expected [rows, cols], got 3 values"),
    ("block size literal length", _edit_mm(MM_BLOCK, "weight_block_size: [128]"), "[128]",
     "models[0].source.weight_block_size", "expected [rows, cols], got 1 values"),
    ("block size range", _edit_mm(MM_BLOCK, "weight_block_size: [128, 0]"), "0]",
     "models[0].source.weight_block_size[1]", "expected a value >= 1, got 0"),
    ("block size type", _edit_mm(MM_BLOCK, "weight_block_size: 128"), "128",
     "models[0].source.weight_block_size",
     "expected a list of integers, or a map {config: <key>, default: <value>}"),
    ("block size without fp8",
     _edit_mm("format: fp8_block_scaled", "format: as_stored"),
     "{config: quantization_config.weight_block_size", "models[0].source.weight_block_size",
     "only used with format 'fp8_block_scaled' (format is 'as_stored')"),
    ("rotary dim type", _edit_mm("rotary_dim: {config: rotary_dim, default: 0}",
                                 "rotary_dim: half"), "half", "models[0].rope.rotary_dim",
     "expected an integer, got 'half'"),
    ("rotary dim range", _edit_mm("rotary_dim: {config: rotary_dim, default: 0}",
                                  "rotary_dim: {config: rotary_dim, default: -8}"), "-8",
     "models[0].rope.rotary_dim.default", "expected a value >= 0, got -8"),
]

REQUIRES = "    requires:\n      scoring_func: sigmoid\n      topk_method: noaux_tc\n"
BAD_STANZAS += [
    # `requires`: a map from config.json keys to a value or a non-empty list of values.
    ("requires not a map", _edit(REQUIRES, "    requires: [scoring_func]\n"), "[scoring_func]",
     "models[0].requires", "expected a map from config.json keys to the accepted value or list "
     "of values"),
    ("requires empty", _edit(REQUIRES, "    requires: {}\n"), "{}", "models[0].requires",
     "names no config.json key (leave requires out instead)"),
    ("requires empty list", _edit("topk_method: noaux_tc", "topk_method: []"), "[]",
     "models[0].requires.topk_method", "lists no accepted value"),
    ("requires null", _edit("topk_method: noaux_tc", "topk_method: null"), "topk_method: null",
     "models[0].requires.topk_method",
     "null is not an accepted value: a key absent or null in config.json always passes"),
    ("requires map value", _edit("topk_method: noaux_tc", "topk_method: {is: noaux_tc}"),
     "{is: noaux_tc}", "models[0].requires.topk_method",
     "expected the accepted value or a list of accepted values, got a map"),
    ("requires nested", _edit("topk_method: noaux_tc", "topk_method: [noaux_tc, [greedy]]"),
     "[greedy]", "models[0].requires.topk_method[1]",
     "expected an accepted value: a string, a number, true or false"),
    ("requires duplicate", _edit(REQUIRES, REQUIRES + "      scoring_func: softmax\n"),
     "scoring_func: softmax", "models[0].requires.scoring_func",
     "duplicate key (first given at line {})".format(
         GLM_TEXT.splitlines().index("      scoring_func: sigmoid") + 1)),
]


@pytest.mark.parametrize("text,needle,path,message", [c[1:] for c in BAD_STANZAS],
                         ids=[c[0] for c in BAD_STANZAS])
def test_malformed_stanza_names_file_line_column_key_and_value(tiny_models, tmp_path, ops, text,
                                                               needle, path, message):
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    line, col = _where(text, needle.rstrip("\n"))
    with pytest.raises(RuntimeError) as e:
        ops.run_model(os.path.join(tiny_models, "glm4_moe"), torch.ones(1, 4, dtype=torch.long),
                      None, None, torch.float32, None, False, "", [str(f)])
    got = str(e.value)
    if "unknown key" in message:  # reported at the key
        assert re.search(rf"bad\.yaml:{line}:\d+: {re.escape(path)}", got), got
    else:
        assert f"bad.yaml:{line}:{col}: {path}: " in got, got
    assert message in got, got


def test_no_models(tiny_models, tmp_path, ops):
    f = tmp_path / "empty.yaml"
    f.write_text("name: nothing\nmodels: []\n")
    with pytest.raises(RuntimeError, match=r"empty\.yaml:2:9: models: declares no models"):
        ops.run_model(os.path.join(tiny_models, "glm4_moe"), torch.ones(1, 4, dtype=torch.long),
                      None, None, torch.float32, None, False, "", [str(f)])


def test_recipe_error_says_where_the_recipe_lists_the_file(tmp_path):
    (tmp_path / "glm.yaml").write_text(_edit("kind: sigmoid_topk", "kind: sigmoid_top"))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("plugins:\n  - glm.yaml\n")
    proc = subprocess.run([MOEQ, "plugins", "--config", str(recipe)], capture_output=True,
                          text=True)
    assert proc.returncode != 0
    line, col = _where(GLM_TEXT, "sigmoid_topk")
    assert re.search(rf"recipe\.yaml:2:5: plugins\[0\]: .*glm\.yaml:{line}:{col}: "
                     r"models\[0\]\.router\.kind: expected one of", proc.stderr), proc.stderr


# ---- errors found when the model is built from config.json ---------------------------------------

def _copy_glm(tiny_models, dst, edit):
    return _copy_model(tiny_models, "glm4_moe", dst, edit)


def _copy_model(tiny_models, name, dst, edit):
    src = os.path.join(tiny_models, name)
    os.makedirs(dst)
    config = json.load(open(os.path.join(src, "config.json")))
    edit(config)
    json.dump(config, open(os.path.join(dst, "config.json"), "w"))
    shutil.copy(os.path.join(src, "model.safetensors"), dst)
    return dst


@pytest.mark.parametrize("edit,needle,path,message", [
    (lambda c: c.pop("moe_intermediate_size"), "intermediate_size: {config: moe_intermediate_size}",
     "models[0].experts.intermediate_size",
     "has none of the keys 'moe_intermediate_size' and no default is declared"),
    (lambda c: c.update(first_k_dense_replace=5), "first: {config: first_k_dense_replace",
     "models[0].moe_layers.first",
     "config key 'first_k_dense_replace' must be in [0, num_hidden_layers 3], got 5"),
    (lambda c: c.update(hidden_act="gelu"), None, "models[0].activation",
     "activation 'gelu' (from config key 'hidden_act') is not supported (supported: silu)"),
], ids=["missing key", "out of range", "activation"])
def test_build_errors_name_the_stanza_and_the_config_key(tiny_models, ops, tmp_path, edit, needle,
                                                         path, message):
    d = _copy_glm(tiny_models, str(tmp_path / "m"), edit)
    with pytest.raises(RuntimeError) as e:
        ops.run_model(d, torch.ones(1, 4, dtype=torch.long), None, None, torch.float32, None,
                      False, "", [GLM_YAML])
    got = str(e.value)
    assert "model 'Glm4MoeForCausalLM' declared at " in got, got
    if needle:
        line, col = _where(GLM_TEXT, needle)
        col += needle.index("{")
        assert f"glm4_moe.yaml:{line}:{col}: {path}: " in got, got
    else:
        assert f"{path}: " in got, got
    assert message in got, got


def test_grouped_router_check_reaches_the_declared_model(tiny_models, ops, tmp_path):
    d = _copy_glm(tiny_models, str(tmp_path / "m"), lambda c: c.update(n_group=3))
    with pytest.raises(RuntimeError, match="n_group 3 must divide n_routed_experts 8"):
        ops.run_model(d, torch.ones(1, 4, dtype=torch.long), None, None, torch.float32, None,
                      False, "", [GLM_YAML])


@pytest.mark.parametrize("edit,needle,path,message", [
    (lambda c: c["quantization_config"].update(weight_block_size=[32]),
     "{config: quantization_config.weight_block_size", "models[0].source.weight_block_size",
     "config key 'quantization_config.weight_block_size' must be [rows, cols] of positive "
     "integers, got [32]"),
    (lambda c: c.update(rotary_dim=4), "{config: rotary_dim", "models[0].rope.rotary_dim",
     "config key 'rotary_dim' 4 disagrees with partial_rotary_factor 0.5 (head_dim 16) in config"),
    (lambda c: c.update(rotary_dim=7), "{config: rotary_dim", "models[0].rope.rotary_dim",
     "config key 'rotary_dim' must be a positive even number <= head_dim 16, got 7"),
], ids=["block size", "rotary_dim disagrees", "rotary_dim odd"])
def test_minimax_build_errors_name_the_stanza_and_the_config_key(tiny_models, ops, tmp_path, edit,
                                                                 needle, path, message):
    d = _copy_model(tiny_models, "minimax_m2_fp8", str(tmp_path / "m"), edit)
    with pytest.raises(RuntimeError) as e:
        ops.run_model(d, torch.ones(1, 4, dtype=torch.long), None, None, torch.float32, None,
                      False, "", [MM_YAML])
    got = str(e.value)
    assert "model 'MiniMaxM2ForCausalLM' declared at " in got, got
    line, col = _where(MM_TEXT, needle)
    assert f"minimax_m2.yaml:{line}:{col}: {path}: " in got, got
    assert message in got, got


# ---- requires: config.json variants a declaration does not implement -----------------------------

@pytest.mark.parametrize("name,yaml,key,value,accepted,compiled", [
    # MiniMax-M2: the compiled plugin's guards, and the compiled plugin's own refusal.
    ("minimax_m2_fp8", MM_YAML, "scoring_func", "softmax", "'sigmoid'",
     "MiniMax-M2 routing is sigmoid, got scoring_func 'softmax'"),
    ("minimax_m2_fp8", MM_YAML, "qk_norm_type", "per_head", "'per_layer'",
     "qk_norm_type 'per_head' is not supported"),
    # GLM-4.5: DeepSeek-style keys its config leaves out; the compiled plugin checks them too.
    ("glm4_moe", GLM_YAML, "scoring_func", "softmax", "'sigmoid'",
     "GLM-4.5 routing is sigmoid, got scoring_func 'softmax'"),
    ("glm4_moe", GLM_YAML, "topk_method", "greedy", "'noaux_tc'",
     "GLM-4.5 selects experts by bias-corrected scores (topk_method 'noaux_tc'), got topk_method "
     "'greedy'"),
], ids=["minimax scoring_func", "minimax qk_norm_type", "glm scoring_func", "glm topk_method"])
def test_requires_refuses_a_variant_the_declaration_does_not_implement(
        tiny_models, ops, tmp_path, name, yaml, key, value, accepted, compiled):
    d = _copy_model(tiny_models, name, str(tmp_path / "m"), lambda c: c.update({key: value}))
    with pytest.raises(RuntimeError) as e:
        ops.run_model(d, torch.ones(1, 4, dtype=torch.long), None, None, torch.float32, None,
                      False, "", [yaml])
    text = open(yaml).read()
    line, col = _where(text, f"      {key}: ")
    col += len(f"      {key}: ")
    where = f"{os.path.basename(yaml)}:{line}:{col}: models[0].requires.{key}: "
    assert (f"{where}config key '{key}' is '{value}' in '{d}/config.json', which this declaration "
            f"does not implement (accepted: {accepted})") in str(e.value), str(e.value)
    if compiled:
        plugin = os.path.basename(yaml)[: -len(".yaml")]
        with pytest.raises(RuntimeError, match=re.escape(compiled)):
            ops.run_model(d, torch.ones(1, 4, dtype=torch.long), None, None, torch.float32,
                          None, False, "", [plugin])


def test_requires_passes_the_accepted_value_and_an_absent_key(tiny_models, ops, tmp_path):
    """The fixture's config states scoring_func and qk_norm_type as accepted; without them (absent,
    or null: both read as absent) the declared model is still the compiled one."""
    name = "minimax_m2_fp8"
    src = os.path.join(tiny_models, name)
    config = json.load(open(os.path.join(src, "config.json")))
    assert (config["scoring_func"], config["qk_norm_type"]) == ("sigmoid", "per_layer")

    def drop(c):
        c.pop("scoring_func")
        c["qk_norm_type"] = None
    d = _copy_model(tiny_models, name, str(tmp_path / "m"), drop)
    ref = load_file(os.path.join(src, "reference.safetensors"))
    _assert_declared_equals_compiled(ops, d, ref, MM_YAML, "minimax_m2", MOE_LAYERS[name])


def _requires_stanza(tmp_path, entries):
    """glm4_moe.yaml with `entries` (YAML lines) as its requires map."""
    f = tmp_path / "req.yaml"
    f.write_text(_edit(REQUIRES, "    requires:\n" + "".join(f"      {e}\n" for e in entries)))
    return str(f)


def test_requires_compares_typed_values_and_dotted_keys(tiny_models, ops, tmp_path):
    """Numbers compare by value (8 accepts 8 and 8.0), booleans and strings only their own type
    (a quoted "8" is a string); dots reach into objects; any value of a list passes."""
    d = os.path.join(tiny_models, "glm4_moe")
    ids = torch.ones(1, 4, dtype=torch.long)
    ok = _requires_stanza(tmp_path, ["n_routed_experts: 8.0", "use_qk_norm: true",
                                     "first_k_dense_replace: [0, 1]", "model_type: glm4_moe",
                                     "rope_parameters.rope_type: [yarn, default]",
                                     "routed_scaling_factor: 2.5"])
    declared = ops.run_model(d, ids, None, None, torch.float32, None, False, "", [ok])
    compiled = ops.run_model(d, ids, None, None, torch.float32, None, False, "", ["glm4_moe"])
    assert torch.equal(declared[0], compiled[0])

    for entry, found, accepted in [
            ('n_routed_experts: "8"', "8", "'8'"),
            ("use_qk_norm: 1", "true", "1"),
            ("rope_parameters.rope_type: yarn", "'default'", "'yarn'"),
            ("first_k_dense_replace: [2, 3]", "1", "2, 3")]:
        (tmp_path / "req.yaml").unlink()
        f = _requires_stanza(tmp_path, [entry])
        key = entry.split(":")[0]
        with pytest.raises(RuntimeError) as e:
            ops.run_model(d, ids, None, None, torch.float32, None, False, "", [f])
        line, col = _where(open(f).read(), entry)
        col += len(key) + 2
        assert (f"req.yaml:{line}:{col}: models[0].requires.{key}: config key '{key}' is {found} "
                f"in '{d}/config.json', which this declaration does not implement (accepted: "
                f"{accepted})") in str(e.value), str(e.value)


def test_requires_is_checked_before_the_other_keys(tiny_models, ops, tmp_path):
    """A variant is named as such, not as the first other key it trips over."""
    def variant(c):
        c["scoring_func"] = "softmax"
        c.pop("moe_intermediate_size")  # would otherwise fail experts.intermediate_size
    d = _copy_glm(tiny_models, str(tmp_path / "m"), variant)
    with pytest.raises(RuntimeError, match=r"models\[0\]\.requires\.scoring_func: config key "
                                           r"'scoring_func' is 'softmax'"):
        ops.run_model(d, torch.ones(1, 4, dtype=torch.long), None, None, torch.float32, None,
                      False, "", [GLM_YAML])
