#!/usr/bin/env python3
"""HF transformers training the same shape as bench/train_bench, on the same GPU: forward +
backward + fused AdamW steps of LlamaForCausalLM (fp32 weights, bf16 autocast), with the
authors' 4-D additive AnSAN mask (an anchor closing every `--sentence` tokens) and without
a mask (causal). Prints rows in train_bench's table format.

usage: hf_train_bench.py [--batch 32] [--seq 512] [--sentence 25] [--steps 10]
"""
import argparse
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

p = argparse.ArgumentParser()
p.add_argument("--batch", type=int, default=32)
p.add_argument("--seq", type=int, default=512)
p.add_argument("--sentence", type=int, default=25)
p.add_argument("--steps", type=int, default=10)
p.add_argument("--peak-tflops", type=float, default=989.0)
a = p.parse_args()

config = LlamaConfig(vocab_size=8192, hidden_size=384, intermediate_size=960,
                     num_hidden_layers=8, num_attention_heads=6, num_key_value_heads=6,
                     max_position_embeddings=4096, rms_norm_eps=1e-5)
dev = torch.device("cuda")
g = torch.Generator().manual_seed(7)
ids = torch.randint(10, config.vocab_size, (a.batch, a.seq), generator=g)
anchor = torch.zeros(a.seq, dtype=torch.bool)
anchor[a.sentence - 1::a.sentence] = True
ids[:, anchor] = 4
ids = ids.to(dev)


def ansan_additive_mask(ids, dtype):
    """The authors' mask (anllm-reference.md 2.2), vectorised: [B, 1, L, L] additive."""
    is_a = ids == 4
    s = is_a.long().cumsum(1) - is_a.long()
    allowed = (s[:, :, None] == s[:, None, :]) | (is_a[:, None, :] & ~is_a[:, :, None])
    L = ids.shape[1]
    allowed &= torch.ones(L, L, dtype=torch.bool, device=ids.device).tril()
    m = torch.zeros(allowed.shape, dtype=dtype, device=ids.device)
    m.masked_fill_(~allowed, torch.finfo(dtype).min)
    return m[:, None]


def flops_per_token():
    h, i, L, v = 384, 960, 8, 8192
    per_layer = h * 3 * h + h * h + 3 * h * i
    return 6 * (L * per_layer + v * h) + 12 * L * h * a.seq


for mask_name in ("AnSAN (AC)", "causal"):
    for impl in ("eager", "sdpa"):
        torch.manual_seed(1)
        model = LlamaForCausalLM(config).to(dev)
        model.config._attn_implementation = impl
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
        mask = ansan_additive_mask(ids, torch.bfloat16) if mask_name.startswith("AnSAN") else None

        def step():
            with torch.autocast("cuda", dtype=torch.bfloat16):
                out = model(input_ids=ids, attention_mask=mask, labels=ids)
            out.loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            return out.loss

        try:
            for _ in range(2):
                step()
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            for _ in range(a.steps):
                loss = step()
            loss.item()
            dt = (time.perf_counter() - t0) / a.steps
        except Exception as e:  # noqa: BLE001 - report and go on with the other rows
            print(f"| {mask_name} | HF {impl} | failed: {type(e).__name__}: {str(e)[:120]} |")
            continue
        tps = a.batch * a.seq / dt
        mfu = tps * flops_per_token() / (a.peak_tflops * 1e12)
        peak = torch.cuda.max_memory_allocated() / 1e6
        print(f"| {mask_name} | HF {impl} | {a.batch} x {a.seq} | {dt * 1e3:.1f} | {tps:.0f} | "
              f"{100 * mfu:.1f}% | {peak:.0f} |")
        del model, opt
        torch.cuda.empty_cache()
