"""moeq's quantized tensors against the peers' own code, byte for byte.

compressed-tensors 0.20.0: the scheme is initialized on an nn.Linear (initialize_module_for_
quantization, as during calibration), the weight is calibrated the way llm-compressor's weight
observer does it (memoryless min-max over compressed-tensors' calculate_qparams / generate_gparam;
llm-compressor is not a pinned dependency, so its observer's two steps are written out below),
static activations with its static_minmax observer, and the module is compressed by the format's
compressor. ModelOpt 0.47.0: mtq.quantize with max calibration, then _export_quantized_weight.

Every tensor is compared by its bytes; fake quantization is compared bit for bit with
compressed-tensors' fake_quantize and ModelOpt's TensorQuantizer, in float32 and bfloat16.
"""
import json

import pytest
import torch
import torch.nn as nn

from compressed_tensors.compressors import BaseCompressor
from compressed_tensors.compressors.format import infer_module_format
from compressed_tensors.quantization import QuantizationStrategy, preset_name_to_scheme
from compressed_tensors.quantization.lifecycle.forward import fake_quantize
from compressed_tensors.quantization.lifecycle.initialize import initialize_module_for_quantization
from compressed_tensors.quantization.utils import (
    calculate_qparams,
    generate_gparam,
    maybe_pad_tensor_for_block_quant,
)

DTYPES = [torch.float32, torch.bfloat16]

# moeq scheme name -> compressed-tensors preset
CT_SCHEMES = {
    "W4A16": "W4A16",
    "W4A16_ASYM": "W4A16_ASYM",
    "W8A8-INT8": "W8A8",
    "W8A8-FP8": "FP8",
    "W8A8-FP8-DYNAMIC": "FP8_DYNAMIC",
    "FP8-block": "FP8_BLOCK",
    "NVFP4": "NVFP4",
    "MXFP4": "MXFP4",
    "MXFP8": "MXFP8",
}


# ---- weights, with the hard cases ------------------------------------------------------------


def tie_values(scheme):
    """Values that land exactly on rounding midpoints once the scale is 1, plus the group
    maximum that makes it 1 (first), per scheme."""
    if scheme in ("W4A16",):  # scale = amax / 7.5
        return [7.5] + [k + 0.5 for k in range(-8, 7)]
    if scheme == "W4A16_ASYM":  # scale = (7 - (-8)) / 15 = 1, zero point 0
        return [7.0, -8.0] + [k + 0.5 for k in range(-8, 7)]
    if scheme == "W8A8-INT8":  # scale = 127.5 / 127.5
        return [127.5] + [k + 0.5 for k in range(-128, 127, 7)]
    if scheme in ("W8A8-FP8", "W8A8-FP8-DYNAMIC", "FP8-block", "MXFP8"):  # scale 448 / 448 (MX: 2^0)
        mids = [1.0625, -1.0625, 2.125, 3.25, 17.0, -17.0, 232.0, 0.0029296875, -0.0009765625]
        return [448.0] + mids
    if scheme in ("NVFP4", "MXFP4"):  # block amax 6 -> scale 1
        mids = [0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0]
        return [6.0] + mids + [-m for m in mids]
    raise KeyError(scheme)


