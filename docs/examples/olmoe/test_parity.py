#!/usr/bin/env python3
"""Parity of the example olmoe plugin with transformers (docs/contributing-models.md).

  test_parity.py --moeq PREFIX/bin/moeq --plugin BUILD/libmoeq_plugin_olmoe.so --work DIR

For each tiny model it:
1. builds a random OLMoE, rounds it to bf16 and saves it with save_pretrained; the saved tensor
   names must be the published hub layout (mlp.experts.{e}.gate_proj/up_proj/down_proj, mlp.gate).
   "published" and "gqa_clip_bias_norm" are made by transformers' own OlmoeForCausalLM; "remote" by
   the model's own modeling file loaded with trust_remote_code=True (remote_code_files), the way a
   model transformers does not have is tested;
2. runs the installed `moeq quantize` with the plugin on it, evaluating on a token file and
   keeping the logits (--save-eval-logits) and the expert choices (--save-routing):
   `logits_reference` and `layers.{i}.reference.topk_ids` are moeq's unquantized forward, in
   fp32 on the CPU;
3. runs the reference (transformers, or the remote code) in fp32 on the CPU on the same tokens:
   logits within 1e-4 relative (max abs difference over max abs logit); every token's top-k
   expert set in every layer equal to the reference router's (as sets: the order of tied
   experts may differ); the tokens routed to each expert of each layer during calibration
   (report.json, calibrated on the same tokens with `propagate: original`) equal the
   reference's top-k counts;
4. for the models transformers made, loads the same checkpoint as remote code too and checks
   that reference agrees.

Exits non-zero with the numbers on any mismatch.
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys

import torch
from safetensors import safe_open
from safetensors.torch import load_file

import transformers
from transformers import OlmoeConfig, OlmoeForCausalLM

TOLERANCE = 1e-4  # max |moeq - transformers| / max |transformers|, fp32 on the CPU
SAMPLES, SEQ_LEN = 4, 16

# The published model (allenai/OLMoE-1B-7B-0924: no clip, no bias, top-k not renormalised) in
# miniature, and a variant that turns on what the published config leaves off.
CONFIGS = {
    "published": dict(vocab_size=128, hidden_size=64, intermediate_size=32, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, num_experts=8,
                      num_experts_per_tok=2, norm_topk_prob=False, clip_qkv=None,
                      max_position_embeddings=256, rms_norm_eps=1e-5, eos_token_id=2),
    "gqa_clip_bias_norm": dict(vocab_size=128, hidden_size=64, intermediate_size=48,
                               num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                               num_experts=6, num_experts_per_tok=3, norm_topk_prob=True,
                               clip_qkv=0.8, attention_bias=True, tie_word_embeddings=True,
                               max_position_embeddings=256, rms_norm_eps=1e-6, eos_token_id=2,
                               rope_parameters=dict(rope_type="default", rope_theta=500000.0)),
    # Made by the remote-code class from a config.json with an auto_map; clip_qkv set.
    "remote": dict(vocab_size=128, hidden_size=64, intermediate_size=40, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=1, num_experts=4,
                   num_experts_per_tok=2, norm_topk_prob=False, clip_qkv=2.0,
                   max_position_embeddings=256, rms_norm_eps=1e-5, eos_token_id=2,
                   rope_theta=10000.0),
}
REMOTE = {"remote"}  # made from the modeling file with trust_remote_code, not by transformers
# config.json as the published checkpoints spell RoPE (rope_theta, rope_scaling: null) rather than
# transformers 5's rope_parameters.
HUB_SPELLING = {"published", "remote"}


def fail(message):
    print(f"FAIL: {message}", file=sys.stderr)
    sys.exit(1)


def hub_names(config):
    """The tensor names of the published OLMoE checkpoints, from the config alone."""
    names = ["model.embed_tokens.weight", "model.norm.weight"]
    if not config.tie_word_embeddings:
        names.append("lm_head.weight")
    for i in range(config.num_hidden_layers):
        p = f"model.layers.{i}"
        names += [f"{p}.input_layernorm.weight", f"{p}.post_attention_layernorm.weight",
                  f"{p}.self_attn.q_norm.weight", f"{p}.self_attn.k_norm.weight",
                  f"{p}.mlp.gate.weight"]
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            names.append(f"{p}.self_attn.{proj}.weight")
            if config.attention_bias:
                names.append(f"{p}.self_attn.{proj}.bias")
        for e in range(config.num_experts):
            names += [f"{p}.mlp.experts.{e}.{proj}.weight"
                      for proj in ("gate_proj", "up_proj", "down_proj")]
    return sorted(names)


def make_model(name, spec, out_dir, seed):
    """A random OLMoE saved in bf16 by transformers' class, or for the REMOTE ones by the class in
    the modeling file next to config.json (trust_remote_code); returns its directory."""
    torch.manual_seed(seed)
    if name in REMOTE:
        code = remote_code_files(os.path.join(out_dir, "remote-code"))
        with open(os.path.join(code, "config.json"), "w") as f:
            json.dump(dict(spec, model_type="olmoe", architectures=["OlmoeForCausalLM"],
                           auto_map=AUTO_MAP), f, indent=2)
        config = transformers.AutoConfig.from_pretrained(code, trust_remote_code=True)
        model = transformers.AutoModelForCausalLM.from_config(config, trust_remote_code=True)
        if type(model).__module__.startswith("transformers."):
            fail(f"{name}: trust_remote_code gave transformers' own {type(model).__name__}")
    else:
        config = OlmoeConfig(**spec)
        model = OlmoeForCausalLM(config)
    model.eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if p.dim() == 1:  # norms around 1, biases around 0: visible, not the init values
                p.copy_((1.0 if "norm" in pname else 0.0) + 0.2 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.5 / p.shape[-1] ** 0.5 * torch.randn(p.shape, generator=g))
    path = os.path.join(out_dir, name)
    model.to(torch.bfloat16).save_pretrained(path)
    with safe_open(os.path.join(path, "model.safetensors"), "pt") as f:
        saved = sorted(f.keys())
        dtypes = {f.get_slice(k).get_dtype() for k in saved}
    expected = hub_names(config)
    if saved != expected:
        fail(f"{name}: save_pretrained did not write the hub layout:\n"
             f"  missing {sorted(set(expected) - set(saved))[:8]}\n"
             f"  extra {sorted(set(saved) - set(expected))[:8]}")
    if dtypes != {"BF16"}:
        fail(f"{name}: saved dtypes {dtypes}, expected BF16")
    if name in HUB_SPELLING:
        config_path = os.path.join(path, "config.json")
        cfg = json.load(open(config_path))
        cfg["rope_theta"] = cfg.pop("rope_parameters")["rope_theta"]
        cfg["rope_scaling"] = None
        with open(config_path, "w") as f:
            json.dump(cfg, f, indent=2)
    return path


@torch.no_grad()
def transformers_forward(model_dir, input_ids, **kwargs):
    """fp32 CPU logits and, per layer, the top-k expert ids of every token."""
    model, info = transformers.AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=torch.float32, attn_implementation="eager", output_loading_info=True,
        **kwargs)
    model.eval()
    bad = {k: v for k, v in info.items() if v}
    if bad:  # a tensor left at its random init would make the reference meaningless
        fail(f"{model_dir}: loading did not match the checkpoint: {bad}")
    routed = {}
    hooks = [layer.mlp.gate.register_forward_hook(
        lambda mod, args, out, i=i: routed.__setitem__(i, out[2]))
        for i, layer in enumerate(model.model.layers)]
    logits = model(input_ids).logits.float()
    for h in hooks:
        h.remove()
    return logits, routed, model.config.num_experts


def run_moeq(args, model_dir, tokens_file):
    out = os.path.join(os.path.dirname(model_dir), os.path.basename(model_dir) + "-fp8")
    recipe = os.path.join(os.path.dirname(model_dir), os.path.basename(model_dir) + ".yaml")
    # propagate: original, so each layer is calibrated (and its routing counted) on the
    # unquantized model's activations, the ones transformers computes.
    with open(recipe, "w") as f:
        f.write(f"""model: {{path: {model_dir}, dtype: float32, device: cpu}}
