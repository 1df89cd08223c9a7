"""Text <-> token ids for the server: the model's own tokenizer (with its chat template), or a
byte-level codec for the tiny random models used by tests and the loopback load test."""

from __future__ import annotations

from collections.abc import Sequence

Messages = list[dict[str, str]]


class TextCodec:
    eos_ids: tuple[int, ...] = ()

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def decode(self, ids: Sequence[int]) -> str:
        raise NotImplementedError

    def chat_prompt(self, messages: Messages) -> list[int]:
        raise NotImplementedError


class HFTextCodec(TextCodec):
    """A transformers tokenizer; chat prompts use the model's chat template."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        eos = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
        end_of_turn = tokenizer.convert_tokens_to_ids("<|im_end|>") if "<|im_end|>" in tokenizer.get_vocab() else None
        if end_of_turn is not None:
            eos.add(end_of_turn)  # SmolLM2-Instruct ends an assistant turn with <|im_end|>
        self.eos_ids = tuple(sorted(eos))

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def chat_prompt(self, messages: Messages) -> list[int]:
        ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        if hasattr(ids, "keys"):  # newer transformers return a BatchEncoding
            ids = ids["input_ids"]
        return list(ids)


class ByteCodec(TextCodec):
    """UTF-8 bytes as ids 3..258 (0 pad, 1 bos, 2 eos): needs a model vocabulary of >= 259."""

    OFFSET = 3
    BOS, EOS = 1, 2

    def __init__(self, vocab_size: int = 259):
        if vocab_size < 259:
            raise ValueError(f"ByteCodec needs a vocabulary of at least 259 ids, the model has {vocab_size}")
        self.eos_ids = (self.EOS,)

    def encode(self, text: str) -> list[int]:
        return [b + self.OFFSET for b in text.encode("utf-8")]

    def decode(self, ids: Sequence[int]) -> str:
        data = bytes(i - self.OFFSET for i in ids if self.OFFSET <= i < 256 + self.OFFSET)
        return data.decode("utf-8", errors="replace")

    def chat_prompt(self, messages: Messages) -> list[int]:
        text = "".join(f"<{m['role']}>{m['content']}\n" for m in messages) + "<assistant>"
        return [self.BOS] + self.encode(text)


class IncrementalDetokenizer:
    """Turns a growing list of ids into text deltas, holding back an incomplete UTF-8 character."""

    def __init__(self, codec: TextCodec):
        self.codec = codec
        self.ids: list[int] = []
        self.emitted = ""

    def push(self, ids: Sequence[int]) -> str:
        self.ids.extend(ids)
        text = self.codec.decode(self.ids)
        if text.endswith("\ufffd"):  # a multi-byte character split across tokens: wait for the rest
            return ""
        delta = text[len(self.emitted) :] if text.startswith(self.emitted) else ""
        self.emitted = text if text.startswith(self.emitted) else self.emitted
        return delta

    def flush(self) -> str:
        text = self.codec.decode(self.ids)
        delta = text[len(self.emitted) :] if text.startswith(self.emitted) else ""
        self.emitted += delta
        return delta
