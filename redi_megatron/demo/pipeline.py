"""The demo run: synthetic teacher data -> REDI data -> tokens -> SFT -> REDI / baselines -> export -> evaluate.

Every step uses the package's own tools, in the order a real run uses them (examples/README.md);
training and checkpoint conversion run as subprocesses (`python -m redi_megatron.cli train`, one
process, gloo) so that a crash in any of them is reported with its log, not as a hang.
"""

import contextlib
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from redi_megatron.data.token_shards import TokenShards
from redi_megatron.demo import evaluation, report
from redi_megatron.demo.synthetic_task import write_task
from redi_megatron.demo.tiny_model import train_tokenizer, write_random_model

REPO_ROOT = Path(__file__).resolve().parents[2]
TOOLS = REPO_ROOT / "tools"


@dataclass(frozen=True)
class Stage2Method:
    name: str
    overrides: tuple[str, ...]
    lr_scale: float = 1.0
    pairs: bool = True


# The paper's settings, with the LR of each baseline scaled as in the paper (REDI 1e-6, SimPO 5e-7).
STAGE2_METHODS = {
    "redi": Stage2Method("redi", ("loss.objective=redi", "loss.alpha=0.8")),
    "sft_continued": Stage2Method("sft_continued", ("loss.objective=sft",), pairs=False),
    "simpo": Stage2Method("simpo", ("loss.objective=simpo", "loss.beta=2.0", "loss.gamma=1.0"), lr_scale=0.5),
}


@dataclass(frozen=True)
class DemoSettings:
    """Sizes of the demo run; the defaults fit about 10 minutes on 2 CPU cores."""

    seed: int = 0
    train_problems: int = 1200
    eval_problems: int = 200
    eval_samples: int = 4  # sampled answers per held-out problem (pass@1 over them, as the paper with 16)
    generations_per_problem: int = 4
    mistake_rate: float = 0.4
    vocab_size: int = 512
    model: dict = field(default_factory=lambda: dict(
        hidden_size=128, num_layers=4, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=384, max_position_embeddings=512))
    # Prompts are about 60 tokens and traces at most about 160 with the demo tokenizer.
    seq_length: int = 256
    max_prompt_tokens: int = 96
    micro_batch_size: int = 16
    global_batch_size: int = 16
    sft_steps: int = 160
    sft_lr: float = 3e-3
    stage2_steps: int = 40
    stage2_lr: float = 3e-4
    methods: tuple[str, ...] = ("redi", "sft_continued", "simpo")
    max_new_tokens: int = 160
    # Padding-free rows (data.pack_tokens): 0.72x the SFT and 0.77x the REDI step time of padded
    # rows at this shape (benchmarks/packed_step.py).
    pack_tokens: int = 2048
    # torch intra-op threads in every demo process. The thread count sets the order of float sums
    # (1 vs 2 threads already change REDI's log-probs in the 7th digit, and greedy answers follow),
    # so it is fixed here, not taken from the machine.
    threads: int = 1

    @classmethod
    def quick(cls) -> "DemoSettings":
        """Return a run small enough for a test (well under 90 s): it checks the plumbing, not learning."""
        return replace(cls(), train_problems=64, eval_problems=8,
                       model=dict(hidden_size=32, num_layers=2, num_attention_heads=2, num_key_value_heads=1,
                                  intermediate_size=64, max_position_embeddings=512),
                       micro_batch_size=4, global_batch_size=8, sft_steps=3, stage2_steps=2,
                       methods=("redi", "sft_continued"), max_new_tokens=24)


class DemoError(RuntimeError):
    """A demo stage failed; the message names the stage and ends with its log."""


def run_pipeline(out_dir: str | Path, settings: DemoSettings) -> dict:
    """Return the results dict (also written to out_dir/results.json) after running every demo stage.

    The results are the same whatever the machine's core count or load: torch runs on
    ``settings.threads`` threads in this process and in every subprocess, and answer checks have
    CPU-time budgets. What can still differ is float rounding on another CPU family or instruction
    set (other BLAS kernels) or with other torch/transformers versions.
    """
    with _pinned_threads(settings.threads):
        return _run_stages(out_dir, settings)


