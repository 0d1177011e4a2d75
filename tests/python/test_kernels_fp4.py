"""NVFP4 / MXFP4 / MXFP8 ops (torch.ops.moeq.*) against the pinned peers, byte for byte.

compressed-tensors 0.20: calculate_qparams / generate_gparam for the scales, fake_quantize for the
quantize-dequantize, the NVFP4 / MXFP4 / MXFP8 compressors for the stored bytes and their
decompression. ModelOpt 0.47: NVFP4QTensor, MXFP4QTensor and MXFP8QTensor quantize / dequantize
(its NVFP4 fake-quant kernels need CUDA and Triton; see docs/numerics-fp4.md). Weights include the
hard cases: exact .5 ties of E2M1, zeros and all-zero groups, T-subnormals, groups whose FP8
block scale underflows, very large values, and mixed magnitudes within one tensor.
"""
import types

import pytest
import torch

from compressed_tensors.compressors.mxfp4.base import MXFP4PackedCompressor
from compressed_tensors.compressors.mxfp8.base import MXFP8QuantizationCompressor
from compressed_tensors.compressors.nvfp4.base import NVFP4PackedCompressor
from compressed_tensors.quantization.lifecycle.forward import fake_quantize
from compressed_tensors.quantization.quant_scheme import preset_name_to_scheme
from compressed_tensors.quantization.utils.helpers import calculate_qparams, generate_gparam
from modelopt.torch.quantization.qtensor.mxfp4_tensor import MXFP4QTensor
from modelopt.torch.quantization.qtensor.mxfp8_tensor import MXFP8QTensor
from modelopt.torch.quantization.qtensor.nvfp4_tensor import NVFP4QTensor

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# moeq's ops run on each device; the peers' references are computed on CPU.
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
TIES = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])


def bits(t):
    """The raw bits of a tensor, for bit-for-bit comparison (-0.0 differs from 0.0)."""
    if t.dtype in (torch.float32,):
        return t.contiguous().view(torch.int32)
    if t.dtype in (torch.bfloat16, torch.float16):
        return t.contiguous().view(torch.int16)
    if t.dtype in (torch.float8_e4m3fn,):
        return t.contiguous().view(torch.uint8)
    return t


def assert_bits_equal(got, want, what):
    got, want = got.cpu(), want.cpu()
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    assert got.dtype == want.dtype, f"{what}: dtype {got.dtype} != {want.dtype}"
    g, w = bits(got), bits(want)
    bad = (g != w).nonzero()
    if len(bad):
        i = tuple(bad[0].tolist())
        raise AssertionError(
            f"{what}: {len(bad)} of {g.numel()} differ; first at {i}: got {got[i].item()!r} "
            f"(bits {g[i].item():#x}) want {want[i].item()!r} (bits {w[i].item():#x})"
        )


