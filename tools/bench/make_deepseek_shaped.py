#!/usr/bin/env python3
"""A synthetic checkpoint with DeepSeek-V3's per-layer dimensions (hidden 7168, MLA q/kv LoRA
1536/512 over 128 heads, 256 routed experts of width 2048 plus a shared one, dense layers of
width 18432) in the published FP8 storage (128x128 weight_scale_inv blocks), with few layers and
a small vocabulary: what `moeq quantize` needs to show its per-layer memory and time on one GPU.
Random weights (no model quality is measured). Usage: make_deepseek_shaped.py OUT [--layers N]
"""
import argparse
import json
import os

import torch
from safetensors.torch import save_file

H, E, I_MOE, I_DENSE = 7168, 256, 2048, 18432
HEADS, Q_LORA, KV_LORA, NOPE, ROPE, V = 128, 1536, 512, 128, 64, 128


def fp8(rows, cols, gen, device):
    padded = -(-rows // 128) * 128  # a partial last block row (kv_a_proj_with_mqa: 576)
    w = torch.randn(padded, cols, generator=gen, device=device) * (0.5 / cols ** 0.5)
    blocks = w.unflatten(0, (-1, 128)).unflatten(-1, (-1, 128))
    scale = blocks.abs().amax((1, 3)) / 448.0
    q = (blocks / scale[:, None, :, None]).flatten(2, 3).flatten(0, 1).to(torch.float8_e4m3fn)
    return q[:rows].contiguous().cpu(), scale.float().cpu()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--layers", type=int, default=3)
    p.add_argument("--vocab", type=int, default=4096)
    a = p.parse_args()
    os.makedirs(a.out, exist_ok=True)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    g = torch.Generator(device=dev).manual_seed(0)
    config = dict(architectures=["DeepseekV3ForCausalLM"], model_type="deepseek_v3",
                  vocab_size=a.vocab, hidden_size=H, intermediate_size=I_DENSE,
                  moe_intermediate_size=I_MOE, num_hidden_layers=a.layers, first_k_dense_replace=1,
                  num_attention_heads=HEADS, num_key_value_heads=HEADS, q_lora_rank=Q_LORA,
                  kv_lora_rank=KV_LORA, qk_nope_head_dim=NOPE, qk_rope_head_dim=ROPE, v_head_dim=V,
                  n_routed_experts=E, n_group=8, topk_group=4, num_experts_per_tok=8,
                  n_shared_experts=1, routed_scaling_factor=2.5, norm_topk_prob=True,
                  rms_norm_eps=1e-6, max_position_embeddings=163840, rope_interleave=True,
                  hidden_act="silu", tie_word_embeddings=False, num_nextn_predict_layers=0,
                  rope_scaling=dict(type="yarn", factor=40, beta_fast=32, beta_slow=1, mscale=1.0,
                                    mscale_all_dim=1.0, original_max_position_embeddings=4096),
                  rope_theta=10000,
                  quantization_config=dict(quant_method="fp8", fmt="e4m3",
                                           activation_scheme="dynamic",
                                           weight_block_size=[128, 128]))
    json.dump(config, open(os.path.join(a.out, "config.json"), "w"), indent=2)
    bf = lambda *s: (torch.randn(*s, generator=g, device=dev) * 0.02).bfloat16().cpu()
    ones = lambda n: torch.ones(n, dtype=torch.bfloat16)
    index = {}
    shards = []

    def shard(name, tensors):
        save_file(tensors, os.path.join(a.out, name), metadata={"format": "pt"})
        for k in tensors:
            index[k] = name
        shards.append(name)

    shard("embed.safetensors", {"model.embed_tokens.weight": bf(a.vocab, H),
                                "model.norm.weight": ones(H), "lm_head.weight": bf(a.vocab, H)})
    for i in range(a.layers):
        p = f"model.layers.{i}"
        t = {f"{p}.input_layernorm.weight": ones(H), f"{p}.post_attention_layernorm.weight": ones(H),
             f"{p}.self_attn.q_a_layernorm.weight": ones(Q_LORA),
             f"{p}.self_attn.kv_a_layernorm.weight": ones(KV_LORA)}

        def proj(name, rows, cols):
            q, s = fp8(rows, cols, g, dev)
            t[f"{name}.weight"], t[f"{name}.weight_scale_inv"] = q, s
        a_ = f"{p}.self_attn"
        proj(f"{a_}.q_a_proj", Q_LORA, H)
        proj(f"{a_}.q_b_proj", HEADS * (NOPE + ROPE), Q_LORA)
        proj(f"{a_}.kv_a_proj_with_mqa", KV_LORA + ROPE, H)  # 576 rows: a partial block
        proj(f"{a_}.kv_b_proj", HEADS * (NOPE + V), KV_LORA)
        proj(f"{a_}.o_proj", H, HEADS * V)
        if i == 0:
            for n, r, c in (("gate_proj", I_DENSE, H), ("up_proj", I_DENSE, H),
                            ("down_proj", H, I_DENSE)):
                proj(f"{p}.mlp.{n}", r, c)
        else:
            t[f"{p}.mlp.gate.weight"] = bf(E, H)
            t[f"{p}.mlp.gate.e_score_correction_bias"] = torch.zeros(E)
            for n, r, c in (("gate_proj", I_MOE, H), ("up_proj", I_MOE, H),
                            ("down_proj", H, I_MOE)):
                proj(f"{p}.mlp.shared_experts.{n}", r, c)
                for e in range(E):
                    proj(f"{p}.mlp.experts.{e}.{n}", r, c)
        shard(f"layer-{i:05d}.safetensors", t)
        print(f"layer {i} written", flush=True)
    json.dump({"metadata": {}, "weight_map": index},
              open(os.path.join(a.out, "model.safetensors.index.json"), "w"))


if __name__ == "__main__":
    main()
