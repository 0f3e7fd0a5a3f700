"""Sampling with Hugging Face transformers' batched ``generate``: the portable path (CPU, or GPU without vLLM).

Each row (a (problem, sample) pair) draws its tokens from its own torch.Generator, seeded by
``sample_seeds``: a logits processor applies transformers' own temperature and top-p warpers, draws
one token per row by inverse CDF with that row's generator, and leaves only that token possible, so
greedy decoding picks it. A row's draws therefore do not depend on which other problems share its
batch, nor on the global RNG.
"""

import torch

from redi_megatron.evaluation.sampling import Completion, SamplingSettings


class SeededSampling:
    """A logits processor that samples each row from temperature + top-p with that row's own generator."""

    def __init__(self, seeds: list[int], temperature: float, top_p: float):
        from transformers import TemperatureLogitsWarper, TopPLogitsWarper

        self.generators = [torch.Generator().manual_seed(seed) for seed in seeds]
        self.warpers = [TemperatureLogitsWarper(temperature), TopPLogitsWarper(top_p)]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        scores = scores.float()
        for warper in self.warpers:
            scores = warper(input_ids, scores)
        cumulative = torch.softmax(scores, dim=-1).cumsum(dim=-1)
        uniforms = torch.stack([torch.rand((), generator=g, dtype=torch.float64) for g in self.generators])
        # right=True: the first token whose cumulative mass exceeds u, never a zero-probability token.
        targets = (uniforms.to(cumulative.device) * cumulative[:, -1].double()).to(cumulative.dtype)
        chosen = torch.searchsorted(cumulative, targets[:, None], right=True).clamp_(max=scores.shape[-1] - 1)
        only_chosen = torch.full_like(scores, float("-inf"))
        return only_chosen.scatter_(1, chosen, 0.0)


class TransformersSampler:
    """Generates k samples per problem with transformers; see ``sample``."""

    name = "transformers"

    def __init__(self, hf_dir: str, settings: SamplingSettings, stop_ids: list[int], pad_id: int):
        from transformers import AutoModelForCausalLM, GenerationConfig

        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        # fp32 on CPU (bf16 matmuls are slow there); the checkpoint's dtype on GPU.
        dtype = "auto" if self.device.type == "cuda" else torch.float32
        self.model = AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=dtype).to(self.device).eval()
        # Replace the model's generation defaults (a released model may set top_k, repetition_penalty...):
        # only the settings below shape the samples.
        self.model.generation_config = GenerationConfig(
            max_new_tokens=settings.max_new_tokens, do_sample=False, eos_token_id=stop_ids, pad_token_id=pad_id)
        self.settings = settings
        self.stop_ids = set(stop_ids)
        self.pad_id = pad_id

    def sample(self, prompts: list[list[int]], seeds: list[list[int]]) -> list[list[Completion]]:
        """Return, for each prompt, one completion per seed (all prompts in one left-padded batch)."""
        rows = [prompt for prompt, row_seeds in zip(prompts, seeds) for _ in row_seeds]
        width = max(map(len, rows))
        input_ids = torch.tensor([[self.pad_id] * (width - len(r)) + r for r in rows], device=self.device)
        attention = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=self.device)
        processors = []
        if self.settings.temperature > 0:
            processors.append(SeededSampling([s for row_seeds in seeds for s in row_seeds],
                                             self.settings.temperature, self.settings.top_p))
        with torch.no_grad():
            output = self.model.generate(input_ids=input_ids, attention_mask=attention,
                                         logits_processor=processors)
        completions = iter(self._completion(ids) for ids in output[:, width:].tolist())
        return [[next(completions) for _ in row_seeds] for row_seeds in seeds]

    def _completion(self, ids: list[int]) -> Completion:
        for position, token in enumerate(ids):
            if token in self.stop_ids:
                return Completion(ids[:position], True)
        return Completion(ids, False)
