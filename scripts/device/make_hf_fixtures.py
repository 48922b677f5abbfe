#!/usr/bin/env python3
"""Makes the HF-parity fixtures under tests/data/ (run on the GPU machine, which has
transformers; CPU is enough). Tiny random LlamaForCausalLM models saved as safetensors (and
one as a torch.save pickle), with their fp32 eager-attention logits for fixed token
sequences, plus logits under an AnSAN 4-D mask built by an independent Python rendering of
the authors' mask code (anllm-reference.md §2.2).

usage: python3 scripts/device/make_hf_fixtures.py OUT_DIR
"""
import json
import os
import sys

import torch
import transformers
from transformers import LlamaConfig, LlamaForCausalLM

ANCHOR = 5
PAD = 1
IDS = [3, 17, 42, 99, ANCHOR, 8, 64, 120, 33, ANCHOR, 7, 7, 91, 15, 2, 77, ANCHOR, 60, 11, 4,
       PAD, PAD]


def ansan_mask(ids, anchors, pad, dtype):
    n = len(ids)
    neg = torch.finfo(dtype).min
    m = torch.full((n, n), neg, dtype=dtype).triu(1)
    a_pos = [i for i, t in enumerate(ids) if t in anchors]
    start = 0
    for k, a in enumerate(a_pos):
        m[a + 1:, start:a] = neg
        start = a + 1
        m[a, a_pos[:k]] = neg
    for p, t in enumerate(ids):
        if t == pad:
            m[p, :] = neg
            m[:, p] = neg
    return m


def make_config(**kw):
    base = dict(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256,
                rms_norm_eps=1e-5, initializer_range=0.2, bos_token_id=1, eos_token_id=2,
                pad_token_id=None, tie_word_embeddings=False, attn_implementation="eager")
    theta = kw.pop("rope_theta", 10000.0)
    base.update(kw)
    try:
        cfg = LlamaConfig(rope_parameters={"rope_type": "default", "rope_theta": theta}, **base)
    except TypeError:
        cfg = LlamaConfig(rope_theta=theta, **base)
    if getattr(cfg, "rope_theta", theta) != theta and \
            (getattr(cfg, "rope_parameters", None) or {}).get("rope_theta") != theta:
        cfg = LlamaConfig(rope_theta=theta, **base)
    return cfg


def logits_of(model, ids, mask4d=None):
    x = torch.tensor([ids])
    pos = torch.arange(len(ids))[None]
    with torch.no_grad():
        out = model(input_ids=x, position_ids=pos, attention_mask=mask4d, use_cache=False)
    return out.logits[0].float()


def build(out, name, seed, bin_copy=False, **kw):
    torch.manual_seed(seed)
    cfg = make_config(**kw)
    model = LlamaForCausalLM(cfg).float().eval()
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if "norm" in pname:
                p.uniform_(0.5, 1.5)
    d = os.path.join(out, name)
    os.makedirs(d, exist_ok=True)
    fixture = {"token_ids": IDS, "anchor_ids": [ANCHOR], "pad_id": PAD,
               "transformers": transformers.__version__, "torch": torch.__version__}
    if bin_copy:
        # The released AnLLM layout: a bf16 torch.save state dict + config.json.
        sd = {k: v.to(torch.bfloat16).contiguous() for k, v in model.state_dict().items()}
        torch.save(sd, os.path.join(d, "pytorch_model.bin"))
        cfg.save_pretrained(d)
        model.load_state_dict({k: v.float() for k, v in sd.items()})
    else:
        model.save_pretrained(d, safe_serialization=True)
    causal = logits_of(model, IDS[:-2])  # no pads for the causal case
    fixture["causal_token_ids"] = IDS[:-2]
    fixture["causal_logits"] = causal.tolist()
    # The same path with an explicit 4-D causal mask must agree, or HF ignored our mask.
    n = len(IDS) - 2
    causal4d = torch.full((n, n), torch.finfo(torch.float32).min).triu(1)[None, None]
    check = logits_of(model, IDS[:-2], causal4d)
    if (check - causal).abs().max().item() < 1e-5:
        m = ansan_mask(IDS, {ANCHOR}, PAD, torch.float32)[None, None]
        fixture["ansan_logits"] = logits_of(model, IDS, m).tolist()
    else:
        print(f"{name}: HF did not take the 4-D mask as given; no AnSAN fixture", file=sys.stderr)
    with open(os.path.join(d, "logits.json"), "w") as f:
        json.dump(fixture, f)
    for fn in sorted(os.listdir(d)):
        print(f"{name}/{fn}: {os.path.getsize(os.path.join(d, fn))} bytes")


def main():
    out = sys.argv[1]
    build(out, "hf_tiny_mha", 1)
    build(out, "hf_tiny_gqa", 2, num_key_value_heads=2, tie_word_embeddings=True,
          rope_theta=500000.0)
    build(out, "hf_tiny_bin", 3, bin_copy=True)


if __name__ == "__main__":
    main()
