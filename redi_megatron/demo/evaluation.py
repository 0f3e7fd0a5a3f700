"""Held-out evaluation of an exported model with the package's evaluate library: k sampled answers per problem."""

import json
from pathlib import Path

# The demo tokenizer is trained on this text too (pipeline stage 3), so prompts tokenise compactly.
from redi_megatron.data.chat_format import DEFAULT_PROMPT_TEMPLATE  # noqa: F401
from redi_megatron.evaluation.runner import evaluate
from redi_megatron.evaluation.sampling import SamplingSettings


def write_benchmark(problems_path: str | Path, references_path: str | Path, out_path: str | Path) -> Path:
    """Return out_path after writing the held-out problems and their answers as one benchmark file."""
    references = {str(r["id"]): r for r in read_jsonl(references_path)}
    records = [{**problem, "answer": references[str(problem["id"])]["answer"],
                "benchmark": references[str(problem["id"])]["benchmark"]} for problem in read_jsonl(problems_path)]
    Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    with open(out_path, "w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record) + "\n")
    return Path(out_path)


def evaluate_model(hf_dir: str | Path, benchmark: str | Path, out_dir: str | Path, samples: int,
                   max_new_tokens: int, seed: int) -> dict:
    """Return the evaluate report (pass@1 ± s.e. over `samples` answers per problem, pass@k, lengths).

    The paper's sampling (temperature 0.6, top-p 0.95, thinking opened by the prompt), with the
    demo's short answers' token limit; transformers on CPU, 64 problems per call.
    """
    sampling = SamplingSettings(samples=samples, max_new_tokens=max_new_tokens, seed=seed)
    return evaluate(hf_dir, [benchmark], out_dir, sampling, backend="transformers", batch_problems=64,
                    workers=1, show_progress=False)


def read_jsonl(path: str | Path) -> list[dict]:
    """Return the records of a JSONL file."""
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]
