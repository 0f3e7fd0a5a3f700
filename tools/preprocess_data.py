"""Tokenise sft.jsonl / pairs.jsonl into a memory-mapped token shard (P.bin, P.idx.npy, P.json)."""

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from redi_megatron.data.chat_format import DEFAULT_PROMPT_TEMPLATE  # noqa: E402
from redi_megatron.data.example_tokenization import COMPLETION_ENDS, TokenizationSettings  # noqa: E402
from redi_megatron.data.preprocessing import preprocess  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--input", required=True, help="sft.jsonl or pairs.jsonl from build_redi_data.py")
    parser.add_argument("--kind", required=True, choices=["sft", "pairs"])
    parser.add_argument("--tokenizer", required=True,
                        help="Hugging Face tokenizer folder (tokenizer.json) or SentencePiece .model")
    parser.add_argument("--out", required=True, help="output prefix P (writes P.bin, P.idx.npy, P.json)")
    parser.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    parser.add_argument("--system-prompt", default=None,
                        help="system message (default: the chat template's own; Qwen2.5-Math's without a template)")
    parser.add_argument("--prompt-template", default=DEFAULT_PROMPT_TEMPLATE,
                        help="user turn, must contain {problem}; default: the raw problem (the REDI authors' framing, "
                             "the instruction is in Qwen2.5-Math's default system prompt)")
    parser.add_argument("--no-chat-template", action="store_true",
                        help="ignore the tokenizer's chat template and write Qwen2.5-Math's format out")
    parser.add_argument("--max-prompt-tokens", type=int, default=800)
    parser.add_argument("--max-response-tokens", type=int, default=19_000)
    parser.add_argument("--completion-end", choices=COMPLETION_ENDS, default="end_of_turn",
                        help="end_of_turn: response + <|im_end|>; paper: response + <|im_end|> + newline + eos, "
                             "as the REDI authors' TRL fork trains")
    args = parser.parse_args(argv)
    if "{problem}" not in args.prompt_template:
        parser.error("--prompt-template must contain {problem}")

    settings = TokenizationSettings(args.tokenizer, args.kind, args.system_prompt, args.prompt_template,
                                    not args.no_chat_template, args.max_prompt_tokens, args.max_response_tokens,
                                    args.completion_end)
    start = time.perf_counter()
    report = preprocess(args.input, args.out, settings, workers=args.workers)
    seconds = time.perf_counter() - start
    summary = {key: report[key] for key in ("lines_read", "samples_written", "skipped", "num_tokens")}
    summary["tokens_per_second"] = round(report["num_tokens"] / seconds)
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
