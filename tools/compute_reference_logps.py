"""Write <data.path>.ref_logps.npy: reference (SFT) log-probs of every pair, for DPO.

    python tools/compute_reference_logps.py --config examples/qwen2.5_math_1.5b_dpo.yaml \
        checkpoint.load=CKPT_SFT data.path=DATA/pairs

Runs under torchrun like training (any TP/PP/DP layout). Row i holds the summed completion
log-probs [chosen, rejected] of pair i of the shard.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from redi_megatron.config import ConfigError, load_config  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="the training YAML (model, parallel, data sections)")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value")
    args = parser.parse_args()
    try:
        config = load_config(args.config, args.overrides)
        from redi_megatron.reference_logprobs import compute_reference_logprobs

        path = compute_reference_logprobs(config)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
