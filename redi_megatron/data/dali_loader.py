"""Optional NVIDIA DALI backend: the same micro-batches, handed to the GPU by a DALI pipeline.

DALI reads the samples through an external source fed by MicroBatchLoader (same order, same
sharding, same resume state), and its pipeline stages the copies to the GPU ahead of the step.
Without ``nvidia-dali`` installed, ``build_loader`` logs one line and returns the plain loader.
"""

import importlib.util
import logging

from redi_megatron.data.micro_batches import MicroBatchLoader

logger = logging.getLogger(__name__)
_FIELDS = ("tokens", "labels", "loss_mask", "position_ids")


def dali_available() -> bool:
    """Return whether nvidia-dali can be imported."""
    return importlib.util.find_spec("nvidia") is not None and importlib.util.find_spec("nvidia.dali") is not None


def build_loader(backend: str = "auto", device_id: int = 0, **loader_arguments):
    """Return a DaliMicroBatchLoader when backend is "dali" (or "auto" and DALI is installed), else MicroBatchLoader."""
    if backend not in ("auto", "dali", "plain"):
        raise ValueError(f"backend must be 'auto', 'dali' or 'plain', got {backend!r}")
    if backend == "plain":
        return MicroBatchLoader(**loader_arguments)
    if not dali_available():
        if backend == "dali":
            raise ImportError("backend='dali' needs nvidia-dali (pip install nvidia-dali-cuda120)")
        logger.info("nvidia-dali is not installed: using the plain micro-batch loader")
        return MicroBatchLoader(**loader_arguments)
    return DaliMicroBatchLoader(MicroBatchLoader(**loader_arguments), device_id)


class DaliMicroBatchLoader:
    """MicroBatchLoader's interface, with micro-batch tensors delivered on the GPU by DALI."""

    def __init__(self, loader: MicroBatchLoader, device_id: int):
        from nvidia.dali import fn, pipeline_def

        if loader.pack_tokens:
            raise ValueError("the DALI backend serves padded rows only; set data.pack_tokens=0 or use the "
                             "plain loader")
        self.loader = loader
        self.dataset, self.kind, self.num_microbatches = loader.dataset, loader.kind, loader.num_microbatches
        self._pending: list[dict] = []
        rows = loader.micro_batch_size * (2 if loader.kind == "pairs" else 1)

        @pipeline_def(batch_size=rows, num_threads=2, device_id=device_id, prefetch_queue_depth=1)
        def pipeline():
            outputs = fn.external_source(source=self._next_columns, num_outputs=len(_FIELDS), batch=True)
            return tuple(output.gpu() for output in outputs)

        self._pipeline = pipeline()
        self._pipeline.build()

    @property
    def consumed_samples(self) -> int:
        return self.loader.consumed_samples

    def next_global_batch(self) -> list[dict]:
        """Return this rank's micro-batches of the next global batch, as GPU torch tensors."""
        import torch
        from nvidia.dali.plugin.pytorch import feed_ndarray

        self._pending = self.loader.next_global_batch()
        batches = []
        for cpu_batch in list(self._pending):
            outputs = self._pipeline.run()
            batch = {}
            for name, output in zip(_FIELDS, outputs):
                tensor = output.as_tensor()
                batch[name] = feed_ndarray(tensor, torch.empty(tensor.shape(), dtype=cpu_batch[name].dtype,
                                                               device=f"cuda:{self._pipeline.device_id}"))
            if "ref_logps" in cpu_batch:
                batch["ref_logps"] = cpu_batch["ref_logps"].to(batch["tokens"].device)
            batches.append(batch)
        return batches

    def state_dict(self) -> dict:
        return self.loader.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.loader.load_state_dict(state)

    def _next_columns(self):
        """External-source callback: one micro-batch's rows per output, in the loader's order."""
        batch = self._pending.pop(0)
        return [list(batch[name].numpy()) for name in _FIELDS]