def hard_weight(rows, cols, group, dtype, seed, unit=1.0):
    """[rows, cols] with the hard cases, one kind per row (rows >= 12)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, cols, generator=g) * unit
    ng = cols // group
    tiny = torch.finfo(dtype).tiny
    big = {torch.float32: 1e37, torch.bfloat16: 1e37, torch.float16: 1e4}[dtype]
    # 1: exact E2M1 ties at a power-of-two scale: group amax 6 * 2^k, the rest t * 2^k
    for j in range(ng):
        k = float(2.0 ** int(torch.randint(-6, 6, (1,), generator=g)))
        t = TIES[torch.randint(0, len(TIES), (group,), generator=g)] * k
        t[0] = 6.0 * k
        sign = torch.where(torch.rand(group, generator=g) < 0.5, -1.0, 1.0)
        x[1, j * group:(j + 1) * group] = t * sign
    x[2] = 0.0  # an all-zero row
    x[3, :group] = 0.0  # an all-zero group
    x[3, group:] *= 1e-3
    x[4] = torch.randn(cols, generator=g) * tiny * 4  # subnormals in dtype (fp32 / bf16 / fp16)
    x[5] = (torch.randn(cols, generator=g) * big).clamp(-6 * big, 6 * big)  # very large
    x[6, ::3] = -0.0  # negative zeros
    x[7] = torch.randn(cols, generator=g) * 1e-9  # groups whose block scale underflows
    x[8, : cols // 2] *= 1e-6  # mixed magnitudes within a row
    x[9] = torch.randn(cols, generator=g).round()  # integers: ties after scaling
    x[10] = (torch.randn(cols, generator=g) * 4).round() / 2
    x[11, 1::2] = 0.0
    return x.to(dtype)


def group_minmax(x, group):
    xg = x.unflatten(-1, (x.shape[-1] // group, group))
    return xg.amin(-1), xg.amax(-1)


def group_amax(x, group):
    return x.unflatten(-1, (x.shape[-1] // group, group)).abs().amax(-1)


# ---- compressed-tensors NVFP4 ---------------------------------------------------------------------


def ct_nvfp4(x, global_scale=None):
    """What llm-compressor + compressed-tensors produce for one NVFP4 Linear weight."""
    scheme = preset_name_to_scheme("NVFP4", ["Linear"])
    args = scheme.weights
    if global_scale is None:
        global_scale = generate_gparam(x.min(), x.max())
    mn, mx = group_minmax(x, 16)
    scale, zp = calculate_qparams(mn, mx, args, global_scale=global_scale)
    scale = scale.to(x.dtype)  # the module's weight_scale parameter is in the weight's dtype
    fake = fake_quantize(x, scale, zp, args, global_scale=global_scale)
    sd = NVFP4PackedCompressor.compress(
        {"weight": x, "weight_scale": scale, "weight_global_scale": global_scale,
         "weight_zero_point": zp}, scheme)
    deq = NVFP4PackedCompressor.decompress(
        {"weight_packed": sd["weight_packed"], "weight_scale": sd["weight_scale"],
         "weight_global_scale": global_scale}, scheme)["weight"]
    return types.SimpleNamespace(global_scale=global_scale, scale=scale, fake=fake,
                                 packed=sd["weight_packed"], scale_fp8=sd["weight_scale"], deq=deq)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", [0, 1])
def test_nvfp4_matches_compressed_tensors(moeq_ops, device, dtype, seed):
    x = hard_weight(24, 256, 16, dtype, seed)
    ref = ct_nvfp4(x)
    amax = x.abs().amax()
    x, amax, gs = x.to(device), amax.to(device), ref.global_scale.to(device)
    assert_bits_equal(moeq_ops.nvfp4_global_scale(amax), ref.global_scale, "global scale")
    assert_bits_equal(moeq_ops.nvfp4_block_scale(group_amax(x, 16), gs), ref.scale_fp8, "block scale")
    packed, scales = moeq_ops.quantize_nvfp4(x, gs)
    assert_bits_equal(packed, ref.packed, "packed")
    assert_bits_equal(scales, ref.scale_fp8, "scales")
    assert_bits_equal(moeq_ops.fake_quant_nvfp4(x, gs), ref.fake, "fake quant")
    assert_bits_equal(moeq_ops.dequantize_nvfp4(packed, scales, gs, torch.bfloat16), ref.deq, "dequant")
    # with the scales given (observers, GPTQ)
    assert_bits_equal(moeq_ops.quantize_nvfp4_with_scales(x, scales, gs), ref.packed, "packed, given")
    assert_bits_equal(moeq_ops.fake_quant_nvfp4_with_scales(x, scales, gs), ref.fake, "fake, given")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("gs", [1.0, 0.5, 3.0, 2688.0 / 7.0])
def test_nvfp4_exact_ties_compressed_tensors(moeq_ops, dtype, gs):
    """A power-of-two global scale makes x / e hit the E2M1 midpoints exactly."""
    x = hard_weight(16, 128, 16, dtype, 3, unit=4.0)
    ref = ct_nvfp4(x, torch.tensor([gs]))
    packed, scales = moeq_ops.quantize_nvfp4(x, torch.tensor([gs]))
    assert_bits_equal(packed, ref.packed, "packed")
    assert_bits_equal(scales, ref.scale_fp8, "scales")
    assert_bits_equal(moeq_ops.fake_quant_nvfp4(x, torch.tensor([gs])), ref.fake, "fake quant")


def test_nvfp4_global_scale_dtypes(moeq_ops):
    g = torch.Generator().manual_seed(5)
    a = torch.cat([torch.rand(2000, generator=g) * 10, torch.tensor([0.0, 1e-30, 1e-45, 3e38, 2688.0])])
    for dtype in DTYPES:
        ad = a.clamp(max=torch.finfo(dtype).max).to(dtype)
        want = torch.stack([generate_gparam(-v.reshape(1), v.reshape(1))[0] for v in ad])
        assert_bits_equal(moeq_ops.nvfp4_global_scale(ad), want, f"global scale {dtype}")
    mo = moeq_ops.nvfp4_global_scale(a, "modelopt")
    assert_bits_equal(mo, a.float() / (6.0 * 448.0), "weight_scale_2")


# ---- ModelOpt NVFP4 ------------------------------------------------------------------------------


def mo_nvfp4(x, wsf2=None, wsf=None):
    qt, s, s2 = NVFP4QTensor.quantize(x.clone(), 16, wsf, wsf2)
    deq = qt.dequantize(dtype=x.dtype, scale=s, double_scale=s2, block_sizes={-1: 16})
    return types.SimpleNamespace(packed=qt._quantized_data, scale=s, wsf2=s2, deq=deq)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", [0, 1])
def test_nvfp4_matches_modelopt(moeq_ops, device, dtype, seed):
    x = hard_weight(24, 256, 16, dtype, seed)
    ref = mo_nvfp4(x)
    x = x.to(device)
    wsf2 = moeq_ops.nvfp4_global_scale(x.abs().amax(), "modelopt")
    assert_bits_equal(wsf2.reshape(()), ref.wsf2, "weight_scale_2")
    assert_bits_equal(moeq_ops.nvfp4_block_scale(group_amax(x, 16), wsf2, "modelopt"), ref.scale,
                      "block scale")
    packed, scales = moeq_ops.quantize_nvfp4(x, wsf2, "modelopt")
    assert_bits_equal(packed, ref.packed, "packed")
    assert_bits_equal(scales, ref.scale, "scales")
    assert_bits_equal(moeq_ops.dequantize_nvfp4(packed, scales, wsf2, dtype, "modelopt"), ref.deq, "dequant")
    # ModelOpt's quantize -> dequantize is our fake quant
    assert_bits_equal(moeq_ops.fake_quant_nvfp4(x, wsf2, "modelopt"), ref.deq, "fake quant")
    assert_bits_equal(moeq_ops.quantize_nvfp4_with_scales(x, scales, wsf2, "modelopt"), ref.packed,
                      "packed, given")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("wsf2", [1.0, 0.25, 1e-3])
def test_nvfp4_exact_ties_modelopt(moeq_ops, dtype, wsf2):
    x = hard_weight(16, 128, 16, dtype, 4, unit=4.0)
    ref = mo_nvfp4(x, torch.tensor(wsf2))
    packed, scales = moeq_ops.quantize_nvfp4(x, torch.tensor(wsf2), "modelopt")
    assert_bits_equal(packed, ref.packed, "packed")
    assert_bits_equal(scales, ref.scale, "scales")
    assert_bits_equal(moeq_ops.fake_quant_nvfp4(x, torch.tensor(wsf2), "modelopt"), ref.deq, "fake")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_nvfp4_expert_stack_modelopt(moeq_ops, dtype):
    """[E, out, in] with one weight_scale_2 per expert, as ModelOpt exports MoE stacks."""
    xs = torch.stack([hard_weight(16, 64, 16, dtype, s, unit=10.0 ** (s - 2)) for s in range(4)])
    wsf2 = xs.abs().amax(dim=(1, 2)).float() / 2688.0
    s, _ = NVFP4QTensor.get_weights_scaling_factor(xs, 16, wsf2.view(-1, 1, 1))
    qt, _, _ = NVFP4QTensor.quantize(xs.clone(), 16, s, wsf2.view(-1, 1, 1))
    packed, scales = moeq_ops.quantize_nvfp4(xs, wsf2, "modelopt")
    assert_bits_equal(packed, qt._quantized_data, "packed")
    assert_bits_equal(scales, s, "scales")


def test_nvfp4_static_block_scale_modelopt(moeq_ops):
    g = torch.Generator().manual_seed(7)
    block_amax = torch.rand(64, 8, generator=g) * 3
    block_amax[0, :4] = 0.0
    block_amax[1, :4] = 1e-12
    for global_amax in [block_amax.max(), torch.tensor(3.0), torch.tensor(1e-3)]:
        q = types.SimpleNamespace(block_sizes={-1: 16, "type": "static"}, global_amax=global_amax,
                                  _amax=block_amax.clone())
        want, _ = NVFP4QTensor.get_weights_scaling_factor_from_quantizer(
            q, torch.zeros(64, 128), global_amax.float() / 2688.0)
        assert_bits_equal(moeq_ops.nvfp4_block_scale_static(block_amax, global_amax), want,
                          f"static block scale, global amax {global_amax.item()}")


def sweep_reference(x, global_amax):
    """ModelOpt's fp8_scale_sweep formula (its Triton kernel), in float32, elements summed in order."""
    from modelopt.torch.kernels.quantization.gemm._fp8_scale_candidates import fp8_scale_candidates

    c = fp8_scale_candidates().float()
    w = x.float().abs().reshape(-1, 16)
    scale = c * global_amax.float() / 6.0
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    v = w[:, None, :] / scale[None, :, None]
    bounds = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0])
    idx = (v > bounds[0]).int() + (v >= bounds[1]).int() + (v > bounds[2]).int() + \
        (v >= bounds[3]).int() + (v > bounds[4]).int() + (v >= bounds[5]).int() + (v > bounds[6]).int()
    mags = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])[idx]
    diff = w[:, None, :] - mags * scale[None, :, None]
    sq = diff * diff
    loss = sq[..., 0]
    for i in range(1, 16):
        loss = loss + sq[..., i]
    best = torch.argmin(loss, dim=1)  # first minimum
    return global_amax.float() * c[best]


