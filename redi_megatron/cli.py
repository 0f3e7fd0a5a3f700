"""The `redi-megatron` command: `train` from a YAML config, `evaluate` a model on benchmarks, or run the `demo`."""

import argparse
import os
import signal
import sys
import warnings
from pathlib import Path

from redi_megatron.config import ConfigError


def _train(args) -> int:
    from redi_megatron.checkpointing import CheckpointError
    from redi_megatron.config import load_config

    try:
        config = load_config(args.config, args.overrides)
        from redi_megatron.training import train

        train(config)
    except (ConfigError, CheckpointError) as error:
        # Every rank finds the same error and exits 2: the first to exit must not get the others
        # killed by a launcher's SIGTERM (srun --kill-on-bad-exit), which would change the status.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        # One message is enough.
        if _global_rank() == 0:
            print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


def _global_rank() -> int:
    import torch

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", 0)))


def _demo(args) -> int:
    from redi_megatron.demo import run_demo

    run_demo(args.out, quick=args.quick)
    return 0


def _evaluate(args) -> int:
    from redi_megatron.evaluation.benchmarks import BenchmarkFileError
    from redi_megatron.evaluation.report import report_text
    from redi_megatron.evaluation.runner import evaluate
    from redi_megatron.evaluation.sampling import SamplingSettings

    try:
        sampling = SamplingSettings(args.samples, args.temperature, args.top_p, args.max_new_tokens, args.seed)
        report = evaluate(args.model, args.benchmarks, args.out, sampling, backend=args.backend,
                          batch_problems=args.batch_problems, iteration=args.iteration,
                          tensor_parallel=args.tensor_parallel, max_model_len=args.max_model_len,
                          think_open=args.think_open, grader=args.grader, boxes=args.boxes,
                          workers=args.workers,
                          timeout_s=args.timeout)
    except (ConfigError, BenchmarkFileError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(report_text(report, Path(args.model).name))
    return 0


def _add_evaluate_parser(commands) -> None:
    from redi_megatron.data.answer_checking import BOX_MODES, GRADERS
    from redi_megatron.evaluation.prompts import THINK_OPEN

    evaluate = commands.add_parser(
        "evaluate", help="sample k responses per benchmark problem, grade them, write the paper-style table",
        description="Defaults are the paper's: pass@1 over 16 samples, temperature 0.6, top-p 0.95, "
                    "32,768 new tokens, thinking opened by the prompt. Rerun the same command to resume.")
    evaluate.add_argument("--model", required=True,
                          help="Megatron checkpoint root (exported on the fly) or HF directory")
    evaluate.add_argument("--benchmarks", required=True, nargs="+",
                          help="JSONL files of {id, problem, answer, benchmark}")
    evaluate.add_argument("--out", required=True, help="output directory (generations, report; resumed if present)")
    evaluate.add_argument("--samples", type=int, default=16, help="k: responses per problem (default 16)")
    evaluate.add_argument("--temperature", type=float, default=0.6, help="0 = greedy (default 0.6)")
    evaluate.add_argument("--top-p", type=float, default=0.95)
    evaluate.add_argument("--max-new-tokens", type=int, default=32768)
    evaluate.add_argument("--seed", type=int, default=0, help="base seed; each (problem, sample) derives its own")
    evaluate.add_argument("--backend", default="auto", choices=("auto", "vllm", "transformers"),
                          help="auto: vLLM when installed and a GPU is visible, else transformers")
    evaluate.add_argument("--batch-problems", type=int, default=None, help="problems per sampling call")
    evaluate.add_argument("--iteration", type=int, default=None, help="checkpoint iteration (default: latest)")
    evaluate.add_argument("--tensor-parallel", type=int, default=None, help="vLLM: GPUs per model (default: all)")
    evaluate.add_argument("--max-model-len", type=int, default=None, help="vLLM: context length (default: the model's)")
    evaluate.add_argument("--think-open", default=THINK_OPEN, help="text the prompt ends with (default '<think>\\n')")
    evaluate.add_argument("--grader", default="package", choices=GRADERS,
                          help="package: our checker; paper: the REDI authors' rule (rllm's math reward)")
    evaluate.add_argument("--boxes", default="last", choices=BOX_MODES,
                          help="last: the last box only (the paper's rule); joined: trailing boxes joined "
                               "(e.g. \\boxed{-2} and \\boxed{1} as the set {-2, 1})")
    evaluate.add_argument("--workers", type=int, default=None, help="answer-checking processes (default: CPUs)")
    evaluate.add_argument("--timeout", type=float, default=5.0, help="seconds per answer check")
    evaluate.set_defaults(run=_evaluate)


# Megatron warns once per module that TE/apex are absent and about its own cuda_graph_scope
# default; the runtime prints one line naming the layer implementation instead.
_KNOWN_MEGATRON_WARNINGS = (
    r"(Transformer Engine and )?Apex (is|are) not installed",
    r"full scope is deprecated",
)


def main(argv=None) -> int:
    """Returns the process exit code of a `redi-megatron` invocation."""
    for message in _KNOWN_MEGATRON_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=UserWarning)
    parser = argparse.ArgumentParser(prog="redi-megatron", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="train (SFT or REDI and its baselines) from a config")
    train.add_argument("--config", help="YAML file with model/parallel/data/optim/loss/train/"
                                        "checkpoint sections (defaults when omitted)")
    train.add_argument("overrides", nargs="*", metavar="section.key=value",
                       help="dotted overrides, e.g. optim.lr=1e-6 loss.objective=redi")
    train.set_defaults(run=_train)
    _add_evaluate_parser(commands)
    demo = commands.add_parser("demo", help="the whole method end to end on a tiny CPU task")
    demo.add_argument("--out", default="demo_out", help="output directory (default: demo_out)")
    demo.add_argument("--quick", action="store_true", help="a much smaller run (for tests)")
    demo.set_defaults(run=_demo)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
