"""The `redi-megatron` command: `train` a run from a YAML config, or run the built-in `demo`."""

import argparse
import os
import signal
import sys
import warnings

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
    demo = commands.add_parser("demo", help="the whole method end to end on a tiny CPU task")
    demo.add_argument("--out", default="demo_out", help="output directory (default: demo_out)")
    demo.add_argument("--quick", action="store_true", help="a much smaller run (for tests)")
    demo.set_defaults(run=_demo)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
