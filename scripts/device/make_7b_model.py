#!/usr/bin/env python3
"""Writes a Llama-2-7B-shaped model directory with random bf16 weights and the default model's
tokenizer and anchor config (so the vocabulary is the default model's 8192 tokens), for
engine benchmarks that need a model on disk (serving_bench on the 7B shape).

usage: make_7b_model.py SRC_MODEL_DIR OUT_DIR
"""
import json
import shutil
import sys
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

src, out = sys.argv[1], sys.argv[2]
base = json.load(open(f"{src}/config.json"))
config = LlamaConfig(vocab_size=base["vocab_size"], hidden_size=4096, intermediate_size=11008,
                     num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
                     max_position_embeddings=4096, rms_norm_eps=1e-5, rope_theta=10000.0,
                     bos_token_id=base["bos_token_id"], eos_token_id=base["eos_token_id"],
                     pad_token_id=base.get("pad_token_id"), tie_word_embeddings=False)
t = time.time()
torch.manual_seed(0)
with torch.device("cuda"):
    model = LlamaForCausalLM._from_config(config, dtype=torch.bfloat16)
model.save_pretrained(out, max_shard_size="4GB")
for name in ("tokenizer.model", "anchor_config.json"):
    shutil.copy(f"{src}/{name}", out)
print(f"make_7b_model: wrote {out} in {time.time() - t:.0f} s", file=sys.stderr)