def make_weight(kind, scheme, dtype, out=32, cols=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    if kind == "random":
        w = torch.randn(out, cols, generator=g) * torch.logspace(-3, 2, out).unsqueeze(1)
    elif kind == "ties":
        values = torch.tensor(tie_values(scheme))
        w = values[torch.randint(1, len(values), (out, cols), generator=g)]
        w[:, ::16] = values[0]  # every group and block holds the maximum
        if scheme == "W4A16_ASYM":
            w[:, 1::16] = values[1]
        if scheme == "NVFP4":  # global scale 1: the tensor amax is 6 * 448
            w[0, 0] = 6.0 * 448
    elif kind == "edge":
        w = torch.randn(out, cols, generator=g)
        w[0] = 0.0  # all-zero groups and channels
        w[1, :128] = 0.0
        w[2] = torch.randn(cols, generator=g) * 1e-38  # subnormal in float32 and bfloat16
        w[3, :32] = torch.randn(32, generator=g) * 1e-39
        w[4] = torch.randn(cols, generator=g) * 1e30  # very large
        w[5, ::3] = -0.0
    else:
        raise KeyError(kind)
    return w.to(dtype)


# ---- compressed-tensors, calibrated as llm-compressor does -------------------------------------


def flatten_weight(value, args):
    """llm-compressor observers/helpers.py: _flatten_weight."""
    if args.strategy == QuantizationStrategy.TENSOR:
        return value.reshape((1, 1, -1))
    if args.strategy == QuantizationStrategy.CHANNEL:
        return value.unsqueeze(-2).unsqueeze(0)
    if args.strategy in (QuantizationStrategy.GROUP, QuantizationStrategy.TENSOR_GROUP):
        return value.unflatten(-1, (-1, args.group_size)).unsqueeze(0)
    if args.strategy == QuantizationStrategy.BLOCK:
        bh, bw = args.block_structure
        value = maybe_pad_tensor_for_block_quant(value, args.block_structure)
        rows, cols = value.shape
        return value.reshape(rows // bh, bh, cols // bw, bw).transpose(1, 2).flatten(-2, -1).unsqueeze(0)
    raise ValueError(args.strategy)


def flatten_activation(value, args):
    """llm-compressor observers/helpers.py: _flatten_activation (static strategies)."""
    if args.strategy == QuantizationStrategy.TENSOR:
        return value.reshape((-1, 1, value.size(-1)))
    return value.flatten(0, 1).unflatten(-1, (-1, args.group_size))


def global_scale_of(min_vals, max_vals):
    """Observer.get_global_scale for one observer."""
    absmax = torch.max(max_vals.max(), -min_vals.min())
    return generate_gparam(-absmax.reshape(1), absmax.reshape(1))


def ct_calibrate(module, base_name, args, observed):
    """MemorylessMinMaxObserver (weights) / StaticMinMaxObserver (activations), get_qparams and
    update_qparams."""
    min_vals = max_vals = None
    for value in observed:
        flat = flatten_weight(value, args) if base_name == "weight" else flatten_activation(value, args)
        lo, hi = torch.amin(flat, dim=(0, -1)), torch.amax(flat, dim=(0, -1))
        min_vals = lo if min_vals is None else torch.min(lo, min_vals)
        max_vals = hi if max_vals is None else torch.max(hi, max_vals)
    global_scale = None
    if args.strategy == QuantizationStrategy.TENSOR_GROUP:
        global_scale = global_scale_of(min_vals, max_vals)
        getattr(module, f"{base_name}_global_scale").data.copy_(global_scale)
    if args.dynamic is not False:
        return
    scale, zero_point = calculate_qparams(min_vals, max_vals, args, global_scale)
    getattr(module, f"{base_name}_scale").data.copy_(scale)
    if hasattr(module, f"{base_name}_zero_point"):
        getattr(module, f"{base_name}_zero_point").data.copy_(zero_point)


def ct_quantize(weight, scheme_name, inputs=()):
    """(compressed state dict, fake-quantized weight) by compressed-tensors."""
    scheme = preset_name_to_scheme(CT_SCHEMES[scheme_name], ["Linear"])
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=False, dtype=weight.dtype)
    linear.weight.data.copy_(weight)
    initialize_module_for_quantization(linear, scheme)
    ct_calibrate(linear, "weight", scheme.weights, [weight])
    if scheme.input_activations is not None and scheme.input_activations.dynamic is not True:
        ct_calibrate(linear, "input", scheme.input_activations, inputs)
    # As the calibrated module's forward does (forward_quantize): symmetric schemes have zero
    # zero points too (force_zero_point), and adding them turns a -0.0 quotient into +0.0.
    fq = fake_quantize(
        weight,
        linear.weight_scale,
        linear.weight_zero_point,
        scheme.weights,
        global_scale=getattr(linear, "weight_global_scale", None),
    )
    compressor = BaseCompressor.get_value_from_registry(infer_module_format(nn.Linear, scheme).value)
    compressor.compress_module(linear)
    state = {k: v.detach() for k, v in linear.state_dict().items()}
    return state, fq


def moeq_quantize(ops, weight, scheme_name, inputs=()):
    scheme_json, fmt, _ = ops.preset_scheme(scheme_name)
    names, tensors = ops.quantize_linear(weight, scheme_json, list(inputs), "")
    return dict(zip(names, tensors)), fmt


def weight_args_json(ops, scheme_name):
    return json.dumps(json.loads(ops.preset_scheme(scheme_name)[0])["weights"])


def assert_same_bytes(ours, theirs, what):
    """Same dtype, shape and bytes (so -0.0 differs from 0.0)."""
    assert ours.dtype == theirs.dtype, f"{what}: dtype {ours.dtype} != {theirs.dtype}"
    assert ours.shape == theirs.shape, f"{what}: shape {tuple(ours.shape)} != {tuple(theirs.shape)}"
    a = ours.contiguous().reshape(-1).view(torch.uint8).reshape(ours.numel(), -1)
    b = theirs.contiguous().reshape(-1).view(torch.uint8).reshape(theirs.numel(), -1)
    differ = (a != b).any(-1)
    if differ.any():
        flat_ours, flat_theirs = ours.reshape(-1), theirs.reshape(-1)
        idx = differ.nonzero().flatten()[:5].tolist()
        raise AssertionError(
            f"{what}: {int(differ.sum())} of {ours.numel()} elements differ, first at flat {idx}: "
            f"{[flat_ours[i].item() for i in idx]} vs {[flat_theirs[i].item() for i in idx]}"
        )


def activations(dtype, cols, seed=7):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(2, 5, cols, generator=g) * s).to(dtype) for s in (1.0, 3.0)]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kind", ["random", "ties", "edge"])
@pytest.mark.parametrize("scheme", list(CT_SCHEMES))
def test_compressed_tensors_bytes(moeq_quant_ops, scheme, kind, dtype):
    weight = make_weight(kind, scheme, dtype)
    inputs = activations(dtype, weight.shape[1])
    theirs, ct_fq = ct_quantize(weight, scheme, inputs)
    ours, fmt = moeq_quantize(moeq_quant_ops, weight, scheme, inputs)
    assert fmt == infer_module_format(nn.Linear, preset_name_to_scheme(CT_SCHEMES[scheme], ["Linear"])).value
    assert sorted(ours) == sorted(theirs)
    for name in theirs:
        assert_same_bytes(ours[name], theirs[name], f"{scheme} {kind} {dtype} {name}")

    fq = moeq_quant_ops.fake_quantize_weight(weight, weight_args_json(moeq_quant_ops, scheme))
    assert_same_bytes(fq, ct_fq.to(weight.dtype), f"{scheme} {kind} {dtype} fake quantization")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("scheme", list(CT_SCHEMES))
