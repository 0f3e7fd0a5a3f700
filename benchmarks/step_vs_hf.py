"""One REDI step of the package against Hugging Face transformers + a TRL-style loss, same weights.

    python benchmarks/step_vs_hf.py [--seq-lengths 1024 2048 8192] [--steps 2] [--warmup 1]
                                    [--local-up-to 2048] [--hf-up-to N] [--pairs 2]

Shape (issue 10): a Qwen2 of hidden 512, 6 layers, 8 query / 2 key-value heads, intermediate 1408,
vocab 32,000 (tied embeddings), --pairs 2 pairs = 4 rows of --seq-length tokens, each a 32-token prompt
and a completion to the end of the row (no padding). One step is forward, backward and AdamW
(lr 5e-5, weight decay 1e-4 on matrices, gradient clipping at 1.0) in fp32 on CPU (bf16 on CUDA).

- package: redi_megatron.training_step.train_step on an engine from redi_megatron.engine (loss
  objective redi, alpha 0.8; model.attention sdpa, and Megatron's local attention up to
  --local-up-to tokens), loaded from the converted HF weights: whatever the training loop runs.
- hf: transformers' Qwen2ForCausalLM (attn_implementation="sdpa") and the loss the REDI authors'
  TRL-based code computes over full logits: log_softmax, gather of the labels, per-sequence mean
  over the completion, -chosen + 0.8 * rejected averaged over pairs; torch.optim.AdamW.

Every (implementation, length) runs in its own subprocess, so its peak memory is that process's
peak resident set size (getrusage ru_maxrss); "step memory" is that peak minus the resident size
just before the first step (activations, gradients, optimizer state). Step time is the best of
--steps steps after --warmup warm-up steps. Both first-step losses are printed: equal losses show both
sides computed the same thing. A subprocess caps its address space at what the machine has free,
so an oversized configuration fails with "out of memory" instead of invoking the OOM killer.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

SHAPE = dict(hidden_size=512, num_hidden_layers=6, num_attention_heads=8, num_key_value_heads=2,
             intermediate_size=1408, vocab_size=32000, tie_word_embeddings=True)
PROMPT, ALPHA = 32, 0.8
LR, WEIGHT_DECAY, CLIP = 5e-5, 1e-4, 1.0


def _batch(pairs: int, seq_length: int, vocab: int, seed: int = 0):
    """Returns pairs of rows (chosen, rejected interleaved): tokens, labels, loss mask, positions."""
    generator = torch.Generator().manual_seed(seed)
    rows = 2 * pairs
    tokens = torch.randint(0, vocab, (rows, seq_length), generator=generator)
    loss_mask = torch.zeros(rows, seq_length)
    loss_mask[:, PROMPT - 1:seq_length - 1] = 1.0  # label t+1 of position t; the last has none
    return {"tokens": tokens, "labels": torch.roll(tokens, -1, dims=1), "loss_mask": loss_mask,
            "position_ids": torch.arange(seq_length).expand(rows, seq_length).clone()}


def _cap_address_space() -> None:
    """Caps this process's address space at its current size plus 90% of the free memory."""
    with open("/proc/self/status") as status:
        size_kb = next(int(line.split()[1]) for line in status if line.startswith("VmSize"))
    with open("/proc/meminfo") as meminfo:
        free_kb = next(int(line.split()[1]) for line in meminfo if line.startswith("MemAvailable"))
    limit = (size_kb + int(0.9 * free_kb)) * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _resident_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _timed_steps(step, steps: int, warmup: int):
    """Returns (first step's loss, best time of ``steps`` steps after ``warmup``, resident MB before)."""
    before = _resident_mb()
    losses, times = [], []
    for index in range(warmup + steps):
        started = time.perf_counter()
        losses.append(step())
        if index >= warmup:
            times.append(time.perf_counter() - started)
    return losses[0], min(times), before


def _package_worker(work: str, pairs: int, seq_length: int, steps: int, warmup: int,
                    attention: str):
    from redi_megatron.checkpointing import load_checkpoint
    from redi_megatron.config import load_config
    from redi_megatron.engine import build_engine
    from redi_megatron.training_step import train_step

    config = load_config(None, [
        f"model.hf_config={work}/hf", f"model.attention={attention}",
        f"data.seq_length={seq_length}", f"data.micro_batch_size={2 * pairs}",
        f"data.global_batch_size={pairs}", "loss.objective=redi", f"loss.alpha={ALPHA}",
        f"optim.lr={LR}", f"optim.weight_decay={WEIGHT_DECAY}", f"optim.clip_grad={CLIP}",
        "optim.warmup_fraction=0.0",
    ])
    engine = build_engine(config, total_steps=100)
    load_checkpoint(f"{work}/ckpt", engine.chunks, engine.optimizer, weights_only=True)
    batch = _batch(pairs, seq_length, SHAPE["vocab_size"])
    return _timed_steps(lambda: train_step(engine, [batch])["loss"], steps, warmup)


