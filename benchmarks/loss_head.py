"""Benchmarks the loss head alone: the paths training runs against megatron's full-logits one.

Each case is forward + backward of sum_t w_t * -log p(label_t) with random signed weights (none
zero, so the fused paths cannot skip tokens), on [tokens, 1, hidden] hidden states and a
[vocab / tp, hidden] weight shard. Paths:
  unfused   matmul -> megatron vocab_parallel_cross_entropy (``unfused_token_logprobs``;
            ``loss.fused: false``)
  weighted  ``weighted_token_nll_and_logprobs``: gradients computed in the forward pass, per-token
            log-probs returned for the metrics (what sft, redi and symmetric train with)
  logprobs  ``vocab_parallel_token_logprobs`` then autograd: backward recomputes the logits
            (what simpo and dpo train with)
With ``--dtype bf16 --device cuda`` the fused paths run their GEMMs in bf16 with fp32
accumulation; on CPU they compute in fp32 whatever the input dtype.

The peak memory of each (case, path) is measured in fresh processes (``--tp`` of them, gloo on
CPU, NCCL on CUDA): on CPU the peak RSS of rank 0 (VmHWM, reset through /proc/self/clear_refs)
then covers only that case; on CUDA it is torch.cuda.max_memory_allocated. "Peak extra" is the
peak above what the inputs already hold. Time is the best of ``--repeats`` steps per path, the
paths of a case timed in one job, taking turns (the machine may be shared: the minimum is the
least disturbed).

Run from the repository root: ``python benchmarks/loss_head.py [--tokens 2048 8192 ...]``.
"""

import argparse
import json
import os
import socket
import sys
import tempfile
import time

# Runnable as `python benchmarks/loss_head.py` from a checkout, installed or not.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402

PATHS = ("unfused", "weighted", "logprobs")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def _parse_args():
    from redi_megatron.weighted_cross_entropy import DEFAULT_CHUNK_SIZE

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, nargs="+", default=[2048, 8192])
    parser.add_argument("--vocab", type=int, nargs="+", default=[8192, 32768])
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--tp", type=int, default=1)
    parser.add_argument("--chunk-size", type=int, default=DEFAULT_CHUNK_SIZE)
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--paths", nargs="+", choices=PATHS, default=list(PATHS))
    parser.add_argument("--repeats", type=int, default=3)
    return parser.parse_args()


