"""Corpus: deterministic file selection, seeded document-level split, one-time memory-mapped tokens."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from components.lm.corpus import CorpusSpec, TokenCorpus, build_corpus, select_files
from components.lm.tokenizer import end_of_text_id, load_tokenizer, tokenizer_name


@pytest.fixture
def text_root(tmp_path):
    root = tmp_path / "src"
    for i in range(40):
        (root / f"pkg{i % 4}").mkdir(parents=True, exist_ok=True)
        (root / f"pkg{i % 4}" / f"mod{i}.py").write_text(f"def f{i}(x):\n    return x * {i}  # module {i}\n" * 20)
    (root / "skip.bin").write_bytes(b"\x00\x01")
    return root


def _build(spec, cache):
    tok = load_tokenizer()
    return build_corpus(spec, cache, tok, tokenizer_name(), end_of_text_id(tok))


def test_selection_is_deterministic_and_seeded(text_root):
    spec = CorpusSpec(roots=[str(text_root)], max_chars=20_000, val_fraction=0.2)
    first, again = select_files(spec), select_files(spec)
    assert first == again and all(p.suffix == ".py" for p, _ in first)
    assert sum(p.stat().st_size for p, _ in first) <= 20_000
    other = select_files(CorpusSpec(roots=[str(text_root)], max_chars=20_000, val_fraction=0.2, seed=1))
    assert [r for _, r in other] != [r for _, r in first]


def test_tokenized_once_memory_mapped_with_document_split(text_root, tmp_path):
    spec = CorpusSpec(roots=[str(text_root)], max_chars=100_000, val_fraction=0.25)
    folder = _build(spec, tmp_path / "cache")
    mtime = (folder / "train.bin").stat().st_mtime_ns
    assert _build(spec, tmp_path / "cache") == folder and (folder / "train.bin").stat().st_mtime_ns == mtime
    corpus = TokenCorpus(folder)
    assert corpus.splits["train"].dtype == np.uint16 and isinstance(corpus.splits["train"], np.memmap)
    assert corpus.meta["documents"]["val"] > 0 and corpus.meta["documents"]["train"] > 0
    assert corpus.num_tokens("train") + corpus.num_tokens("val") == sum(corpus.meta["tokens"].values())
    eot = end_of_text_id(load_tokenizer())
    assert int(corpus.splits["val"][-1]) == eot  # documents end with <|endoftext|>
    x1, y1 = corpus.get_batch("train", 4, 32, torch.Generator().manual_seed(3))
    x2, _ = corpus.get_batch("train", 4, 32, torch.Generator().manual_seed(3))
    assert torch.equal(x1, x2) and torch.equal(x1[:, 1:], y1[:, :-1])
    text = load_tokenizer().decode(corpus.splits["train"][:20].tolist())
    assert "def f" in text or "return" in text


def test_real_stdlib_corpus_and_bad_root(tmp_path):
    folder = _build(CorpusSpec(roots=["stdlib"], max_chars=150_000, val_fraction=0.2), tmp_path)
    corpus = TokenCorpus(folder)
    assert all(f.startswith("stdlib/") and "site-packages" not in f for f in corpus.meta["files"])
    with pytest.raises(FileNotFoundError, match="not a directory"):
        select_files(CorpusSpec(roots=["/no/such/folder"]))
