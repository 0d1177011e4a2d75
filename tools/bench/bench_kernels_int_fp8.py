#!/usr/bin/env python3
"""Benchmark of moeq's integer / FP8 quantizer ops on CUDA (not a test).

For each op on a [14336, 4096] bf16 weight and an [8, 14336, 4096] expert stack: the median time
over N CUDA-event-timed runs (after warmup), the GB/s of the op's logical bytes (what it must read
and write once), and that as a % of a device-to-device copy (x.clone()) measured in the same run;
side by side with the same operation in eager PyTorch written the way compressed-tensors computes
it, and with compressed-tensors' / ModelOpt's own implementation where one exists.

    python tools/bench/bench_kernels_int_fp8.py --lib build/kernels/libmoeq_kernels.so --out r.json

Prints a markdown table; writes the rows as JSON to --out.
"""
import argparse
import json
import statistics
import sys

import torch

E4M3 = torch.float8_e4m3fn


def timed(fn, warmup, iters):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e-3)
    return statistics.median(times)


# ---- eager PyTorch, the way compressed-tensors computes (forward_helpers.py) ----------------------


def eager_fake_int_group(x, scale, zp, group, qmin, qmax):
    g = x.unflatten(-1, (-1, group))
    s = scale.unsqueeze(-1)
    z = zp.unsqueeze(-1)
    q = torch.clamp(g / s + z.to(x.dtype), qmin, qmax).round()
    return ((q.to(s.dtype) - z.to(s.dtype)) * s).flatten(-2).to(x.dtype)


def eager_fake_int_channel(x, scale, zp, qmin, qmax):
    q = torch.clamp(x / scale + zp.to(x.dtype), qmin, qmax).round()
    return (q.to(scale.dtype) - zp.to(scale.dtype)) * scale


def eager_quantize_int_group(x, scale, zp, group, qmin, qmax):
    g = x.unflatten(-1, (-1, group))
    q = torch.clamp(g / scale.unsqueeze(-1) + zp.unsqueeze(-1).to(x.dtype), qmin, qmax).round()
    return q.flatten(-2).to(torch.int8)


def eager_fake_fp8(x, scale):
    q = torch.clamp(x / scale, -448.0, 448.0).to(E4M3).to(x.dtype)
    return q.to(scale.dtype) * scale


