"""A pool of worker processes that grades traces under a CPU-time budget per item.

sympy can spend minutes (or all memory) on one pathological expression, so every item has a
budget; it is counted in CPU seconds of the worker, never wall-clock seconds, so that a verdict
does not depend on how loaded the machine is:

- soft limit: ``timeout_s`` of CPU time inside the check (``ITIMER_PROF``; the item comes back
  UNVERIFIED and the worker carries on);
- hard limit: ``timeout_s + grace_s`` of CPU time, enforced by the kernel (``RLIMIT_CPU``), for
  code that the soft limit cannot interrupt (one long C call); the worker dies and is replaced.

A worker's start-up (imports, a warm-up check) happens before it takes items and is not counted.
sympy's cache is cleared before each item so that an item costs the same whichever items ran
before it in that worker. An item that runs out of budget, or whose worker dies (e.g. killed for
memory), is retried up to ``retries`` times before it is called UNVERIFIED; ``retried`` counts
those items. The only wall-clock limit, ``wall_limit_s``, is a safety net for a worker that stops
using CPU altogether (blocked); a CPU-bound check never reaches it.
"""

import collections
import math
import multiprocessing
import os
import resource
import time
from collections.abc import Iterable, Iterator
from multiprocessing.connection import Connection, wait

from redi_megatron.data.answer_checking import ERROR, UNVERIFIED, check_trace, reference_text, validate_grader

_READY = "ready"
MAX_LISTED_ERRORS = 100


