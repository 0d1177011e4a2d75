"""moeq's integer / FP8 quantizer ops (torch.ops.moeq.*) against the peers' own code:

- compressed-tensors 0.20.0: calculate_qparams, fake_quantize / quantize / dequantize,
  pack_to_int32 / unpack_from_int32 and its pack-quantized, int-quantized and float-quantized
  compressors (bytes of the written tensors);
- ModelOpt 0.47.0: FP8 and INT4-AWQ export (get_scaling_factor, to_quantized_weight,
  pack_int4_in_uint8);

bit for bit, in float32 and bfloat16, with the hard cases (exact .5 ties, zeros, all-zero groups,
subnormals, very large values). On a machine with CUDA, every op's CUDA result must equal its CPU
result bit for bit.
"""
import math

import pytest
import torch
from compressed_tensors.compressors.naive_quantized.base import (
    FloatQuantizationCompressor,
    IntQuantizationCompressor,
)
from compressed_tensors.compressors.pack_quantized.base import PackedQuantizationCompressor
from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32, unpack_from_int32
from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
from compressed_tensors.quantization.lifecycle.forward import dequantize, fake_quantize, quantize
from compressed_tensors.quantization.utils.helpers import calculate_qparams

E4M3 = torch.float8_e4m3fn
E5M2 = torch.float8_e5m2
HAS_CUDA = torch.cuda.is_available()


def raw(t):
    t = t.detach().cpu().contiguous()
    return t.view({4: torch.int32, 2: torch.int16, 1: torch.uint8}[t.element_size()])


def assert_bits_equal(got, want, what=""):
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)} vs {tuple(want.shape)}"
    assert got.dtype == want.dtype, f"{what}: dtype {got.dtype} vs {want.dtype}"
    differ = raw(got) != raw(want)
    if got.is_floating_point():  # a NaN equals any NaN: payload and sign differ CPU vs GPU
        differ &= ~(got.detach().cpu().float().isnan() & want.detach().cpu().float().isnan())
    diff = differ.nonzero()
    if diff.numel():
        i = tuple(diff[0].tolist())
        g = got.detach().cpu()[i].float().item()
        w = want.detach().cpu()[i].float().item()
        raise AssertionError(f"{what}: {diff.shape[0]} of {got.numel()} differ, first {i}: {g} vs {w}")


