"""Stop requests (signal or stop file) and metrics.jsonl after a resume."""

import json
import os
import signal

import pytest
import torch

from redi_megatron.run_logging import truncate_metrics
from redi_megatron.stop_request import StopRequest, shield_checkpoint_writer, signals_deferred


def test_metrics_after_the_resumed_step_are_dropped(tmp_path):
    path = tmp_path / "metrics.jsonl"
    lines = [json.dumps({"step": step, "loss": 1.0 / step}) for step in range(1, 9)]
    path.write_text("\n".join(lines) + '\n{"step": 9, "lo')  # torn last line: killed mid-write
    assert truncate_metrics(str(path), 5) == 4
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2, 3, 4, 5]
    assert truncate_metrics(str(path), 5) == 0
    assert truncate_metrics(str(tmp_path / "absent.jsonl"), 5) == 0


def test_stop_file_and_signal_request_a_stop(tmp_path):
    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        stop = StopRequest(stop_file=str(tmp_path / "stop"))
        assert not stop.requested_here()
        (tmp_path / "stop").touch()
        assert stop.requested_here()
        stop = StopRequest(stop_file="")
        with signals_deferred():  # the process survives a SIGTERM during a save
            os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def test_acknowledge_records_the_saved_step(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.distributed, "get_rank", lambda: 0)
    stop = StopRequest(stop_file=str(tmp_path / "stop"))
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    stop.acknowledge(7)
    assert (tmp_path / "stop").read_text() == "saved 7\n"


def test_processes_forked_during_a_save_ignore_sigterm():
    # megatron writes checkpoint files from forked processes: they inherit the blocked mask.
    with signals_deferred():
        child = os.fork()
        if child == 0:
            os._exit(0 if signal.SIGTERM in signal.pthread_sigmask(signal.SIG_BLOCK, []) else 1)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_the_checkpoint_writer_queue_survives_sigterm(monkeypatch):
    # scontrol requeue signals every process of the job, megatron's writer-queue server included.
    from megatron.core.dist_checkpointing.strategies import filesystem_async

    if not hasattr(filesystem_async, "_results_queue"):
        pytest.skip("this megatron-core writes checkpoints without a results-queue server")
    monkeypatch.setattr(filesystem_async, "_results_queue", None)
    shield_checkpoint_writer()
    queue = filesystem_async._results_queue
    server = queue._manager._process
    os.kill(server.pid, signal.SIGTERM)
    server.join(timeout=2)  # returns at once if the signal ended it
    assert server.is_alive()
    queue.put({"written": 1})
    assert queue.get(timeout=30) == {"written": 1}
    queue._manager.shutdown()
