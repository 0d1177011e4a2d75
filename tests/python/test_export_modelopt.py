"""moeq's ModelOpt unified HF exporter against nvidia-modelopt 0.47.0 itself.

The tiny Mixtral-layout model (export_fixtures.py) is exported through the C++ exporter in
ModelOpt's format. The same Linears, quantized by ModelOpt (mtq.quantize with the matching
config, max calibration) and given the amax values moeq's quantizers used (the weight amax, the
gate/up and q/k/v global amax NVFP4 shares, one input amax per projection across a block's
experts), are exported by ModelOpt's own _export_quantized_weight: every tensor must have the
same bytes. hf_quant_config.json must equal ModelOpt's get_quant_config of that model, and
config.json's quantization_config its convert_hf_quant_config_format.
"""
import copy
import json
import os
import re

import pytest
import torch
import torch.nn as nn
from safetensors.torch import load_file

from export_fixtures import (_load_libs, export, ignored_names, make_source, module_tree,
                             tiny_mixtral)

# moeq scheme -> (ModelOpt config, quant_algo)
SCHEMES = {
    "W8A8-FP8": ("FP8_DEFAULT_CFG", "FP8"),
    "NVFP4": ("NVFP4_DEFAULT_CFG", "NVFP4"),
    "NVFP4A16": ("W4A16_NVFP4_CFG", "W4A16_NVFP4"),
    "W4A16": ("INT4_BLOCKWISE_WEIGHT_ONLY_CFG", "W4A16_AWQ"),
}


@pytest.fixture(scope="module")
def ops():
    return _load_libs()


@pytest.fixture(scope="module")
def model():
    return tiny_mixtral()


def _expert_key(module):
    return re.sub(r"\.experts\.\d+\.", ".experts.*.", module)


def _fusion_key(module):
    parent, leaf = module.rsplit(".", 1)
    return {"w1": parent + "#gate_up", "w3": parent + "#gate_up", "q_proj": parent + "#qkv",
            "k_proj": parent + "#qkv", "v_proj": parent + "#qkv"}.get(leaf)


def _amaxes(linears, quantized, algo):
    """The amax values moeq's quantizers used: per module (weight amax, input amax)."""
    weight = {}
    for m in quantized:
        w = linears[m][0].float()
        if algo == "W4A16_AWQ":
            weight[m] = w.abs().reshape(w.shape[0], -1, 128).amax(-1)
        else:
            weight[m] = w.abs().amax()
    if algo in ("NVFP4", "W4A16_NVFP4"):  # fused projections share the global amax
        groups = {}
        for m in quantized:
            if _fusion_key(m):
                groups.setdefault(_fusion_key(m), []).append(m)
        for members in groups.values():
            shared = torch.stack([weight[m] for m in members]).amax()
            for m in members:
                weight[m] = shared
    inputs = {}
    for m in quantized:
        key = _expert_key(m)
        inputs[key] = torch.maximum(inputs.get(key, torch.tensor(0.0)), linears[m][1].float().abs().amax())
    return weight, {m: inputs[_expert_key(m)] for m in quantized}


def _modelopt(linears, quantized, config_name, algo):
    import modelopt.torch.quantization as mtq

    shapes = {m: tuple(w.shape) for m, (w, _) in linears.items()}
    tree = module_tree(shapes)
    tree.model.add_module("embed_tokens", nn.Embedding(32, 128, dtype=torch.bfloat16))
    for m, (w, _) in linears.items():
        tree.get_submodule(m).weight.data.copy_(w)
    config = copy.deepcopy(getattr(mtq, config_name))

    def forward_loop(model):
        for m, (_, x) in linears.items():
            model.get_submodule(m)(x)

    mtq.quantize(tree, config, forward_loop)
    weight_amax, input_amax = _amaxes(linears, quantized, algo)
    for m in quantized:
        linear = tree.get_submodule(m)
        wq = linear.weight_quantizer
        wq.amax = weight_amax[m].reshape(wq.amax.shape).to(wq.amax.dtype)
        if linear.input_quantizer.is_enabled:
            iq = linear.input_quantizer
            iq.amax = input_amax[m].reshape(iq.amax.shape).to(iq.amax.dtype)
    return tree


@pytest.mark.parametrize("scheme", list(SCHEMES))
def test_export_equals_modelopt(ops, model, tmp_path, scheme):
    from modelopt.torch.export.convert_hf_config import convert_hf_quant_config_format
    from modelopt.torch.export.quant_utils import get_quant_config
    from modelopt.torch.export.unified_export_hf import _export_quantized_weight

    config_name, algo = SCHEMES[scheme]
    linears, passthrough = model
    src = make_source(tmp_path / "src")
    out = tmp_path / "out"
    export(ops, src, out, scheme, "modelopt", linears, passthrough, embeddings=["model.embed_tokens"])
    assert sorted(os.listdir(tmp_path)) == ["out", "src"]
    exported = load_file(str(out / "model.safetensors"))

    quantized = [m for m in linears if m not in ignored_names()]
    tree = _modelopt(linears, quantized, config_name, algo)
    # ModelOpt's config first: exporting a module replaces its quantizers.
    theirs_hf = get_quant_config(tree)
    ours_hf = json.load(open(out / "hf_quant_config.json"))
    assert ours_hf == theirs_hf
    assert list(ours_hf["quantization"]) == list(theirs_hf["quantization"])  # key order too
    config = json.load(open(out / "config.json"))
    assert config["quantization_config"] == convert_hf_quant_config_format(theirs_hf)
    assert config["model_type"] == "mixtral"

    names = set(passthrough) | {m + ".weight" for m in ignored_names()}
    for m in quantized:
        linear = tree.get_submodule(m)
        _export_quantized_weight(linear, torch.bfloat16)
        theirs = {k: v.detach() for k, v in linear.state_dict().items() if "quantizer" not in k}
        for suffix, t in theirs.items():
            ours = exported[f"{m}.{suffix}"]
            assert (ours.dtype, ours.shape) == (t.dtype, t.shape), f"{m}.{suffix}"
            assert torch.equal(ours.reshape(-1).view(torch.uint8), t.reshape(-1).contiguous().view(torch.uint8)), f"{scheme} {m}.{suffix}"
            names.add(f"{m}.{suffix}")
    assert sorted(exported) == sorted(names)


def test_unsupported_scheme_names_the_algos(ops, model, tmp_path):
    linears, passthrough = model
    src = make_source(tmp_path / "src")
    with pytest.raises(RuntimeError) as error:
        export(ops, src, tmp_path / "out", "FP8-block", "modelopt", linears, passthrough)
    for word in ("FP8-block", "FP8", "NVFP4", "W4A16_NVFP4", "W4A16_AWQ", "compressed-tensors"):
        assert word in str(error.value)
    assert sorted(os.listdir(tmp_path)) == ["src"]
