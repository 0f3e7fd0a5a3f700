"""The chat frame around a problem: the text before the response, rendered once per tokenizer.

A chat template is rendered a single time with placeholder messages; the text around the
placeholders is the frame, so each example is a string concatenation, not a template run. Tokenizers
without a template (SentencePiece) get Qwen2.5-Math's text format, written out here.

The default is the REDI authors' framing: the user turn is the raw problem, and the system prompt
is the one the chat template inserts by default (Qwen2.5-Math's: "Please reason step by step, and
put your final answer within \\boxed{}."). INSTRUCTION_PROMPT_TEMPLATE appends that sentence to the
user turn instead, for chat templates whose default system prompt does not carry it.
"""

from dataclasses import dataclass

QWEN_MATH_SYSTEM_PROMPT = "Please reason step by step, and put your final answer within \\boxed{}."
DEFAULT_PROMPT_TEMPLATE = "{problem}"
INSTRUCTION_PROMPT_TEMPLATE = "{problem}\n" + QWEN_MATH_SYSTEM_PROMPT
_PROMPT_SLOT = "\x00PROMPT\x00"
_RESPONSE_SLOT = "\x00RESPONSE\x00"


@dataclass(frozen=True)
class ChatFormat:
    """Renders the prompt text (up to and including the opening of the assistant turn)."""

    prefix: str
    suffix: str
    prompt_template: str = DEFAULT_PROMPT_TEMPLATE

    def prompt_text(self, problem: str) -> str:
        """Return the chat-formatted prompt for one problem; the response follows it directly."""
        # replace, not str.format: the default template has a literal "\boxed{}".
        return self.prefix + self.prompt_template.replace("{problem}", problem) + self.suffix


def qwen_format(system_prompt: str | None = None, prompt_template: str = DEFAULT_PROMPT_TEMPLATE) -> ChatFormat:
    """Return Qwen2.5-Math's format written out: system turn (its default if None), user turn, assistant opening."""
    system = QWEN_MATH_SYSTEM_PROMPT if system_prompt is None else system_prompt
    return ChatFormat(f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n",
                      "<|im_end|>\n<|im_start|>assistant\n", prompt_template)


def template_format(chat_template: str, end_of_turn: str, system_prompt: str | None = None,
                    prompt_template: str = DEFAULT_PROMPT_TEMPLATE, special_tokens: dict | None = None) -> ChatFormat:
    """Return the frame of a Hugging Face chat template (system message omitted if None: the template's default).

    Raises ValueError if the template does not insert the messages verbatim or does not close the
    assistant turn with ``end_of_turn`` right after the response, since completion masks rely on both.
    """
    messages = [{"role": "user", "content": _PROMPT_SLOT}, {"role": "assistant", "content": _RESPONSE_SLOT}]
    if system_prompt is not None:
        messages.insert(0, {"role": "system", "content": system_prompt})
    text = _render(chat_template, messages, special_tokens or {})
    if text.count(_PROMPT_SLOT) != 1 or text.count(_RESPONSE_SLOT) != 1:
        raise ValueError("the chat template does not insert the user and assistant messages verbatim; "
                         "pass --no-chat-template to use Qwen's format written out")
    prefix, rest = text.split(_PROMPT_SLOT)
    suffix, after_response = rest.split(_RESPONSE_SLOT)
    if not after_response.startswith(end_of_turn):
        raise ValueError(f"the chat template does not close the assistant turn with {end_of_turn!r} "
                         f"(it renders {after_response[:40]!r}); completion masks need that token")
    return ChatFormat(prefix, suffix, prompt_template)


def _render(chat_template: str, messages: list[dict], special_tokens: dict) -> str:
    """Return the template rendered the way transformers renders chat templates."""
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    environment.globals["raise_exception"] = raise_exception
    return environment.from_string(chat_template).render(
        messages=messages, add_generation_prompt=False, **special_tokens)
