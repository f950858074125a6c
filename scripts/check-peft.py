#!/usr/bin/env python3
"""Checks that a LoRA adapter written by `prefloop dpo --lora-rank` is a PEFT adapter: it loads with
`PeftModel.from_pretrained(base, dir)` with no missing or unexpected adapter keys, and the model it gives
computes what prefloop computes (the same greedy completion with the same log-probability, as
`prefloop generate` prints it), which differs from the base's.

Run by scripts/check-peft.sh, which builds the base directory, trains the adapter and passes the paths:

    check-peft.py BASE_DIR ADAPTER_DIR PREFLOOP_BIN
"""

import re
import subprocess
import sys

import torch
from peft import PeftModel, set_peft_model_state_dict
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

PROMPTS = [
    "The movie was",
    "I watched this film last night and",
    "Honestly, the acting",
    "My friends told me the ending",
]
NEW_TOKENS = 16


def greedy(model, tok, prompt):
    """Greedy continuation of `prompt` and the summed log-probability of its tokens."""
    ids = tok(prompt, add_special_tokens=False, return_tensors="pt").input_ids
    total = 0.0
    out = []
    with torch.no_grad():
        for _ in range(NEW_TOKENS):
            logits = model(ids).logits[0, -1].double()
            logp = torch.log_softmax(logits, dim=-1)
            nxt = int(torch.argmax(logp))
            total += float(logp[nxt])
            out.append(nxt)
            if nxt == tok.eos_token_id:
                break
            ids = torch.cat([ids, torch.tensor([[nxt]])], dim=1)
    return tok.decode(out), total


def prefloop_greedy(bin_path, model_dir, prompt):
    res = subprocess.run(
        [bin_path, "generate", "--model", model_dir, "--prompt", prompt, "--temperature", "0",
         "--max-new-tokens", str(NEW_TOKENS)],
        capture_output=True, text=True, check=True,
    )
    m = re.search(r"log p = (-?[0-9.]+)[^\n]*\n(.*)\Z", res.stdout, re.S)
    if not m:
        sys.exit(f"no log p in prefloop's output:\n{res.stdout}\n{res.stderr}")
    return m.group(2).rstrip("\n"), float(m.group(1))


def main():
    base_dir, adapter_dir, bin_path = sys.argv[1:4]
    tok = AutoTokenizer.from_pretrained(base_dir)
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    base.eval()
    base_out = {p: greedy(base, tok, p) for p in PROMPTS}

    peft = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32), adapter_dir
    )
    peft.eval()
    # Load the file once more by hand to see exactly which adapter keys matched.
    state = load_file(f"{adapter_dir}/adapter_model.safetensors")
    result = set_peft_model_state_dict(peft, state)
    missing = [k for k in result.missing_keys if "lora_" in k]
    unexpected = list(result.unexpected_keys)
    print(f"adapter tensors: {len(state)}; missing adapter keys: {len(missing)}; unexpected: {len(unexpected)}")
    ok = not missing and not unexpected
    for k in (missing + unexpected)[:5]:
        print(f"  {k}")

    moved = 0
    print(f"{'prompt':38} {'PEFT log p':>11} {'prefloop':>10} {'base':>9}  same text")
    for p in PROMPTS:
        text, lp = greedy(peft, tok, p)
        their_text, theirs = prefloop_greedy(bin_path, adapter_dir, p)
        _, base_lp_of_base_text = base_out[p]
        same = their_text == text and abs(lp - theirs) < 0.02
        ok &= same
        moved += base_out[p][0] != text or abs(base_lp_of_base_text - lp) > 0.05
        print(f"{p!r:38} {lp:11.3f} {theirs:10.2f} {base_lp_of_base_text:9.3f}  {'yes' if same else 'NO'}  {text!r}")
    print(f"the adapter changed {moved} of {len(PROMPTS)} greedy completions or their log p")
    ok &= moved > 0
    print("PEFT check: " + ("passed" if ok else "FAILED"))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
