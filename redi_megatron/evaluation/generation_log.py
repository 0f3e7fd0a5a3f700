"""The run's generations on disk: one JSONL record per finished problem, appended and fsynced (a restart loses nothing).

Each record is what tools/grade.py reads (``id``, ``samples``) plus ``benchmark``, ``num_tokens``
(per sample, stop token excluded), ``truncated`` (per sample: hit max_new_tokens) and ``seeds``.
``run.json`` beside it records what decides the samples (model, sampling settings, prompt frame,
backend); a restart with anything different is refused rather than mixing two runs in one table.
"""

import json
import os
from pathlib import Path

from redi_megatron.config import ConfigError


class GenerationLog:
    """The records of generations.jsonl, read once (a partial last line from a crash is dropped) and appended to."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.records: dict[str, dict] = {}
        if self.path.exists():
            self._read_and_repair()

    def append(self, record: dict) -> None:
        """Append one problem's record and make it durable before returning."""
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        self.records[str(record["id"])] = record

    def _read_and_repair(self) -> None:
        data = self.path.read_bytes()
        complete = data[:data.rfind(b"\n") + 1]
        if len(complete) < len(data):  # killed mid-write: that problem is regenerated
            with open(self.path, "r+b") as handle:
                handle.truncate(len(complete))
        for line in complete.decode("utf-8").splitlines():
            if line.strip():
                record = json.loads(line)
                self.records[str(record["id"])] = record


def check_run_manifest(path: str | Path, manifest: dict) -> None:
    """Write the manifest on a new run; on a restart raise ConfigError naming the first setting that changed."""
    path = Path(path)
    manifest = json.loads(json.dumps(manifest))  # compared as it reads back
    if not path.exists():
        path.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        return
    previous = json.loads(path.read_text(encoding="utf-8"))
    for key in sorted(set(previous) | set(manifest)):
        if previous.get(key) != manifest.get(key):
            raise ConfigError(f"{path}: '{key}' differs from the run being resumed "
                              f"({previous.get(key)!r} there, {manifest.get(key)!r} now); use a new --out")