def _hf_worker(work: str, pairs: int, seq_length: int, steps: int, warmup: int):
    from transformers import Qwen2ForCausalLM

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model = Qwen2ForCausalLM.from_pretrained(f"{work}/hf", attn_implementation="sdpa",
                                             dtype=dtype).to(device).train()
    # As HF's Trainer groups them: no weight decay on biases and norm weights.
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": WEIGHT_DECAY},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=LR, eps=1e-8)
    batch = {k: v.to(device) for k, v in _batch(pairs, seq_length, SHAPE["vocab_size"]).items()}

    def step():
        logits = model(input_ids=batch["tokens"], position_ids=batch["position_ids"]).logits
        logps = logits[:, :-1].float().log_softmax(-1)
        token_logps = logps.gather(-1, batch["tokens"][:, 1:, None]).squeeze(-1)
        mask = batch["loss_mask"][:, :-1]
        mean_logps = (token_logps * mask).sum(-1) / mask.sum(-1)
        loss = (-mean_logps[0::2] + ALPHA * mean_logps[1::2]).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    return _timed_steps(step, steps, warmup)


def _prepare(work: str) -> None:
    """Saves a random tied Qwen2 (HF) and its Megatron conversion under ``work``."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from redi_megatron.config import ParallelConfig
    from redi_megatron.qwen.conversion import convert_hf_to_megatron

    torch.manual_seed(0)
    config = Qwen2Config(**SHAPE, max_position_embeddings=32768)
    Qwen2ForCausalLM(config).save_pretrained(f"{work}/hf")
    convert_hf_to_megatron(f"{work}/hf", f"{work}/ckpt", ParallelConfig(), torch.float32,
                           progress=lambda _: None)


def _worker(args) -> None:
    if args.worker == "prepare":
        _prepare(args.work)
        return
    _cap_address_space()
    try:
        if args.worker == "hf":
            loss, seconds, before = _hf_worker(args.work, args.pairs, args.seq_length,
                                               args.steps, args.warmup)
        else:
            loss, seconds, before = _package_worker(args.work, args.pairs, args.seq_length,
                                                    args.steps, args.warmup, args.worker)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        result = dict(loss=loss, seconds=seconds, peak_mb=peak, step_mb=peak - before)
    except (RuntimeError, MemoryError) as error:
        if "alloc" not in str(error) and not isinstance(error, MemoryError):
            raise
        result = dict(error="out of memory")
    print("RESULT " + json.dumps(result), flush=True)


def _run(work: str, worker: str, seq_length: int, args) -> dict:
    command = [sys.executable, os.path.abspath(__file__), "--worker", worker, "--work", work,
               "--seq-length", str(seq_length), "--steps", str(args.steps),
               "--warmup", str(args.warmup), "--pairs", str(args.pairs)]
    done = subprocess.run(command, capture_output=True, text=True)
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
    return dict(error=f"exit {done.returncode}: {' | '.join(tail)}")


def _cell(result: dict) -> str:
    if "error" in result:
        return f"{result['error']:>38}"
    return (f"{result['seconds']:>8.2f} s {result['peak_mb'] / 1024:>6.2f} GB "
            f"{result['step_mb'] / 1024:>6.2f} GB {result['loss']:>10.6f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seq-lengths", type=int, nargs="+", default=[1024, 2048, 8192])
    parser.add_argument("--steps", type=int, default=2, help="timed steps (the best is printed)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps before them")
    parser.add_argument("--local-up-to", type=int, default=2048,
                        help="also run Megatron's local attention up to this length (0: never)")
    parser.add_argument("--hf-up-to", type=int, default=0,
                        help="run the HF loop only up to this length (0: always); its full "
                             "logits need ~26 GB at 8,192 tokens and 2 pairs")
    parser.add_argument("--pairs", type=int, default=2)
    parser.add_argument("--worker", choices=["prepare", "sdpa", "local", "hf"], help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--seq-length", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        _worker(args)
        return
    print(f"{args.pairs} pairs, torch threads {torch.get_num_threads()}, {args.warmup} warm-up + "
          f"best of {args.steps} steps; columns: step time, peak RSS, step memory (peak - RSS before the first step), "
          "first-step loss")
    with tempfile.TemporaryDirectory(prefix="step_vs_hf_") as work:
        prepared = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker",
                                   "prepare", "--work", work], capture_output=True, text=True)
        if prepared.returncode:
            sys.exit(prepared.stderr)
        for seq_length in args.seq_lengths:
            if args.hf_up_to and seq_length > args.hf_up_to:
                hf = dict(error="not run (--hf-up-to)")
            else:
                hf = _run(work, "hf", seq_length, args)
            print(f"{seq_length:>6} tokens  hf (sdpa, full logits)    {_cell(hf)}", flush=True)
            workers = ["sdpa"] + (["local"] if seq_length <= args.local_up_to else [])
            for worker in workers:
                ours = _run(work, worker, seq_length, args)
                ratio = ("" if "error" in ours or "error" in hf
                         else f"  time ratio {ours['seconds'] / hf['seconds']:.2f}, "
                              f"peak ratio {ours['peak_mb'] / hf['peak_mb']:.2f}")
                print(f"{seq_length:>6} tokens  package ({worker + ' attention)':<16} "
                      f"{_cell(ours)}{ratio}", flush=True)


if __name__ == "__main__":
    main()
