"""The prompt of a benchmark problem, as token ids: the training chat frame, then the opening of the thinking.

The frame comes from chat_format exactly as preprocessing builds it for the training shards (the
model's own chat template with its default system prompt; Qwen's format written out when the
tokenizer has none), so evaluation sees the frame training used. The thinking opening (``<think>\\n``)
is tokenised on its own and appended, as it begins every training response after the prompt.
"""

from redi_megatron.data.chat_format import ChatFormat, qwen_format, template_format

THINK_OPEN = "<think>\n"


def chat_format_of(tokenizer) -> ChatFormat:
    """Return the frame preprocessing uses for this tokenizer (its chat template, else Qwen's format)."""
    if tokenizer.chat_template:
        return template_format(tokenizer.chat_template, tokenizer.end_of_turn,
                               special_tokens={"eos_token": tokenizer.end_of_turn, "bos_token": ""})
    return qwen_format()


class PromptBuilder:
    """Turns problems into prompt ids under one tokenizer; ``describe`` records what decides them."""

    def __init__(self, tokenizer, think_open: str = THINK_OPEN):
        self.tokenizer = tokenizer
        self.chat_format = chat_format_of(tokenizer)
        self.think_open = think_open
        self._think_ids = tokenizer.encode_batch([think_open])[0] if think_open else []

    def prompt_ids(self, problems: list[str]) -> list[list[int]]:
        """Return the prompt ids of each problem text."""
        ids = self.tokenizer.encode_batch([self.chat_format.prompt_text(p) for p in problems])
        return [prompt + self._think_ids for prompt in ids]

    def describe(self) -> dict:
        """Return the frame and thinking opening (kept with the generations so a resume can check them)."""
        return {"chat_prefix": self.chat_format.prefix, "chat_suffix": self.chat_format.suffix,
                "prompt_template": self.chat_format.prompt_template, "think_open": self.think_open}
