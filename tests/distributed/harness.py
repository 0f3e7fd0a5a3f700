"""Helpers for multi-process tests: spawn gloo workers, synthetic batches, full-layout gradients."""

import os
import socket
import traceback

import torch
import torch.multiprocessing as mp

TINY_MODEL = [
    "model.hidden_size=64", "model.num_layers=4", "model.num_attention_heads=4",
    "model.num_key_value_heads=2", "model.intermediate_size=128", "model.vocab_size=500",
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _worker(rank, world_size, port, fn, args, error_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    try:
        fn(rank, world_size, *args)
    except BaseException:
        with open(os.path.join(error_dir, f"rank{rank}.err"), "w") as handle:
            handle.write(traceback.format_exc())
        raise
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def run_spawned(fn, world_size: int, *args, error_dir: str):
    """Runs fn(rank, world_size, *args) in ``world_size`` fresh processes; raises with their traceback."""
    os.makedirs(error_dir, exist_ok=True)
    try:
        mp.start_processes(_worker, args=(world_size, free_port(), fn, args, error_dir),
                           nprocs=world_size, start_method="spawn")
    except Exception as error:
        messages = []
        for name in sorted(os.listdir(error_dir)):
            with open(os.path.join(error_dir, name)) as handle:
                messages.append(f"--- {name}\n{handle.read()}")
        raise AssertionError("\n".join(messages) or str(error)) from error


def synthetic_batch(kind: str, rows: int, seq_length: int, vocab: int, seed: int):
    """Returns a global batch dict (tokens, labels, loss_mask, position_ids) of ``rows`` sequences.

    Each row has a random prompt of 3-8 tokens, a completion, then right padding.
    For kind="pairs" rows are interleaved chosen/rejected.
    """
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, vocab, (rows, seq_length), generator=generator)
    loss_mask = torch.zeros(rows, seq_length)
    for row in range(rows):
        prompt = int(torch.randint(3, 9, (1,), generator=generator))
        end = int(torch.randint(seq_length // 2, seq_length, (1,), generator=generator))
        loss_mask[row, prompt - 1:end - 1] = 1.0
    labels = torch.roll(tokens, -1, dims=1)
    position_ids = torch.arange(seq_length).expand(rows, seq_length).clone()
    return {"tokens": tokens, "labels": labels, "loss_mask": loss_mask, "position_ids": position_ids}


def split_micro_batches(batch, dp_rank: int, dp_size: int, rows_per_micro_batch: int):
    """Returns this data-parallel rank's micro-batches of a global batch (contiguous rows)."""
    rows = batch["tokens"].shape[0]
    share = rows // dp_size
    start = dp_rank * share
    return [
        {key: value[i:i + rows_per_micro_batch] for key, value in batch.items()}
        for i in range(start, start + share, rows_per_micro_batch)
    ]


def _global_name(name: str, model) -> str:
    parts = name.split(".")
    if parts[:2] == ["decoder", "layers"]:
        local = int(parts[2])
        parts[2] = str(model.decoder.layers[local].layer_number - 1)
    return ".".join(parts)


def full_gradients(engine) -> dict:
    """Returns {TP=1/PP=1 parameter name: full gradient}, identical on every rank.

    Must be called by all ranks. Tied output weights on the last stage are skipped (the embedding
    holds the same, all-reduced gradient).
    """
    from megatron.core import parallel_state
    from megatron.core.utils import unwrap_model

    tp_group = parallel_state.get_tensor_model_parallel_group()
    tp_size = parallel_state.get_tensor_model_parallel_world_size()
    local = {}
    for chunk in engine.chunks:
        model = unwrap_model(chunk)
        for name, param in model.named_parameters():
            if name == "output_layer.weight" and model.share_embeddings_and_output_weights:
                continue
            grad = param.main_grad.detach().float().clone()
            if getattr(param, "tensor_model_parallel", False) and tp_size > 1:
                parts = [torch.empty_like(grad) for _ in range(tp_size)]
                torch.distributed.all_gather(parts, grad.contiguous(), group=tp_group)
                if name.endswith("linear_fc1.weight"):
                    gates, ups = zip(*(part.chunk(2, dim=0) for part in parts))
                    grad = torch.cat(gates + ups, dim=0)
                else:
                    grad = torch.cat(parts, dim=param.partition_dim)
            local[_global_name(name, model)] = grad
    gathered = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(gathered, local)
    merged = {}
    for part in gathered:
        for key, value in part.items():
            merged.setdefault(key, value)
    return merged


def assert_gradients_close(actual: dict, reference: dict, rtol: float, label: str):
    """Asserts the same parameter names and per-tensor normwise relative error <= rtol."""
    assert sorted(actual) == sorted(reference), f"{label}: parameter names differ: " \
        f"{sorted(set(actual) ^ set(reference))}"
    for key, ref in reference.items():
        got = actual[key]
        assert got.shape == ref.shape, f"{label}: {key} shape {tuple(got.shape)} != {tuple(ref.shape)}"
        error = (got - ref).norm() / ref.norm().clamp_min(1e-30)
        assert error <= rtol, f"{label}: gradient of {key} differs, relative error {error:.3e}"