def hard_weight(shape, dtype, seed, group=128):
    """Random weights with hard cases by row: exact ties of the int4 grid, fp8 midpoints, zero rows
    (all-zero groups), sparse zeros, subnormals, very large values."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=g) * 0.02
    flat = w.view(-1, shape[-1])
    n = flat.shape[0]
    cols = shape[-1]
    # int4 ties: (k + 0.5) / 16 with one element 7.5 / 16 per group -> scale 1/16, x/scale = k + .5
    ties = (torch.randint(-8, 8, (cols,), generator=g) + 0.5) / 16
    ties[::group] = 7.5 / 16
    # fp8 midpoints at scale 2^-4: amax 28 pins scale = 28 / 448 = 1/16
    mids = torch.tensor([1.0625, 1.1875, 1.3125, 17.0, 19.0, -2.125, 28.0, -0.0]) / 16
    mids = mids.repeat(math.ceil(cols / 8))[:cols]
    mids[::group] = 28.0
    tiny = 1e-40 if dtype != torch.float16 else 3e-8
    big = 1e30 if dtype != torch.float16 else 6e4
    for r in range(n):
        kind = r % 8
        if kind == 1:
            flat[r] = ties
        elif kind == 2:
            flat[r] = 0.0
        elif kind == 3:
            flat[r] = torch.randn(cols, generator=g) * tiny
        elif kind == 4:
            flat[r] = (torch.rand(cols, generator=g) * 2 - 1) * big
        elif kind == 5:
            flat[r, torch.randint(0, cols, (cols // 3,), generator=g)] = 0.0
        elif kind == 6:
            flat[r] = mids
    return w.to(dtype)


def block_stats(w, br, bc):
    """compressed-tensors' observer statistics: min and max per block, in w's dtype."""
    rows, cols = w.shape[-2:]
    pad = torch.nn.functional.pad(w, (0, -cols % bc, 0, -rows % br))  # zeros: as CT pads
    lead = w.shape[:-2]
    b = pad.reshape(*lead, pad.shape[-2] // br, br, pad.shape[-1] // bc, bc)
    dims = (len(lead) + 1, len(lead) + 3)
    return b.amin(dim=dims), b.amax(dim=dims)


DTYPES = [torch.float32, torch.bfloat16]


# ---- integers -----------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("symmetric", [True, False])
def test_int4_group128(moeq_ops, dtype, symmetric):
    w = hard_weight((256, 512), dtype, seed=1 + symmetric)
    args = QuantizationArgs(num_bits=4, type="int", symmetric=symmetric, strategy="group",
                            group_size=128)
    mn, mx = block_stats(w, 1, 128)
    scale, zp = calculate_qparams(mn, mx, args)

    my_mn, my_mx = moeq_ops.block_minmax(w, [1, 128])
    assert_bits_equal(my_mn, mn.float(), "min")
    assert_bits_equal(my_mx, mx.float(), "max")
    my_scale, my_zp = moeq_ops.int_qparams(my_mn, my_mx, -8, 7, symmetric, dtype)
    assert_bits_equal(my_scale, scale, "scale")
    assert_bits_equal(my_zp, zp, "zero point")

    # CT's forward passes its zero point (zeros when symmetric: force_zero_point).
    assert_bits_equal(moeq_ops.fake_quant_int(w, scale, zp, [1, 128], -8, 7),
                      fake_quantize(w, scale, zp, args), "fake quant")
    codes = quantize(w, scale, zp, args, dtype=torch.int8)
    assert_bits_equal(moeq_ops.quantize_int(w, scale, zp, [1, 128], -8, 7), codes, "codes")
    assert_bits_equal(moeq_ops.pack_int(codes, 4), pack_to_int32(codes, 4), "pack")
    assert_bits_equal(moeq_ops.unpack_int(pack_to_int32(codes, 4), 4, 512), codes, "unpack")

    scheme = QuantizationScheme(targets=["Linear"], weights=args)
    state = {"weight": w, "weight_scale": scale, "weight_zero_point": zp}
    out = PackedQuantizationCompressor.compress(dict(state), scheme)
    assert_bits_equal(moeq_ops.quantize_int_packed(w, scale, zp, [1, 128], 4),
                      out["weight_packed"], "weight_packed")
    if not symmetric:
        assert_bits_equal(moeq_ops.pack_int_rows(zp, 4), out["weight_zero_point"],
                          "weight_zero_point")
        assert_bits_equal(moeq_ops.unpack_int_rows(out["weight_zero_point"], 4, 256), zp,
                          "unpacked zero point")
    dq = dequantize(codes, scale, zp, args)
    assert_bits_equal(moeq_ops.dequantize_int(codes, scale, zp, [1, 128], dq.dtype), dq,
                      "dequantize")


@pytest.mark.parametrize("num_bits", range(1, 9))
def test_pack_all_widths(moeq_ops, num_bits):
    g = torch.Generator().manual_seed(num_bits)
    lo, hi = -(1 << (num_bits - 1)), 1 << (num_bits - 1)
    for shape in [(7, 100), (3, 5, 64), (2, 33)]:
        codes = torch.randint(lo, hi, shape, generator=g, dtype=torch.int8)
        want = pack_to_int32(codes, num_bits)
        assert_bits_equal(moeq_ops.pack_int(codes, num_bits), want, f"pack {shape}")
        assert_bits_equal(moeq_ops.unpack_int(want, num_bits, shape[-1]),
                          unpack_from_int32(want, num_bits, torch.Size(shape)), f"unpack {shape}")
        zp = codes if codes.dim() == 2 else codes[0]
        assert_bits_equal(moeq_ops.pack_int_rows(zp, num_bits),
                          pack_to_int32(zp, num_bits, packed_dim=0), f"pack rows {shape}")


@pytest.mark.parametrize("dtype", DTYPES)
def test_int8_channel(moeq_ops, dtype):
    w = hard_weight((192, 256), dtype, seed=7)
    args = QuantizationArgs(num_bits=8, type="int", symmetric=True, strategy="channel")
    act = QuantizationArgs(num_bits=8, type="int", symmetric=True, strategy="token", dynamic=True)
    mn, mx = w.amin(dim=-1, keepdim=True), w.amax(dim=-1, keepdim=True)
    scale, zp = calculate_qparams(mn, mx, args)
    my_scale, my_zp = moeq_ops.int_qparams(*moeq_ops.block_minmax(w, [1, 0]), -128, 127, True, dtype)
    assert_bits_equal(my_scale, scale, "scale")
    assert_bits_equal(moeq_ops.fake_quant_int(w, scale, zp, [1, 0], -128, 127),
                      fake_quantize(w, scale, zp, args), "fake quant")
    scheme = QuantizationScheme(targets=["Linear"], weights=args, input_activations=act)
    out = IntQuantizationCompressor.compress(
        {"weight": w, "weight_scale": scale, "weight_zero_point": zp}, scheme)
    assert_bits_equal(moeq_ops.quantize_int(w, scale, zp, [1, 0], -128, 127), out["weight"],
                      "weight")


@pytest.mark.parametrize("dtype", DTYPES)
def test_int8_dynamic_per_token(moeq_ops, dtype):
    """compressed-tensors' dynamic token quantization of a [batch, tokens, hidden] activation."""
    x = hard_weight((2, 24, 256), dtype, seed=9)
    args = QuantizationArgs(num_bits=8, type="int", symmetric=True, strategy="token", dynamic=True)
    mn, mx = x.amin(dim=-1, keepdim=True), x.amax(dim=-1, keepdim=True)
    scale, zp = calculate_qparams(mn, mx, args)
    assert_bits_equal(moeq_ops.fake_quant_int_dynamic(x, [1, 0], -128, 127, True),
                      fake_quantize(x, scale, zp, args), "dynamic fake quant")


