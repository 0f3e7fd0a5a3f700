"""Loading a tokenizer (Hugging Face ``tokenizer.json`` folder or SentencePiece model) behind one interface."""

import json
from pathlib import Path

END_OF_TURN = "<|im_end|>"


class HFTokenizer:
    """A ``tokenizers`` tokenizer read from a Hugging Face folder (tokenizer.json + tokenizer_config.json)."""

    def __init__(self, folder: Path):
        from tokenizers import Tokenizer

        self._tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        config_path = folder / "tokenizer_config.json"
        config = json.loads(config_path.read_text(encoding="utf-8")) if config_path.exists() else {}
        self.chat_template = _chat_template(folder, config)
        self.vocab_size = self._tokenizer.get_vocab_size(with_added_tokens=True)
        self.eos_token = _token_text(config.get("eos_token"))
        self.eos_id = self._id(self.eos_token) if self.eos_token else None
        end_of_turn_id = self._tokenizer.token_to_id(END_OF_TURN)
        self.end_of_turn_id = end_of_turn_id if end_of_turn_id is not None else self.eos_id
        if self.end_of_turn_id is None:
            raise ValueError(f"{folder}: no {END_OF_TURN} token and no eos_token in tokenizer_config.json; "
                             "the completion must end with an end-of-turn token")
        self.end_of_turn = self._tokenizer.id_to_token(self.end_of_turn_id)
        if self.eos_id is None:
            self.eos_id = self.end_of_turn_id
        pad_token = _token_text(config.get("pad_token"))
        self.pad_id = self._id(pad_token) if pad_token else self.eos_id

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Return the ids of each text, with no special tokens added (templates carry their own)."""
        encode = getattr(self._tokenizer, "encode_batch_fast", self._tokenizer.encode_batch)
        return [encoding.ids for encoding in encode(texts, add_special_tokens=False)]

    def decode(self, ids) -> str:
        """Return the text of ids, special tokens included."""
        return self._tokenizer.decode(list(map(int, ids)), skip_special_tokens=False)

    def _id(self, token: str) -> int:
        token_id = self._tokenizer.token_to_id(token)
        if token_id is None:
            raise ValueError(f"special token {token!r} from tokenizer_config.json is not in the vocabulary")
        return token_id


class SentencePieceTokenizer:
    """A SentencePiece model; it has no chat template, so chat_format renders Qwen's text format."""

    chat_template = None

    def __init__(self, model_file: Path):
        import sentencepiece

        self._processor = sentencepiece.SentencePieceProcessor(model_file=str(model_file))
        self.vocab_size = self._processor.get_piece_size()
        end_of_turn_id = self._processor.piece_to_id(END_OF_TURN)
        self.eos_id = self._processor.eos_id()
        # piece_to_id answers unk for unknown pieces: <|im_end|> is only used if it is a real piece.
        has_end_of_turn = end_of_turn_id != self._processor.unk_id()
        self.end_of_turn_id = end_of_turn_id if has_end_of_turn else self.eos_id
        if self.end_of_turn_id < 0:
            raise ValueError(f"{model_file}: the model has neither an eos piece nor {END_OF_TURN}")
        self.end_of_turn = self._processor.id_to_piece(self.end_of_turn_id)
        self.pad_id = self._processor.pad_id() if self._processor.pad_id() >= 0 else self.eos_id

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Return the ids of each text (no BOS/EOS added)."""
        return self._processor.encode(texts)

    def decode(self, ids) -> str:
        """Return the text of ids."""
        return self._processor.decode(list(map(int, ids)))


def load_tokenizer(path: str | Path) -> HFTokenizer | SentencePieceTokenizer:
    """Return the tokenizer at path: a folder with tokenizer.json, or a SentencePiece ``.model`` file/folder."""
    path = Path(path)
    if path.is_dir() and (path / "tokenizer.json").exists():
        return HFTokenizer(path)
    if path.is_dir():
        models = sorted(path.glob("*.model"))
        if models:
            return SentencePieceTokenizer(models[0])
        raise FileNotFoundError(f"{path}: no tokenizer.json and no SentencePiece *.model file")
    if path.exists():
        return SentencePieceTokenizer(path)
    raise FileNotFoundError(f"tokenizer not found: {path}")


def _chat_template(folder: Path, config: dict) -> str | None:
    """Return the chat template from chat_template.jinja or tokenizer_config.json, if any."""
    jinja_file = folder / "chat_template.jinja"
    if jinja_file.exists():
        return jinja_file.read_text(encoding="utf-8")
    template = config.get("chat_template")
    if isinstance(template, list):  # named templates: [{"name": "default", "template": ...}, ...]
        template = next((t["template"] for t in template if t.get("name") == "default"), None)
    return template


def _token_text(token) -> str | None:
    """Return a special token's text from its tokenizer_config.json form (string or AddedToken dict)."""
    if isinstance(token, dict):
        return token.get("content")
    return token
