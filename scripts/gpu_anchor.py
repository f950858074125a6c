#!/usr/bin/env python3
"""PyTorch's side of scripts/gpu-check.sh: `bench-model`'s DPO step on the same random model shape.

One DPO step as prefloop's `bench-model` takes it: 8 sequences of 32 prompt + 32 completion tokens (4 chosen,
4 rejected), the sequence log-probabilities of the completions, the sigmoid DPO loss (beta 0.1) against cached
reference log-probabilities, backward, AdamW (lr 1e-6). A random LlamaForCausalLM of the shape given, built
from a config (no download). One warm-up step, then --repeats timed ones; prints one JSON line with the median
and the best.

bf16 runs the way TRL's `bf16=True` does: f32 weights and optimizer state, the forward and backward under
torch.autocast(bfloat16) (--mode autocast, the default). --mode pure keeps the weights themselves in bf16 (and
AdamW's state with them), for comparison. f32 is plain f32.
"""

import argparse
import json
import statistics
import sys
import time

import torch
import torch.nn.functional as F

SHAPES = {
    # prefloop bench-model --random small / 1b (TinyLlama's shape).
    "small": dict(vocab_size=8192, hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                  num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=512),
    "1b": dict(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
               num_attention_heads=32, num_key_value_heads=4, max_position_embeddings=2048),
}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=sorted(SHAPES), default="1b")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", choices=["f32", "bf16"], default="bf16")
    ap.add_argument("--mode", choices=["autocast", "pure"], default="autocast")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()

    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    device = torch.device(args.device)
    config = LlamaConfig(rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False, **SHAPES[args.shape])
    model = LlamaForCausalLM(config)
    pure = args.dtype == "bf16" and args.mode == "pure"
    model = model.to(device=device, dtype=torch.bfloat16 if pure else torch.float32)
    model.train()
    model.config.use_cache = False
    autocast = args.dtype == "bf16" and not pure

    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 256, (8, 64), generator=gen).to(device)
    prompt = 32

    def logprob_sums():
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=autocast):
            logits = model(input_ids=ids).logits
        # Only the positions that predict completion tokens, in f32 as prefloop does.
        logits = logits[:, prompt - 1:-1, :].float()
        targets = ids[:, prompt:]
        lp = torch.gather(F.log_softmax(logits, dim=-1), 2, targets.unsqueeze(-1)).squeeze(-1)
        return lp.sum(-1)

    with torch.no_grad():
        reference = logprob_sums().detach()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6, weight_decay=0.0,
                            fused=device.type == "cuda")

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def step():
        sums = logprob_sums()
        margin = (sums[:4] - reference[:4]) - (sums[4:] - reference[4:])
        loss = -F.logsigmoid(0.1 * margin).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    step()
    sync()
    runs = []
    for _ in range(max(1, args.repeats)):
        t = time.perf_counter()
        step()
        sync()
        runs.append(time.perf_counter() - t)
    tokens = 8 * 64
    out = {
        "torch": torch.__version__,
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "shape": args.shape,
        "parameters": sum(p.numel() for p in model.parameters()),
        "dtype": args.dtype,
        "mode": args.mode if args.dtype == "bf16" else "f32",
        "dpo": {
            "seconds": min(runs),
            "median_seconds": statistics.median(runs),
            "runs_seconds": runs,
            "tokens": tokens,
            "tokens_per_s": tokens / min(runs),
            "median_tokens_per_s": tokens / statistics.median(runs),
            "peak_bytes": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None,
        },
    }
    print(json.dumps(out))


if __name__ == "__main__":
    sys.exit(main())
