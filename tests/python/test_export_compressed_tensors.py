"""moeq's compressed-tensors exporter against compressed-tensors 0.20.0 itself.

A tiny Mixtral-layout model (tests/python/export_fixtures.py) is exported through the C++
exporter (torch.ops.moeq.export_checkpoint: weight quantizers observed on the weights, input
quantizers on random activations, NVFP4 gate/up and q/k/v global scales fused, as the pipeline
does). Then, per scheme:
  - the checkpoint holds exactly the tensors (names, shapes, dtypes) compressed-tensors'
    ModelCompressor.compress_model gives the same modules;
  - ModelCompressor.decompress_model, on those modules loaded from the checkpoint, gives back
    moeq's fake-quantized weight exactly (bit for bit but for the sign of zero);
  - config.json equals, key for key and byte for byte, what ModelCompressor.update_config writes
    for the same scheme and ignore list.
"""
import json
import os

import pytest
import torch
from safetensors.torch import load_file

from export_fixtures import (_load_libs, export, ignored_names, make_source, module_tree,
                             tiny_mixtral)

from compressed_tensors.compressors import ModelCompressor
from compressed_tensors.quantization import (QuantizationConfig, apply_quantization_config,
                                             preset_name_to_scheme)

# moeq scheme -> compressed-tensors preset. The first five are the acceptance set; the others
# cover the remaining formats (int-quantized W4A8, static FP8, NVFP4A16, MXFP4, W8A16).
SCHEMES = {
    "W4A16": "W4A16",
    "W8A8-FP8-DYNAMIC": "FP8_DYNAMIC",
    "FP8-block": "FP8_BLOCK",
    "NVFP4": "NVFP4",
    "W8A8-INT8": "W8A8",
    "W8A8-FP8": "FP8",
    "NVFP4A16": "NVFP4A16",
    "MXFP4": "MXFP4",
    "W8A16": "W8A16",
    "W4A8-INT": "W4A8",
}


@pytest.fixture(scope="module")
def ops():
    return _load_libs()


@pytest.fixture(scope="module")
def model():
    return tiny_mixtral()


def _load_checkpoint(out):
    index = out / "model.safetensors.index.json"
    if not index.exists():
        return load_file(str(out / "model.safetensors"))
    tensors = {}
    for shard in sorted(set(json.load(open(index))["weight_map"].values())):
        tensors.update(load_file(str(out / shard)))
    return tensors


def _ct_model(linears, preset):
    """The same Linears with compressed-tensors' scheme applied (ignoring routers and lm_head)."""
    tree = module_tree({m: tuple(w.shape) for m, (w, _) in linears.items()})
    qc = QuantizationConfig(config_groups={"group_0": preset_name_to_scheme(preset, ["Linear"])},
                            ignore=ignored_names())
    apply_quantization_config(tree, qc)
    return tree


@pytest.mark.parametrize("scheme", list(SCHEMES))
def test_export_equals_compressed_tensors(ops, model, tmp_path, scheme):
    linears, passthrough = model
    src = make_source(tmp_path / "src")
    out = tmp_path / "out"
    # A small shard size: the index and several shards, as large models have.
    fake = export(ops, src, out, scheme, "compressed-tensors", linears, passthrough,
                  shard_size=200_000)
    assert sorted(os.listdir(tmp_path)) == ["out", "src"]
    exported = _load_checkpoint(out)

    # compressed-tensors' own compression of the same modules: the tensor names, shapes, dtypes.
    tree = _ct_model(linears, SCHEMES[scheme])
    compressor = ModelCompressor.from_pretrained_model(tree)
    compressor.compress_model(tree)
    theirs = tree.state_dict()

    # config.json: compressed-tensors' update_config on the same source config, as
    # save_pretrained calls it after compress_model.
    ct_dir = tmp_path / "ct"
    make_source(ct_dir)
    compressor.update_config(str(ct_dir))
    ours = json.load(open(out / "config.json"))
    expected_config = json.load(open(ct_dir / "config.json"))
    assert ours["quantization_config"] == expected_config["quantization_config"]
    assert ours == expected_config
    assert open(out / "config.json").read() == open(ct_dir / "config.json").read()
    assert sorted(exported) == sorted(list(theirs) + list(passthrough))
    for name, t in theirs.items():
        assert (exported[name].shape, exported[name].dtype) == (t.shape, t.dtype), name

    # Their decompression of our tensors equals our fake quantization, bit for bit.
    tree.load_state_dict({k: exported[k] for k in theirs}, strict=True, assign=True)
    compressor.decompress_model(tree)
    decompressed = dict(tree.named_parameters())
    experts = 0
    for module, expected in fake.items():
        got = decompressed[module + ".weight"]
        assert got.dtype == expected.dtype == torch.bfloat16, module
        # Exactly equal values. (Bits differ only in the sign of zero: fake quantization keeps
        # -0 for small negatives, as compressed-tensors' fake_quantize does, while integers
        # decompress to +0.)
        assert not got.isnan().any(), module
        assert torch.equal(got, expected), f"{scheme} {module}"
        assert torch.equal(got.view(torch.int16)[got != 0], expected.view(torch.int16)[got != 0])
        experts += ".experts." in module
    assert experts == 2 * 4 * 3
    for name in ignored_names():
        assert torch.equal(exported[name + ".weight"], linears[name][0])

    for side in ("tokenizer.json", "tokenizer_config.json", "generation_config.json", "chat_template.jinja"):
        assert open(out / side).read() == open(src / side).read(), side


def test_existing_output_is_an_error(ops, model, tmp_path):
    linears, passthrough = model
    src = make_source(tmp_path / "src")
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine").write_text("kept")
    with pytest.raises(RuntimeError, match="already exists"):
        export(ops, src, out, "W4A16", "compressed-tensors", linears, passthrough)
    assert (out / "mine").read_text() == "kept"
    assert sorted(os.listdir(tmp_path)) == ["out", "src"]
