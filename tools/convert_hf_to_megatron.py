"""Converts a Hugging Face Qwen2/Qwen2.5 directory into a Megatron-Core distributed checkpoint."""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import yaml  # noqa: E402

DTYPES = {"bf16": "bfloat16", "fp32": "float32", "source": None}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(
            "Write a Megatron dist-checkpoint (OUT/iter_0000000 + OUT/hf_source) from a Hugging "
            "Face Qwen2 directory. The checkpoint holds full (TP=1) tensors with their global "
            "shapes, so the training loop loads it at any TP/PP/VPP layout "
            "(checkpoint.load=OUT checkpoint.finetune=true). --tp/--pp/--vpp only validate the "
            "target layout, set the vocabulary padding (a multiple of 128 x TP) and are recorded."))
    parser.add_argument("--hf", required=True, help="Hugging Face model directory")
    parser.add_argument("--out", required=True, help="checkpoint root to create (must be empty)")
    parser.add_argument("--tp", type=int, default=1, help="target tensor-parallel size")
    parser.add_argument("--pp", type=int, default=1, help="target pipeline-parallel size")
    parser.add_argument("--vpp", type=int, default=None, help="target virtual pipeline stages")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="source",
                        help="parameter dtype of the checkpoint (default: the source's)")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                        help="config override recorded with the checkpoint: rope_theta, "
                             "max_position_embeddings (repeatable)")
    parser.add_argument("--make-vocab-size-divisible-by", type=int, default=128)
    parser.add_argument("--verify", action="store_true",
                        help="compare transformers' and Megatron's fp32 logits after converting")
    parser.add_argument("--verify-tolerance", type=float, default=None,
                        help="largest max |logit diff| --verify accepts (default 1e-3)")
    return parser.parse_args(argv)


def parse_overrides(items):
    """Returns {key: value} from KEY=VALUE strings, values parsed as YAML (300000, 1e6)."""
    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--override {item!r}: expected KEY=VALUE")
        overrides[key] = yaml.safe_load(value)
    return overrides


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    from redi_megatron.config import ConfigError, ParallelConfig
    from redi_megatron.qwen.conversion import convert_hf_to_megatron
    from redi_megatron.qwen.hf_checkpoint_io import CheckpointFormatError
    from redi_megatron.qwen.logit_check import DEFAULT_TOLERANCE, verify

    dtype = getattr(torch, DTYPES[args.dtype]) if DTYPES[args.dtype] else None
    parallel = ParallelConfig(tensor=args.tp, pipeline=args.pp, virtual_pipeline=args.vpp)
    try:
        convert_hf_to_megatron(args.hf, args.out, parallel, dtype, parse_overrides(args.override),
                               args.make_vocab_size_divisible_by)
    except (ConfigError, CheckpointFormatError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.verify:
        from redi_megatron.checkpointing import HF_SOURCE_DIR

        result = verify(args.hf, args.out, config_dir=os.path.join(args.out, HF_SOURCE_DIR))
        tolerance = args.verify_tolerance or DEFAULT_TOLERANCE
        print(f"verify: {result.summary()} (tolerance {tolerance:g})")
        if result.max_abs > tolerance:
            print("error: logits differ beyond the tolerance", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
