#!/usr/bin/env bash
# The GPU check: one script for the lent GPU machine (PyTorch and nvcc there, no Rust, no network), at most
# 8 minutes, that prints one table:
#   1. parity: a tiny random model on the GPU against the CPU, f32 and bf16 (`prefloop check-device`):
#      per-token log-probabilities (f32 within 1e-3, bf16 within 1e-2), one DPO step's loss and gradient
#      norm, and the log-probabilities after its AdamW update;
#   2. `prefloop bench-model --device cuda` in f32 and bf16 on a random 1B-class model (TinyLlama's shape):
#      scoring 8x64, the full DPO step and the LoRA step (8x64), sampling 64x128;
#   3. the same DPO step through PyTorch bf16 (autocast, TRL's bf16=True) on the same GPU and shape
#      (scripts/gpu_anchor.py), and prefloop's ratio to it (goal: >= 1.0).
#
# Build the binary here first and carry it:  scripts/build-cuda.sh build  ->  target/cuda/prefloop-cuda.gz
# (unpacked here to target/cuda/prefloop-cuda); the libraries it needs come from PyTorch's nvidia wheels.
#
#   scripts/gpu-check.sh
#
# Environment: PREFLOOP_BIN (default target/cuda/prefloop-cuda), PYTHON (default python3, with torch and
# transformers), GPU_CHECK_DEVICE (default cuda), GPU_CHECK_SHAPE (default 1b), OUT (where the JSON and
# table.md go; default a new temporary directory). A dry run on a CPU machine, to check the script itself:
#   PREFLOOP_BIN=target/release/prefloop GPU_CHECK_DEVICE=cpu GPU_CHECK_SHAPE=small scripts/gpu-check.sh
set -uo pipefail
cd "$(dirname "$0")/.."

BIN="${PREFLOOP_BIN:-target/cuda/prefloop-cuda}"
PY="${PYTHON:-python3}"
DEVICE="${GPU_CHECK_DEVICE:-cuda}"
SHAPE="${GPU_CHECK_SHAPE:-1b}"
OUT="${OUT:-$(mktemp -d)}"
mkdir -p "$OUT"
if [[ ! -x "$BIN" && -f "$BIN.gz" ]]; then
    gunzip -c "$BIN.gz" >"$BIN" && chmod +x "$BIN"
fi
if [[ ! -x "$BIN" ]]; then
    echo "no prefloop binary at $BIN: build it with scripts/build-cuda.sh build (or set PREFLOOP_BIN)" >&2
    exit 2
fi
if ! "$PY" -c 'import torch, transformers' 2>/dev/null; then
    echo "$PY cannot import torch and transformers: set PYTHON to one that can" >&2
    exit 2
fi
# The CUDA build needs CUDA 13's libcudart, libcublas and libcurand: PyTorch's nvidia wheels have them.
NVIDIA_LIBS="$("$PY" - <<'EOF'
import glob, os
try:
    import nvidia
    roots = list(nvidia.__path__)
except ImportError:
    roots = []
dirs = {os.path.dirname(p) for r in roots for p in glob.glob(os.path.join(r, "**", "lib*.so*"), recursive=True)}
print(":".join(sorted(dirs)))
EOF
)"
export LD_LIBRARY_PATH="${NVIDIA_LIBS}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
if ldd "$BIN" | grep "not found" >&2; then
    echo "$BIN cannot find the libraries above (LD_LIBRARY_PATH=$LD_LIBRARY_PATH)" >&2
    exit 2
fi
if [[ "$DEVICE" == cuda* ]] && command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader >"$OUT/gpu.txt"
fi

# Each step has a time limit of its own, so that the whole stays under 8 minutes (about 6.5 at most); a step
# that fails or runs out of time leaves its row marked in the table and the rest still runs.
step() {
    local limit="$1" name="$2"
    shift 2
    local t0=$SECONDS
    timeout "$limit" "$@" >"$OUT/$name.json" 2>"$OUT/$name.log"
    local rc=$?
    echo "$name: exit $rc in $((SECONDS - t0)) s" >&2
    echo "$rc" >"$OUT/$name.rc"
}

for dt in f32 bf16; do
    step 45 "parity-$dt" "$BIN" check-device --device "$DEVICE" --dtype "$dt" --json
