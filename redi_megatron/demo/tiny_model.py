"""The demo's starting point: a byte-level BPE tokenizer trained on the task and a random tiny Qwen2.

Both are written as one Hugging Face directory (config.json, model.safetensors, tokenizer files with
a Qwen-style chat template), the same shape as a downloaded base model, so the demo goes through
the real workflow: convert_hf_to_megatron -> train -> convert_megatron_to_hf -> transformers.
"""

import json
from pathlib import Path

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
# Qwen's turn format without a default system turn (short prompts keep the demo fast).
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def train_tokenizer(texts: list[str], out_dir: str | Path, vocab_size: int) -> int:
    """Return the vocabulary size of a byte-level BPE trained on texts and saved as an HF tokenizer in out_dir.

    Digits are split one per token, which makes the arithmetic learnable by a tiny model.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(texts, trainer)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(out_dir / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "bos_token": None,
        "unk_token": None,
        "model_max_length": 4096,
        "chat_template": CHAT_TEMPLATE,
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    (out_dir / "special_tokens_map.json").write_text(
        json.dumps({"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}, indent=2) + "\n",
        encoding="utf-8")
    return tokenizer.get_vocab_size(with_added_tokens=True)


def write_random_model(out_dir: str | Path, vocab_size: int, size: dict, seed: int) -> None:
    """Write a randomly initialised Qwen2ForCausalLM with the given sizes into out_dir (next to its tokenizer)."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from redi_megatron.data.tokenizer_loading import load_tokenizer

    tokenizer = load_tokenizer(out_dir)
    config = Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=size["hidden_size"],
        num_hidden_layers=size["num_layers"],
        num_attention_heads=size["num_attention_heads"],
        num_key_value_heads=size["num_key_value_heads"],
        intermediate_size=size["intermediate_size"],
        max_position_embeddings=size["max_position_embeddings"],
        rope_theta=10000.0,
        tie_word_embeddings=True,
        eos_token_id=tokenizer.end_of_turn_id,
        pad_token_id=tokenizer.pad_id,
        bos_token_id=None,
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    model.save_pretrained(str(out_dir))