def test_compressed_tensors_decompress(moeq_quant_ops, scheme, dtype):
    """moeq's dequantization of its tensors equals compressed-tensors' decompress."""
    weight = make_weight("random", scheme, dtype)
    inputs = activations(dtype, weight.shape[1])
    theirs, _ = ct_quantize(weight, scheme, inputs)
    ct_scheme = preset_name_to_scheme(CT_SCHEMES[scheme], ["Linear"])
    fmt = infer_module_format(nn.Linear, ct_scheme)
    expected = BaseCompressor.get_value_from_registry(fmt.value).decompress(dict(theirs), ct_scheme)["weight"]
    names = [n for n in theirs if n.startswith("weight")]
    ours = moeq_quant_ops.dequantize_weight(
        names, [theirs[n] for n in names], weight_args_json(moeq_quant_ops, scheme), fmt.value, expected.dtype
    )
    assert_same_bytes(ours, expected, f"{scheme} {dtype} decompressed")


# ---- ModelOpt ------------------------------------------------------------------------------------

MODELOPT = {
    # moeq algo: (ModelOpt config name, moeq scheme whose weight args give the amax)
    "FP8": ("FP8_DEFAULT_CFG", "W8A8-FP8"),
    "NVFP4": ("NVFP4_DEFAULT_CFG", "NVFP4"),
    "W4A16_AWQ": ("INT4_BLOCKWISE_WEIGHT_ONLY_CFG", "W4A16"),
}


