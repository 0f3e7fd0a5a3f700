"""Section 1: the package on the device against transformers and Megatron's own loss, exactly.

- logits: a tiny Qwen2 converted from transformers, the package's model on the device against
  transformers on the same device (fp32 and bf16);
- loss and gradients: SFT and REDI through the training step on the device (fp32) against
  transformers on the CPU with the naive full-softmax objective, per tensor;
- loss head: the fused head against Megatron's vocab_parallel_cross_entropy (fp32 and bf16);
- one training step of every objective, and a checkpoint save and exact resume.
"""

import os
import tempfile
from typing import Dict, List

import numpy as np
import torch

from common import Scale, tiny_hf_model, write_pair_shards
from hf_reference import per_sequence_logps

OBJECTIVES = ("sft", "redi", "symmetric", "simpo", "dpo")
TINY_MODEL = dict(vocab_size=1000, hidden=64, layers=2, heads=4, kv_heads=2, intermediate=128)
TINY_DATA = ["data.seq_length=64", "data.micro_batch_size=2", "data.global_batch_size=4",
             "train.precision=fp32", "optim.lr=1e-3", "optim.warmup_fraction=0.0"]


def _load_engine(ckpt: str, precision: str):
    from redi_megatron.checkpointing import HF_SOURCE_DIR, load_checkpoint
    from redi_megatron.config import load_config
    from redi_megatron.engine import build_engine

    config = load_config(None, [f"model.hf_config={ckpt}/{HF_SOURCE_DIR}",
                                f"train.precision={precision}", "train.train_steps=1"])
    engine = build_engine(config, total_steps=1)
    load_checkpoint(ckpt, engine.chunks, weights_only=True)
    if engine.optimizer is not None:
        engine.optimizer.reload_model_params()
    return engine


def _megatron_logits(engine, tokens: torch.Tensor) -> torch.Tensor:
    from megatron.core.utils import unwrap_model

    model = unwrap_model(engine.chunks[0])
    tokens = tokens.to(engine.device)
    positions = torch.arange(tokens.shape[1], device=engine.device).expand_as(tokens)
    with torch.no_grad():
        hidden = engine.chunks[0](tokens, positions, None)
        logits = hidden.transpose(0, 1) @ model.output_weight().t()
    return logits[..., :engine.arch.vocab_size].float()


def _hf_model(hf_dir: str, device, dtype=torch.float32):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(hf_dir, dtype=dtype,
                                                attn_implementation="sdpa").to(device)


def check_logits(hf_dir: str, ckpt: str, scale: Scale) -> List[Dict]:
    """Returns max |logit diff| and argmax agreement against transformers, fp32 and bf16."""
    tokens = torch.randint(0, TINY_MODEL["vocab_size"], (2, 256),
                           generator=torch.Generator().manual_seed(0))
    results = []
    for precision, dtype, tolerance in (("fp32", torch.float32, 1e-4),
                                        ("bf16", torch.bfloat16, 0.25)):
        engine = _load_engine(ckpt, precision)
        ours = _megatron_logits(engine, tokens)
        with torch.no_grad():
            theirs = _hf_model(hf_dir, scale.device, dtype)(
                input_ids=tokens.to(scale.device)).logits.float()
        diff = (ours - theirs).abs()
        agreement = float((ours.argmax(-1) == theirs.argmax(-1)).float().mean())
        results.append({"check": f"logits vs transformers ({precision}, {scale.device.type})",
                        "value": f"max {float(diff.max()):.2e}, argmax agree {agreement:.4f}",
                        "passed": bool(diff.max() <= tolerance), "tolerance": tolerance})
    return results


def _pair_micro_batch(vocab: int, length: int, seed: int) -> Dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randint(2, vocab, (4, length), generator=generator)
    loss_mask = torch.zeros(4, length)
    for row, (start, end) in enumerate(((5, 40), (5, 60), (9, 30), (9, 63))):
        loss_mask[row, start - 1:end - 1] = 1.0
    labels = torch.roll(tokens, -1, dims=1)
    return {"tokens": tokens, "labels": labels, "loss_mask": loss_mask,
            "position_ids": torch.arange(length).expand(4, length).clone()}


