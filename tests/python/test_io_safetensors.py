"""moeq's safetensors reader and writer against the safetensors package (the reference).

moeq's checkpoint I/O is reached through the torch ops of libmoeq_io.so:
torch.ops.moeq.load_safetensors(path) and torch.ops.moeq.save_safetensors(tensors, dir, ...).
"""
import json
import os

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file


@pytest.fixture(scope="module")
def moeq_io():
    build = os.environ.get("MOEQ_BUILD_DIR", os.path.join(os.path.dirname(__file__), "../../build"))
    torch.ops.load_library(os.path.join(build, "core", "io", "libmoeq_io.so"))
    return torch.ops.moeq


def every_dtype():
    """One small tensor of each dtype safetensors and torch share, from random bytes."""
    gen = torch.Generator().manual_seed(0)
    dtypes = [
        torch.float64, torch.float32, torch.float16, torch.bfloat16,
        torch.float8_e4m3fn, torch.float8_e5m2, torch.float8_e8m0fnu,
        torch.float8_e4m3fnuz, torch.float8_e5m2fnuz, torch.float4_e2m1fn_x2,
        torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8,
        torch.uint16, torch.uint32, torch.uint64, torch.bool, torch.complex64,
    ]
    tensors = {}
    for dtype in dtypes:
        t = torch.empty(3, 4, dtype=dtype)
        raw = torch.randint(0, 2 if dtype == torch.bool else 256, (t.numel() * t.element_size(),),
                            dtype=torch.uint8, generator=gen)
        t.view(-1).view(torch.uint8).copy_(raw)
        tensors[f"t.{str(dtype).removeprefix('torch.')}"] = t
    tensors["scalar"] = torch.tensor(3.5)
    tensors["empty"] = torch.empty(0, 7, dtype=torch.bfloat16)
    return tensors


def same_bytes(a, b):
    return (a.dtype == b.dtype and a.shape == b.shape
            and torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8)))


def test_reads_every_dtype_safetensors_writes(moeq_io, tmp_path):
    tensors = every_dtype()
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    loaded = moeq_io.load_safetensors(str(tmp_path))
    assert sorted(loaded) == sorted(tensors)
    for name, tensor in tensors.items():
        assert same_bytes(loaded[name], tensor), name


def test_writes_the_same_bytes_as_safetensors(moeq_io, tmp_path):
    tensors = every_dtype()
    save_file(tensors, tmp_path / "reference.safetensors", metadata={"format": "pt"})
    (path,) = moeq_io.save_safetensors(tensors, str(tmp_path / "moeq"), 1 << 40, {"format": "pt"})
    assert path == str(tmp_path / "moeq" / "model.safetensors")
    assert (tmp_path / "moeq" / "model.safetensors").read_bytes() == \
        (tmp_path / "reference.safetensors").read_bytes()


def test_reads_a_hugging_face_sharded_checkpoint(moeq_io, tmp_path):
    shards = [{f"model.layers.{i}.mlp.experts.{e}.w1.weight": torch.randn(8, 4) for e in range(2)}
              for i in range(3)]
    weight_map = {}
    for i, shard in enumerate(shards):
        name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, tmp_path / name, metadata={"format": "pt"})
        weight_map.update({key: name for key in shard})
    (tmp_path / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": 3 * 2 * 8 * 4 * 4}, "weight_map": weight_map}))

    loaded = moeq_io.load_safetensors(str(tmp_path))
    expected = {k: v for shard in shards for k, v in shard.items()}
    assert sorted(loaded) == sorted(expected)
    for name, tensor in expected.items():
        assert torch.equal(loaded[name], tensor), name


def test_sharded_output_loads_in_safetensors(moeq_io, tmp_path):
    tensors = {f"layers.{i}.w": torch.randn(16, 16) for i in range(6)}  # 1 KiB each
    paths = moeq_io.save_safetensors(tensors, str(tmp_path), 2048, {"format": "pt"})
    assert [os.path.basename(p) for p in paths] == [
        "model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors",
        "model-00003-of-00003.safetensors", "model.safetensors.index.json"]
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert index["metadata"]["total_size"] == 6 * 1024
    assert sorted(index["weight_map"]) == sorted(tensors)
    for name, shard in index["weight_map"].items():
        with safe_open(tmp_path / shard, framework="pt") as f:
            assert f.metadata() == {"format": "pt"}
            assert torch.equal(f.get_tensor(name), tensors[name])


def test_corrupt_files_raise_with_the_file_named(moeq_io, tmp_path):
    save_file({"w": torch.randn(8)}, tmp_path / "model.safetensors")
    whole = (tmp_path / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(whole[:-4])
    with pytest.raises(RuntimeError, match=r"model\.safetensors': tensor 'w': data_offsets "
                                           r"\[0, 32\] lie outside the data region of 28 bytes"):
        moeq_io.load_safetensors(str(tmp_path))
    (tmp_path / "model.safetensors").write_bytes(whole[:12])
    with pytest.raises(RuntimeError, match="runs past the end of the file"):
        moeq_io.load_safetensors(str(tmp_path))


def test_writer_rejects_a_bad_shard_limit(moeq_io, tmp_path):
    with pytest.raises(RuntimeError, match="max_shard_bytes must be positive, got -1"):
        moeq_io.save_safetensors({"w": torch.zeros(2)}, str(tmp_path), -1, None)