# ---- fp8 ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("strategy", ["tensor", "channel", "block"])
def test_fp8(moeq_ops, dtype, strategy):
    shape = (300, 200) if strategy == "block" else (256, 384)  # 300 x 200: partial 128 blocks
    w = hard_weight(shape, dtype, seed=11)
    if strategy == "block":
        args = QuantizationArgs(num_bits=8, type="float", symmetric=True, strategy="block",
                                block_structure=[128, 128])
        block = [128, 128]
        mn, mx = block_stats(w, 128, 128)
    elif strategy == "channel":
        args = QuantizationArgs(num_bits=8, type="float", symmetric=True, strategy="channel")
        block = [1, 0]
        mn, mx = w.amin(dim=-1, keepdim=True), w.amax(dim=-1, keepdim=True)
    else:
        args = QuantizationArgs(num_bits=8, type="float", symmetric=True, strategy="tensor")
        block = [0, 0]
        mn, mx = torch.aminmax(w)
    scale, zp = calculate_qparams(mn, mx, args)
    grid = scale.view(-1, scale.shape[-1]) if scale.dim() > 1 else scale.view(1, 1)
    zgrid = zp.view(grid.shape)

    amax = moeq_ops.block_amax(w, block)
    assert_bits_equal(moeq_ops.fp8_scale_from_amax(amax, E4M3, dtype), grid, "scale")
    assert_bits_equal(moeq_ops.fake_quant_fp8(w, grid, block, E4M3, zgrid),
                      fake_quantize(w, scale, zp, args), "fake quant")
    act = QuantizationArgs(num_bits=8, type="float", symmetric=True, strategy="token", dynamic=True)
    scheme = QuantizationScheme(targets=["Linear"], weights=args, input_activations=act)
    out = FloatQuantizationCompressor.compress(
        {"weight": w, "weight_scale": scale, "weight_zero_point": zp}, scheme)
    q = moeq_ops.quantize_fp8(w, grid, block, E4M3, zgrid)
    assert_bits_equal(q, out["weight"], "weight")
    assert_bits_equal(moeq_ops.dequantize_fp8(q, grid, block, dtype, zgrid),
                      dequantize(out["weight"], scale, zp, args).to(dtype), "dequantize")


