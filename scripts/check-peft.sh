#!/usr/bin/env bash
# Trains a LoRA adapter with `prefloop dpo --lora-rank` on the demo model and checks it in PEFT
# (scripts/check-peft.py): it loads with PeftModel.from_pretrained with no missing or unexpected keys and
# gives prefloop's outputs. The figures are recorded in docs/EXPERIMENTS.md.
#
#   scripts/check-peft.sh [PREFLOOP_BINARY]      (default target/release/prefloop)
#
# Needs the demo assets (scripts/fetch-demo-assets.sh) and a Python with torch, transformers, gguf and peft:
#   python3 -m venv ~/anchor-venv && ~/anchor-venv/bin/pip install torch transformers gguf peft
# PYTHON overrides the interpreter (default ~/anchor-venv/bin/python).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-target/release/prefloop}
PY=${PYTHON:-$HOME/anchor-venv/bin/python}
GGUF=${GGUF:-prefloop-data/models/SmolLM2-135M-Instruct.Q4_1.gguf}
for f in "$BIN" "$PY" "$GGUF"; do
    [ -e "$f" ] || { echo "missing $f (see the comment at the top of $0)" >&2; exit 2; }
done
WORK=$(mktemp -d)
[ -n "${KEEP:-}" ] && echo "work dir: $WORK" || trap 'rm -rf "$WORK"' EXIT

echo "1. the base model as a Hugging Face directory (transformers dequantizes the GGUF)"
"$PY" - "$GGUF" "$WORK/base" 2>/dev/null <<'PY'
import os, sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
gguf, out = sys.argv[1:3]
d, f = os.path.split(os.path.abspath(gguf))
AutoTokenizer.from_pretrained(d, gguf_file=f).save_pretrained(out)
# A model read from GGUF refuses save_pretrained: copy its dequantized weights into a plain one.
m = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32)
plain = AutoModelForCausalLM.from_config(m.config, dtype=torch.float32)
plain.load_state_dict(m.state_dict())
plain.save_pretrained(out)
PY

echo "2. toy preferences: the positive continuation over the negative one"
"$PY" - "$WORK/prefs.jsonl" <<'PY'
import itertools, json, sys
starts = ["The movie was", "I watched this film and", "Honestly, the acting", "The plot", "Its ending",
          "The soundtrack", "My friends said it", "The director"]
good = [" wonderful, warm and moving.", " a joy from start to finish.", " brilliant and beautifully made.",
        " the best thing I have seen this year."]
bad = [" dull, cold and far too long.", " a chore from start to finish.", " clumsy and badly made.",
       " the worst thing I have seen this year."]
with open(sys.argv[1], "w") as f:
    for (s, (g, b)) in itertools.product(starts, zip(good, bad)):
        f.write(json.dumps({"prompt": s, "chosen": g, "rejected": b}) + "\n")
PY

echo "3. prefloop dpo --lora-rank 8 on all seven linear layers"
"$BIN" dpo --model "$WORK/base" --data "$WORK/prefs.jsonl" --out "$WORK/adapter" \
    --lora-rank 8 --lr 1e-3 --epochs 2 --batch-size 8 --eval-fraction 0.25 --seed 1 | grep '"kind":"eval"'
ls -l "$WORK/adapter"

echo "4. PEFT loads it and computes what prefloop computes"
"$PY" scripts/check-peft.py "$WORK/base" "$WORK/adapter" "$BIN"
