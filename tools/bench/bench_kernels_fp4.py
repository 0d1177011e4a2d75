#!/usr/bin/env python3
"""Benchmark of the FP4 / MX ops (not a test): moeq's torch ops side by side with eager PyTorch
written as compressed-tensors computes it and with compressed-tensors' / ModelOpt's own code.

For each op and shape ([14336, 4096] bf16, [8, 14336, 4096] bf16 and its transposed view) it
reports the median time over CUDA events, the GB/s of logical bytes (what the op must read and
write) and that as a % of a device-to-device copy measured in the same run. moeq's op time
includes its status check (one small device-to-host copy and a stream sync); `kernel` is the
kernel alone, from the profiler. Markdown to stdout, JSON to --out.

  python tools/bench/bench_kernels_fp4.py --lib build/kernels/libmoeq_kernels.so --out fp4.json
"""
import argparse
import json
import statistics
import sys
import traceback

import torch


def median_ms(fn, iters, warmup=3):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        a = torch.cuda.Event(enable_timing=True)
        b = torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def kernel_ms(fn, iters, name_filter="moeq"):
    """Median per-call time of the CUDA kernels whose name contains name_filter (profiler)."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            fn()
        torch.cuda.synchronize()
    total = 0.0
    for e in prof.key_averages():
        if name_filter in e.key:
            total += e.device_time_total if hasattr(e, "device_time_total") else e.cuda_time_total
    return total / iters / 1000.0 if total else None


def copy_gbps(nbytes, iters):
    src = torch.empty(nbytes // 2, dtype=torch.bfloat16, device="cuda").normal_()
    dst = torch.empty_like(src)
    ms = median_ms(lambda: dst.copy_(src), iters)
    return 2 * nbytes / ms / 1e6, ms


class Row:
    def __init__(self, op, shape, impl, ms, nbytes, copy, kernel=None, note=""):
        self.op, self.shape, self.impl, self.ms, self.nbytes = op, shape, impl, ms, nbytes
        self.gbps = nbytes / ms / 1e6 if ms else None
        self.pct = 100.0 * self.gbps / copy if self.gbps else None
        self.kernel_ms = kernel
        self.kernel_pct = 100.0 * (nbytes / kernel / 1e6) / copy if kernel else None
        self.note = note

    def as_dict(self):
        return dict(self.__dict__)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lib", required=True, help="path to libmoeq_kernels.so")
    ap.add_argument("--out", help="write the results as JSON here")
    ap.add_argument("--build", help="the build directory (unused; tools/gpu/run passes it)")
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--small", action="store_true", help="smaller shapes (a quick check)")
    args = ap.parse_args()

    torch.ops.load_library(args.lib)
    ops = torch.ops.moeq
    dev = torch.device("cuda")
    info = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}

    rows, n_ = (4096, 1024) if args.small else (14336, 4096)
    experts = 2 if args.small else 8
    shapes = {
        f"[{rows}, {n_}]": lambda: torch.randn(rows, n_, device=dev, dtype=torch.bfloat16),
        f"[{experts}, {rows}, {n_}]": lambda: torch.randn(experts, rows, n_, device=dev, dtype=torch.bfloat16),
        f"[{experts}, {n_}, {rows}].mT": lambda: torch.randn(experts, n_, rows, device=dev,
                                                             dtype=torch.bfloat16).transpose(-1, -2),
    }

    results = []
    notes = []

    def add(op, shape, impl, fn, nbytes, copy, kernel_filter=None):
        try:
            ms = median_ms(fn, args.iters)
            k = kernel_ms(fn, args.iters, kernel_filter) if kernel_filter else None
            results.append(Row(op, shape, impl, ms, nbytes, copy, k))
        except Exception as e:  # a peer's path that does not run here: note it
            results.append(Row(op, shape, impl, None, nbytes, copy, note=f"{type(e).__name__}: {e}"[:160]))
            traceback.print_exc(file=sys.stderr)

    # peers
    try:
        from compressed_tensors.compressors.nvfp4.helpers import quantize_and_pack_fp4
        from compressed_tensors.quantization.lifecycle.forward import fake_quantize
        from compressed_tensors.quantization.quant_scheme import preset_name_to_scheme
        from compressed_tensors.quantization.utils.helpers import calculate_qparams, generate_gparam
        have_ct = True
    except Exception as e:  # pragma: no cover
        have_ct = False
        notes.append(f"compressed-tensors not importable: {e}")
    try:
        from modelopt.torch.quantization.qtensor.mxfp4_tensor import MXFP4QTensor
        from modelopt.torch.quantization.qtensor.nvfp4_tensor import NVFP4QTensor
        have_mo = True
    except Exception as e:  # pragma: no cover
        have_mo = False
        notes.append(f"modelopt not importable: {e}")
    try:
        from modelopt.torch.kernels.quantization.gemm.fp4_kernel_hopper import fp4_fake_quant_block
    except Exception as e:
        fp4_fake_quant_block = None
        notes.append(f"ModelOpt Triton fp4_fake_quant_block not loadable: {e}")
    notes.append("ModelOpt's CUDA extension (modelopt_cuda_ext_mx, fused_amax_convert) is JIT-built "
                 "on first use and is not timed here")

    for shape, make in shapes.items():
        x = make()
        numel = x.numel()
        in_bytes = numel * 2
        copy, copy_ms = copy_gbps(2 * in_bytes // 2, args.iters)
        info[f"copy_gbps {shape}"] = copy
        amax = x.abs().amax()
        gs = ops.nvfp4_global_scale(amax)
        wsf2 = ops.nvfp4_global_scale(amax, "modelopt")
        fq_bytes = 2 * in_bytes
        q4_bytes = in_bytes + numel // 2 + numel // 16
        mx4_bytes = in_bytes + numel // 2 + numel // 32
        mx8_bytes = in_bytes + numel + numel // 32

        add("fake_quant NVFP4 (ct)", shape, "moeq", lambda: ops.fake_quant_nvfp4(x, gs), fq_bytes, copy, "moeq")
        add("fake_quant NVFP4 (modelopt)", shape, "moeq", lambda: ops.fake_quant_nvfp4(x, wsf2, "modelopt"),
            fq_bytes, copy, "moeq")
        add("quantize NVFP4 (ct)", shape, "moeq", lambda: ops.quantize_nvfp4(x, gs), q4_bytes, copy, "moeq")
        packed, scales = ops.quantize_nvfp4(x, gs)
        add("dequantize NVFP4", shape, "moeq",
            lambda: ops.dequantize_nvfp4(packed, scales, gs, torch.bfloat16), q4_bytes, copy, "moeq")
        add("fake_quant MXFP4 (ct)", shape, "moeq", lambda: ops.fake_quant_mx(x, "fp4"), fq_bytes, copy, "moeq")
        add("fake_quant MXFP4 (modelopt)", shape, "moeq", lambda: ops.fake_quant_mx(x, "fp4", "modelopt"),
            fq_bytes, copy, "moeq")
        add("quantize MXFP4 (ct)", shape, "moeq", lambda: ops.quantize_mx(x, "fp4"), mx4_bytes, copy, "moeq")
        add("fake_quant MXFP8 (ct)", shape, "moeq", lambda: ops.fake_quant_mx(x, "fp8"), fq_bytes, copy, "moeq")
        add("quantize MXFP8 (ct)", shape, "moeq", lambda: ops.quantize_mx(x, "fp8"), mx8_bytes, copy, "moeq")
        mdata, mscales = ops.quantize_mx(x, "fp4")
        add("dequantize MXFP4", shape, "moeq",
            lambda: ops.dequantize_mx(mdata, mscales, "fp4", torch.bfloat16), mx4_bytes, copy, "moeq")
        if not shape.endswith(".mT"):
            codes = ops.unpack_fp4(packed)
            add("pack_fp4", shape, "moeq", lambda: ops.pack_fp4(codes), numel + numel // 2, copy, "moeq")
            blocks = mdata.reshape(*mdata.shape[:-1], -1, 16)
            add("dequantize_mxfp4_source (GPT-OSS)", shape, "moeq",
                lambda: ops.dequantize_mxfp4_source(blocks, mscales, torch.bfloat16), mx4_bytes, copy, "moeq")
            ga = amax.float()
            add("nvfp4_fp8_scale_sweep (modelopt)", shape, "moeq",
                lambda: ops.nvfp4_fp8_scale_sweep(x, ga, "modelopt"), in_bytes + numel // 16 * 5, copy, "moeq")

        if have_ct and not shape.endswith(".mT"):
            scheme = preset_name_to_scheme("NVFP4", ["Linear"])
            a = scheme.weights

            def ct_fake_nvfp4():
                g = generate_gparam(x.min(), x.max())
                xg = x.unflatten(-1, (-1, 16))
                s, zp = calculate_qparams(xg.amin(-1), xg.amax(-1), a, global_scale=g)
                return fake_quantize(x, s.to(x.dtype), zp, a, global_scale=g)

            add("fake_quant NVFP4 (ct)", shape, "eager PyTorch (compressed-tensors ops)", ct_fake_nvfp4,
                fq_bytes, copy)
            if x.dim() == 2:
                xg = x.unflatten(-1, (-1, 16))
                s, zp = calculate_qparams(xg.amin(-1), xg.amax(-1), a, global_scale=gs)
                s = s.to(x.dtype)
                add("quantize NVFP4 (ct)", shape, "compressed-tensors quantize_and_pack_fp4 (Triton)",
                    lambda: quantize_and_pack_fp4(x, s, gs, None, 16), q4_bytes, copy)
            mxs = preset_name_to_scheme("MXFP4", ["Linear"]).weights

            def ct_fake_mx():
                xg = x.unflatten(-1, (-1, 32))
                s, zp = calculate_qparams(xg.amin(-1), xg.amax(-1), mxs)
                return fake_quantize(x, s.to(x.dtype), zp, mxs)

            add("fake_quant MXFP4 (ct)", shape, "eager PyTorch (compressed-tensors ops)", ct_fake_mx, fq_bytes, copy)
        if have_mo:
            xc = x.contiguous()
            add("quantize NVFP4 (modelopt)", shape, "ModelOpt NVFP4QTensor.quantize (eager)",
                lambda: NVFP4QTensor.quantize(xc, 16, None, wsf2.reshape(()) if x.dim() == 2 else
                                              wsf2.reshape(())), q4_bytes, copy)
            add("quantize MXFP4 (modelopt)", shape, "ModelOpt MXFP4QTensor.quantize (eager)",
                lambda: MXFP4QTensor.quantize(xc, 32), mx4_bytes, copy)
            if fp4_fake_quant_block is not None:
                add("fake_quant NVFP4 (modelopt)", shape, "ModelOpt Triton fp4_fake_quant_block",
                    lambda: fp4_fake_quant_block(x, amax.float()), fq_bytes, copy)
        del x
        torch.cuda.empty_cache()

    hdr = "| op | shape | implementation | ms | GB/s | % copy | kernel ms | kernel % copy |"
    print(f"device: {info['device']}, torch {info['torch']}")
    for k, v in info.items():
        if k.startswith("copy_gbps"):
            print(f"- device-to-device copy {k[10:]}: {v:.0f} GB/s")
    print()
    print(hdr)
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for r in results:
        f = lambda v, p=3: "" if v is None else f"{v:.{p}f}"  # noqa: E731
        impl = r.impl + (f" ({r.note})" if r.note else "")
        print(f"| {r.op} | {r.shape} | {impl} | {f(r.ms)} | {f(r.gbps, 0)} | {f(r.pct, 1)} | "
              f"{f(r.kernel_ms)} | {f(r.kernel_pct, 1)} |")
    for n in notes:
        print(f"\n- {n}")
    if args.out:
        with open(args.out, "w") as fh:
            json.dump({"info": info, "notes": notes, "results": [r.as_dict() for r in results]}, fh, indent=1)


if __name__ == "__main__":
    main()
