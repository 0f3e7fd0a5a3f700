"""A pool of worker processes that grades traces with a hard per-item deadline.

sympy can spend minutes (or all memory) on one pathological expression. Each item gets a soft
limit inside the worker (SIGALRM, main thread) and a hard one in the parent: a worker that is
still busy ``grace_s`` after its soft limit is killed and replaced. Either way the item's verdict
is UNVERIFIED and counted, and the run goes on.
"""

import collections
import multiprocessing
import os
import time
from collections.abc import Iterable, Iterator
from multiprocessing.connection import Connection, wait

from redi_megatron.data.answer_checking import UNVERIFIED, check_trace


class CheckerPool:
    """Grades (trace, reference) items in worker processes; see ``verdicts``."""

    def __init__(self, workers: int | None = None, timeout_s: float = 5.0, grace_s: float = 5.0,
                 require_closed_thinking: bool = True):
        self.timeout_s = timeout_s
        self.grace_s = grace_s
        self.require_closed_thinking = require_closed_thinking
        self.counts: collections.Counter = collections.Counter()
        self.killed_workers = 0
        self._context = multiprocessing.get_context("spawn")
        self._workers = [self._start_worker() for _ in range(workers or os.cpu_count() or 1)]

    def verdicts(self, items: Iterable[tuple[str, str]]) -> Iterator[str]:
        """Yield one verdict (CORRECT / INCORRECT / UNVERIFIED) per item, in input order."""
        pending = iter(enumerate(items))
        done: dict[int, str] = {}
        busy: dict[int, tuple[int, float]] = {}  # worker slot -> (item index, hard deadline)
        next_out = 0
        exhausted = False
        while True:
            for slot in range(len(self._workers)):
                if slot in busy or exhausted:
                    continue
                try:
                    index, (trace, reference) = next(pending)
                except StopIteration:
                    exhausted = True
                    break
                self._workers[slot][1].send((trace, reference))
                busy[slot] = (index, time.monotonic() + self.timeout_s + self.grace_s)
            if not busy:
                break
            self._collect(busy, done)
            while next_out in done:
                verdict = done.pop(next_out)
                self.counts[verdict] += 1
                yield verdict
                next_out += 1

    def close(self) -> None:
        """Stop the workers."""
        for process, connection in self._workers:
            connection.close()
            process.join(timeout=1)
            if process.is_alive():
                process.kill()
                process.join()
        self._workers = []

    def __enter__(self) -> "CheckerPool":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _collect(self, busy: dict[int, tuple[int, float]], done: dict[int, str]) -> None:
        """Wait for at least one result or deadline, and record what finished."""
        by_connection = {self._workers[slot][1]: slot for slot in busy}
        wait_s = max(0.0, min(deadline for _, deadline in busy.values()) - time.monotonic())
        for connection in wait(list(by_connection), timeout=wait_s):
            slot = by_connection[connection]
            index, _ = busy.pop(slot)
            try:
                done[index] = connection.recv()
            except (EOFError, OSError):  # the worker died (e.g. killed for memory): replace it
                done[index] = UNVERIFIED
                self._replace_worker(slot)
        now = time.monotonic()
        for slot, (index, deadline) in list(busy.items()):
            if now >= deadline:
                del busy[slot]
                done[index] = UNVERIFIED
                self._replace_worker(slot)

    def _start_worker(self) -> tuple[multiprocessing.Process, Connection]:
        parent_end, child_end = self._context.Pipe()
        process = self._context.Process(
            target=_serve, args=(child_end, self.timeout_s, self.require_closed_thinking), daemon=True)
        process.start()
        child_end.close()
        return process, parent_end

    def _replace_worker(self, slot: int) -> None:
        process, connection = self._workers[slot]
        process.kill()
        process.join()
        connection.close()
        self.killed_workers += 1
        self._workers[slot] = self._start_worker()


def _serve(connection: Connection, timeout_s: float, require_closed_thinking: bool) -> None:
    """Worker loop: grade items from the pipe in this process's main thread until it closes."""
    while True:
        try:
            trace, reference = connection.recv()
        except EOFError:
            return
        connection.send(check_trace(trace, reference, timeout_s, require_closed_thinking))
