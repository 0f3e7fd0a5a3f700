"""Stop requests (SIGTERM/SIGINT or a stop file) that let a run save before it ends."""

import contextlib
import os
import signal
from multiprocessing import get_context
from multiprocessing.managers import SyncManager

import torch

# The batch script creates this file when Slurm signals it (time limit, `scancel --signal`);
# the trainer polls it each step, so the request never goes through srun, which answers a
# SIGTERM by killing the job step.
STOP_FILE_ENV = "REDI_STOP_FILE"
_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopRequest:
    """Remembers a SIGTERM/SIGINT, or the stop file appearing, so the run saves after its step."""

    def __init__(self, stop_file=None):
        self.requested = False
        self.stop_file = stop_file if stop_file is not None else os.environ.get(STOP_FILE_ENV, "")
        for signum in _SIGNALS:
            signal.signal(signum, self._handle)

    def _handle(self, signum, frame):
        self.requested = True

    def requested_here(self) -> bool:
        """Returns True when this process got a signal or sees the stop file."""
        return self.requested or bool(self.stop_file and os.path.exists(self.stop_file))

    def requested_anywhere(self, device) -> bool:
        """Returns True on every rank when any rank got a stop request."""
        flag = torch.tensor([1.0 if self.requested_here() else 0.0], device=device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return bool(flag.item())

    def acknowledge(self, step: int) -> None:
        """Records in the stop file (rank 0) that the run saved at ``step`` and stopped early.

        The batch script requeues the job only then, not when the run had already finished.
        """
        if self.stop_file and torch.distributed.get_rank() == 0:
            with open(self.stop_file, "w", encoding="utf-8") as handle:
                handle.write(f"saved {step}\n")


@contextlib.contextmanager
def signals_deferred():
    """Blocks SIGTERM/SIGINT in this thread while the block runs, and so in the processes it forks.

    A checkpoint save must finish once started: megatron writes it from forked processes, which
    inherit the blocked mask, so a signal cannot end them halfway. (In this process a signal that
    another thread takes runs StopRequest's handler, which only records it.)
    """
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _ignore_stop_signals() -> None:
    for signum in _SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


def shield_checkpoint_writer() -> None:
    """Starts megatron's checkpoint-writer result queue in a process that ignores SIGTERM/SIGINT.

    megatron-core's file writer reports through a queue served by a spawned manager process,
    which starts with default signal handling: a SIGTERM to the whole job (`scontrol requeue`,
    `scancel`) kills it and the save in progress fails with ConnectionRefusedError. Does nothing
    when the queue exists already or this megatron-core has none.
    """
    try:
        from megatron.core.dist_checkpointing.strategies import filesystem_async
    except ImportError:
        return
    if getattr(filesystem_async, "_results_queue", "absent") is not None:
        return
    manager = SyncManager(ctx=get_context("spawn"))
    manager.start(initializer=_ignore_stop_signals)
    filesystem_async._results_queue = manager.Queue()
