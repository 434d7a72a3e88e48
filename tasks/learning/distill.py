"""Anomaly-score distillation: a model on frames learns to score frames as an optical-flow model does.

The teacher is any trained checkpoint whose input is optical flow (`vad train --flow`): it knows
motion, which an appearance model misses, but it needs flow at scoring time. With
`TrainConfig.distill` set to the teacher's checkpoint, the student trains on its own input with

    loss = own loss (its reconstruction, eq. 2 in our numbering)
         + distill_weight * 2 (1 - corr(student frame scores, teacher frame scores))      (eq. 3, 4)

where the teacher's per-frame scores (eq. 1: its scoring, on the flow of the same clips, flipped
alike) are fixed targets, and corr is the Pearson correlation over the batch's frames. Matching
standardised scores, not raw ones, leaves each model its own scale: the student is asked to find the
same frames hard, not to reach the teacher's error values. The teacher stays frozen; the student is
scored alone, without flow, at test time. Only the student's checkpoint is written; its training
record names the teacher.

The student's per-frame score is its usual one (the worst `score_patch` square of the reconstruction
error), so only architectures scored by reconstruction error can be students.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from vad.models import ClipModel
from vad.models._base import ModelOutput
from vad.tasks.runtime.checkpoint import load_checkpoint
from vad.tasks.runtime.model_input import InputSpec, prepare_clips

from vad.errors import ParameterError


def standardised_mismatch(student: torch.Tensor, teacher: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Mean squared difference of the two score sets, each standardised over all its entries:
    2 (1 - r) for their Pearson correlation r (0 when they rank and space frames alike, 4 when
    opposite). Returns the loss and r."""
    if student.shape != teacher.shape or student.numel() < 2:
        raise ParameterError(f"score distillation needs two score sets of one shape with 2+ entries, got {tuple(student.shape)} and {tuple(teacher.shape)}")
    s = student.float().flatten()
    t = teacher.float().flatten()
    zs = (s - s.mean()) / (s.std(unbiased=False) + 1e-8)
    zt = (t - t.mean()) / (t.std(unbiased=False) + 1e-8)
    loss = (zs - zt).pow(2).mean()
    return loss, float((zs.detach() * zt).mean())


def check_student(cls: type[ClipModel]) -> None:
    if cls.score is not ClipModel.score:
        raise ParameterError(
            f"{cls.arch} cannot be a distillation student: its scores are not reconstruction errors "
            "(students: vae3d, topheavy, ae3d, resnet3d_attn)"
        )


def student_frame_scores(model: ClipModel, x: torch.Tensor, out: ModelOutput) -> torch.Tensor:
    """(B, T) per-frame scores of a training forward pass, with gradients (the scoring rule of
    `ClipModel.score`)."""
    return model.frame_scores(model.error_map(x, out.recon))


@dataclass
class ScoreTeacher:
    """A frozen optical-flow model that scores the frames of uint8 clips."""

    model: ClipModel
    spec: InputSpec
    path: str
    arch: str

    @classmethod
    def load(cls, path: str | Path, student_spec: InputSpec, device: torch.device) -> ScoreTeacher:
        path = Path(path).expanduser()
        if not path.is_file():
            raise ParameterError(f"distillation teacher {path} does not exist")
        ckpt = load_checkpoint(path)
        if not ckpt.input.flow:
            raise ParameterError(f"distillation teacher {path} was trained on {'frame differences' if ckpt.input.motion else 'frames'}, "
                                 "not optical flow; train one with `vad train --flow`")
        mine = (student_spec.clip_len, student_spec.height, student_spec.width)
        theirs = (ckpt.input.clip_len, ckpt.input.height, ckpt.input.width)
        if mine != theirs:
            raise ParameterError(f"distillation teacher {path} sees {'x'.join(map(str, theirs))} clips (frames x height x width), "
                                 f"the student {'x'.join(map(str, mine))}; train both at one clip length and size")
        model = ckpt.build_model(device)
        for p in model.parameters():
            p.requires_grad_(False)
        return cls(model, ckpt.input, str(path), ckpt.arch)

    def frame_scores(self, frames: torch.Tensor, device: torch.device) -> torch.Tensor:
        """uint8 clips (B, T, H, W, C) -> the teacher's per-frame scores (B, T), as plain tensors."""
        x = prepare_clips(frames, self.spec, self.model.value_range, device=device)
        return self.model.score(x).frames.float().clone()