class CheckerPool:
    """Grades (trace, reference) items in worker processes; see ``verdicts``.

    ``grader`` ("package" or "paper") and ``boxes`` ("last" or "joined") choose the rule; see
    answer_checking.check_trace. ``counts`` tallies the verdicts given (``counts[ERROR]``: checks
    that raised), ``retried`` the items re-run after a timeout or a dead worker, ``errors`` the
    messages of the first MAX_LISTED_ERRORS checks that raised.
    """

    def __init__(self, workers: int | None = None, timeout_s: float = 5.0, grace_s: float = 5.0,
                 require_closed_thinking: bool = True, grader: str = "package", boxes: str = "last",
                 retries: int = 1, wall_limit_s: float = 600.0):
        validate_grader(grader, boxes)
        self.timeout_s = timeout_s
        self.grace_s = grace_s
        self.require_closed_thinking = require_closed_thinking
        self.grader = grader
        self.boxes = boxes
        self.retries = retries
        self.wall_limit_s = wall_limit_s
        self.counts: collections.Counter = collections.Counter()
        self.retried = 0
        self.killed_workers = 0
        self.errors: list[str] = []
        self._context = multiprocessing.get_context("spawn")
        self._workers = [self._start_worker() for _ in range(workers or os.cpu_count() or 1)]
        self._ready = [False] * len(self._workers)

    def settings(self) -> dict:
        """Return the grading rule and budget, for reports."""
        return {"grader": self.grader, "boxes": self.boxes, "require_closed_thinking": self.require_closed_thinking,
                "cpu_budget_s": self.timeout_s, "hard_cpu_budget_s": self.timeout_s + self.grace_s,
                "retries": self.retries}

    def verdicts(self, items: Iterable[tuple[str, str]]) -> Iterator[str]:
        """Yield one verdict (CORRECT / INCORRECT / UNVERIFIED / ERROR) per item, in input order."""
        pending = iter(enumerate(items))
        again: collections.deque = collections.deque()  # (index, item, tries so far) to run once more
        done: dict[int, str] = {}
        busy: dict[int, tuple[int, tuple, int, float]] = {}  # slot -> (index, item, tries, wall deadline)
        next_out = 0
        exhausted = False
        while True:
            for slot in range(len(self._workers)):
                if slot in busy or not self._ready[slot]:
                    continue
                if again:
                    index, item, tries = again.popleft()
                elif exhausted:
                    break
                else:
                    try:
                        index, item = next(pending)
                    except StopIteration:
                        exhausted = True
                        break
                    tries = 0
                self._workers[slot][1].send(item)
                busy[slot] = (index, item, tries, time.monotonic() + self.wall_limit_s)
            if not busy and exhausted and not again:
                break
            self._collect(busy, done, again)
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

    def _collect(self, busy: dict, done: dict[int, str], again: collections.deque) -> None:
        """Wait for a worker to become ready, a result, a dead worker or the wall-clock safety net."""
        by_connection = {self._workers[slot][1]: slot for slot in range(len(self._workers))
                         if slot in busy or not self._ready[slot]}
        deadlines = [entry[3] for entry in busy.values()]
        wait_s = max(0.0, min(deadlines) - time.monotonic()) if deadlines else None
        for connection in wait(list(by_connection), timeout=wait_s):
            slot = by_connection[connection]
            try:
                message = connection.recv()
            except (EOFError, OSError):  # the worker died: its hard CPU limit, or killed for memory
                if slot not in busy:
                    self._workers[slot][0].join(timeout=5)
                    raise RuntimeError(f"a checker worker exited during start-up "
                                       f"(exit code {self._workers[slot][0].exitcode})") from None
                self._finish_timed_out(busy.pop(slot), done, again)
                self._replace_worker(slot)
                continue
            if message == _READY:
                self._ready[slot] = True
                continue
            index, item, tries, _ = busy.pop(slot)
            verdict, error = message
            if error and len(self.errors) < MAX_LISTED_ERRORS:
                self.errors.append(error)
            if verdict == UNVERIFIED:
                self._finish_timed_out((index, item, tries, 0.0), done, again)
            else:
                done[index] = verdict
        now = time.monotonic()
        for slot, entry in list(busy.items()):
            if now >= entry[3]:
                del busy[slot]
                done[entry[0]] = UNVERIFIED
                self._replace_worker(slot)

    def _finish_timed_out(self, entry: tuple, done: dict[int, str], again: collections.deque) -> None:
        """Queue a timed-out item for another try, or record it as UNVERIFIED when out of tries."""
        index, item, tries, _ = entry
        if tries < self.retries:
            if tries == 0:
                self.retried += 1
            again.append((index, item, tries + 1))
        else:
            done[index] = UNVERIFIED

    def _start_worker(self) -> tuple[multiprocessing.Process, Connection]:
        parent_end, child_end = self._context.Pipe()
        options = (self.timeout_s, self.grace_s, self.require_closed_thinking, self.boxes, self.grader)
        process = self._context.Process(target=_serve, args=(child_end, options), daemon=True)
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
        self._ready[slot] = False


def _serve(connection: Connection, options: tuple) -> None:
    """Worker loop: grade items from the pipe in this process's main thread until it closes."""
    timeout_s, grace_s, require_closed_thinking, boxes, grader = options
    from sympy.core.cache import clear_cache

    check_trace("</think> \\boxed{\\frac{1}{2}}", "0.5", timeout_s, True, "last", grader)  # imports, first use
    connection.send(_READY)
    while True:
        try:
            trace, reference = connection.recv()
        except EOFError:
            return
        clear_cache()
        _set_hard_cpu_limit(grace_s + timeout_s)
        try:
            verdict = check_trace(trace, reference_text(reference), timeout_s, require_closed_thinking, boxes, grader)
            connection.send((verdict, None))
        except Exception as error:  # a bug in the checker or a bad reference: reported, never a verdict
            connection.send((ERROR, f"{type(error).__name__}: {error}"))


def _set_hard_cpu_limit(seconds: float) -> None:
    """Make the kernel stop this process once it has used ``seconds`` more CPU time (whole seconds)."""
    # No core file when the kernel stops a runaway check (SIGXCPU's default action dumps core).
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    usage = resource.getrusage(resource.RUSAGE_SELF)
    used = usage.ru_utime + usage.ru_stime
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    resource.setrlimit(resource.RLIMIT_CPU, (math.ceil(used + seconds), hard))
