"""A tiny Mixtral-layout model for the exporter tests, built in memory: every Linear's name,
weight and calibration activations, the tensors written as is, and the source directory."""
import json
import os

import torch
import torch.nn as nn

HIDDEN, INTERMEDIATE, EXPERTS, LAYERS, VOCAB, KV = 128, 128, 4, 2, 32, 64
ROUTER = "model.layers.{}.block_sparse_moe.gate"


def _load_libs():
    build = os.environ.get("MOEQ_BUILD_DIR", os.path.join(os.path.dirname(__file__), "../../build"))
    for env, rel in (("MOEQ_KERNELS_LIB", "kernels/libmoeq_kernels.so"),
                     (None, "core/quant/libmoeq_quant.so"),
                     ("MOEQ_EXPORT_LIB", "core/export/libmoeq_export.so")):
        torch.ops.load_library(os.environ.get(env) if env and os.environ.get(env) else os.path.join(build, rel))
    return torch.ops.moeq


def tiny_mixtral(seed=0):
    """(linears, passthrough): linears maps each Linear in checkpoint order (routers and lm_head
    included) to (weight bf16 [out, in], activations bf16 [tokens, in])."""
    g = torch.Generator().manual_seed(seed)

    def weight(out, inp):
        # Rows of very different magnitude, as trained weights have.
        return (torch.randn(out, inp, generator=g) * torch.logspace(-2, 0, out).unsqueeze(1)).bfloat16()

    def acts(inp):
        return (torch.randn(16, inp, generator=g) * 2).bfloat16()

    linears = {}
    passthrough = {"model.embed_tokens.weight": weight(VOCAB, HIDDEN), "model.norm.weight": torch.ones(HIDDEN).bfloat16()}
    for layer in range(LAYERS):
        p = f"model.layers.{layer}"
        for name, out in (("q_proj", HIDDEN), ("k_proj", KV), ("v_proj", KV), ("o_proj", HIDDEN)):
            linears[f"{p}.self_attn.{name}"] = (weight(out, HIDDEN), acts(HIDDEN))
        for e in range(EXPERTS):
            for name, out, inp in (("w1", INTERMEDIATE, HIDDEN), ("w2", HIDDEN, INTERMEDIATE), ("w3", INTERMEDIATE, HIDDEN)):
                linears[f"{p}.block_sparse_moe.experts.{e}.{name}"] = (weight(out, inp), acts(inp))
        linears[ROUTER.format(layer)] = (weight(EXPERTS, HIDDEN), acts(HIDDEN))
        passthrough[f"{p}.input_layernorm.weight"] = torch.ones(HIDDEN).bfloat16()
        passthrough[f"{p}.post_attention_layernorm.weight"] = torch.ones(HIDDEN).bfloat16()
    linears["lm_head"] = (weight(VOCAB, HIDDEN), acts(HIDDEN))
    return linears, passthrough


def ignored_names():
    return [ROUTER.format(layer) for layer in range(LAYERS)] + ["lm_head"]


def make_source(path):
    os.makedirs(path, exist_ok=True)
    config = {"architectures": ["MixtralForCausalLM"], "model_type": "mixtral", "hidden_size": HIDDEN,
              "intermediate_size": INTERMEDIATE, "num_local_experts": EXPERTS, "num_hidden_layers": LAYERS,
              "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": VOCAB, "rms_norm_eps": 1e-05,
              "rope_theta": 1000000.0, "torch_dtype": "bfloat16", "tie_word_embeddings": False}
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    for name, text in (("tokenizer.json", '{"version": "1.0"}'), ("tokenizer_config.json", "{}"),
                       ("generation_config.json", '{"do_sample": false}'), ("chat_template.jinja", "{{ x }}")):
        with open(os.path.join(path, name), "w") as f:
            f.write(text)
    return path


def export(ops, src, out, scheme, fmt, linears, passthrough, *, embeddings=(), shard_size=1 << 30):
    """Exports every Linear but the ignored ones quantized (the rest as is); returns
    {module: moeq's fake-quantized weight}."""
    ignored = ignored_names()
    quantized = [m for m in linears if m not in ignored]
    names = list(passthrough) + [m + ".weight" for m in ignored]
    tensors = list(passthrough.values()) + [linears[m][0] for m in ignored]
    expected = [m for m in quantized if ".experts." in m]
    fake = ops.export_checkpoint(quantized, [linears[m][0] for m in quantized], [linears[m][1] for m in quantized],
                                 scheme, fmt, str(src), str(out), names, tensors, ignored, expected,
                                 list(embeddings), shard_size)
    return dict(zip(quantized, fake))


def module_tree(shapes, dtype=torch.bfloat16):
    """An nn.Module whose named Linears are exactly `shapes` ({name: (out, in)}), in order."""
    root = nn.Module()
    for name, (out, inp) in shapes.items():
        parent = root
        parts = name.split(".")
        for p in parts[:-1]:
            if p not in parent._modules:
                parent.add_module(p, nn.Module())
            parent = parent._modules[p]
        parent.add_module(parts[-1], nn.Linear(inp, out, bias=False, dtype=dtype))
    return root