@contextlib.contextmanager
def _pinned_threads(threads: int):
    """Run torch on ``threads`` intra-op threads here and in subprocesses (their env); restore after."""
    import torch

    names = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
    saved_env = {name: os.environ.get(name) for name in names}
    saved_threads = torch.get_num_threads()
    os.environ.update({name: str(threads) for name in names})
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(saved_threads)
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _run_stages(out_dir: str | Path, settings: DemoSettings) -> dict:
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    clock = _Clock()
    s = settings

    clock.stage("1/8 synthetic teacher data")
    task = write_task(out / "task", s.train_problems, s.eval_problems, s.seed,
                      s.generations_per_problem, s.mistake_rate)
    rows = evaluation.read_jsonl(task["raw"])
    print(f"  {len(rows)} problems x {s.generations_per_problem} teacher traces -> {task['raw']}")

    clock.stage("2/8 REDI data (build_redi_data --reverify: every trace re-graded by our checker)")
    _run([TOOLS / "build_redi_data.py", "--input", task["raw"], "--out", out / "data", "--reverify",
          "--workers", "2"], out / "logs" / "build_redi_data.log")
    data_report = json.loads((out / "data" / "report.json").read_text())
    print(f"  {data_report['sft_examples']} SFT examples, {data_report['pairs']} preference pairs")

    clock.stage("3/8 tokenizer (byte-level BPE) and a random tiny Qwen2")
    texts = [r["problem"] for r in rows] + [g for r in rows for g in r["generations"]]
    vocab = train_tokenizer(texts + [evaluation.DEFAULT_PROMPT_TEMPLATE], out / "base_model", s.vocab_size)
    write_random_model(out / "base_model", vocab, s.model, s.seed)
    print(f"  vocabulary {vocab}; model {s.model}")

    clock.stage("4/8 tokenise (preprocess_data) and convert the base model (convert_hf_to_megatron)")
    shards = {}
    for kind, name in (("sft", "sft.jsonl"), ("pairs", "pairs.jsonl")):
        shards[kind] = str(out / "tokens" / kind)
        _run([TOOLS / "preprocess_data.py", "--input", out / "data" / name, "--kind", kind, "--tokenizer",
              out / "base_model", "--out", shards[kind], "--workers", "1",
              "--max-prompt-tokens", str(s.max_prompt_tokens),
              "--max-response-tokens", str(s.seq_length - s.max_prompt_tokens)], out / "logs" / f"preprocess_{kind}.log")
    samples = {kind: len(TokenShards(prefix)) for kind, prefix in shards.items()}
    print(f"  token shards: {samples}")
    _run([TOOLS / "convert_hf_to_megatron.py", "--hf", out / "base_model", "--out", out / "ckpt" / "base",
          "--dtype", "fp32"], out / "logs" / "convert_base.log")

    common = [f"model.hf_config={out / 'base_model'}", f"data.seq_length={s.seq_length}",
              f"data.micro_batch_size={s.micro_batch_size}", f"data.global_batch_size={s.global_batch_size}",
              f"data.seed={s.seed}", f"train.seed={s.seed}", "train.precision=fp32", "optim.clip_grad=1.0",
              f"data.pack_tokens={s.pack_tokens}"]

    clock.stage(f"5/8 Stage 1: SFT on the correct traces ({s.sft_steps} steps)")
    runs = {"sft": _train(out, "sft", common + [
        f"data.path={shards['sft']}", "loss.objective=sft", f"optim.lr={s.sft_lr}",
        f"train.train_steps={s.sft_steps}",
        f"checkpoint.load={out / 'ckpt' / 'base'}", "checkpoint.finetune=true"])}

    clock.stage(f"6/8 Stage 2 from the SFT checkpoint, {s.stage2_steps} steps each: {', '.join(s.methods)}")
    for name in s.methods:
        method = STAGE2_METHODS[name]
        kind = "pairs" if method.pairs else "sft"
        runs[name] = _train(out, name, common + list(method.overrides) + [
            f"data.path={shards[kind]}", f"optim.lr={s.stage2_lr * method.lr_scale}",
            f"train.train_steps={s.stage2_steps}",
            f"checkpoint.load={out / 'ckpt' / 'sft'}", "checkpoint.finetune=true"])

    clock.stage(f"7/8 export to Hugging Face (convert_megatron_to_hf) and evaluate: {s.eval_samples} sampled "
                "answers per held-out problem (redi-megatron evaluate)")
    benchmark = evaluation.write_benchmark(task["eval_problems"], task["eval_references"],
                                           out / "eval" / "held_out.jsonl")
    accuracy = {}
    scores = {}
    for name in runs:
        hf_dir = out / "hf" / name
        _run([TOOLS / "convert_megatron_to_hf.py", "--ckpt", out / "ckpt" / name, "--out", hf_dir],
             out / "logs" / f"export_{name}.log")
        scores[name] = evaluation.evaluate_model(hf_dir, benchmark, out / "eval" / name, s.eval_samples,
                                                 s.max_new_tokens, s.seed)
        result = next(iter(scores[name]["benchmarks"].values()))
        accuracy[name] = result["pass@1"]
        print(f"  {name:<14} held-out pass@1 {100 * result['pass@1']:.1f}% ± {100 * result['pass@1_stderr']:.1f} "
              f"({result['problems']} problems x {result['k']} samples)   [{clock.elapsed():.0f}s]")

    clock.stage("8/8 summary")
    rows_out = []
    for name, metrics in runs.items():
        benchmark = next(iter(scores[name]["benchmarks"].values()))
        rows_out.append({"method": name, "steps": len(metrics), "accuracy": benchmark["pass@1"],
                         "stderr": benchmark["pass@1_stderr"],
                         "chosen": report.trend(metrics, "logp_chosen"),
                         "rejected": report.trend(metrics, "logp_rejected")})
    table = report.results_table(rows_out)
    plots = report.plot_curves(runs, accuracy, out)
    print(table)
    print("  curves: " + ", ".join(plots))
    results = {"settings": {k: v for k, v in vars(s).items()}, "data": {
        key: data_report.get(key) for key in ("sft_examples", "pairs", "verifier_agreement", "agreement")},
        "samples": samples, "results": rows_out, "grading": scores, "plots": plots,
        "wall_time_s": clock.elapsed()}
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    (out / "results.txt").write_text(table + "\n")
    print(f"done in {clock.elapsed():.0f}s; results in {out / 'results.json'}")
    return results


