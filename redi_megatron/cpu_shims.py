"""CPU stand-ins for the CUDA assumptions of megatron-core, applied only when CUDA is absent.

Megatron-Core is written for GPUs: it asks for ``device="cuda"`` tensors, calls
``torch.cuda.*`` functions and classifies tensors by their ``Tensor.type()`` string.
On a machine without CUDA (CI, laptops) we want the very same code paths to run on CPU
with gloo so that every parallel layout can be tested against a single-process reference.

The redirects, and the megatron-core 0.16.1 locations they work around:
1. ``torch.cuda.current_device()`` used as a device (tensor_parallel/layers.py, mappings.py,
   distributed/param_and_grad_buffer.py:800-806, dist_checkpointing/.../state_dict_saver.py:204).
2. ``device="cuda"`` factories: transformer/utils.py:35-40 (get_default_causal_mask),
   pipeline_parallel/schedules.py:596,983,2138 (token counters), optimizer/optimizer.py:473-485,
   optimizer/clip_grads.py:90-207, optimizer/grad_scaler.py, utils.py:1207, rerun_state_machine.py:261.
3. tensor_parallel/random.py:235-275: the CUDA RNG tracker reads/writes CUDA generator states;
   on CPU the tracker keeps CPU generator states instead.
4. ``torch.cuda.synchronize()`` in dist_checkpointing/strategies/filesystem_async.py:230 and
   pipeline_parallel/p2p_communication.py:242,398.
5. ``Tensor.type() == 'torch.cuda.FloatTensor'`` checks in optimizer/optimizer.py:671-699,
   optimizer/distrib_optimizer.py:361-435 and optimizer/clip_grads.py:167.
6. ``Tensor.cuda()`` in optimizer/optimizer.py:375 and distrib_optimizer.py:1089.

megatron-core 0.19.x (Python 3.12) moves some of these and adds one:
7. ``torch.cuda.current_stream()`` waited on for CUDA-graph gradient events before every
   gradient reduction: distributed/param_and_grad_buffer.py:632 (start_grad_sync), reached from
   finish_grad_sync:801. On CPU the current stream is one that has nothing to wait for.
Items 1-6 in 0.19.2: (1) tensor_parallel/layers.py, mappings.py:95, param_and_grad_buffer.py:
1162-1186, distrib_optimizer.py:998, state_dict_saver.py:252; (2) transformer/utils.py:39-44,
schedules.py:749,1121,2292, optimizer/optimizer.py:315,690-702,1249, clip_grads.py:96-231,
rerun_state_machine.py:264-268; (3) random.py:104-135; (4) filesystem_async.py:248,
p2p_communication.py:263,419; (5) optimizer.py:1028, distrib_optimizer.py:466, clip_grads.py:174;
(6) optimizer.py:586-591, distrib_optimizer.py:1374.

Items 1-4 and 7 are handled by giving each loaded ``megatron.core`` module a module-local ``torch``
(``_CpuTorch``) that redirects CUDA device requests to CPU; the global ``torch`` is untouched.
Items 5-6 need ``torch.Tensor`` methods, so they are the only process-wide patches, and they
only change calls that would otherwise fail on a CPU-only build.
"""

import importlib
import sys

import torch

# Megatron modules whose CUDA assumptions we hit; imported before patching so their
# module-level ``torch`` is the one replaced.
_MEGATRON_MODULES = (
    "megatron.core.tensor_parallel.layers",
    "megatron.core.tensor_parallel.mappings",
    "megatron.core.tensor_parallel.random",
    "megatron.core.tensor_parallel.cross_entropy",
    "megatron.core.transformer.utils",
    "megatron.core.fusions.fused_softmax",
    "megatron.core.pipeline_parallel.schedules",
    "megatron.core.pipeline_parallel.p2p_communication",
    "megatron.core.optimizer",
    "megatron.core.optimizer.optimizer",
    "megatron.core.optimizer.distrib_optimizer",
    "megatron.core.optimizer.clip_grads",
    "megatron.core.optimizer.grad_scaler",
    "megatron.core.distributed.param_and_grad_buffer",
    "megatron.core.distributed.distributed_data_parallel",
    "megatron.core.distributed.finalize_model_grads",
    "megatron.core.dist_checkpointing.strategies.filesystem_async",
    "megatron.core.dist_checkpointing.strategies.state_dict_saver",
    "megatron.core.utils",
    "megatron.core.rerun_state_machine",
)

