"""The generator's losses (reference 3.3, 3.7, 5.4): L1, the frozen expert's sync loss, the adversarial terms."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lipsync.client.contract import MASK_START_ROW
from lipsync.client.networks.syncnet import sync_loss as _expert_bce

__all__ = [
    "adversarial_loss",
    "combine_generator_loss",
    "cosine_bce",
    "expert_sync_loss",
    "fold_time",
    "l1_loss",
    "lower_half_stack",
    "unfold_time",
]


def cosine_bce(audio_emb: Tensor, face_emb: Tensor, target: Tensor) -> Tensor:
    """BCE of the cosine similarity of the expert's embeddings against `target` (the release's `cosine_loss`)."""
    return _expert_bce(audio_emb, face_emb, target)


def fold_time(x: Tensor) -> Tensor:
    """(B, C, T, ...) -> (T*B, C, ...), time-major (all B items of t=0, then t=1, ...), as the original networks fold."""
    return torch.cat([x[:, :, t] for t in range(x.shape[2])], dim=0)


def unfold_time(x: Tensor, batch: int) -> Tensor:
    """(T*B, C, ...) time-major -> (B, C, T, ...)."""
    return torch.stack(torch.split(x, batch, dim=0), dim=2)


def lower_half_stack(window: Tensor) -> Tensor:
    """(B, 3, T, 96, 96) -> (B, 3*T, 48, 96): the expert's input, frames concatenated frame-major on channels."""
    lower = window[:, :, :, MASK_START_ROW:]
    return torch.cat([lower[:, :, t] for t in range(lower.shape[2])], dim=1)


def expert_sync_loss(expert: nn.Module, mel: Tensor, generated: Tensor) -> Tensor:
    """Sync loss of generated windows (B,3,5,96,96) against their mel (B,1,80,16): BCE with target 1."""
    audio_emb, face_emb = expert(mel, lower_half_stack(generated))
    return cosine_bce(audio_emb, face_emb, torch.ones(audio_emb.shape[0], device=audio_emb.device))


def l1_loss(generated: Tensor, target: Tensor) -> Tensor:
    """Mean absolute error over the whole 96x96 face, both halves (reference 5.4)."""
    return F.l1_loss(generated, target)


def adversarial_loss(prediction: Tensor, real: bool) -> Tensor:
    """BCE of the discriminator's probabilities against all-real or all-fake labels."""
    target = torch.ones_like(prediction) if real else torch.zeros_like(prediction)
    return F.binary_cross_entropy(prediction.float(), target.float())


def combine_generator_loss(
    l1: Tensor, sync: Tensor | float, adversarial: Tensor | float, syncnet_wt: float, disc_wt: float
) -> Tensor:
    """`syncnet_wt * sync + disc_wt * adv + (1 - syncnet_wt - disc_wt) * L1` (hq_wav2lip_train)."""
    return syncnet_wt * sync + disc_wt * adversarial + (1.0 - syncnet_wt - disc_wt) * l1