def eager_fake_fp8_block(x, scale, b=128):
    *lead, r, c = x.shape
    blocks = x.reshape(*lead, r // b, b, c // b, b).transpose(-3, -2)
    s = scale.unsqueeze(-1).unsqueeze(-1)
    q = torch.clamp(blocks / s, -448.0, 448.0).to(E4M3).to(x.dtype)
    return (q.to(s.dtype) * s).transpose(-3, -2).reshape(x.shape)


def eager_quantize_fp8_block(x, scale, b=128):
    *lead, r, c = x.shape
    blocks = x.reshape(*lead, r // b, b, c // b, b).transpose(-3, -2)
    q = torch.clamp(blocks / scale.unsqueeze(-1).unsqueeze(-1), -448.0, 448.0).to(E4M3)
    return q.transpose(-3, -2).reshape(x.shape)


def eager_group_amax(x, group):
    return x.unflatten(-1, (-1, group)).abs().amax(dim=-1)


def eager_channel_minmax(x):
    return x.amin(dim=-1, keepdim=True), x.amax(dim=-1, keepdim=True)


def eager_pack_int4_rows(codes):  # ModelOpt's pack_int4_in_uint8, after the rounding
    *lead, r, c = codes.shape
    t = codes.transpose(-1, -2).reshape(*lead, c, r // 2, 2)
    return ((t[..., 0] & 0x0F) | ((t[..., 1] & 0x0F) << 4)).transpose(-1, -2).contiguous().view(
        torch.uint8)


def eager_dequant_fp8_source(q, s, b=128):
    *lead, r, c = q.shape
    full = q.float().reshape(*lead, r // b, b, c // b, b) * s.unsqueeze(-1).unsqueeze(-3)
    return full.reshape(q.shape).to(torch.bfloat16)


def eager_dynamic_fp8_token(x):
    amax = torch.max(x.amin(dim=-1, keepdim=True).abs(), x.amax(dim=-1, keepdim=True))
    scale = amax / (torch.tensor(896.0, device=x.device).to(x.dtype) / 2)
    scale = torch.where(scale == 0, torch.finfo(x.dtype).eps, scale)
    return eager_fake_fp8(x, scale)


# ---- peers ------------------------------------------------------------------------------------


def ct_functions():
    try:
        from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32
        from compressed_tensors.quantization import QuantizationArgs
        from compressed_tensors.quantization.lifecycle.forward import fake_quantize, quantize
    except Exception as e:  # noqa: BLE001
        return None, f"compressed-tensors unavailable: {e}"
    args = {
        "int4g128": QuantizationArgs(num_bits=4, type="int", symmetric=True, strategy="group",
                                     group_size=128),
        "int8ch": QuantizationArgs(num_bits=8, type="int", symmetric=True, strategy="channel"),
        "fp8ch": QuantizationArgs(num_bits=8, type="float", symmetric=True, strategy="channel"),
        "fp8blk": QuantizationArgs(num_bits=8, type="float", symmetric=True, strategy="block",
                                   block_structure=[128, 128]),
    }
    return {"fake_quantize": fake_quantize, "quantize": quantize, "pack": pack_to_int32,
            "args": args}, ""


def modelopt_functions():
    try:
        from modelopt.torch.export.quant_utils import pack_int4_in_uint8
        from modelopt.torch.quantization import tensor_quant
    except Exception as e:  # noqa: BLE001
        return None, f"ModelOpt unavailable: {e}"
    return {"tensor_quant": tensor_quant, "pack_int4": pack_int4_in_uint8}, ""


# ---- the benchmark ------------------------------------------------------------------------------


def run(args):
    torch.ops.load_library(args.lib)
    ops = torch.ops.moeq
    dev = torch.device("cuda")
    ct, ct_note = ct_functions()
    mo, mo_note = modelopt_functions() if args.modelopt else (None, "ModelOpt skipped (--no-modelopt)")
    notes = [n for n in (ct_note, mo_note) if n]
    rows = []
    gpu = torch.cuda.get_device_name()

    for shape in ([14336, 4096], [8, 14336, 4096]):
        torch.manual_seed(0)
        x = (torch.randn(shape, device=dev) * 0.02).to(torch.bfloat16)
        n = x.numel()
        label = "x".join(map(str, shape))
        copy_s = timed(lambda: x.clone(), args.warmup, args.iters)
        copy_gbs = 4 * n / copy_s / 1e9
        rows.append(dict(shape=label, op="copy (x.clone())", impl="torch", seconds=copy_s,
                         bytes=4 * n, gbps=copy_gbs, pct_copy=100.0))

        # Inputs each op needs, made by moeq's own ops.
        amax_g = ops.block_amax(x, [1, 128])
        s_g, z_g = ops.int_qparams(-amax_g, amax_g, -8, 7, True, torch.bfloat16)
        amax_c = ops.block_amax(x, [1, 0])
        s_c8, z_c8 = ops.int_qparams(-amax_c, amax_c, -128, 127, True, torch.bfloat16)
        s_fc = ops.fp8_scale_from_amax(amax_c, E4M3, torch.bfloat16)
        amax_b = ops.block_amax(x, [128, 128])
        s_fb = ops.fp8_scale_from_amax(amax_b, E4M3, torch.float32)
        codes = ops.quantize_int(x, s_g, z_g, [1, 128], -8, 7)
        q8 = ops.quantize_fp8(x, s_fb, [128, 128])
        s_fc_zero = torch.zeros_like(s_fc)

        cases = [
            # name, logical bytes, {impl: fn}
            ("fake quant int4 g128 (W4A16)", 4 * n, {
                "moeq": lambda: ops.fake_quant_int(x, s_g, z_g, [1, 128], -8, 7),
                "eager (CT formulas)": lambda: eager_fake_int_group(x, s_g, z_g, 128, -8, 7),
                "compressed-tensors": ct and (lambda: ct["fake_quantize"](
                    x, s_g, z_g, ct["args"]["int4g128"])),
            }),
            ("fake quant int8 channel", 4 * n, {
                "moeq": lambda: ops.fake_quant_int(x, s_c8, z_c8, [1, 0], -128, 127),
                "eager (CT formulas)": lambda: eager_fake_int_channel(x, s_c8, z_c8, -128, 127),
                "compressed-tensors": ct and (lambda: ct["fake_quantize"](
                    x, s_c8, z_c8, ct["args"]["int8ch"])),
                "ModelOpt (fake_tensor_quant)": mo and (lambda: mo["tensor_quant"].fake_tensor_quant(
                    x, amax_c.to(torch.bfloat16), None, 8, False, True)),
            }),
            ("fake quant fp8 channel", 4 * n, {
                "moeq": lambda: ops.fake_quant_fp8(x, s_fc, [1, 0], E4M3, s_fc_zero),
                "eager (CT formulas)": lambda: eager_fake_fp8(x, s_fc),
                "compressed-tensors": ct and (lambda: ct["fake_quantize"](
                    x, s_fc, s_fc_zero, ct["args"]["fp8ch"])),
                "ModelOpt (scaled_e4m3)": mo and (lambda: mo["tensor_quant"].scaled_e4m3(
                    x, amax_c.to(torch.bfloat16), None, 4, 3)),
            }),
            ("fake quant fp8 block 128x128", 4 * n, {
                "moeq": lambda: ops.fake_quant_fp8(x, s_fb, [128, 128]),
                "eager (CT formulas)": lambda: eager_fake_fp8_block(x, s_fb),
            }),
            ("quantize int4 g128 -> int8 codes", 3 * n, {
                "moeq": lambda: ops.quantize_int(x, s_g, z_g, [1, 128], -8, 7),
                "eager (CT formulas)": lambda: eager_quantize_int_group(x, s_g, z_g, 128, -8, 7),
                "compressed-tensors": ct and (lambda: ct["quantize"](
                    x, s_g, z_g, ct["args"]["int4g128"], dtype=torch.int8)),
            }),
            ("quantize + pack int4 g128 (weight_packed)", 2.5 * n, {
                "moeq": lambda: ops.quantize_int_packed(x, s_g, z_g, [1, 128], 4),
                "compressed-tensors": ct and (lambda: ct["pack"](ct["quantize"](
                    x, s_g, z_g, ct["args"]["int4g128"], dtype=torch.int8), 4)),
            }),
            ("pack int4 codes -> int32", 1.5 * n, {
                "moeq": lambda: ops.pack_int(codes, 4),
                "compressed-tensors": ct and (lambda: ct["pack"](codes, 4)),
            }),
            ("pack int4 row pairs (ModelOpt INT4-AWQ)", 1.5 * n, {
                "moeq": lambda: ops.pack_int4_row_pairs(codes),
                "eager (ModelOpt formulas)": lambda: eager_pack_int4_rows(codes),
            }),
            ("quantize fp8 block 128x128", 3 * n, {
                "moeq": lambda: ops.quantize_fp8(x, s_fb, [128, 128]),
                "eager (CT formulas)": lambda: eager_quantize_fp8_block(x, s_fb),
            }),
            ("amax group 128", 2 * n, {
                "moeq": lambda: ops.block_amax(x, [1, 128]),
                "eager": lambda: eager_group_amax(x, 128),
            }),
            ("min/max per channel", 2 * n, {
                "moeq": lambda: ops.block_minmax(x, [1, 0]),
                "eager": lambda: eager_channel_minmax(x),
            }),
            ("dequantize fp8 block source -> bf16", 3 * n, {
                "moeq": lambda: ops.dequantize_fp8_block_source(q8, s_fb, torch.bfloat16),
                "eager (DeepSeek / transformers formula)": lambda: eager_dequant_fp8_source(q8, s_fb),
            }),
            ("dynamic fp8 per token (fake)", 4 * n, {
                "moeq": lambda: ops.fake_quant_fp8_dynamic(x, [1, 0]),
                "eager (CT formulas)": lambda: eager_dynamic_fp8_token(x),
            }),
        ]
        for name, nbytes, impls in cases:
            for impl, fn in impls.items():
                if not fn:
                    continue
                try:
                    sec = timed(fn, args.warmup, args.iters)
                except Exception as e:  # noqa: BLE001
                    notes.append(f"{impl} / {name} / {label}: failed ({type(e).__name__}: {e})"[:300])
                    continue
                gbs = nbytes / sec / 1e9
                rows.append(dict(shape=label, op=name, impl=impl, seconds=sec, bytes=nbytes,
                                 gbps=gbs, pct_copy=100.0 * gbs / copy_gbs))
                print(f"  {label:>14} {name:<44} {impl:<32} {sec * 1e6:9.1f} us {gbs:8.0f} GB/s "
                      f"{100.0 * gbs / copy_gbs:5.1f} %", file=sys.stderr, flush=True)
        del x, codes, q8
        torch.cuda.empty_cache()

    print(f"GPU: {gpu}; torch {torch.__version__}; median of {args.iters} runs after "
          f"{args.warmup} warmup; logical bytes (each input read once, each output written once)\n")
    print("| shape | op | implementation | time (us) | GB/s | % of copy |")
    print("|---|---|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['shape']} | {r['op']} | {r['impl']} | {r['seconds'] * 1e6:.1f} | "
              f"{r['gbps']:.0f} | {r['pct_copy']:.1f} |")
    for note in notes:
        print(f"\nNote: {note}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"gpu": gpu, "torch": torch.__version__, "iters": args.iters,
                       "warmup": args.warmup, "rows": rows, "notes": notes}, f, indent=1)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lib", required=True, help="path to libmoeq_kernels.so")
    p.add_argument("--build", help="build directory (unused; accepted for tools/gpu/run)")
    p.add_argument("--out", help="write the rows as JSON here")
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--no-modelopt", dest="modelopt", action="store_false",
                   help="skip ModelOpt (its CUDA extension JIT-compiles on first use)")
    args = p.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench_kernels_int_fp8: needs a CUDA device")
    run(args)


if __name__ == "__main__":
    main()
