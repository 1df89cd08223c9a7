"""Text codecs: byte-level round trip and incremental detokenization of split characters."""

from __future__ import annotations

from components.serving.text import ByteCodec, IncrementalDetokenizer


def test_incremental_detokenizer_holds_split_utf8():
    codec = ByteCodec()
    ids = codec.encode("héllo €")
    detok = IncrementalDetokenizer(codec)
    pieces = [detok.push([i]) for i in ids] + [detok.flush()]
    assert "".join(pieces) == "héllo €"
    assert all("\ufffd" not in p for p in pieces)


def test_chat_prompt_ends_with_the_assistant_turn():
    codec = ByteCodec()
    ids = codec.chat_prompt([{"role": "user", "content": "hi"}])
    assert ids[0] == ByteCodec.BOS and codec.decode(ids).endswith("<assistant>")