@pytest.mark.parametrize("dtype", DTYPES)
def test_fp8_dynamic_per_token(moeq_ops, dtype):
    x = hard_weight((2, 16, 256), dtype, seed=13)
    args = QuantizationArgs(num_bits=8, type="float", symmetric=True, strategy="token", dynamic=True)
    mn, mx = x.amin(dim=-1, keepdim=True), x.amax(dim=-1, keepdim=True)
    scale, zp = calculate_qparams(mn, mx, args)
    assert_bits_equal(moeq_ops.fake_quant_fp8_dynamic(x, [1, 0]), fake_quantize(x, scale, zp, args),
                      "dynamic fake quant")


@pytest.mark.parametrize("dtype", DTYPES)
def test_fp8_e5m2(moeq_ops, dtype):
    """compressed-tensors knows E4M3 only; E5M2 follows its formulas with fmax = 57344."""
    w = hard_weight((128, 256), dtype, seed=17)
    amax = w.abs().amax(dim=-1, keepdim=True)
    scale = amax / (torch.tensor(57344.0 * 2).to(dtype) / 2)
    scale = torch.where(scale == 0, torch.tensor(torch.finfo(dtype).eps, dtype=dtype), scale)
    assert_bits_equal(moeq_ops.fp8_scale_from_amax(moeq_ops.block_amax(w, [1, 0]), E5M2, dtype),
                      scale, "scale")
    q = torch.clamp(w / scale, -57344.0, 57344.0).to(E5M2)
    assert_bits_equal(moeq_ops.quantize_fp8(w, scale, [1, 0], E5M2), q, "codes")
    assert_bits_equal(moeq_ops.fake_quant_fp8(w, scale, [1, 0], E5M2), (q.to(dtype) * scale),
                      "fake quant")


def test_fp8_block_source(moeq_ops):
    """DeepSeek-V3 weight_scale_inv dequantization, as transformers' Fp8Dequantize computes it."""
    g = torch.Generator().manual_seed(3)
    q = (torch.randn(2, 300, 260, generator=g) * 40).to(E4M3)
    s = torch.rand(2, 3, 3, generator=g) * 1e-2
    full = s.repeat_interleave(128, -2).repeat_interleave(128, -1)[..., :300, :260]
    assert_bits_equal(moeq_ops.dequantize_fp8_block_source(q, s, torch.bfloat16),
                      (q.float() * full).to(torch.bfloat16), "dequantized")


# ---- ModelOpt -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def modelopt():
    pytest.importorskip("modelopt")
    from modelopt.torch.export import quant_utils
    from modelopt.torch.export.model_config import QUANTIZATION_FP8
    from modelopt.torch.quantization.config import QuantizerAttributeConfig
    from modelopt.torch.quantization.nn import TensorQuantizer

    return quant_utils, QUANTIZATION_FP8, QuantizerAttributeConfig, TensorQuantizer


DEVICES = ["cpu"] + (["cuda"] if HAS_CUDA else [])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("stacked", [False, True])
def test_modelopt_fp8_export(moeq_ops, modelopt, device, stacked):
    quant_utils, fp8_format, Cfg, TensorQuantizer = modelopt
    w = hard_weight((4, 64, 128) if stacked else (192, 256), torch.bfloat16, seed=19).to(device)
    w[..., 0, 0] = 0.0  # no effect on amax; keeps a zero weight in the output
    if stacked:
        amax = w.abs().amax(dim=(-1, -2)).float()  # one per-tensor amax per expert
    else:
        amax = w.abs().amax().float()
    tq = TensorQuantizer(Cfg(num_bits=(4, 3), axis=None)).to(device)
    tq.amax = amax.clone()
    sf = quant_utils.get_scaling_factor(tq)  # amax / 448, on w's device
    on_cuda = device == "cuda"
    scale = moeq_ops.modelopt_scale_from_amax(amax.reshape(-1), 448.0, on_cuda)
    assert_bits_equal(scale, sf.reshape(-1), "weight_scale")
    sf_arg = sf.reshape(-1, 1) if stacked else sf
    want = quant_utils.to_quantized_weight(w, sf_arg, fp8_format)
    grid = scale.view(-1, 1, 1) if stacked else scale.view(1, 1)
    assert_bits_equal(moeq_ops.quantize_fp8(w, grid, [0, 0]), want, "weight")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(256, 512), (4, 64, 256)])
