"""Trains moeq's embedded default model: a small Mixtral-layout MoE language model over bytes.

Runs on the GPU machine (a few minutes on an H100) with its preinstalled torch and transformers:

    python3 tools/default_model/train.py --corpus .corpus/train.txt --out tools/default_model/model

The corpus comes from tools/default_model/make_corpus (the King James Version of the Bible from
Debian's bible-kjv packages, public domain). The vocabulary is bytes: ids 0-255 are the byte
values, 256 is <bos>, 257 is <eos>. The result is written in the Hugging Face layout that
MixtralForCausalLM checkpoints on the hub use (config.json + model.safetensors with
`block_sparse_moe.experts.{e}.w1/w2/w3` names), in bf16, plus moeq_tokenizer.json.

Shapes are chosen to be tiny yet quantizable by every scheme vLLM's MoE kernels take for this
hidden size: hidden 128 and expert width 128 are multiples of 128 (int4 group 128, Marlin) and
of 16/32 (NVFP4, MXFP4).
"""
import argparse
import json
import math
import os
import time

import torch
from transformers import MixtralConfig, MixtralForCausalLM

BOS, EOS, VOCAB = 256, 257, 258


def model_config(args):
    return MixtralConfig(
        vocab_size=VOCAB,
        hidden_size=128,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        num_local_experts=8,
        num_experts_per_tok=2,
        max_position_embeddings=1024,
        rope_theta=10000.0,
        rms_norm_eps=1e-5,
        router_aux_loss_coef=args.aux_loss,
        output_router_logits=True,
        bos_token_id=BOS,
        eos_token_id=EOS,
        tie_word_embeddings=False,
        torch_dtype="bfloat16",
    )


def batches(data, seq_len, batch_size, generator, device):
    while True:
        starts = torch.randint(0, data.numel() - seq_len, (batch_size,), generator=generator)
        rows = torch.stack([data[s : s + seq_len] for s in starts.tolist()])
        rows = torch.cat([torch.full((batch_size, 1), BOS, dtype=rows.dtype), rows], dim=1)
        yield rows.to(device, non_blocking=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--corpus", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--seconds", type=float, default=240.0, help="training time budget")
    p.add_argument("--max-steps", type=int, default=20000)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--aux-loss", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    torch.manual_seed(args.seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    raw = open(args.corpus, "rb").read()
    data = torch.frombuffer(bytearray(raw), dtype=torch.uint8).to(torch.long)
    split = int(data.numel() * 0.98)
    train, valid = data[:split], data[split:]

    cfg = model_config(args)
    model = MixtralForCausalLM(cfg).to(device)
    params = sum(p.numel() for p in model.parameters())
    print(f"model: {params / 1e6:.2f} M parameters, device {device}")
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.1)
    gen = torch.Generator().manual_seed(args.seed)
    it = batches(train, args.seq_len, args.batch_size, gen, device)

    start = time.time()
    step = 0
    warmup = 200
    while step < args.max_steps and time.time() - start < args.seconds:
        # Cosine schedule over the time budget (the step count is not known in advance).
        frac = min(1.0, (time.time() - start) / args.seconds)
        lr = args.lr * min(1.0, (step + 1) / warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))
        for group in opt.param_groups:
            group["lr"] = lr
        ids = next(it)
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=device == "cuda"):
            out = model(input_ids=ids, labels=ids)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 200 == 0:
            print(f"step {step:6d}  loss {out.loss.item():.4f}  lr {lr:.2e}  {time.time() - start:6.1f}s",
                  flush=True)
        step += 1

    model.eval()
    with torch.no_grad(), torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=device == "cuda"):
        vgen = torch.Generator().manual_seed(1)
        vit = batches(valid, args.seq_len, 32, vgen, device)
        losses = [model(input_ids=(v := next(vit)), labels=v).loss.item() for _ in range(8)]
    val_loss = sum(losses) / len(losses)
    print(f"trained {step} steps in {time.time() - start:.0f}s; held-out loss {val_loss:.4f} "
          f"({val_loss / math.log(2):.3f} bits/byte)")

    os.makedirs(args.out, exist_ok=True)
    model.config.output_router_logits = False
    model.to(torch.bfloat16).save_pretrained(args.out, safe_serialization=True)
    with open(os.path.join(args.out, "moeq_tokenizer.json"), "w") as f:
        json.dump({"type": "bytes", "bos_token_id": BOS, "eos_token_id": EOS, "vocab_size": VOCAB}, f,
                  indent=2)
    with open(os.path.join(args.out, "training.json"), "w") as f:
        json.dump({"steps": step, "seconds": round(time.time() - start, 1), "held_out_loss": val_loss,
                   "corpus": "King James Version (Debian bible-kjv-text), Genesis to Malachi",
                   "seq_len": args.seq_len, "batch_size": args.batch_size, "lr": args.lr,
                   "seed": args.seed, "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
                   "torch": torch.__version__}, f, indent=2)


if __name__ == "__main__":
    main()