_FACTORIES = ("zeros", "ones", "empty", "full", "tensor", "arange", "randn", "rand", "as_tensor")

_applied = False


def _cpu_device(device):
    """Returns ``device`` with any CUDA device replaced by the CPU."""
    if device is None:
        return None
    if isinstance(device, int) or str(device).startswith("cuda"):
        return "cpu"
    return device


def _redirect_factory(factory):
    def cpu_factory(*args, **kwargs):
        if "device" in kwargs:
            kwargs["device"] = _cpu_device(kwargs["device"])
        kwargs.pop("pin_memory", None)
        return factory(*args, **kwargs)

    cpu_factory.__name__ = factory.__name__
    return cpu_factory


class _CpuStream:
    """Stands in for a CUDA stream: CPU work is already ordered, so there is nothing to wait for."""

    def wait_event(self, event):
        return None

    def wait_stream(self, stream):
        return None

    def synchronize(self):
        return None


class _CpuCuda:
    """Stands in for ``torch.cuda`` inside megatron modules: the CPU plays the current device."""

    def __getattr__(self, name):
        return getattr(torch.cuda, name)

    @staticmethod
    def current_device():
        return "cpu"

    @staticmethod
    def synchronize(*args, **kwargs):
        return None

    @staticmethod
    def current_stream(*args, **kwargs):
        return _CpuStream()

    @staticmethod
    def is_available():
        return False

    @staticmethod
    def get_rng_state(*args, **kwargs):
        return torch.get_rng_state()

    @staticmethod
    def set_rng_state(state, *args, **kwargs):
        torch.set_rng_state(state)

    @staticmethod
    def manual_seed(seed):
        torch.manual_seed(seed)

    @staticmethod
    def empty_cache():
        return None


class _CpuTorch:
    """Stands in for ``torch`` inside megatron modules: CUDA device requests become CPU ones."""

    def __init__(self):
        self.cuda = _CpuCuda()
        for name in _FACTORIES:
            setattr(self, name, _redirect_factory(getattr(torch, name)))

    def __getattr__(self, name):
        return getattr(torch, name)


def _cpu_rng_state(*args, **kwargs):
    return torch.get_rng_state()


def _set_cpu_rng_state(new_state, *args, **kwargs):
    torch.set_rng_state(new_state)


def _patch_tensor_methods():
    original_type = torch.Tensor.type

    def type_as_if_on_gpu(self, dtype=None, non_blocking=False, **kwargs):
        # Megatron classifies params by the CUDA type string; report CPU tensors as such.
        if dtype is None and not kwargs:
            name = original_type(self)
            if self.device.type == "cpu" and not name.startswith("torch.cuda."):
                return name.replace("torch.", "torch.cuda.", 1)
            return name
        return original_type(self, dtype, non_blocking, **kwargs)

    torch.Tensor.type = type_as_if_on_gpu
    torch.Tensor.cuda = lambda self, *args, **kwargs: self


def cpu_shims_needed() -> bool:
    """Returns True when CUDA is absent, the only case in which the shims may be applied."""
    return not torch.cuda.is_available()


def apply_cpu_shims() -> bool:
    """Returns True after redirecting megatron-core's CUDA assumptions to the CPU (idempotent).

    Does nothing, and returns False, when CUDA is available.
    """
    global _applied
    if not cpu_shims_needed():
        return False
    if _applied:
        return True
    for name in _MEGATRON_MODULES:
        importlib.import_module(name)
    cpu_torch = _CpuTorch()
    for name, module in list(sys.modules.items()):
        if name.startswith("megatron.core") and getattr(module, "torch", None) is torch:
            module.torch = cpu_torch
    random = sys.modules["megatron.core.tensor_parallel.random"]
    random._get_cuda_rng_state = _cpu_rng_state
    random._set_cuda_rng_state = _set_cpu_rng_state
    _patch_tensor_methods()
    _applied = True
    return True
