"""Sampling with vLLM (GPU, tensor parallel across the node's GPUs), used when vLLM is installed.

Each (problem, sample) is one request with its own seed (``sample_seeds``), so samples do not
depend on how vLLM batches them; the prompt goes in as token ids, built the same way as for the
transformers backend. vLLM's batch-dependent kernels can still change logits in the last bits,
so its samples are reproducible run to run on the same setup, not bit-equal to transformers'.
"""

from redi_megatron.evaluation.sampling import Completion, SamplingSettings


def vllm_available() -> bool:
    """Return whether vLLM can be imported and a GPU is visible."""
    import importlib.util

    import torch

    return importlib.util.find_spec("vllm") is not None and torch.cuda.is_available()


class VLLMSampler:
    """Generates k samples per problem with vLLM's offline engine; see ``sample``."""

    name = "vllm"

    def __init__(self, hf_dir: str, settings: SamplingSettings, stop_ids: list[int],
                 tensor_parallel: int | None = None, max_model_len: int | None = None):
        import torch
        from vllm import LLM

        self.llm = LLM(model=str(hf_dir), tensor_parallel_size=tensor_parallel or torch.cuda.device_count(),
                       seed=settings.seed, max_model_len=max_model_len, enable_prefix_caching=True)
        self.settings = settings
        self.stop_ids = list(stop_ids)

    def sample(self, prompts: list[list[int]], seeds: list[list[int]]) -> list[list[Completion]]:
        """Return, for each prompt, one completion per seed (all requests submitted together)."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        s = self.settings
        requests, params = [], []
        for prompt, row_seeds in zip(prompts, seeds):
            for seed in row_seeds:
                requests.append(TokensPrompt(prompt_token_ids=prompt))
                params.append(SamplingParams(n=1, temperature=s.temperature, top_p=s.top_p,
                                             max_tokens=s.max_new_tokens, seed=seed,
                                             stop_token_ids=self.stop_ids, detokenize=False))
        outputs = iter(self.llm.generate(requests, params, use_tqdm=False))
        return [[self._completion(next(outputs).outputs[0]) for _ in row_seeds] for row_seeds in seeds]

    def _completion(self, output) -> Completion:
        ids = list(output.token_ids)
        stopped = output.finish_reason == "stop"
        if stopped and ids and ids[-1] in self.stop_ids:
            ids = ids[:-1]
        return Completion(ids, stopped)
