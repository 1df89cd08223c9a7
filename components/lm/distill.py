"""A head start for a speculative-decoding draft: the target's own token embedding.

A draft is useful only as far as its greedy choices agree with the target's (the acceptance rate
α). SmolLM2 ties its embedding to its output layer, so its logits are h·Eᵀ. Projecting E
(49152 × 576) onto its top `n_embd` principal directions gives the draft an embedding/output matrix
in which the target's token geometry is already laid out; with the KL to the target's logits
(`training.distillation_loss`) the draft then only has to learn the projected hidden state. EAGLE and
Draft & Verify reuse the target's embedding and head for the same reason. Sequence-level
distillation on the target's own generations would help further but is unaffordable here: SmolLM2
generates ~6 tokens/s on the shared 2-core CPU, while a teacher forward over existing text scores
~700 tokens/s.
"""

from __future__ import annotations

import torch


def project_embeddings(teacher_embedding: torch.Tensor, dim: int) -> torch.Tensor:
    """The teacher's token embedding expressed in its top `dim` principal directions ([V, dim]).

    Not mean-centred: the shared mean direction carries the logits' common offset, which the tied
    output layer needs as much as the differences between tokens.
    """
    weight = teacher_embedding.detach().float()
    if dim > weight.shape[1]:
        raise ValueError(f"draft width {dim} exceeds the teacher's embedding width {weight.shape[1]}")
    _, _, v = torch.linalg.svd(weight, full_matrices=False)  # rows of v: principal directions
    return weight @ v[:dim].T


@torch.no_grad()
def init_from_teacher_embedding(student: torch.nn.Module, teacher: torch.nn.Module) -> float:
    """Copy the projected teacher embedding into the student's (tied) token embedding.

    Returns the fraction of the embedding's energy the projection keeps (how much geometry survives).
    """
    if not hasattr(student, "wte"):
        raise ValueError("init_from_teacher applies to the GPT draft (model=gpt_small), not to the target itself")
    teacher_weight = teacher.get_input_embeddings().weight
    student_weight = student.wte.weight
    if teacher_weight.shape[0] != student_weight.shape[0]:
        raise ValueError(f"vocabularies differ: teacher {teacher_weight.shape[0]}, student {student_weight.shape[0]}")
    projected = project_embeddings(teacher_weight, student_weight.shape[1])
    student_weight.copy_(projected.to(student_weight.dtype))
    return float(projected.pow(2).sum() / teacher_weight.float().pow(2).sum())
