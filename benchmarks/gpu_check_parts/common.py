"""What every section of the GPU check shares: the device, timing, peak memory and test data."""

import os
import time
from dataclasses import dataclass
from typing import Callable, Dict, List

import torch

# Dense bf16 tensor-core peak of one H100 SXM / H200 (the same 989 TFLOP/s for both), for MFU.
HOPPER_BF16_PEAK_FLOPS = 989e12


@dataclass(frozen=True)
class Scale:
    """Sizes of a run: the real ones on a GPU, tiny ones for the CPU dry run (--cpu --tiny)."""

    tiny: bool
    device: torch.device

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"


def resolve_scale(cpu: bool, tiny: bool) -> Scale:
    """Returns the run's scale; the GPU unless --cpu, which the CI dry run uses."""
    if not cpu and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --cpu --tiny for the CPU dry run")
    return Scale(tiny=tiny, device=torch.device("cpu" if cpu else "cuda"))


def start_single_process() -> None:
    """Initialises a one-process group (NCCL on CUDA, gloo on CPU) and TP=1/PP=1 Megatron state."""
    from redi_megatron import runtime
    from redi_megatron.config import ParallelConfig

    runtime.init_distributed(runtime.detect_accelerators())
    runtime.init_parallel_state(ParallelConfig(), seed=0)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def median_seconds(step: Callable[[], None], device: torch.device, repeats: int,
                   warmup: int = 1) -> float:
    """Returns the median wall time of ``step`` over ``repeats`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        synchronize(device)
        started = time.perf_counter()
        step()
        synchronize(device)
        times.append(time.perf_counter() - started)
    return sorted(times)[len(times) // 2]


class PeakMemory:
    """Peak device memory above the level at entry (CUDA only; ``extra_bytes`` is None on CPU)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.extra_bytes = None
        self.peak_bytes = None

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak_bytes = torch.cuda.max_memory_allocated()
            self.extra_bytes = self.peak_bytes - self.base


def gib(value) -> str:
    return "n/a" if value is None else f"{value / 2**30:.2f} GiB"


def tiny_hf_model(directory: str, vocab_size: int = 1000, hidden: int = 64, layers: int = 2,
                  heads: int = 4, kv_heads: int = 2, intermediate: int = 128,
                  max_positions: int = 4096, seed: int = 0) -> str:
    """Returns the path of a saved random Qwen2ForCausalLM (tied embeddings, GQA, QKV bias)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    config = Qwen2Config(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=kv_heads,
                         intermediate_size=intermediate, max_position_embeddings=max_positions,
                         tie_word_embeddings=True, rope_theta=10000.0)
    Qwen2ForCausalLM(config).save_pretrained(directory)
    return directory


def write_pair_shards(prefix: str, count: int, vocab: int, prompt_len: int, chosen_len: int,
                      rejected_len: int, seed: int = 0, kind: str = "pairs") -> str:
    """Returns the prefix of ``count`` random pairs of the given lengths (EOS-terminated).

    ``kind="sft"`` writes the chosen completions alone, as SFT samples.
    """
    import numpy as np

    from redi_megatron.data.token_shards import ShardWriter

    rng = np.random.default_rng(seed)
    eos = 1
    lengths = (chosen_len, rejected_len) if kind == "pairs" else (chosen_len,)
    with ShardWriter(prefix, kind, vocab_size=vocab,
                     metadata={"pad_id": 0, "eos_id": eos}) as writer:
        for _ in range(count):
            prompt = rng.integers(2, vocab, size=prompt_len)
            completions = [np.append(rng.integers(2, vocab, size=length - 1), eos)
                           for length in lengths]
            writer.add(prompt, completions)
    return prefix


def environment() -> Dict[str, object]:
    """Returns the software and device facts the results depend on."""
    import importlib.metadata as metadata

    def version(name: str):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    facts: Dict[str, object] = {
        "torch": torch.__version__,
        "megatron-core": version("megatron-core"),
        "transformers": version("transformers"),
        "transformer-engine": version("transformer-engine"),
        "liger-kernel": version("liger-kernel"),
        "cuda": torch.version.cuda,
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "threads": torch.get_num_threads(),
        "hostname": os.uname().nodename,
    }
    return facts


def table(rows: List[List[str]], header: List[str]) -> str:
    """Returns a Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)