def test_modelopt_int4_awq_export(moeq_ops, modelopt, device, shape):
    quant_utils, _, Cfg, TensorQuantizer = modelopt
    w = hard_weight(shape, torch.bfloat16, seed=23).to(device)
    amax = w.unflatten(-1, (-1, 128)).abs().amax(dim=-1).float()  # [..., out, in / 128]
    amax.view(-1)[3] = 0.0  # an all-zero block: ModelOpt substitutes maxbound
    tq = TensorQuantizer(Cfg(num_bits=4, block_sizes={-1: 128, "type": "static"})).to(device)
    tq.amax = amax.clone()
    sf = quant_utils.get_scaling_factor(tq)
    scale = moeq_ops.modelopt_scale_from_amax(amax, 7.0, device == "cuda")
    assert_bits_equal(scale, sf.reshape(scale.shape), "weight_scale")
    want = quant_utils.pack_int4_in_uint8(w, sf.reshape(scale.shape), 128)
    codes = moeq_ops.quantize_int(w, scale, None, [1, 128], -8, 7)
    assert_bits_equal(moeq_ops.pack_int4_row_pairs(codes), want, "weight")
    assert_bits_equal(moeq_ops.unpack_int4_row_pairs(want), codes, "unpacked")


# ---- CUDA equals CPU ------------------------------------------------------------------------------

CUDA_SHAPES = [(256, 512), (3, 96, 384), (50, 100), (2, 37, 130)]
CUDA_DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def _layouts(x):
    """The contiguous tensor and a transposed view of a transposed copy (rows contiguous)."""
    yield "contiguous", x
    yield "transposed", x.transpose(-1, -2).contiguous().transpose(-1, -2)


def _same_on_both(fn, *tensors, what):
    cpu = fn(*tensors)
    gpu = fn(*[t.cuda() if isinstance(t, torch.Tensor) else t for t in tensors])
    cpu = cpu if isinstance(cpu, (tuple, list)) else (cpu,)
    gpu = gpu if isinstance(gpu, (tuple, list)) else (gpu,)
    for c, g in zip(cpu, gpu):
        assert g.stride() == c.stride(), f"{what}: strides {g.stride()} vs {c.stride()}"
        assert_bits_equal(g, c, what)


@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")
@pytest.mark.parametrize("dtype", CUDA_DTYPES)
@pytest.mark.parametrize("shape", CUDA_SHAPES)
def test_cuda_equals_cpu(moeq_ops, dtype, shape):
    base = hard_weight(shape, dtype, seed=len(shape) * 100 + shape[-1])
    blocks = [[1, 32], [1, 0], [0, 0], [128, 128], [16, 32], [1, 7]]
    for layout, x in _layouts(base):
        for block in blocks:
            what = f"{layout} {tuple(shape)} {dtype} block {block}"
            _same_on_both(lambda t: moeq_ops.block_amax(t, block), x, what=f"amax {what}")
            _same_on_both(lambda t: moeq_ops.block_minmax(t, block), x, what=f"minmax {what}")
            mn, mx = moeq_ops.block_minmax(x, block)
            for sym in (True, False):
                for bits in (4, 8):
                    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
                    s, z = moeq_ops.int_qparams(mn, mx, lo, hi, sym, dtype)
                    _same_on_both(lambda a, b: moeq_ops.int_qparams(a, b, lo, hi, sym, dtype),
                                  mn, mx, what=f"qparams {what}")
                    zp = None if sym else z
                    _same_on_both(lambda t, a, b: moeq_ops.fake_quant_int(t, a, b, block, lo, hi),
                                  x, s, zp, what=f"fake int{bits} sym={sym} {what}")
                    _same_on_both(lambda t, a, b: moeq_ops.quantize_int(t, a, b, block, lo, hi),
                                  x, s, zp, what=f"quantize int{bits} sym={sym} {what}")
                    q = moeq_ops.quantize_int(x, s, zp, block, lo, hi)
                    _same_on_both(lambda t, a, b: moeq_ops.dequantize_int(t, a, b, block, dtype),
                                  q, s, zp, what=f"dequantize int{bits} {what}")
                    _same_on_both(lambda t, a, b: moeq_ops.quantize_int_packed(t, a, b, block, bits),
                                  x, s, zp, what=f"quantize_int_packed {bits} {what}")
            amax = moeq_ops.block_amax(x, block)
            for fp8 in (E4M3, E5M2):
                for sdt in (dtype, torch.float32):
                    s = moeq_ops.fp8_scale_from_amax(amax, fp8, sdt)
                    _same_on_both(lambda a: moeq_ops.fp8_scale_from_amax(a, fp8, sdt), amax,
                                  what=f"fp8 scale {what}")
                    for zp in (None, torch.zeros_like(s)):
                        tag = f"{fp8} scale {sdt} zp={zp is not None} {what}"
                        _same_on_both(lambda t, a, b: moeq_ops.fake_quant_fp8(t, a, block, fp8, b),
                                      x, s, zp, what=f"fake fp8 {tag}")
                        _same_on_both(lambda t, a, b: moeq_ops.quantize_fp8(t, a, block, fp8, b),
                                      x, s, zp, what=f"quantize fp8 {tag}")
                    q = moeq_ops.quantize_fp8(x, s, block, fp8)
                    _same_on_both(lambda t, a: moeq_ops.dequantize_fp8(t, a, block, dtype), q, s,
                                  what=f"dequantize fp8 {what}")
        _same_on_both(lambda t: moeq_ops.fake_quant_fp8_dynamic(t, [1, 0]), x,
                      what=f"dynamic fp8 {layout} {shape}")
        _same_on_both(lambda t: moeq_ops.fake_quant_int_dynamic(t, [1, 0], -128, 127, False), x,
                      what=f"dynamic int8 {layout} {shape}")
        amax = moeq_ops.block_amax(x, [1, 128])
        _same_on_both(lambda a: moeq_ops.modelopt_scale_from_amax(a, 7.0, True), amax,
                      what=f"modelopt scale {layout} {shape}")