def _train(out: Path, name: str, overrides: list[str]) -> list[dict]:
    """Return the per-step metrics of one training run, checkpointed to out/ckpt/name."""
    log_dir = out / "logs" / name
    overrides = overrides + [f"checkpoint.save={out / 'ckpt' / name}", f"train.log_dir={log_dir}"]
    started = time.perf_counter()
    _run(["-m", "redi_megatron.cli", "train", *overrides], out / "logs" / f"train_{name}.log")
    metrics = report.read_metrics(log_dir)
    if not metrics:
        raise DemoError(f"training '{name}' wrote no metrics to {log_dir}/metrics.jsonl")
    last = metrics[-1]
    extra = "".join(f", {key} {last[key]:.3f}" for key in ("logp_chosen", "logp_rejected", "pair_accuracy")
                    if last.get(key) is not None)
    print(f"  {name}: {len(metrics)} steps in {time.perf_counter() - started:.0f}s, "
          f"loss {metrics[0]['loss']:.3f} -> {last['loss']:.3f}{extra}")
    return metrics


def _run(command: list, log_path: Path) -> None:
    """Run `python COMMAND...` with its output in log_path; raise DemoError with the log's tail if it fails."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
               HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    arguments = [sys.executable, *map(str, command)]
    with open(log_path, "w", encoding="utf-8") as log:
        completed = subprocess.run(arguments, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(REPO_ROOT))
    if completed.returncode != 0:
        tail = "\n".join(log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-40:])
        raise DemoError(f"`{' '.join(arguments)}` exited with {completed.returncode}; "
                        f"last lines of {log_path}:\n{tail}")


class _Clock:
    def __init__(self):
        self.started = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def stage(self, title: str) -> None:
        print(f"[{self.elapsed():6.0f}s] {title}", flush=True)
