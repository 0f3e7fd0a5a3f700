"""Per-step metrics to stdout, TensorBoard and metrics.jsonl, with the collapse warning."""

import json
import os
import sys
from collections import deque
from typing import Optional

import torch

# Dense bf16 peak of one H100 SXM, for MFU.
_H100_BF16_FLOPS = 989e12


def training_flops_per_token(arch, seq_length: float) -> float:
    """Returns forward+backward FLOPs per token: 6 x parameters plus the attention score terms."""
    h, layers = arch.hidden_size, arch.num_layers
    kv = arch.num_key_value_heads * arch.head_dim
    attention = h * (h + 2 * kv) + h * h
    mlp = 3 * h * arch.intermediate_size
    params = layers * (attention + mlp) + arch.vocab_size * h
    return 6.0 * params + 12.0 * layers * h * seq_length


class CollapseDetector:
    """Flags chosen and rejected normalised log-probs falling fast together."""

    def __init__(self, window: int, drop: float):
        self.drop = drop
        self.history = deque(maxlen=max(window, 2))

    def update(self, chosen: float, rejected: Optional[float]) -> Optional[str]:
        """Returns a warning when both fell by more than ``drop`` over the window, else None."""
        if rejected is None:
            return None
        self.history.append((chosen, rejected))
        if len(self.history) < self.history.maxlen:
            return None
        chosen_drop = self.history[0][0] - chosen
        rejected_drop = self.history[0][1] - rejected
        if chosen_drop > self.drop and rejected_drop > self.drop:
            self.history.clear()
            return (f"chosen and rejected log-probs fell together by {chosen_drop:.3f} and "
                    f"{rejected_drop:.3f} nats/token within {self.history.maxlen} steps: the "
                    "collapse signature (lower optim.lr or loss.alpha)")
        return None


def truncate_metrics(path: str, last_step: int) -> int:
    """Returns how many records of metrics.jsonl ``path`` it dropped: those after ``last_step``.

    A run resumed from the checkpoint of ``last_step`` logs the later steps again; without this
    they would appear twice. A torn last line (a process killed mid-write) is dropped too.
    """
    if not os.path.isfile(path):
        return 0
    kept, dropped = [], 0
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                dropped += 1
                continue
            if record.get("step", 0) <= last_step:
                kept.append(line if line.endswith("\n") else line + "\n")
            else:
                dropped += 1
    if dropped:
        with open(path + ".tmp", "w", encoding="utf-8") as handle:
            handle.writelines(kept)
        os.replace(path + ".tmp", path)
    return dropped


class RunLogger:
    """Writes one record per step on global rank 0; other ranks stay quiet."""

    def __init__(self, config, arch, accelerators, world_size: int, resumed_step: int = 0):
        self.interval = config.train.log_interval
        self.is_writer = torch.distributed.get_rank() == 0
        self.arch = arch
        self.peak_flops = _H100_BF16_FLOPS * world_size if accelerators.cuda else None
        self.collapse = CollapseDetector(config.train.collapse_window, config.train.collapse_drop)
        self.tensorboard = None
        self.jsonl = None
        if self.is_writer and config.train.log_dir:
            os.makedirs(config.train.log_dir, exist_ok=True)
            from torch.utils.tensorboard import SummaryWriter

            # purge_step hides events of steps after the checkpoint that an earlier run logged.
            self.tensorboard = SummaryWriter(config.train.log_dir,
                                             purge_step=resumed_step + 1 if resumed_step else None)
            path = os.path.join(config.train.log_dir, "metrics.jsonl")
            dropped = truncate_metrics(path, resumed_step)
            if dropped:
                print(f"resumed at step {resumed_step}: dropped {dropped} later record(s) of {path}",
                      flush=True)
            self.jsonl = open(path, "a", encoding="utf-8")

    def log(self, step: int, total_steps: int, metrics: dict, seconds: float) -> None:
        """Records the step's metrics (loss, log-probs, grad norm, LR, tokens/s, MFU on GPU).

        tokens/s counts every position the model computed, over all data-parallel ranks.
        """
        metrics = dict(metrics, step=step, step_seconds=seconds,
                       tokens_per_s=metrics["processed_tokens"] / max(seconds, 1e-9))
        if self.peak_flops:
            row_length = metrics["processed_tokens"] / max(metrics["rows"], 1.0)
            flops_per_token = training_flops_per_token(self.arch, row_length)
            metrics["mfu"] = flops_per_token * metrics["tokens_per_s"] / self.peak_flops
        warning = self.collapse.update(metrics["logp_chosen"], metrics.get("logp_rejected"))
        if not self.is_writer:
            return
        if warning:
            print(f"WARNING step {step}: {warning}", file=sys.stderr, flush=True)
        if metrics.get("skipped"):
            print(f"WARNING step {step}: non-finite loss, update skipped", file=sys.stderr,
                  flush=True)
        if self.jsonl:
            self.jsonl.write(json.dumps(metrics) + "\n")
            self.jsonl.flush()
        if self.tensorboard:
            for key, value in metrics.items():
                if isinstance(value, (int, float)) and key != "step":
                    self.tensorboard.add_scalar(f"train/{key}", value, step)
        if step % self.interval == 0 or step == total_steps:
            print(self._line(step, total_steps, metrics), flush=True)

    @staticmethod
    def _line(step: int, total_steps: int, m: dict) -> str:
        parts = [f"step {step}/{total_steps}", f"loss {m['loss']:.4f}",
                 f"logp_chosen {m['logp_chosen']:.4f}"]
        if "logp_rejected" in m:
            parts += [f"logp_rejected {m['logp_rejected']:.4f}", f"margin {m['margin']:.4f}",
                      f"pair_acc {m['pair_accuracy']:.3f}"]
        parts += [f"grad_norm {m['grad_norm']:.4f}", f"lr {m['lr']:.3e}",
                  f"tokens/s {m['tokens_per_s']:.0f}"]
        if "mfu" in m:
            parts.append(f"mfu {m['mfu']:.1%}")
        return " | ".join(parts)

    def close(self) -> None:
        if self.tensorboard:
            self.tensorboard.close()
        if self.jsonl:
            self.jsonl.close()