def test_nvfp4_sweep_modelopt_formula(moeq_ops):
    x = hard_weight(16, 128, 16, torch.bfloat16, 9)
    x[5] = torch.randn(128).bfloat16()  # keep the tensor amax moderate
    ga = x.float().abs().amax()
    scales, amax = moeq_ops.nvfp4_fp8_scale_sweep(x, ga, "modelopt")
    want_amax = sweep_reference(x, ga).reshape(16, 8)
    assert_bits_equal(amax, want_amax, "best amax")
    assert_bits_equal(scales, moeq_ops.nvfp4_block_scale_static(amax, ga), "static scales")
    # the sweep never does worse than the plain max-based scale (ModelOpt static export)
    wsf2 = (ga / 2688.0).reshape(1)
    err_sweep = (moeq_ops.fake_quant_nvfp4_with_scales(x.float(), scales, wsf2, "modelopt") - x.float()).pow(2).sum()
    plain = moeq_ops.nvfp4_block_scale_static(group_amax(x, 16).float(), ga)
    err_plain = (moeq_ops.fake_quant_nvfp4_with_scales(x.float(), plain, wsf2, "modelopt") - x.float()).pow(2).sum()
    assert err_sweep <= err_plain


def test_nvfp4_sweep_compressed_tensors(moeq_ops):
    x = torch.randn(32, 64)
    gs = generate_gparam(x.min(), x.max())
    scales, _ = moeq_ops.nvfp4_fp8_scale_sweep(x, gs)
    err = (moeq_ops.fake_quant_nvfp4_with_scales(x, scales, gs) - x).pow(2).reshape(32, 4, 16).sum(-1)
    # exhaustive check of a few blocks: no FP8 scale does better
    cand = torch.arange(1, 127, dtype=torch.uint8).view(torch.float8_e4m3fn)
    for r, gi in [(0, 0), (5, 3), (31, 2)]:
        xb = x[r, gi * 16:(gi + 1) * 16].reshape(1, 16).expand(126, 16).contiguous()
        errs = (moeq_ops.fake_quant_nvfp4_with_scales(xb, cand.reshape(126, 1), gs) - xb).pow(2).sum(-1)
        assert err[r, gi] <= errs.min() * (1 + 1e-6)