scheme: W8A8-FP8
calibration: {{dataset: {tokens_file}, samples: {SAMPLES}, seq_len: {SEQ_LEN}, batch_size: 2}}
evaluation: {{dataset: {tokens_file}, samples: {SAMPLES}, seq_len: {SEQ_LEN}, batch_size: 2}}
export: {{output: {out}, overwrite: true}}
quantize: {{propagate: original}}
""")
    routing_file = os.path.join(out + ".report", "routing.safetensors")
    cmd = [args.moeq, "quantize", "--config", recipe, "--plugin", args.plugin, "--save-eval-logits",
           "--save-routing", routing_file]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        fail(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    saved = load_file(os.path.join(out + ".report", "eval_logits.safetensors"))
    routing = load_file(routing_file)
    with open(os.path.join(out + ".report", "report.json")) as f:
        report = json.load(f)
    return saved, routing, report


def relative_error(got, ref):
    return ((got - ref).abs().max() / ref.abs().max()).item()


# The experts as a remote-code repository writes them: one MLP module per expert, so the hub
# names (mlp.experts.{e}.gate_proj.weight) load as they are. transformers 5's own OlmoeExperts keeps
# fused 3-D stacks and relies on a conversion table that remote code does not get.
PER_EXPERT_MODULES = """
class OlmoeHubExperts(nn.ModuleList):
    def __init__(self, config):
        super().__init__([OlmoeMLP(config) for _ in range(config.num_local_experts)])

    def forward(self, hidden_states, top_k_index, top_k_weights):
        final_hidden_states = torch.zeros_like(hidden_states)
        for expert_idx, expert in enumerate(self):
            token_idx, top_k_pos = torch.where(top_k_index == expert_idx)
            if token_idx.numel() == 0:
                continue
            out = expert(hidden_states[token_idx]) * top_k_weights[token_idx, top_k_pos, None]
            final_hidden_states.index_add_(0, token_idx, out.to(final_hidden_states.dtype))
        return final_hidden_states


