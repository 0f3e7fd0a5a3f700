"""Logits of a Hugging Face Qwen2 directory and of a Megatron checkpoint on the same tokens.

Used by the converters' ``--verify`` (this module imports megatron only when a model is run): both models run on CPU in fp32, the Megatron one built by
our own builder at TP=1/PP=1 and loaded through the training loop's load_checkpoint.
"""

import os
import sys
from dataclasses import dataclass
from typing import Optional

import torch

DEFAULT_TOLERANCE = 1e-3


@dataclass(frozen=True)
class LogitComparison:
    max_abs: float
    mean_abs: float
    argmax_agreement: float

    def summary(self) -> str:
        return (f"max |logit diff| {self.max_abs:.3e}, mean {self.mean_abs:.3e}, "
                f"argmax agreement {self.argmax_agreement:.4f}")


def sample_tokens(vocab_size: int, batch: int = 2, length: int = 32, seed: int = 0) -> torch.Tensor:
    """Returns a fixed [batch, length] batch of random token ids below ``vocab_size``."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (batch, length), generator=generator)


def hf_logits(hf_dir: str, tokens: torch.Tensor, config_dir: Optional[str] = None,
              weights_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Returns transformers' fp32 [b, s, vocab] logits of ``hf_dir`` (config from ``config_dir``).

    The weights are first rounded to ``weights_dtype`` (the checkpoint's), so that the
    comparison measures the conversion, not a deliberate change of precision.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(config_dir or hf_dir)
    model = AutoModelForCausalLM.from_pretrained(hf_dir, config=config, dtype=weights_dtype).float()
    with torch.no_grad():
        return model(input_ids=tokens).logits.float()


def megatron_logits(ckpt_root: str, tokens: torch.Tensor, iteration: Optional[int] = None,
                    attention: str = "auto") -> torch.Tensor:
    """Returns our Megatron model's fp32 [b, s, vocab] logits after loading ``ckpt_root``.

    The process must be a one-process group (megatron_checkpoint_io.start_single_process).
    """
    from redi_megatron.checkpointing import HF_SOURCE_DIR, load_checkpoint
    from redi_megatron.config import ModelConfig, ParallelConfig
    from redi_megatron.qwen.architecture import architecture_from_model_config
    from redi_megatron.qwen.megatron_checkpoint_io import CPU
    from redi_megatron.qwen.model import build_model_chunks, transformer_config

    model_config = ModelConfig(hf_config=os.path.join(ckpt_root, HF_SOURCE_DIR), attention=attention)
    arch = architecture_from_model_config(model_config)
    config = transformer_config(arch, ParallelConfig(), model_config, CPU, "fp32")
    padded = arch.padded_vocab_size(model_config.make_vocab_size_divisible_by, 1)
    chunks = build_model_chunks(arch, config, CPU, padded, model_config.attention)
    load_checkpoint(ckpt_root, chunks, weights_only=True, iteration=iteration)
    model = chunks[0].eval()
    positions = torch.arange(tokens.shape[1]).expand_as(tokens)
    with torch.no_grad():
        hidden = model(tokens, positions, None)  # [s, b, h]
        logits = hidden.transpose(0, 1) @ model.output_weight().t()
    return logits[..., :arch.vocab_size].float()


def add_verify_arguments(parser, after: str) -> None:
    """Adds the converters' --verify and --verify-tolerance options to an argparse parser."""
    parser.add_argument("--verify", action="store_true",
                        help=f"compare transformers' and Megatron's fp32 logits after {after}")
    parser.add_argument("--verify-tolerance", type=float, default=DEFAULT_TOLERANCE,
                        help=f"largest max |logit diff| --verify accepts (default {DEFAULT_TOLERANCE:g})")


def report_verification(result: "LogitComparison", tolerance: float) -> int:
    """Returns the exit code (0, or 1 above ``tolerance``) after printing the comparison."""
    print(f"verify: {result.summary()} (tolerance {tolerance:g})")
    if result.max_abs > tolerance:
        print("error: logits differ beyond the tolerance", file=sys.stderr)
        return 1
    return 0


def compare(reference: torch.Tensor, candidate: torch.Tensor) -> LogitComparison:
    """Returns the max/mean absolute difference and argmax agreement of two logit tensors."""
    diff = (reference - candidate).abs()
    agreement = (reference.argmax(-1) == candidate.argmax(-1)).float().mean()
    return LogitComparison(diff.max().item(), diff.mean().item(), agreement.item())


def verify(hf_dir: str, ckpt_root: str, iteration: Optional[int] = None,
           config_dir: Optional[str] = None) -> LogitComparison:
    """Returns the comparison of the HF model's and the Megatron checkpoint's logits."""
    from redi_megatron.checkpointing import HF_SOURCE_DIR, iteration_dir, latest_iteration
    from redi_megatron.qwen.architecture import read_hf_config
    from redi_megatron.qwen.megatron_checkpoint_io import checkpoint_vocab_and_dtype

    if iteration is None:
        iteration = latest_iteration(ckpt_root)
    _, dtype = checkpoint_vocab_and_dtype(iteration_dir(ckpt_root, iteration))
    tokens = sample_tokens(read_hf_config(os.path.join(ckpt_root, HF_SOURCE_DIR))["vocab_size"])
    return compare(hf_logits(hf_dir, tokens, config_dir, dtype),
                   megatron_logits(ckpt_root, tokens, iteration))