def _megatron_named_grads(engine) -> Dict[str, torch.Tensor]:
    from megatron.core.utils import unwrap_model

    model = unwrap_model(engine.chunks[0])
    return {name: param.main_grad.detach().float().cpu()
            for name, param in model.named_parameters()}


def _hf_named_grads(engine, megatron_grads: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    from redi_megatron.qwen import state_dict_mapping as mapping

    grads = {}
    for group in mapping.tensor_groups(engine.arch):
        names = mapping.megatron_names(engine.arch, group)
        grads.update(mapping.hf_group(engine.arch, group, {n: megatron_grads[n] for n in names}))
    return grads


def check_loss_and_gradients(hf_dir: str, ckpt: str, scale: Scale) -> List[Dict]:
    """Returns the SFT and REDI loss/gradient agreement with transformers on the CPU (fp32)."""
    from redi_megatron.training_step import forward_backward

    results = []
    batch = _pair_micro_batch(TINY_MODEL["vocab_size"], 64, seed=1)
    for objective in ("sft", "redi"):
        engine = _load_engine(ckpt, "fp32")
        engine.config.loss.objective = objective
        ours = forward_backward(engine, [dict(batch)])["loss"]
        hf_named = _hf_named_grads(engine, _megatron_named_grads(engine))

        reference = _hf_model(hf_dir, "cpu")
        sums, lengths = per_sequence_logps(reference, batch["tokens"], batch["labels"],
                                           batch["loss_mask"])
        if objective == "sft":
            loss = -sums.sum() / lengths.sum()
        else:
            norm = sums / lengths
            loss = (-norm[0::2] + engine.config.loss.alpha * norm[1::2]).mean()
        loss.backward()
        worst = 0.0
        for name, param in reference.named_parameters():
            if name == "lm_head.weight" and name not in hf_named:
                continue
            ref = param.grad.float()
            worst = max(worst, float((hf_named[name] - ref).norm() / ref.norm().clamp_min(1e-30)))
        loss_error = abs(ours - float(loss)) / abs(float(loss))
        results.append({"check": f"{objective} loss + grads ({scale.device.type} fp32 vs CPU HF)",
                        "value": f"loss rel {loss_error:.1e}, worst grad rel {worst:.1e}",
                        "passed": loss_error <= 1e-5 and worst <= 1e-4, "tolerance": "1e-5 / 1e-4"})
    return results


def check_loss_head(scale: Scale) -> List[Dict]:
    """Returns the fused head's log-probs and gradients against Megatron's cross-entropy."""
    from redi_megatron.weighted_cross_entropy import (unfused_token_logprobs,
                                                      vocab_parallel_token_logprobs)

    tokens, hidden_size, vocab = (256, 64, 1000) if scale.tiny else (4096, 1536, 151936)
    results = []
    for dtype, tolerance in ((torch.float32, 1e-5), (torch.bfloat16, 2e-2)):
        generator = torch.Generator().manual_seed(2)
        hidden = torch.randn(tokens, 1, hidden_size, generator=generator).to(scale.device, dtype)
        weight = (torch.randn(vocab, hidden_size, generator=generator) * 0.02).to(scale.device,
                                                                                 dtype)
        labels = torch.randint(0, vocab, (1, tokens), generator=generator).to(scale.device)
        outputs = []
        for function in (vocab_parallel_token_logprobs, unfused_token_logprobs):
            h = hidden.clone().requires_grad_()
            w = weight.clone().requires_grad_()
            logp = function(h, w, labels)
            logp.sum().backward()
            outputs.append((logp.detach().float(), h.grad.float(), w.grad.float()))
        (ours, our_h, our_w), (theirs, their_h, their_w) = outputs
        value_error = float((ours - theirs).abs().max())
        grad_error = max(float((our_h - their_h).norm() / their_h.norm()),
                         float((our_w - their_w).norm() / their_w.norm()))
        results.append({"check": f"fused head vs megatron CE ({str(dtype)[6:]})",
                        "value": f"logp max {value_error:.1e}, grad rel {grad_error:.1e}",
                        "passed": value_error <= tolerance and grad_error <= tolerance,
                        "tolerance": tolerance})
    return results


def _train(ckpt: str, data: str, save: str, overrides: List[str]):
    from redi_megatron.checkpointing import HF_SOURCE_DIR
    from redi_megatron.config import load_config
    from redi_megatron.training import train

    config = load_config(None, [f"model.hf_config={ckpt}/{HF_SOURCE_DIR}", f"data.path={data}",
                                f"checkpoint.load={ckpt}", "checkpoint.finetune=true",
                                f"checkpoint.save={save}"] + TINY_DATA + overrides)
    return train(config)


def check_training_steps(ckpt: str, workdir: str) -> List[Dict]:
    """Returns one optimizer step of every objective from the converted model."""
    from redi_megatron.data.token_shards import TokenShards

    pairs = write_pair_shards(os.path.join(workdir, "pairs"), 16, TINY_MODEL["vocab_size"],
                              prompt_len=6, chosen_len=20, rejected_len=30)
    # DPO's offline reference log-probs: any fixed values exercise the objective's path.
    count = len(TokenShards(pairs))
    np.save(f"{pairs}.ref_logps.npy", -np.full((count, 2), 50.0))
    sft = write_pair_shards(os.path.join(workdir, "sft"), 16, TINY_MODEL["vocab_size"],
                            prompt_len=6, chosen_len=20, rejected_len=0, kind="sft")
    results = []
    for objective in OBJECTIVES:
        history = _train(ckpt, sft if objective == "sft" else pairs, os.path.join(workdir, f"step_{objective}"),
                         [f"loss.objective={objective}", "train.train_steps=1"])
        loss, grad_norm = history[0]["loss"], history[0]["grad_norm"]
        results.append({"check": f"one training step: {objective}",
                        "value": f"loss {loss:.4f}, grad norm {grad_norm:.3f}",
                        "passed": bool(np.isfinite(loss) and grad_norm > 0), "tolerance": "finite"})
    return results


def check_resume(ckpt: str, workdir: str) -> List[Dict]:
    """Returns whether a run saved at step 2 and resumed matches an uninterrupted 4-step run."""
    pairs = os.path.join(workdir, "pairs")
    common = ["loss.objective=redi", "train.train_steps=4", "checkpoint.save_interval=2"]
    full = _train(ckpt, pairs, os.path.join(workdir, "full"), common)
    interrupted = os.path.join(workdir, "interrupted")
    first = _train(ckpt, pairs, interrupted, common + ["train.max_steps=2"])
    second = _train(ckpt, pairs, interrupted, common)
    expected = [m["loss"] for m in full]
    resumed = [m["loss"] for m in first + second]
    worst = max(abs(a - b) / abs(a) for a, b in zip(expected, resumed))
    return [{"check": "save at step 2, resume, steps 3-4", "value": f"max loss rel diff {worst:.1e}",
             "passed": len(resumed) == 4 and worst <= 1e-6, "tolerance": 1e-6}]


def run(scale: Scale) -> Dict:
    """Returns every correctness check as rows of (check, value, passed, tolerance)."""
    from redi_megatron.config import ParallelConfig
    from redi_megatron.qwen.conversion import convert_hf_to_megatron

    workdir = tempfile.mkdtemp(prefix="gpu_check_")
    hf_dir = tiny_hf_model(os.path.join(workdir, "hf"), **TINY_MODEL)
    ckpt = os.path.join(workdir, "converted")
    convert_hf_to_megatron(hf_dir, ckpt, ParallelConfig(), progress=lambda message: None)
    rows = check_logits(hf_dir, ckpt, scale)
    rows += check_loss_and_gradients(hf_dir, ckpt, scale)
    rows += check_loss_head(scale)
    rows += check_training_steps(ckpt, workdir)
    rows += check_resume(ckpt, workdir)
    return {"rows": rows, "passed": all(row["passed"] for row in rows)}