class OlmoeTopKRouter(nn.Module):"""


AUTO_MAP = {"AutoConfig": "configuration_olmoe.OlmoeConfig",
            "AutoModelForCausalLM": "modeling_olmoe.OlmoeForCausalLM"}


def remote_code_files(out_dir):
    """A remote-code repository's Python files: transformers' modeling_olmoe.py and
    configuration_olmoe.py with their relative imports made absolute and per-expert modules
    (PER_EXPERT_MODULES)."""
    src = os.path.dirname(transformers.models.olmoe.modeling_olmoe.__file__)
    os.makedirs(out_dir, exist_ok=True)
    for fname in ("modeling_olmoe.py", "configuration_olmoe.py"):
        text = open(os.path.join(src, fname)).read()
        text = re.sub(r"^from \.\.\.(\S*) import", lambda m: "from transformers" +
                      ("." + m.group(1) if m.group(1) else "") + " import", text, flags=re.M)
        if fname.startswith("modeling"):
            edits = [("\nclass OlmoeTopKRouter(nn.Module):", PER_EXPERT_MODULES),
                     ("self.experts = OlmoeExperts(config)",
                      "self.experts = OlmoeHubExperts(config)")]
            for old, new in edits:
                if text.count(old) != 1:
                    fail(f"{fname}: expected '{old.strip()}' once; the modeling file changed")
                text = text.replace(old, new)
        with open(os.path.join(out_dir, fname), "w") as f:
            f.write(text)
    return out_dir


def remote_code_dir(model_dir, out_dir):
    """A checkpoint transformers saved, as a remote-code repository: the files above beside it and
    an auto_map in config.json."""
    remote_code_files(out_dir)
    config = json.load(open(os.path.join(model_dir, "config.json")))
    config["auto_map"] = AUTO_MAP
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    shutil.copy(os.path.join(model_dir, "model.safetensors"), out_dir)
    return out_dir


def check(name, spec, args, seed):
    model_dir = make_model(name, spec, args.work, seed)
    g = torch.Generator().manual_seed(seed + 100)
    ids = torch.randint(1, spec["vocab_size"], (SAMPLES * SEQ_LEN,), generator=g)
    tokens_file = os.path.join(args.work, name + ".jsonl")
    with open(tokens_file, "w") as f:
        f.write(json.dumps(ids.tolist()) + "\n")  # one document: SAMPLES windows of SEQ_LEN

    saved, routing, report = run_moeq(args, model_dir, tokens_file)
    input_ids = saved["input_ids"]
    if sorted(input_ids.reshape(-1).tolist()) != sorted(ids.tolist()):
        fail(f"{name}: moeq evaluated other tokens than the file's")
    if not torch.equal(routing["input_ids"], input_ids):
        fail(f"{name}: the routing file holds other tokens than the evaluation logits")
    ours = saved["logits_reference"]
    remote = name in REMOTE
    ref, routed, num_experts = transformers_forward(model_dir, input_ids, trust_remote_code=remote)
    reference = "remote code" if remote else "transformers"
    err = relative_error(ours, ref)
    print(f"{name}: moeq vs {reference}, fp32 CPU logits {tuple(ref.shape)}: "
          f"max relative error {err:.2e} (tolerance {TOLERANCE:g})")
    if not err < TOLERANCE:
        fail(f"{name}: logits differ: max relative error {err:.3e} >= {TOLERANCE:g}")

    # Expert choices, token by token: moeq's unquantized evaluation stream against the reference
    # router on the same tokens (row t is input_ids.reshape(-1)[t] on both sides).
    for i in range(len(report["layers"])):
        key = f"layers.{i}.reference.topk_ids"
        if key not in routing:
            fail(f"{name}: the routing file has no '{key}' (keys: {sorted(routing)[:6]} ...)")
        ours_ids = routing[key].long().sort(dim=1).values
        ref_ids = routed[i].long().sort(dim=1).values
        if ours_ids.shape != ref_ids.shape:
            fail(f"{name}: layer {i}: moeq routed {tuple(ours_ids.shape)} (tokens, k), "
                 f"{reference} {tuple(ref_ids.shape)}")
        differ = (ours_ids != ref_ids).any(dim=1).nonzero().flatten()
        if differ.numel() > 0:
            t = differ[0].item()
            fail(f"{name}: layer {i}: {differ.numel()} of {ours_ids.shape[0]} tokens picked other "
                 f"experts; token {t} (id {input_ids.reshape(-1)[t].item()}): moeq "
                 f"{ours_ids[t].tolist()}, {reference} {ref_ids[t].tolist()}")
    print(f"{name}: every token's top-k experts equal in all {len(report['layers'])} layers")
    # Tokens routed to each expert per layer during calibration (the same windows, in another
    # order: counts do not depend on it).
    for layer in report["layers"]:
        blocks = layer["blocks"]
        if len(blocks) != 1:
            fail(f"{name}: layer {layer.get('layer')}: expected one MoE block, got {len(blocks)}")
        i = int(re.search(r"layers\.(\d+)\.", blocks[0]["block"] + ".").group(1))
        expected = torch.bincount(routed[i].reshape(-1), minlength=num_experts).tolist()
        if blocks[0]["routed"] != expected:
            fail(f"{name}: layer {i}: tokens per expert differ: moeq {blocks[0]['routed']}, "
                 f"{reference} {expected}")
    print(f"{name}: tokens per expert equal in all {len(report['layers'])} layers")
    if remote:
        return

    # The remote-code reference: the modeling file next to the checkpoint, trust_remote_code.
    remote_dir = remote_code_dir(model_dir, os.path.join(args.work, name + "-remote"))
    remote_logits, _, _ = transformers_forward(remote_dir, input_ids, trust_remote_code=True)
    remote_err = relative_error(ours, remote_logits)
    print(f"{name}: moeq vs remote code: max relative error {remote_err:.2e}; remote vs "
          f"transformers: {relative_error(remote_logits, ref):.2e}")
    if not remote_err < TOLERANCE:
        fail(f"{name}: logits differ from the remote-code model: {remote_err:.3e}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--moeq", required=True, help="the installed moeq executable")
    parser.add_argument("--plugin", required=True, help="libmoeq_plugin_olmoe.so")
    parser.add_argument("--work", required=True, help="scratch directory")
    args = parser.parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    transformers.utils.logging.disable_progress_bar()
    os.makedirs(args.work, exist_ok=True)
    for seed, (name, spec) in enumerate(CONFIGS.items()):
        check(name, spec, args, seed)
    print("olmoe parity: OK")


if __name__ == "__main__":
    main()
