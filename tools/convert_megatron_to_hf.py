"""Exports a Megatron-Core checkpoint (any TP/PP layout) as a Hugging Face Qwen2 directory."""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from redi_megatron.qwen.logit_check import add_verify_arguments  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(
            "Write sharded safetensors + index, config.json, generation_config.json and the "
            "tokenizer files from a checkpoint root written by the training loop or by "
            "convert_hf_to_megatron.py (its hf_source/ supplies config and tokenizer). Tensors "
            "keep the checkpoint's dtype; the vocabulary padding is removed."))
    parser.add_argument("--ckpt", required=True, help="checkpoint root (holds hf_source/)")
    parser.add_argument("--out", required=True, help="Hugging Face directory to create")
    parser.add_argument("--iteration", type=int, default=None,
                        help="iteration to export (default: the latest complete one)")
    parser.add_argument("--max-shard-size-mb", type=float, default=5 * 1024,
                        help="largest safetensors shard in MiB (default 5 GiB)")
    add_verify_arguments(parser, "exporting")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from redi_megatron.checkpointing import CheckpointError
    from redi_megatron.config import ConfigError
    from redi_megatron.qwen.conversion import convert_megatron_to_hf
    from redi_megatron.qwen.hf_checkpoint_io import CheckpointFormatError
    from redi_megatron.qwen.logit_check import report_verification, verify

    try:
        convert_megatron_to_hf(args.ckpt, args.out, args.iteration,
                               int(args.max_shard_size_mb * 1024**2))
    except (ConfigError, CheckpointError, CheckpointFormatError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.verify:
        return report_verification(verify(args.out, args.ckpt, args.iteration),
                                   args.verify_tolerance)
    return 0


if __name__ == "__main__":
    sys.exit(main())
