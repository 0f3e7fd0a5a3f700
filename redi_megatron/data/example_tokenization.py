"""Turning JSONL examples (sft: problem/response; pairs: problem/chosen/rejected) into token ids.

The prompt is the chat-formatted problem (chat_format). Each completion is the response's ids plus
the closing tokens chosen by ``completion_end``; |y| in the objectives counts all of them:

- ``"end_of_turn"`` (default): response + ``<|im_end|>``, the token generation stops at;
- ``"paper"``: response + ``<|im_end|>`` + ``\n`` + the tokenizer's eos token, as the REDI authors'
  TRL fork trains (the rendered assistant turn ``trace<|im_end|>\n``, then TRL's appended eos).
  |y| is 2 tokens longer per completion than with the default.

Prompt and response are tokenised separately so the prompt/completion boundary (the loss mask) is
exact, whatever merges the tokenizer would make across it.
"""

import collections
import json
from dataclasses import dataclass, field

import numpy as np

from redi_megatron.data.chat_format import DEFAULT_PROMPT_TEMPLATE, ChatFormat, qwen_format, template_format
from redi_megatron.data.token_shards import token_dtype
from redi_megatron.data.tokenizer_loading import load_tokenizer

RESPONSE_FIELDS = {"sft": ("response",), "pairs": ("chosen", "rejected")}
COMPLETION_ENDS = ("end_of_turn", "paper")


@dataclass(frozen=True)
class TokenizationSettings:
    """Everything that decides the token ids of an example (recorded in the shard metadata)."""

    tokenizer_path: str
    kind: str
    system_prompt: str | None = None
    prompt_template: str = DEFAULT_PROMPT_TEMPLATE
    use_chat_template: bool = True
    max_prompt_tokens: int = 800
    max_response_tokens: int = 19_000
    completion_end: str = "end_of_turn"


@dataclass
class TokenizedChunk:
    """Kept samples of a chunk of lines, packed for ShardWriter.add_packed, plus what was skipped."""

    tokens: np.ndarray
    lengths: np.ndarray
    skipped: collections.Counter = field(default_factory=collections.Counter)
    skipped_lines: list[tuple[int, str]] = field(default_factory=list)


class ExampleTokenizer:
    """Tokenises chunks of JSONL lines under fixed TokenizationSettings."""

    def __init__(self, settings: TokenizationSettings):
        if settings.kind not in RESPONSE_FIELDS:
            raise ValueError(f"kind must be 'sft' or 'pairs', got {settings.kind!r}")
        if settings.completion_end not in COMPLETION_ENDS:
            raise ValueError(f"completion_end must be one of {COMPLETION_ENDS}, got {settings.completion_end!r}")
        self.settings = settings
        self.tokenizer = load_tokenizer(settings.tokenizer_path)
        self.chat_format = self._chat_format()
        self.completion_suffix = self._completion_suffix()
        self.dtype = token_dtype(self.tokenizer.vocab_size)

    def metadata(self) -> dict:
        """Return the ids and formatting the shard readers and the training loop need."""
        return {
            "eos_id": self.tokenizer.eos_id, "pad_id": self.tokenizer.pad_id,
            "end_of_turn_id": self.tokenizer.end_of_turn_id,
            "tokenizer": self.settings.tokenizer_path,
            "chat_prefix": self.chat_format.prefix, "chat_suffix": self.chat_format.suffix,
            "prompt_template": self.chat_format.prompt_template,
            "completion_end": self.settings.completion_end, "completion_suffix_ids": self.completion_suffix,
            "max_prompt_tokens": self.settings.max_prompt_tokens,
            "max_response_tokens": self.settings.max_response_tokens,
        }

    def tokenize_lines(self, first_line: int, lines: list[bytes]) -> TokenizedChunk:
        """Return the kept samples of ``lines`` (line numbers start at first_line) and the skip counts."""
        fields = RESPONSE_FIELDS[self.settings.kind]
        chunk = TokenizedChunk(np.zeros(0, self.dtype), np.zeros((0, 1 + len(fields)), np.int64))
        examples = []
        for number, line in enumerate(lines, start=first_line):
            parsed = _parsed_example(line, fields)
            if isinstance(parsed, str):
                chunk.skipped[parsed] += 1
                chunk.skipped_lines.append((number, parsed))
            else:
                examples.append((number, parsed))
        if not examples:
            return chunk
        texts = [self.chat_format.prompt_text(example["problem"]) for _, example in examples]
        texts += [example[name] for _, example in examples for name in fields]
        ids = self.tokenizer.encode_batch(texts)
        prompts, responses = ids[:len(examples)], ids[len(examples):]
        kept_prompts, kept_completions = [], []
        for i, (number, _) in enumerate(examples):
            completions = responses[i * len(fields):(i + 1) * len(fields)]
            reason = self._length_problem(prompts[i], completions)
            if reason:
                chunk.skipped[reason] += 1
                chunk.skipped_lines.append((number, reason))
            else:
                kept_prompts.append(prompts[i])
                kept_completions.append(completions)
        chunk.skipped_lines.sort()
        if kept_prompts:
            chunk.tokens, chunk.lengths = pack_samples(kept_prompts, kept_completions,
                                                       self.completion_suffix, self.dtype)
        return chunk

    def _length_problem(self, prompt: list[int], completions: list[list[int]]) -> str | None:
        if not prompt:
            return "empty_prompt"
        if len(prompt) > self.settings.max_prompt_tokens:
            return "prompt_too_long"
        if any(len(completion) > self.settings.max_response_tokens for completion in completions):
            return "response_too_long"
        return None

    def _chat_format(self) -> ChatFormat:
        settings, tokenizer = self.settings, self.tokenizer
        if settings.use_chat_template and tokenizer.chat_template:
            special = {"eos_token": tokenizer.end_of_turn, "bos_token": ""}
            return template_format(tokenizer.chat_template, tokenizer.end_of_turn, settings.system_prompt,
                                   settings.prompt_template, special)
        return qwen_format(settings.system_prompt, settings.prompt_template)

    def _completion_suffix(self) -> list[int]:
        """Return the ids that close every completion (see the module docstring)."""
        tokenizer = self.tokenizer
        if self.settings.completion_end == "end_of_turn":
            return [tokenizer.end_of_turn_id]
        return [tokenizer.end_of_turn_id, *tokenizer.encode_batch(["\n"])[0], tokenizer.eos_id]


def pack_samples(prompts: list[list[int]], completions: list[list[list[int]]], suffix: list[int],
                 dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """Return (tokens back to back, [n, 1 + completions] lengths) with ``suffix`` closing each completion."""
    pieces, lengths = [], []
    for prompt, sample_completions in zip(prompts, completions):
        pieces.append(prompt)
        for completion in sample_completions:
            pieces.extend((completion, suffix))
        lengths.append([len(prompt), *(len(c) + len(suffix) for c in sample_completions)])
    return np.concatenate([np.asarray(piece, dtype) for piece in pieces]), np.array(lengths, np.int64)


def _parsed_example(line: bytes, fields: tuple[str, ...]) -> dict | str:
    """Return the parsed example, or the reason it cannot be used."""
    if not line.strip():
        return "blank_line"
    try:
        example = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return "malformed_json"
    if not isinstance(example, dict):
        return "not_an_object"
    for name in ("problem", *fields):
        value = example.get(name)
        if not isinstance(value, str) or not value.strip():
            return f"bad_field:{name}"
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return f"invalid_unicode:{name}"
    return example

