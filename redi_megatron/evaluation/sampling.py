"""What decides the sampled responses: the paper's sampling settings and a seed per (problem, sample)."""

import hashlib
from dataclasses import dataclass


@dataclass(frozen=True)
class SamplingSettings:
    """The paper's evaluation (Table 3): pass@1 over 16 samples, temperature 0.6, top-p 0.95, 32,768 new tokens."""

    samples: int = 16
    temperature: float = 0.6
    top_p: float = 0.95
    max_new_tokens: int = 32768
    seed: int = 0

    def __post_init__(self):
        if self.samples < 1 or self.max_new_tokens < 1:
            raise ValueError("samples and max_new_tokens must be at least 1")
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise ValueError("temperature must be >= 0 (0: greedy) and top_p in (0, 1]")


@dataclass(frozen=True)
class Completion:
    """One sampled response: its token ids (stop token excluded) and whether it stopped by itself."""

    token_ids: list[int]
    stopped: bool  # False: it ran into max_new_tokens (truncated)


def sample_seeds(base_seed: int, problem_id: str, samples: int) -> list[int]:
    """Return the seed of each sample of a problem: a hash of (base seed, problem id, sample index).

    It depends on nothing else (not the order, batch or restart that generates the problem), so a
    resumed run draws the same samples as an uninterrupted one.
    """
    seeds = []
    for index in range(samples):
        digest = hashlib.sha256(f"{base_seed}\x00{problem_id}\x00{index}".encode()).digest()
        seeds.append(int.from_bytes(digest[:8], "little") & (2**63 - 1))
    return seeds
