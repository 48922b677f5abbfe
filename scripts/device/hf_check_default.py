#!/usr/bin/env python3
"""Checks that HF transformers loads a model directory we wrote and computes the same
full-attention logits as our engine (anchor-eval logits --mode full).

usage: hf_check_default.py MODEL_DIR ANCHOR_EVAL_BIN
"""
import json
import subprocess
import sys

import torch
from transformers import LlamaForCausalLM

model_dir, anchor_eval = sys.argv[1], sys.argv[2]
ids = [1, 40, 300, 7, 4, 90, 91, 4, 500, 12]
ours = json.loads(subprocess.check_output(
    [anchor_eval, "logits", "--model", model_dir, "--mode", "full", "--json",
     "--token-ids", ",".join(map(str, ids))]))
model = LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float32,
                                         attn_implementation="eager").eval()
with torch.no_grad():
    hf = model(torch.tensor([ids])).logits[0]
diff = (hf - torch.tensor(ours["logits"])).abs().max().item()
print(f"HF transformers vs anchor-eval (full mode, fp32): max |diff| = {diff:.3g}")
sys.exit(0 if diff < 1e-4 else 1)
