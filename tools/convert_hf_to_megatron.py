"""Converts a Hugging Face Qwen2/Qwen2.5 directory into a Megatron-Core distributed checkpoint."""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from redi_megatron.qwen.logit_check import add_verify_arguments  # noqa: E402

DTYPES = {"bf16": "bfloat16", "fp32": "float32", "source": None}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(
            "Write a Megatron dist-checkpoint (OUT/iter_0000000 + OUT/hf_source) from a Hugging "
            "Face Qwen2 directory. The checkpoint holds full (TP=1) tensors with their global "
            "shapes, so the training loop loads it at any TP/PP/VPP layout "
            "(checkpoint.load=OUT checkpoint.finetune=true). --tp/--pp/--vpp and the stage layer "
            "counts only validate the target layout, set the vocabulary padding (a multiple of "
            "128 x TP) and are recorded."))
    parser.add_argument("--hf", required=True, help="Hugging Face model directory")
    parser.add_argument("--out", required=True, help="checkpoint root to create (must be empty)")
    parser.add_argument("--tp", type=int, default=1, help="target tensor-parallel size")
    parser.add_argument("--pp", type=int, default=1, help="target pipeline-parallel size")
    parser.add_argument("--vpp", type=int, default=None, help="target virtual pipeline stages")
    parser.add_argument("--layers-in-first-stage", type=int, default=None,
                        help="decoder layers on the first pipeline stage (default: even split, "
                             "or automatic when the layers do not split evenly)")
    parser.add_argument("--layers-in-last-stage", type=int, default=None,
                        help="decoder layers on the last pipeline stage")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="source",
                        help="parameter dtype of the checkpoint (default: the source's)")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                        help="config override recorded with the checkpoint: rope_theta, "
                             "max_position_embeddings (repeatable)")
    parser.add_argument("--make-vocab-size-divisible-by", type=int, default=128)
    add_verify_arguments(parser, "converting")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    from redi_megatron.config import ConfigError, ParallelConfig, parse_override
    from redi_megatron.qwen.conversion import convert_hf_to_megatron
    from redi_megatron.qwen.hf_checkpoint_io import CheckpointFormatError
    from redi_megatron.qwen.logit_check import report_verification, verify

    dtype = getattr(torch, DTYPES[args.dtype]) if DTYPES[args.dtype] else None
    parallel = ParallelConfig(tensor=args.tp, pipeline=args.pp, virtual_pipeline=args.vpp,
                              layers_in_first_stage=args.layers_in_first_stage,
                              layers_in_last_stage=args.layers_in_last_stage)
    try:
        overrides = dict(parse_override(item) for item in args.override)
        convert_hf_to_megatron(args.hf, args.out, parallel, dtype, overrides,
                               args.make_vocab_size_divisible_by)
    except (ConfigError, CheckpointFormatError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.verify:
        from redi_megatron.checkpointing import HF_SOURCE_DIR

        result = verify(args.hf, args.out, config_dir=os.path.join(args.out, HF_SOURCE_DIR))
        return report_verification(result, args.verify_tolerance)
    return 0


if __name__ == "__main__":
    sys.exit(main())
