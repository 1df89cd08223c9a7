"""A training corpus from text already on the machine, tokenized once into memory-mapped arrays.

The source and documentation files of the installed Python (stdlib) and its packages are real,
varied, English-and-code text, and need no download. Selection is deterministic: every candidate
file is ranked by a seeded hash of its path relative to its root, and files are taken in that order
until the character budget is spent. Each file goes whole to train or validation by a second seeded
hash, so no document straddles the split. Tokens are written once as `train.bin` / `val.bin`
(uint16 when the vocabulary fits) under a folder keyed by the corpus settings, as nanoGPT does, and
training memory-maps them.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sysconfig
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch

META_FILE = "meta.json"


@dataclass
class CorpusSpec:
    roots: list[str] = field(default_factory=lambda: ["stdlib", "site-packages"])  # named or absolute
    extensions: list[str] = field(default_factory=lambda: [".py", ".md", ".rst", ".txt"])  # text only
    max_chars: int = 4_000_000  # ~1.1M tokens: more than 300 steps of 8 x 128 ever see; tokenized in ~10 s
    max_file_chars: int = 200_000  # skip huge generated files (tables, vendored blobs)
    val_fraction: float = 0.05  # whole files held out for validation loss / perplexity
    seed: int = 0  # which files are picked and which go to validation

    def __post_init__(self) -> None:
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        if self.max_chars <= 0:
            raise ValueError(f"max_chars must be positive, got {self.max_chars}")
        if not self.roots:
            raise ValueError("corpus needs at least one root")


def resolve_root(name: str) -> Path:
    named = {"stdlib": sysconfig.get_paths()["stdlib"], "site-packages": sysconfig.get_paths()["purelib"]}
    path = Path(named.get(name, name))
    if not path.is_dir():
        raise FileNotFoundError(
            f"corpus root {name!r} -> {path} is not a directory (use 'stdlib', 'site-packages' or an absolute folder)"
        )
    return path


def _rank(seed: int, salt: str, rel: str) -> float:
    digest = hashlib.sha256(f"{seed}:{salt}:{rel}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def select_files(spec: CorpusSpec) -> list[tuple[Path, str]]:
    """Deterministic (path, 'root-name/relative path') list whose sizes fit the budget."""
    candidates = []
    extensions = tuple(spec.extensions)
    for root_name in spec.roots:
        root = resolve_root(root_name)
        for dirpath, dirnames, filenames in os.walk(root):
            # Other roots nested inside this one (the stdlib's own site-packages) are not walked twice.
            dirnames[:] = sorted(d for d in dirnames if d not in ("__pycache__", "site-packages", "dist-packages"))
            for filename in sorted(filenames):
                if filename.endswith(extensions):
                    path = Path(dirpath) / filename
                    rel = f"{root_name}/{path.relative_to(root).as_posix()}"
                    candidates.append((_rank(spec.seed, "pick", rel), path, rel))
    candidates.sort(key=lambda c: (c[0], c[2]))
    chosen, budget = [], spec.max_chars
    for _, path, rel in candidates:
        try:
            size = path.stat().st_size
        except OSError:
            continue
        if size == 0 or size > spec.max_file_chars or size > budget:
            continue
        chosen.append((path, rel))
        budget -= size
        if budget < 1000:
            break
    if not chosen:
        raise ValueError(f"no corpus files with extensions {spec.extensions} under {spec.roots}")
    return chosen


def _read_text(path: Path) -> Optional[str]:
    try:
        return path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError):
        return None


def corpus_key(spec: CorpusSpec, tokenizer_name: str, files: list[tuple[Path, str]]) -> str:
    h = hashlib.sha256(json.dumps(asdict(spec), sort_keys=True).encode())
    h.update(tokenizer_name.encode())
    for path, rel in files:
        h.update(f"{rel}:{path.stat().st_size}".encode())
    return h.hexdigest()[:16]


def build_corpus(
    spec: CorpusSpec, cache_root: Path, tokenizer, tokenizer_name: str, eot_id: int, batch_files: int = 256
) -> Path:
    """Tokenize the selected files once; return the folder with train.bin, val.bin, meta.json."""
    files = select_files(spec)
    folder = Path(cache_root) / corpus_key(spec, tokenizer_name, files)
    if (folder / META_FILE).exists():
        return folder
    vocab = tokenizer.get_vocab_size()
    dtype = np.uint16 if vocab <= np.iinfo(np.uint16).max + 1 else np.uint32
    tmp = folder.with_name(folder.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    counts = {"train": 0, "val": 0}
    docs = {"train": 0, "val": 0}
    splits = {name: open(tmp / f"{name}.bin", "wb") for name in counts}
    try:
        for start in range(0, len(files), batch_files):
            chunk = [(rel, _read_text(p)) for p, rel in files[start : start + batch_files]]
            chunk = [(rel, text) for rel, text in chunk if text]
            encodings = tokenizer.encode_batch([text for _, text in chunk])
            for (rel, _), enc in zip(chunk, encodings):
                split = "val" if _rank(spec.seed, "split", rel) < spec.val_fraction else "train"
                ids = np.asarray(enc.ids + [eot_id], dtype=dtype)
                splits[split].write(ids.tobytes())
                counts[split] += len(ids)
                docs[split] += 1
        for fh in splits.values():
            fh.flush()
            os.fsync(fh.fileno())
    finally:
        for fh in splits.values():
            fh.close()
    if counts["val"] == 0 or counts["train"] == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ValueError(
            f"corpus split is empty (train {counts['train']}, val {counts['val']} tokens): "
            f"raise max_chars={spec.max_chars} or val_fraction={spec.val_fraction}"
        )
    meta = {
        "spec": asdict(spec),
        "tokenizer": tokenizer_name,
        "vocab_size": vocab,
        "dtype": np.dtype(dtype).name,
        "tokens": counts,
        "documents": docs,
        "files": [rel for _, rel in files],
    }
    (tmp / META_FILE).write_text(json.dumps(meta, indent=1))
    if folder.exists():  # another process finished first: keep theirs
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        tmp.rename(folder)  # atomic: a half-tokenized corpus is never picked up
    return folder


class TokenCorpus:
    """Memory-mapped train/val token arrays and seeded random batches of (input, next-token) pairs."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.meta = json.loads((self.folder / META_FILE).read_text())
        dtype = np.dtype(self.meta["dtype"])
        self.splits = {name: np.memmap(self.folder / f"{name}.bin", dtype=dtype, mode="r") for name in ("train", "val")}
        self.vocab_size = int(self.meta["vocab_size"])

    def num_tokens(self, split: str) -> int:
        return int(self.splits[split].shape[0])

    def get_batch(
        self, split: str, batch_size: int, block_size: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        data = self.splits[split]
        if len(data) <= block_size + 1:
            raise ValueError(f"{split} split has {len(data)} tokens, fewer than block_size+1={block_size + 1}")
        starts = torch.randint(len(data) - block_size - 1, (batch_size,), generator=generator).tolist()
        x = np.stack([data[s : s + block_size] for s in starts]).astype(np.int64)
        y = np.stack([data[s + 1 : s + 1 + block_size] for s in starts]).astype(np.int64)
        return torch.from_numpy(x), torch.from_numpy(y)

    def eval_batches(self, split: str, batch_size: int, block_size: int, max_batches: int):
        """Fixed, evenly spaced windows: the same validation batches every evaluation."""
        data = self.splits[split]
        n_windows = max(1, min(max_batches * batch_size, (len(data) - 1) // block_size))
        stride = max(1, (len(data) - block_size - 1) // n_windows)
        starts = [i * stride for i in range(n_windows)]
        for b in range(0, len(starts), batch_size):
            chunk = starts[b : b + batch_size]
            x = np.stack([data[s : s + block_size] for s in chunk]).astype(np.int64)
            y = np.stack([data[s + 1 : s + 1 + block_size] for s in chunk]).astype(np.int64)
            yield torch.from_numpy(x), torch.from_numpy(y)
