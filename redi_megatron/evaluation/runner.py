"""`redi-megatron evaluate`: sample k responses per benchmark problem (resumably), grade them, write the report.

Outputs in ``out_dir``: generations.jsonl (one record per problem, see generation_log),
references.jsonl (the problems' answers, for tools/grade.py), run.json (what decides the samples),
report.json and report.txt.
"""

import json
import time
from dataclasses import asdict
from pathlib import Path

from redi_megatron.config import ConfigError
from redi_megatron.data.tokenizer_loading import load_tokenizer
from redi_megatron.evaluation.benchmarks import Problem, read_benchmarks
from redi_megatron.evaluation.generation_log import GenerationLog, check_run_manifest
from redi_megatron.evaluation.model_source import resolve_hf_model
from redi_megatron.evaluation.prompts import THINK_OPEN, PromptBuilder
from redi_megatron.evaluation.report import build_report, checker_pool, report_text
from redi_megatron.evaluation.sampling import SamplingSettings, sample_seeds
from redi_megatron.evaluation.vllm_backend import vllm_available

BACKENDS = ("auto", "vllm", "transformers")


def evaluate(model: str | Path, benchmarks: list[str | Path], out_dir: str | Path,
             sampling: SamplingSettings = SamplingSettings(), *, backend: str = "auto",
             batch_problems: int | None = None, iteration: int | None = None,
             tensor_parallel: int | None = None, max_model_len: int | None = None,
             think_open: str = THINK_OPEN, grader: str = "package", boxes: str = "last", workers: int | None = None,
             timeout_s: float = 5.0, show_progress: bool = True) -> dict:
    """Return the report after generating what out_dir lacks for the benchmarks and grading all of it.

    ``batch_problems``: problems per sampling call (default 64 with vLLM, max(1, 64 // samples)
    with transformers); it changes speed and memory, not which tokens are drawn.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    problems = read_benchmarks(benchmarks)
    backend = _backend_name(backend)
    hf_dir, model_identity = resolve_hf_model(model, out, iteration)
    tokenizer = load_tokenizer(hf_dir)
    prompts = PromptBuilder(tokenizer, think_open)
    check_run_manifest(out / "run.json", {"model": model_identity, "sampling": asdict(sampling),
                                          "prompt": prompts.describe(), "backend": backend})
    log = GenerationLog(out / "generations.jsonl")
    pending = [p for p in problems if p.id not in log.records]
    if pending:
        stop_ids = sorted({tokenizer.end_of_turn_id, tokenizer.eos_id})
        sampler = _sampler(backend, hf_dir, sampling, stop_ids, tokenizer.pad_id, tensor_parallel, max_model_len)
        batch = batch_problems or (64 if backend == "vllm" else max(1, 64 // sampling.samples))
        _generate(pending, len(problems), sampler, prompts, tokenizer, sampling, log, batch, show_progress)

    _write_jsonl(out / "references.jsonl", [p.reference() for p in problems])
    records = [log.records[p.id] for p in problems]
    with checker_pool(grader, workers, timeout_s, boxes) as pool:
        report = build_report(records, problems, pool)
    report["settings"] = {"model": model_identity, "sampling": asdict(sampling), "backend": backend, "grader": grader,
                          "boxes": boxes}
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (out / "report.txt").write_text(report_text(report, Path(model).name) + "\n", encoding="utf-8")
    return report


def _generate(pending: list[Problem], total: int, sampler, prompts: PromptBuilder, tokenizer,
              sampling: SamplingSettings, log: GenerationLog, batch: int, show_progress: bool) -> None:
    """Sample every pending problem, appending each one's record as soon as its batch is done."""
    from tqdm import tqdm

    started, tokens = time.perf_counter(), 0
    with tqdm(total=total, initial=total - len(pending), unit="problem", disable=not show_progress,
              dynamic_ncols=True) as bar:
        for start in range(0, len(pending), batch):
            chunk = pending[start:start + batch]
            seeds = [sample_seeds(sampling.seed, p.id, sampling.samples) for p in chunk]
            completions = sampler.sample(prompts.prompt_ids([p.problem for p in chunk]), seeds)
            for problem, problem_seeds, samples in zip(chunk, seeds, completions):
                log.append({"id": problem.id, "benchmark": problem.benchmark,
                            "samples": [tokenizer.decode(c.token_ids) for c in samples],
                            "num_tokens": [len(c.token_ids) for c in samples],
                            "truncated": [not c.stopped for c in samples], "seeds": problem_seeds})
                tokens += sum(len(c.token_ids) for c in samples)
            bar.update(len(chunk))
            bar.set_postfix(tokens_per_s=f"{tokens / (time.perf_counter() - started):.0f}")


def _backend_name(backend: str) -> str:
    if backend not in BACKENDS:
        raise ConfigError(f"--backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend == "auto":
        return "vllm" if vllm_available() else "transformers"
    if backend == "vllm" and not vllm_available():
        raise ConfigError("--backend vllm: vLLM is not installed or no GPU is visible")
    return backend


def _sampler(backend: str, hf_dir: Path, sampling: SamplingSettings, stop_ids: list[int], pad_id: int,
             tensor_parallel: int | None, max_model_len: int | None):
    if backend == "vllm":
        from redi_megatron.evaluation.vllm_backend import VLLMSampler

        return VLLMSampler(str(hf_dir), sampling, stop_ids, tensor_parallel, max_model_len)
    from redi_megatron.evaluation.transformers_backend import TransformersSampler

    return TransformersSampler(str(hf_dir), sampling, stop_ids, pad_id)


def _write_jsonl(path: Path, records: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record) + "\n")
