"""The draft's head start: SmolLM2's embedding projected onto its principal directions."""

from __future__ import annotations

import pytest
import torch

from components.decoding.models import tiny_llama
from components.lm.distill import init_from_teacher_embedding, project_embeddings
from components.lm.model import GPT, GPTConfig
from components.lm.training import TrainSettings


def test_projection_keeps_the_geometry_of_a_low_rank_embedding():
    torch.manual_seed(0)
    low_rank = torch.randn(200, 6) @ torch.randn(6, 32)  # 32 columns, rank 6
    projected = project_embeddings(low_rank, 8)
    assert projected.shape == (200, 8)
    # An orthonormal projection onto a space holding every row keeps all inner products, hence logits.
    torch.testing.assert_close(projected @ projected.T, low_rank @ low_rank.T, rtol=1e-4, atol=1e-3)
    assert (
        project_embeddings(low_rank, 3) @ project_embeddings(low_rank, 3).T - low_rank @ low_rank.T
    ).abs().max() > 1e-2


def test_student_embedding_and_tied_head_start_from_the_teacher():
    teacher = tiny_llama(vocab_size=64, hidden=32, dtype=torch.float32)
    student = GPT(GPTConfig(vocab_size=64, block_size=16, n_layer=1, n_head=2, n_embd=16))
    kept = init_from_teacher_embedding(student, teacher)
    expected = project_embeddings(teacher.get_input_embeddings().weight, 16)
    torch.testing.assert_close(student.wte.weight, expected)
    assert student.lm_head.weight is student.wte.weight
    assert 0.5 < kept < 1.0  # 16 of 32 directions of a random matrix: more than half the energy


def test_mismatched_or_wrong_students_are_refused():
    teacher = tiny_llama(vocab_size=64, hidden=32, dtype=torch.float32)
    with pytest.raises(ValueError, match="vocabularies differ"):
        init_from_teacher_embedding(
            GPT(GPTConfig(vocab_size=80, block_size=8, n_layer=1, n_head=2, n_embd=16)), teacher
        )
    with pytest.raises(ValueError, match="GPT draft"):
        init_from_teacher_embedding(tiny_llama(vocab_size=64, hidden=32), teacher)
    with pytest.raises(ValueError, match="exceeds the teacher"):
        project_embeddings(torch.randn(10, 4), 8)
    with pytest.raises(ValueError, match="init_from_teacher needs the teacher"):
        TrainSettings(init_from_teacher=True)