# ---- MX -------------------------------------------------------------------------------------------


def ct_mx(x, element):
    name = "MXFP4" if element == "fp4" else "MXFP8"
    scheme = preset_name_to_scheme(name, ["Linear"])
    args = scheme.weights
    mn, mx = group_minmax(x, 32)
    scale, zp = calculate_qparams(mn, mx, args)
    scale = scale.to(x.dtype)
    fake = fake_quantize(x, scale, zp, args)
    comp = MXFP4PackedCompressor if element == "fp4" else MXFP8QuantizationCompressor
    sd = comp.compress({"weight": x, "weight_scale": scale, "weight_zero_point": zp}, scheme)
    data = sd["weight_packed"] if element == "fp4" else sd["weight"]
    key = "weight_packed" if element == "fp4" else "weight"
    deq = comp.decompress({key: data, "weight_scale": sd["weight_scale"]}, scheme)["weight"]
    return types.SimpleNamespace(fake=fake, data=data, scale=sd["weight_scale"], deq=deq)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("element", ["fp4", "fp8"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", [0, 1])
def test_mx_matches_compressed_tensors(moeq_ops, device, element, dtype, seed):
    x = hard_weight(24, 256, 32, dtype, seed)
    ref = ct_mx(x, element)
    x = x.to(device)
    data, scales = moeq_ops.quantize_mx(x, element)
    assert_bits_equal(scales, ref.scale, "scales")
    assert_bits_equal(data, ref.data, "data")
    assert_bits_equal(moeq_ops.mx_scale(group_amax(x, 32), element), ref.scale, "mx_scale")
    assert_bits_equal(moeq_ops.fake_quant_mx(x, element), ref.fake, "fake quant")
    out_dtype = ref.deq.dtype
    assert_bits_equal(moeq_ops.dequantize_mx(data, scales, element, out_dtype), ref.deq, "dequant")
    assert_bits_equal(moeq_ops.quantize_mx_with_scales(x, scales, element), ref.data, "data, given")
    assert_bits_equal(moeq_ops.fake_quant_mx_with_scales(x, scales, element), ref.fake, "fake, given")


def mo_mx(x, element):
    if element == "fp4":
        qt, scale = MXFP4QTensor.quantize(x.clone(), 32)
        scale = scale.reshape(*x.shape[:-1], -1)
        deq = qt.dequantize(dtype=x.dtype, scale=scale, block_sizes={-1: 32})
    else:
        qt, scale = MXFP8QTensor.quantize(x.clone())
        deq = qt.dequantize(dtype=x.dtype, scale=scale)
    return types.SimpleNamespace(data=qt._quantized_data, scale=scale, deq=deq)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("element", ["fp4", "fp8"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", [0, 1])
def test_mx_matches_modelopt(moeq_ops, device, element, dtype, seed):
    x = hard_weight(24, 256, 32, dtype, seed)
    ref = mo_mx(x, element)
    x = x.to(device)
    data, scales = moeq_ops.quantize_mx(x, element, "modelopt")
    assert_bits_equal(scales, ref.scale, "scales")
    assert_bits_equal(data, ref.data, "data")
    assert_bits_equal(moeq_ops.mx_scale(group_amax(x, 32), element, "modelopt"), ref.scale, "mx_scale")
    assert_bits_equal(moeq_ops.dequantize_mx(data, scales, element, dtype, "modelopt"), ref.deq, "dequant")
    assert_bits_equal(moeq_ops.fake_quant_mx(x, element, "modelopt"), ref.deq, "fake quant")


def test_mx_scale_near_powers_of_two_modelopt(moeq_ops):
    """ceil(log2(amax / emax)) just above a power of two follows torch's float32 log2."""
    k = torch.arange(-120, 120, dtype=torch.float64)
    amax = torch.cat([(6.0 * 2.0 ** k * (1 + n * 2.0 ** -23)).float() for n in range(0, 40)])
    amax = amax[torch.isfinite(amax)].reshape(-1, 1).expand(-1, 32).contiguous()
    for element in ["fp4", "fp8"]:
        ref = mo_mx(amax, element)
        _, scales = moeq_ops.quantize_mx(amax, element, "modelopt")
        assert_bits_equal(scales, ref.scale.reshape(scales.shape), f"{element} scales")


def test_mx_scale_all_exponents_compressed_tensors(moeq_ops):
    """Every binade of every dtype, at and around the 0.75 rounding point of round_to_power_2."""
    for dtype in DTYPES:
        fi = torch.finfo(dtype)
        k = torch.arange(-150, 128, dtype=torch.float64)
        vals = torch.cat([2.0 ** k * f for f in [1.0, 1.5, 1.74, 1.75, 1.76, 1.99]])
        vals = vals[(vals <= fi.max / 1.2)].to(dtype)
        vals = torch.cat([vals, torch.tensor([0.0], dtype=dtype)])
        x = vals.reshape(-1, 1).expand(-1, 32).contiguous()
        for element in ["fp4", "fp8"]:
            ref = ct_mx(x, element)
            _, scales = moeq_ops.quantize_mx(x, element)
            assert_bits_equal(scales, ref.scale, f"{element} {dtype} scales")
            assert_bits_equal(moeq_ops.fake_quant_mx(x, element), ref.fake, f"{element} {dtype} fake")


# ---- layouts: 3-D stacks and transposed views ------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("op", ["nvfp4_ct", "nvfp4_mo", "mxfp4_ct", "mxfp8_mo"])
def test_transposed_stack_equals_contiguous(moeq_ops, device, op):
    g = torch.Generator().manual_seed(11)
    w = torch.randn(3, 64, 96, generator=g).bfloat16().to(device)  # [E, in, out] as GPT-OSS stores it
    wt = w.transpose(-1, -2)  # [E, out, in] view, groups along `in`
    wc = wt.contiguous()
    if op.startswith("nvfp4"):
        conv = "modelopt" if op.endswith("mo") else "compressed_tensors"
        gl = torch.tensor([0.5, 1.0, 2.0]) if conv == "modelopt" else torch.tensor([100.0, 200.0, 300.0])
        gl = gl.to(device)
        fq, fqc = moeq_ops.fake_quant_nvfp4(wt, gl, conv), moeq_ops.fake_quant_nvfp4(wc, gl, conv)
        (p, s), (pc, sc) = moeq_ops.quantize_nvfp4(wt, gl, conv), moeq_ops.quantize_nvfp4(wc, gl, conv)
    else:
        el = op[2:5]
        conv = "modelopt" if op.endswith("mo") else "compressed_tensors"
        fq, fqc = moeq_ops.fake_quant_mx(wt, el, conv), moeq_ops.fake_quant_mx(wc, el, conv)
        (p, s), (pc, sc) = moeq_ops.quantize_mx(wt, el, conv), moeq_ops.quantize_mx(wc, el, conv)
    assert fq.stride() == wt.stride(), "fake quant keeps the input's layout"
    assert_bits_equal(fq, fqc, "fake quant")
    assert_bits_equal(p, pc, "codes")
    assert_bits_equal(s, sc, "scales")
    assert p.is_contiguous() and s.is_contiguous()


def test_partial_last_group_is_zero_padding(moeq_ops):
    x = torch.randn(8, 40)
    xp = torch.nn.functional.pad(x, (0, 8))
    gs = torch.tensor([50.0])
    assert_bits_equal(moeq_ops.fake_quant_nvfp4(x, gs), moeq_ops.fake_quant_nvfp4(xp, gs)[:, :40], "nvfp4")
    p, s = moeq_ops.quantize_nvfp4(x, gs)
    pp, sp = moeq_ops.quantize_nvfp4(xp, gs)
    assert_bits_equal(p, pp[:, :20], "packed")
    assert_bits_equal(s, sp, "scales")
    assert_bits_equal(moeq_ops.fake_quant_mx(x, "fp4"), moeq_ops.fake_quant_mx(xp, "fp4")[:, :40], "mx")


def test_pack_unpack_round_trip(moeq_ops):
    from compressed_tensors.compressors.nvfp4.helpers import pack_fp4_to_uint8

    codes = torch.randint(0, 16, (6, 34), dtype=torch.uint8)
    packed = moeq_ops.pack_fp4(codes)
    assert_bits_equal(packed, codes[:, 0::2] | (codes[:, 1::2] << 4), "pack")
    assert_bits_equal(moeq_ops.unpack_fp4(packed), codes, "unpack")
    vals = torch.tensor([0, 0.5, 1, 1.5, 2, 3, 4, 6, -0.0, -0.5, -1, -1.5, -2, -3, -4, -6])[codes.long()]
    assert_bits_equal(packed, pack_fp4_to_uint8(vals), "compressed-tensors pack_fp4_to_uint8")
    assert_bits_equal(moeq_ops.pack_fp4(codes.t().contiguous().t()), packed, "strided codes")


# ---- GPT-OSS MXFP4 source --------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.float16])
def test_gpt_oss_source_matches_transformers(moeq_ops, device, dtype):
    from transformers.integrations.mxfp4 import convert_moe_packed_tensors

    g = torch.Generator().manual_seed(13)
    blocks = torch.randint(0, 256, (3, 40, 6, 16), dtype=torch.uint8, generator=g)
    scales = torch.randint(90, 140, (3, 40, 6), dtype=torch.uint8, generator=g)
    scales[0, 0, :] = torch.tensor([0, 1, 127, 254, 253, 200], dtype=torch.uint8)
    want = convert_moe_packed_tensors(blocks, scales, dtype=dtype)  # [E, groups*32, rows]
    got = moeq_ops.dequantize_mxfp4_source(blocks.to(device), scales.to(device), dtype)  # [E, rows, G*32]
    assert_bits_equal(got.transpose(1, 2).contiguous(), want, "dequantized")


# ---- errors --------------------------------------------------------------------------------------


def test_errors_name_the_tensor(moeq_ops):
    x = torch.randn(4, 32)
    x[2, 5] = float("nan")
    with pytest.raises(RuntimeError, match=r"w1 has a non-finite value nan at \[2, 5\]"):
        moeq_ops.fake_quant_nvfp4(x, torch.tensor([1.0]), "compressed_tensors", "w1")
    x[2, 5] = float("inf")
    with pytest.raises(RuntimeError, match=r"w1 has a non-finite value inf at \[2, 5\]"):
        moeq_ops.quantize_mx(x, "fp4", "compressed_tensors", "w1")
    with pytest.raises(RuntimeError, match=r"global scale -1 of matrix 0 must be finite and positive"):
        moeq_ops.fake_quant_nvfp4(torch.randn(4, 32), torch.tensor([-1.0]))
    with pytest.raises(RuntimeError, match=r"even number of cols, got 33"):
        moeq_ops.quantize_nvfp4(torch.randn(4, 33), torch.tensor([1.0]))
    with pytest.raises(RuntimeError, match=r"block_scale must have shape \[4, 2\]"):
        moeq_ops.fake_quant_nvfp4_with_scales(torch.randn(4, 32), torch.ones(4, 3).to(torch.float8_e4m3fn),
                                              torch.tensor([1.0]))
    with pytest.raises(RuntimeError, match=r"block_scale: the scale 0 at \[1, 0\] cannot quantize"):
        s = torch.ones(4, 2).to(torch.float8_e4m3fn)
        s[1, 0] = 0
        moeq_ops.quantize_nvfp4_with_scales(torch.randn(4, 32), s, torch.tensor([1.0]))
    with pytest.raises(RuntimeError, match=r"scales: E8M0 code 255 \(NaN\) at \[0, 1\]"):
        sc = torch.full((1, 2), 127, dtype=torch.uint8)
        sc[0, 1] = 255
        moeq_ops.dequantize_mxfp4_source(torch.zeros(1, 2, 16, dtype=torch.uint8), sc, torch.bfloat16)
    with pytest.raises(RuntimeError, match=r"convention must be 'compressed_tensors' or 'modelopt'"):
        moeq_ops.fake_quant_nvfp4(torch.randn(4, 32), torch.tensor([1.0]), "gptq")
    with pytest.raises(RuntimeError, match=r"MX cannot represent it"):
        moeq_ops.quantize_mx(torch.full((1, 32), 3.3e38), "fp4")


# ---- CUDA equals the CPU reference (also in gtest: kernels_fp4_cuda_test.cpp) -------------------

LAYOUTS = {
    "2d": (lambda d: hard_weight(36, 256, 32, d, 21), lambda t: t),
    "3d": (lambda d: torch.stack([hard_weight(24, 128, 32, d, s) for s in range(3)]), lambda t: t),
    "transposed": (lambda d: torch.stack([hard_weight(128, 64, 32, d, s) for s in range(2)]),
                   lambda t: t.transpose(-1, -2)),
    "transposed_odd": (lambda d: hard_weight(64, 36, 4, d, 5), lambda t: t.transpose(-1, -2)),
    "partial": (lambda d: hard_weight(12, 40, 4, d, 6), lambda t: t),
    "strided": (lambda d: hard_weight(12, 256, 32, d, 7), lambda t: t[:, ::2]),
}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_equals_cpu(moeq_ops, layout, dtype):
    make, view = LAYOUTS[layout]
    base = make(dtype)
    x, xg = view(base), view(base.cuda())
    even = x.shape[-1] % 2 == 0
    for conv in ["compressed_tensors", "modelopt"]:
        amax = x.float().abs().amax()
        g = moeq_ops.nvfp4_global_scale(amax, conv)
        gg = g.cuda()
        assert_bits_equal(moeq_ops.fake_quant_nvfp4(xg, gg, conv), moeq_ops.fake_quant_nvfp4(x, g, conv), "nvfp4 fake")
        if even:
            p, s = moeq_ops.quantize_nvfp4(x, g, conv)
            pg, sg = moeq_ops.quantize_nvfp4(xg, gg, conv)
            assert_bits_equal(pg, p, "nvfp4 packed")
            assert_bits_equal(sg, s, "nvfp4 scales")
            assert_bits_equal(moeq_ops.dequantize_nvfp4(pg, sg, gg, dtype, conv),
                              moeq_ops.dequantize_nvfp4(p, s, g, dtype, conv), "nvfp4 dequant")
            assert_bits_equal(moeq_ops.fake_quant_nvfp4_with_scales(xg, sg, gg, conv),
                              moeq_ops.fake_quant_nvfp4_with_scales(x, s, g, conv), "nvfp4 fake, given")
        sw = amax if conv == "modelopt" else g
        for a, b in zip(moeq_ops.nvfp4_fp8_scale_sweep(xg, sw.cuda(), conv), moeq_ops.nvfp4_fp8_scale_sweep(x, sw, conv)):
            assert_bits_equal(a, b, "sweep")
        for el in ["fp4", "fp8"]:
            assert_bits_equal(moeq_ops.fake_quant_mx(xg, el, conv), moeq_ops.fake_quant_mx(x, el, conv), f"mx {el} fake")
            if even or el == "fp8":
                d, s = moeq_ops.quantize_mx(x, el, conv)
                dg, sg = moeq_ops.quantize_mx(xg, el, conv)
                assert_bits_equal(dg, d, f"mx {el} data")
                assert_bits_equal(sg, s, f"mx {el} scales")
                assert_bits_equal(moeq_ops.dequantize_mx(dg, sg, el, dtype, conv),
                                  moeq_ops.dequantize_mx(d, s, el, dtype, conv), f"mx {el} dequant")
