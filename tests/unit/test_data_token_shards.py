"""Tokenising examples into shards: round trip, completion masks, chat formats, length filters."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from redi_megatron.data.chat_format import DEFAULT_PROMPT_TEMPLATE, QWEN_MATH_SYSTEM_PROMPT, qwen_format
from redi_megatron.data.example_tokenization import TokenizationSettings
from redi_megatron.data.preprocessing import preprocess
from redi_megatron.data.token_shards import ShardWriter, TokenShards

REPO = Path(__file__).resolve().parents[2]
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# Qwen2.5-Math's chat template (tools branch left out): a default system prompt carrying the instruction.
QWEN_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}{{- '<|im_start|>system\\nPlease reason step by step, and put your final answer within "
    "\\\\boxed{}.<|im_end|>\\n' }}{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message.role == 'user' or (message.role == 'system' and not loop.first) or message.role == 'assistant' %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}{%- endif %}"
    "{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}")
CORPUS = [
    "Let x be a real number such that x^2 = 4. Find x. \\frac{1}{2} + \\sqrt{3}",
    "<think>\nFirst, we compute 2 + 2 = 4.\n</think>\n\nThe answer is \\boxed{4}.",
    "Über naïve café — 数学 problems: ∑ a_i ≤ 10, ∞ ≠ π. Tabs\tand  double  spaces\n\n",
]


def _examples(kind: str, count: int = 23) -> list[dict]:
    examples = []
    for i in range(count):
        problem = f"Problem {i}: {CORPUS[i % 3]} {'x' * (i % 5)}"
        chosen = f"<think>\nStep {i}. {CORPUS[(i + 1) % 3]}\n</think>\n\n\\boxed{{{i}}}"
        rejected = f"<think>\n{CORPUS[(i + 2) % 3]} {i}\n</think>\n\n\\boxed{{{i + 1}}}"
        examples.append({"problem": problem, "response": chosen} if kind == "sft"
                        else {"problem": problem, "chosen": chosen, "rejected": rejected})
    return examples


@pytest.fixture(scope="module")
def hf_tokenizer(tmp_path_factory) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(CORPUS * 20, trainer)
    folder = tmp_path_factory.mktemp("hf_tokenizer")
    tokenizer.save(str(folder / "tokenizer.json"))
    # As in Qwen2.5-Math's base tokenizer: eos is <|endoftext|>, turns end with <|im_end|>.
    config = {"eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>", "chat_template": QWEN_TEMPLATE}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


@pytest.fixture(scope="module")
def sp_tokenizer(tmp_path_factory) -> Path:
    import sentencepiece

    folder = tmp_path_factory.mktemp("sp_tokenizer")
    (folder / "corpus.txt").write_text("\n".join(CORPUS * 20), encoding="utf-8")
    sentencepiece.SentencePieceTrainer.train(
        input=str(folder / "corpus.txt"), model_prefix=str(folder / "sp"), vocab_size=320, model_type="bpe",
        byte_fallback=True, hard_vocab_limit=False, normalization_rule_name="identity",
        add_dummy_prefix=False, remove_extra_whitespaces=False, split_digits=True,
        user_defined_symbols=["<|im_start|>", "<|im_end|>"], minloglevel=2)
    return folder / "sp.model"


def _write_jsonl(path: Path, examples: list[dict]) -> Path:
    path.write_text("".join(json.dumps(e, ensure_ascii=False) + "\n" for e in examples), encoding="utf-8")
    return path


def _decode(tokenizer_path, ids):
    from redi_megatron.data.tokenizer_loading import load_tokenizer

    return load_tokenizer(tokenizer_path).decode(ids)


@pytest.mark.parametrize("kind", ["sft", "pairs"])
@pytest.mark.parametrize("tokenizer_name", ["hf_tokenizer", "sp_tokenizer"])
def test_shards_round_trip_to_the_input_text(tmp_path, request, kind, tokenizer_name):
    tokenizer_path = request.getfixturevalue(tokenizer_name)
    examples = _examples(kind)
    settings = TokenizationSettings(str(tokenizer_path), kind)
    report = preprocess(_write_jsonl(tmp_path / "in.jsonl", examples), tmp_path / "shard", settings,
                        workers=1, progress=False)
    assert report["samples_written"] == len(examples) and report["skipped"] == {}
    shards = TokenShards(tmp_path / "shard")
    assert shards.kind == kind and len(shards) == len(examples)
    end_of_turn = shards.metadata["end_of_turn_id"]
    format_ = qwen_format()  # the test template's default system prompt matches Qwen's written-out format
    responses = ("response",) if kind == "sft" else ("chosen", "rejected")
    for i, example in enumerate(examples):
        prompt, completions = shards.sample(i)
        assert _decode(tokenizer_path, prompt) == format_.prompt_text(example["problem"])
        for name, completion in zip(responses, completions):
            assert completion[-1] == end_of_turn  # the end-of-turn token is a completion token
            assert _decode(tokenizer_path, completion[:-1]) == example[name]
    assert format_.prompt_text("P") == (f"<|im_start|>system\n{QWEN_MATH_SYSTEM_PROMPT}<|im_end|>\n"
                                        "<|im_start|>user\nP<|im_end|>\n<|im_start|>assistant\n")


def test_output_does_not_depend_on_worker_count(tmp_path, hf_tokenizer):
    source = _write_jsonl(tmp_path / "in.jsonl", _examples("pairs", 700))
    settings = TokenizationSettings(str(hf_tokenizer), "pairs")
    preprocess(source, tmp_path / "one", settings, workers=1, progress=False)
    preprocess(source, tmp_path / "two", settings, workers=2, progress=False)
    for suffix in (".bin", ".idx.npy"):
        assert (tmp_path / f"one{suffix}").read_bytes() == (tmp_path / f"two{suffix}").read_bytes()


def test_length_filters_and_bad_lines_are_counted(tmp_path, hf_tokenizer):
    examples = _examples("sft", 4)
    examples[1]["problem"] = "word " * 300
    examples[2]["response"] = "word " * 100
    lines = [json.dumps(e) for e in examples] + ["{broken", "", json.dumps({"problem": "p"})]
    source = tmp_path / "in.jsonl"
    source.write_text("\n".join(lines) + "\n")
    settings = TokenizationSettings(str(hf_tokenizer), "sft", max_prompt_tokens=200, max_response_tokens=60)
    report = preprocess(source, tmp_path / "shard", settings, workers=1, progress=False)
    assert report["samples_written"] == 2
    assert report["skips"] == [{"line": 2, "reason": "prompt_too_long"}, {"line": 3, "reason": "response_too_long"},
                               {"line": 5, "reason": "malformed_json"}, {"line": 6, "reason": "blank_line"},
                               {"line": 7, "reason": "bad_field:response"}]
    assert TokenShards(tmp_path / "shard").metadata["preprocess_report"]["skipped"]["prompt_too_long"] == 1


def test_custom_system_prompt_and_template_reach_the_prompt(tmp_path, hf_tokenizer):
    settings = TokenizationSettings(str(hf_tokenizer), "sft", system_prompt="Be brief.",
                                    prompt_template="Q: {problem}")
    preprocess(_write_jsonl(tmp_path / "in.jsonl", _examples("sft", 1)), tmp_path / "shard", settings,
               workers=1, progress=False)
    prompt, _ = TokenShards(tmp_path / "shard").sample(0)
    assert _decode(hf_tokenizer, prompt) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nQ: " + _examples("sft", 1)[0]["problem"]
        + "<|im_end|>\n<|im_start|>assistant\n")
    assert DEFAULT_PROMPT_TEMPLATE == "{problem}"


@pytest.mark.parametrize("completion_end", ["end_of_turn", "paper"])
def test_default_framing_is_the_redi_authors(tmp_path, hf_tokenizer, completion_end):
    """Default settings give the prompt the REDI authors built: transformers' apply_chat_template of
    [user: problem, assistant: trace] with a Qwen2.5-Math-style template, split at the assistant opening.
    Their completion is the rest of that text plus eos; ours ends at <|im_end|> unless completion_end="paper"."""
    from transformers import PreTrainedTokenizerFast

    reference = PreTrainedTokenizerFast(tokenizer_file=str(hf_tokenizer / "tokenizer.json"),
                                        eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    reference.chat_template = QWEN_TEMPLATE
    examples = _examples("pairs", 5)
    settings = TokenizationSettings(str(hf_tokenizer), "pairs", completion_end=completion_end)
    preprocess(_write_jsonl(tmp_path / "in.jsonl", examples), tmp_path / "shard", settings, workers=1, progress=False)
    shards = TokenShards(tmp_path / "shard")
    opening = "<|im_start|>assistant\n"
    for i, example in enumerate(examples):
        prompt, completions = shards.sample(i)
        for name, completion in zip(("chosen", "rejected"), completions):
            text = reference.apply_chat_template([{"role": "user", "content": example["problem"]},
                                                  {"role": "assistant", "content": example[name]}], tokenize=False)
            assert text.count(QWEN_MATH_SYSTEM_PROMPT) == 1  # the instruction appears once, in the system turn
            prompt_text, completion_text = text.split(opening)
            assert list(prompt) == reference(prompt_text + opening, add_special_tokens=False)["input_ids"]
            authors = reference(completion_text, add_special_tokens=False)["input_ids"] + [reference.eos_token_id]
            assert completion_text == example[name] + "<|im_end|>\n"
            if completion_end == "paper":
                assert list(completion) == authors
            else:  # the same ids up to and including <|im_end|>: |y| is 2 tokens shorter
                assert list(completion) == authors[:-2]
                assert authors[-2:] == reference("\n", add_special_tokens=False)["input_ids"] + [reference.eos_token_id]


def test_writer_rejects_inconsistent_lengths(tmp_path):
    with pytest.raises(ValueError, match="lengths sum"):
        ShardWriter(tmp_path / "s", "sft", 100, {}).add_packed(np.arange(5), np.array([[2, 2]]))


def test_cli_writes_a_readable_shard(tmp_path, hf_tokenizer):
    source = _write_jsonl(tmp_path / "in.jsonl", _examples("pairs", 5))
    result = subprocess.run([sys.executable, str(REPO / "tools" / "preprocess_data.py"), "--input", str(source),
                             "--kind", "pairs", "--tokenizer", str(hf_tokenizer), "--out", str(tmp_path / "p"),
                             "--workers", "2"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["samples_written"] == 5
    assert len(TokenShards(tmp_path / "p")) == 5