def modelopt_export(weight, algo, inputs):
    """ModelOpt's max calibration, its fake quantization, and _export_quantized_weight."""
    import copy

    import modelopt.torch.quantization as mtq
    from modelopt.torch.export.unified_export_hf import _export_quantized_weight

    model = nn.Sequential(nn.Linear(weight.shape[1], weight.shape[0], bias=False, dtype=weight.dtype))
    model[0].weight.data.copy_(weight)
    config = copy.deepcopy(getattr(mtq, MODELOPT[algo][0]))
    mtq.quantize(model, config, lambda m: [m(x) for x in inputs])
    linear = model[0]
    weight_amax = linear.weight_quantizer.amax.clone()
    input_amax = linear.input_quantizer.amax.clone() if linear.input_quantizer.is_enabled else None
    fake = linear.weight_quantizer(weight) if algo != "NVFP4" else None  # NVFP4 fake quant needs CUDA
    _export_quantized_weight(linear, weight.dtype)
    state = {k: v.detach() for k, v in linear.state_dict().items() if "quantizer" not in k}
    return state, weight_amax, input_amax, fake


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kind", ["random", "ties", "edge"])
@pytest.mark.parametrize("algo", list(MODELOPT))
def test_modelopt_bytes(moeq_quant_ops, algo, kind, dtype):
    ops = moeq_quant_ops
    scheme = MODELOPT[algo][1]
    tie_scheme = {"FP8": "W8A8-FP8", "NVFP4": "NVFP4", "W4A16_AWQ": "W8A8-INT8"}[algo]
    weight = make_weight(kind, tie_scheme, dtype)
    if algo == "W4A16_AWQ" and kind == "ties":  # ModelOpt's int4 scale is amax / 7
        weight = make_weight("ties", "W4A16", dtype) * (7.0 / 7.5)
        weight = weight.to(dtype)
    if kind == "edge" and algo != "W4A16_AWQ":
        weight[4] = weight[4] / 1e30  # per-tensor scales: keep the other rows representable
    inputs = [x.reshape(-1, x.shape[-1]) for x in activations(dtype, weight.shape[1])]
    theirs, weight_amax, input_amax, fake = modelopt_export(weight, algo, inputs)

    # moeq's observers give ModelOpt's amax.
    mn, mx = ops.observe_weight(weight, weight_args_json(ops, scheme))
    ours_amax = torch.maximum(mn.abs(), mx.abs())
    ours_amax = ours_amax.amax() if algo != "W4A16_AWQ" else ours_amax
    assert torch.equal(ours_amax, weight_amax.float().reshape(ours_amax.shape))

    block = 128
    names, tensors = ops.quantize_weight_modelopt(weight, algo, weight_amax, input_amax, None, block)
    ours = dict(zip(names, tensors))
    assert sorted(ours) == sorted(theirs)
    for name in theirs:
        assert_same_bytes(ours[name], theirs[name], f"ModelOpt {algo} {kind} {dtype} {name}")

    if fake is not None:
        assert_same_bytes(ops.fake_quantize_modelopt(weight, algo, weight_amax, block), fake,
                          f"ModelOpt {algo} {kind} {dtype} fake quantization")
    back = ops.dequantize_modelopt(names, tensors, algo, dtype, block)
    if algo == "NVFP4":
        from modelopt.torch.quantization.qtensor import NVFP4QTensor

        expected = NVFP4QTensor(weight.shape, dtype, theirs["weight"]).dequantize(
            dtype, scale=theirs["weight_scale"], double_scale=theirs["weight_scale_2"], block_sizes={-1: 16}
        )
        assert_same_bytes(back, expected, f"ModelOpt NVFP4 {kind} {dtype} dequantized")
    elif algo == "FP8":
        from modelopt.torch.export.quant_utils import from_quantized_weight

        expected = from_quantized_weight(theirs["weight"], theirs["weight_scale"], "fp8", dtype)
        assert_same_bytes(back, expected, f"ModelOpt FP8 {kind} {dtype} dequantized")


def test_modelopt_pre_quant_scale(moeq_quant_ops):
    weight = make_weight("random", "W4A16", torch.bfloat16)
    amax = weight.float().abs().reshape(32, 2, 128).amax(-1)
    scale = torch.rand(256) + 0.5
    names, tensors = moeq_quant_ops.quantize_weight_modelopt(weight, "W4A16_AWQ", amax, None, scale, 128)
    assert torch.equal(dict(zip(names, tensors))["pre_quant_scale"], scale)


def test_presets_equal_compressed_tensors(moeq_quant_ops):
    for name, ct_name in CT_SCHEMES.items():
        scheme_json, fmt, _ = moeq_quant_ops.preset_scheme(name)
        ct = preset_name_to_scheme(ct_name, ["Linear"])
        assert json.loads(scheme_json) == ct.model_dump(mode="json"), name
        assert fmt == infer_module_format(nn.Linear, ct).value, name
        # compressed-tensors parses what moeq writes back to the same JSON
        assert type(ct).model_validate(json.loads(scheme_json)).model_dump(mode="json") == json.loads(scheme_json)


def test_quant_args_round_trip(moeq_quant_ops):
    from compressed_tensors.quantization import QuantizationArgs

    for text in [
        {"num_bits": 4, "symmetric": False, "group_size": 128, "observer": "mse", "zp_dtype": "int8"},
        {"num_bits": 8, "type": "float", "strategy": "block", "block_structure": "128x128"},
        {"num_bits": 4, "type": "float", "strategy": "tensor_group", "group_size": 16,
         "dynamic": "local", "scale_dtype": "torch.float8_e4m3fn"},
    ]:
        ours = json.loads(moeq_quant_ops.quant_args_json(json.dumps(text)))
        assert ours == QuantizationArgs(**text).model_dump(mode="json")
    with pytest.raises(RuntimeError, match="strategy 'token' requires dynamic=true"):
        moeq_quant_ops.quant_args_json(json.dumps({"strategy": "token"}))