def _rss_bytes(field: str) -> int:
    """Returns a /proc/self/status memory field (VmRSS, VmHWM) in bytes."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


class _PeakMemory:
    """Measures the peak memory above the level at entry: RSS high-water mark on CPU, CUDA peak."""

    def __init__(self, device: torch.device):
        self.device = device
        self.extra_bytes = 0

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            # Writing 5 resets VmHWM to the current RSS (Linux >= 4.0).
            with open("/proc/self/clear_refs", "w") as clear_refs:
                clear_refs.write("5")
            self.base = _rss_bytes("VmRSS")
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.extra_bytes = torch.cuda.max_memory_allocated() - self.base
        else:
            self.extra_bytes = _rss_bytes("VmHWM") - self.base


def _step(path, hidden, weight, labels, weights, chunk_size):
    """Runs forward + backward of the weighted NLL; gradients land in .grad."""
    from redi_megatron import weighted_cross_entropy as wce

    if path == "weighted":
        loss, _ = wce.weighted_token_nll_and_logprobs(hidden, weight, labels, weights,
                                                      logprob_mask=weights != 0,
                                                      chunk_size=chunk_size)
    elif path == "logprobs":
        logp = wce.vocab_parallel_token_logprobs(hidden, weight, labels, chunk_size=chunk_size)
        loss = -(weights * logp).sum()
    else:
        loss = -(weights * wce.unfused_token_logprobs(hidden, weight, labels)).sum()
    loss.backward()


def _inputs(tokens, vocab, args, device, rank):
    generator = torch.Generator().manual_seed(rank)
    dtype = DTYPES[args.dtype]
    hidden = torch.randn(tokens, 1, args.hidden, generator=generator).to(device, dtype)
    weight = (torch.randn(vocab // args.tp, args.hidden, generator=generator) * 0.05).to(device,
                                                                                         dtype)
    # Labels and weights come from the global seed: the same on every rank.
    labels = torch.randint(0, vocab, (1, tokens)).to(device)
    signs = torch.randint(0, 2, (1, tokens)) * 2 - 1
    weights = ((torch.rand(1, tokens) * 0.9 + 0.1) * signs / tokens).to(device)
    return hidden.requires_grad_(), weight.requires_grad_(), labels, weights


def _worker(rank, port, tokens, vocab, paths, measure, args, result_file):
    """Measures on rank 0 either the peak memory of paths[0] or the time of every path."""
    from redi_megatron.config import ParallelConfig
    from redi_megatron.runtime import init_parallel_state

    device = torch.device("cuda", rank) if args.device == "cuda" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                         rank=rank, world_size=args.tp)
    init_parallel_state(ParallelConfig(tensor=args.tp), seed=0)
    torch.manual_seed(0)

    # Warm up kernels, allocator and communicators on a small problem first.
    for path in paths:
        _step(path, *_inputs(min(tokens, 256), vocab, args, device, rank), args.chunk_size)
    inputs = _inputs(tokens, vocab, args, device, rank)
    if measure == "memory":
        with _PeakMemory(device) as peak:
            _step(paths[0], *inputs, args.chunk_size)
        result = peak.extra_bytes / 2**20
    else:
        result = _best_seconds(paths, inputs, device, args)
    if rank == 0:
        with open(result_file, "w") as out:
            json.dump(result, out)
    torch.distributed.destroy_process_group()


def _best_seconds(paths, inputs, device, args):
    """Returns {path: best of --repeats timed steps}, after one untimed round at full size.

    The paths take turns within each round, so that a change of load on a shared machine
    disturbs them alike.
    """
    seconds = {path: [] for path in paths}
    for _ in range(args.repeats + 1):
        for path in paths:
            for tensor in inputs[:2]:
                tensor.grad = None
            torch.distributed.barrier()
            start = time.perf_counter()
            _step(path, *inputs, args.chunk_size)
            if device.type == "cuda":
                torch.cuda.synchronize()
            seconds[path].append(time.perf_counter() - start)
    return {path: min(times[1:]) for path, times in seconds.items()}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _spawn(tokens, vocab, paths, measure, args):
    """Returns rank 0's result of one _worker run in --tp fresh processes."""
    with tempfile.TemporaryDirectory() as tmp:
        result_file = os.path.join(tmp, "result.json")
        mp.spawn(_worker, args=(_free_port(), tokens, vocab, paths, measure, args, result_file),
                 nprocs=args.tp, join=True)
        with open(result_file) as result:
            return json.load(result)


def _measure(tokens, vocab, args):
    """Returns {path: (peak extra MiB, seconds)}: memory in a fresh job per path, times together.

    The paths are timed in one job, taking turns, so that load from other users of the
    machine disturbs them alike.
    """
    peaks = {path: _spawn(tokens, vocab, [path], "memory", args) for path in args.paths}
    seconds = _spawn(tokens, vocab, args.paths, "time", args)
    return {path: (peaks[path], seconds[path]) for path in args.paths}


def main():
    args = _parse_args()
    print(f"loss head: hidden {args.hidden}, tp {args.tp}, {args.dtype}, {args.device}, "
          f"chunk {args.chunk_size}; peak extra memory of rank 0 and best time of fwd+bwd")
    header = f"{'tokens':>7} {'vocab':>7} {'path':>9} {'peak MiB':>9} {'time s':>8}"
    if "unfused" in args.paths:
        header += f" {'mem/unf':>8} {'time/unf':>8}"
    if "logprobs" in args.paths:
        header += f" {'time/logp':>9}"
    print(header)
    for vocab in args.vocab:
        for tokens in args.tokens:
            results = _measure(tokens, vocab, args)
            for path, (peak, seconds) in results.items():
                line = f"{tokens:>7} {vocab:>7} {path:>9} {peak:>9.1f} {seconds:>8.3f}"
                if "unfused" in results:
                    unfused_peak, unfused_seconds = results["unfused"]
                    line += f" {peak / unfused_peak:>8.3f} {seconds / unfused_seconds:>8.2f}"
                if "logprobs" in results:
                    line += f" {seconds / results['logprobs'][1]:>9.2f}"
                print(line, flush=True)


if __name__ == "__main__":
    main()