@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")
@pytest.mark.parametrize("num_bits", range(1, 9))
def test_cuda_packing_equals_cpu(moeq_ops, num_bits):
    g = torch.Generator().manual_seed(num_bits)
    lo, hi = -(1 << (num_bits - 1)), 1 << (num_bits - 1)
    for shape in [(64, 512), (3, 40, 100), (2, 16, 33)]:
        codes = torch.randint(lo, hi, shape, generator=g, dtype=torch.int8)
        for layout, c in _layouts(codes):
            what = f"{num_bits} bits {layout} {shape}"
            _same_on_both(lambda t: moeq_ops.pack_int(t, num_bits), c, what=f"pack {what}")
            packed = moeq_ops.pack_int(c, num_bits)
            _same_on_both(lambda t: moeq_ops.unpack_int(t, num_bits, shape[-1]), packed,
                          what=f"unpack {what}")
            _same_on_both(lambda t: moeq_ops.pack_int_rows(t, num_bits), c, what=f"rows {what}")
            if num_bits == 4 and shape[-2] % 2 == 0:
                _same_on_both(moeq_ops.pack_int4_row_pairs, c, what=f"row pairs {what}")
                pairs = moeq_ops.pack_int4_row_pairs(c)
                _same_on_both(moeq_ops.unpack_int4_row_pairs, pairs, what=f"unpack pairs {what}")


@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")
def test_cuda_source_dequant_and_errors(moeq_ops):
    g = torch.Generator().manual_seed(5)
    q = (torch.randn(3, 300, 260, generator=g) * 40).to(E4M3)
    s = torch.rand(3, 3, 3, generator=g) * 1e-2
    for out in CUDA_DTYPES:
        _same_on_both(lambda a, b: moeq_ops.dequantize_fp8_block_source(a, b, out), q, s,
                      what=f"fp8 source {out}")
    bad = torch.randn(64, 64, device="cuda")
    bad[5, 7] = float("nan")
    with pytest.raises(RuntimeError, match="w13 contains NaN or Inf values"):
        moeq_ops.block_amax(bad, [1, 32], "w13")
    with pytest.raises(RuntimeError, match="scale is on cpu but x is on cuda:0"):
        moeq_ops.fake_quant_fp8(bad, torch.ones(1, 1), [0, 0])
