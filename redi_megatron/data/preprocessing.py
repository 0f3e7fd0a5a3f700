"""Tokenising a JSONL file of examples into a token shard, on all cores, deterministically."""

import collections
import itertools
import multiprocessing
import os
from pathlib import Path

from tqdm import tqdm

from redi_megatron.data.example_tokenization import ExampleTokenizer, TokenizationSettings
from redi_megatron.data.token_shards import ShardWriter

MAX_LISTED_SKIPS = 10_000
_CHUNK_LINES = 256


def preprocess(input_path: str | Path, out_prefix: str | Path, settings: TokenizationSettings,
               workers: int | None = None, progress: bool = True) -> dict:
    """Write the shard ``out_prefix`` for the examples in input_path; return the report (also in P.json).

    Chunks of lines are tokenised in worker processes and written in input order, so the output is
    the same for any number of workers.
    """
    workers = workers or os.cpu_count() or 1
    example_tokenizer = ExampleTokenizer(settings)
    skipped: collections.Counter = collections.Counter()
    listed: list[dict] = []
    kept = lines_read = 0
    metadata = {**example_tokenizer.metadata(), "input": str(input_path)}
    with open(input_path, "rb") as handle, \
            ShardWriter(out_prefix, settings.kind, example_tokenizer.tokenizer.vocab_size, metadata) as writer, \
            tqdm(desc=f"tokenising {settings.kind}", unit="example", disable=not progress) as bar:
        chunks = _line_chunks(handle)
        for chunk_lines, chunk in _tokenized(chunks, example_tokenizer, settings, workers):
            writer.add_packed(chunk.tokens, chunk.lengths)
            kept += len(chunk.lengths)
            lines_read += chunk_lines
            skipped.update(chunk.skipped)
            room = MAX_LISTED_SKIPS - len(listed)
            listed.extend({"line": line, "reason": reason} for line, reason in chunk.skipped_lines[:max(room, 0)])
            bar.update(chunk_lines)
        report = {"lines_read": lines_read, "samples_written": kept, "skipped": dict(skipped), "skips": listed}
        writer.metadata["preprocess_report"] = report
    return {**report, "num_tokens": writer.num_tokens}


def _line_chunks(handle):
    """Yield (first line number, lines) chunks of the input."""
    number = 1
    while lines := list(itertools.islice(handle, _CHUNK_LINES)):
        yield number, lines
        number += len(lines)


def _tokenized(chunks, example_tokenizer: ExampleTokenizer, settings: TokenizationSettings, workers: int):
    """Yield (lines in chunk, TokenizedChunk) in input order, tokenising in worker processes if workers > 1."""
    if workers == 1:
        for first, lines in chunks:
            yield len(lines), example_tokenizer.tokenize_lines(first, lines)
        return
    context = multiprocessing.get_context("spawn")
    with context.Pool(workers, initializer=_start_worker, initargs=(settings,)) as pool:
        yield from pool.imap(_tokenize_in_worker, chunks, chunksize=1)


_worker_tokenizer: ExampleTokenizer | None = None


def _start_worker(settings: TokenizationSettings) -> None:
    global _worker_tokenizer
    # One process per core already: the tokenizer's own thread pool would only oversubscribe.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    os.environ["RAYON_NUM_THREADS"] = "1"
    _worker_tokenizer = ExampleTokenizer(settings)


def _tokenize_in_worker(chunk):
    first, lines = chunk
    return len(lines), _worker_tokenizer.tokenize_lines(first, lines)
