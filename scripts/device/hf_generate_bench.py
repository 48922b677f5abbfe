#!/usr/bin/env python3
"""HF transformers generate() on the Llama-2-7B shape (random weights, bf16, its own KV cache),
the baseline of the engine's benchmark 2: decode tokens/s at batch 1 and 64 after a prompt of
`--prompt` tokens. Decode time = generate(prompt, N new) - generate(prompt, 1 new), so prefill
is not counted. Prints Markdown rows.

usage: hf_generate_bench.py [--prompt 512] [--new 32] [--batches 1,64]
"""
import argparse
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

p = argparse.ArgumentParser()
p.add_argument("--prompt", type=int, default=512)
p.add_argument("--new", type=int, default=32)
p.add_argument("--batches", default="1,64")
a = p.parse_args()

config = LlamaConfig(vocab_size=32002, hidden_size=4096, intermediate_size=11008,
                     num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
                     max_position_embeddings=4096, rms_norm_eps=1e-5)
torch.manual_seed(0)
with torch.device("cuda"):
    model = LlamaForCausalLM._from_config(config, torch_dtype=torch.bfloat16).eval()


def timed(ids, new):
    torch.cuda.synchronize()
    t = time.perf_counter()
    with torch.no_grad():
        model.generate(ids, max_new_tokens=new, min_new_tokens=new, do_sample=False,
                       pad_token_id=0)
    torch.cuda.synchronize()
    return time.perf_counter() - t


print("| engine | batch | prompt | decode tok/s | step ms |")
print("|---|---:|---:|---:|---:|")
for b in [int(x) for x in a.batches.split(",")]:
    ids = torch.randint(10, config.vocab_size, (b, a.prompt), device="cuda")
    timed(ids, 2)  # warm-up
    one = min(timed(ids, 1) for _ in range(2))
    full = min(timed(ids, a.new) for _ in range(2))
    step = (full - one) / (a.new - 1)
    print(f"| HF generate (eager KV cache) | {b} | {a.prompt} | {b / step:.1f} | {step * 1e3:.2f} |")