done
for dt in f32 bf16; do
    step 120 "bench-$dt" "$BIN" bench-model --random "$SHAPE" --device "$DEVICE" --dtype "$dt" \
        --sampling-weights f32 --only score,dpo_lora,dpo,sample64 --repeats 3 --json
done
step 75 torch-bf16 "$PY" scripts/gpu_anchor.py --shape "$SHAPE" --device "$DEVICE" --dtype bf16

"$PY" - "$OUT" "$DEVICE" "$SHAPE" <<'EOF' | tee "$OUT/table.md"
import json, os, sys

out, device, shape = sys.argv[1:4]

def load(name):
    """A step's JSON, or why there is none."""
    try:
        rc = open(os.path.join(out, name + ".rc")).read().strip()
    except OSError:
        return None, "not run"
    try:
        return json.loads(open(os.path.join(out, name + ".json")).read().strip().splitlines()[-1]), None
    except (OSError, ValueError, IndexError):
        return None, "timed out" if rc in ("124", "137") else f"failed (exit {rc}, see {name}.log)"

gpu = ""
if os.path.exists(os.path.join(out, "gpu.txt")):
    gpu = open(os.path.join(out, "gpu.txt")).read().strip()
print(f"### GPU check: {device}{' (' + gpu + ')' if gpu else ''}, random model '{shape}'\n")

print("| parity against the CPU (f32) | f32 | bf16 |")
print("|---|---|---|")
parity = {dt: load(f"parity-{dt}") for dt in ("f32", "bf16")}
def cell(dt, get, tol_key):
    p, why = parity[dt]
    if p is None:
        return why
    v, tol = get(p), p[tol_key]
    ok = "ok" if v <= tol else "OUTSIDE"
    return f"{v:.1e} ({ok}, tolerance {tol:g})"
for label, get, tol_key in [
    ("per-token log-probability, max abs diff", lambda p: p["logprob_max_abs_diff"], "tolerance"),
    ("DPO loss, abs diff", lambda p: p["loss"]["abs_diff"], "tolerance"),
    ("DPO gradient norm, relative diff", lambda p: p["grad_norm"]["rel_diff"], "tolerance"),
    ("log-probability after the AdamW step", lambda p: p["logprob_after_step_max_abs_diff"],
     "after_step_tolerance"),
]:
    print(f"| {label} | {cell('f32', get, tol_key)} | {cell('bf16', get, tol_key)} |")

bench = {dt: load(f"bench-{dt}") for dt in ("f32", "bf16")}
torch_bf16, torch_why = load("torch-bf16")
print(f"\n| bench-model on {device}, {shape} | f32 | bf16 |")
print("|---|---|---|")
def rate(dt, key, unit="tokens/s"):
    b, why = bench[dt]
    if b is None:
        return why
    w = b.get(key)
    if w is None:
        return "not run"
    return f"{w['tokens_per_s']:.0f} {unit} ({w['seconds'] * 1000:.1f} ms)"
for label, key, unit in [
    ("scoring 8x64", "score", "tokens/s"),
    ("DPO step 8x64, full (fwd+bwd+AdamW)", "dpo", "tokens/s"),
    ("DPO step 8x64, LoRA rank 8", "dpo_lora", "tokens/s"),
    ("sampling 64x128", "sample64", "new tokens/s"),
]:
    print(f"| {label} | {rate('f32', key, unit)} | {rate('bf16', key, unit)} |")

print("\n| DPO step 8x64, bf16 | tokens/s | ratio |")
print("|---|---|---|")
b, _ = bench["bf16"]
ours = b["dpo"]["median_tokens_per_s"] if b and b.get("dpo") else None
theirs = torch_bf16["dpo"]["median_tokens_per_s"] if torch_bf16 else None
print(f"| prefloop (median of 3) | {f'{ours:.0f}' if ours else 'no figure'} | |")
if torch_bf16:
    peak = torch_bf16["dpo"]["peak_bytes"]
    peak = f", peak {peak / 2**30:.1f} GiB" if peak else ""
    label = f"PyTorch {torch_bf16['torch']} autocast (median of 5{peak})"
    ratio = f"{ours / theirs:.2f}x (goal >= 1.0)" if ours and theirs else ""
    print(f"| {label} | {theirs:.0f} | {ratio} |")
else:
    print(f"| PyTorch bf16 | {torch_why} | |")
EOF
echo "(JSON, logs and table.md in $OUT)" >&2
