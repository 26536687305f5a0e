"""The lip-sync expert (SyncNet_color): embeds 5 lower-half face crops and the matching mel window.

Keys equal the released `lipsync_expert.pth` at width 1.0 (tests/data/reference/syncnet_color_state_dict_keys.tsv).
The cosine similarity of the two ReLU embeddings lies in [0, 1] and is read as a sync probability.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from lipsync.client.networks.blocks import Conv2d, check_width, scaled_channels
from lipsync.client.networks.checkpoints import WidthProbe, model_from_checkpoint

SYNC_FRAMES = 5  # consecutive video frames per expert window (syncnet_T)
_EPS = 1e-7


@dataclass(frozen=True)
class SyncNetConfig:
    """Architecture of the expert; `width` scales every inner channel count (1.0 = released model)."""

    width: float = 1.0
    # Subtract each pixel's mean over the 5 frames before the face encoder. Off in the paper's
    # network. With it the encoder starts from what moves (lips, jaw) instead of what identifies the
    # person, which is identical in aligned and shifted samples and so carries no sync signal.
    center_frames: bool = False

    def __post_init__(self) -> None:
        check_width(self.width, smallest=32, owner=type(self).__name__)

    def ch(self, channels: int) -> int:
        return scaled_channels(channels, self.width)

    @property
    def embedding_dim(self) -> int:
        return self.ch(512)


_WIDTH_PROBES = (
    WidthProbe("face_encoder.0.conv_block.0.weight", 0, 32),
    WidthProbe("face_encoder.1.conv_block.0.weight", 0, 64),
    WidthProbe("face_encoder.4.conv_block.0.weight", 0, 128),
    WidthProbe("face_encoder.8.conv_block.0.weight", 0, 256),
    WidthProbe("face_encoder.11.conv_block.0.weight", 0, 512),
)


class SyncNet(nn.Module):
    """SyncNet_color: (B,1,80,16) mel + (B,15,48,96) faces -> L2-normalised (audio_emb, face_emb), (B, D).

    The 15 face channels are 5 frames x BGR, frame-major, rows 48: of each 96x96 crop, in [0, 1].
    """

    def __init__(self, config: SyncNetConfig = SyncNetConfig()) -> None:
        super().__init__()
        self.config = config
        c = config.ch

        def res(n: int) -> Conv2d:
            return Conv2d(c(n), c(n), 3, 1, 1, residual=True)

        self.face_encoder = nn.Sequential(
            Conv2d(3 * SYNC_FRAMES, c(32), 7, 1, 3),  # 48x96
            Conv2d(c(32), c(64), 5, (1, 2), 1),  # 46x47
            res(64),
            res(64),
            Conv2d(c(64), c(128), 3, 2, 1),  # 23x24
            res(128),
            res(128),
            res(128),
            Conv2d(c(128), c(256), 3, 2, 1),  # 12x12
            res(256),
            res(256),
            Conv2d(c(256), c(512), 3, 2, 1),  # 6x6
            res(512),
            res(512),
            Conv2d(c(512), c(512), 3, 2, 1),  # 3x3
            Conv2d(c(512), c(512), 3, 1, 0),  # 1x1
            Conv2d(c(512), c(512), 1, 1, 0),
        )

        self.audio_encoder = nn.Sequential(
            Conv2d(1, c(32), 3, 1, 1),
            res(32),
            res(32),
            Conv2d(c(32), c(64), 3, (3, 1), 1),
            res(64),
            res(64),
            Conv2d(c(64), c(128), 3, 3, 1),
            res(128),
            res(128),
            Conv2d(c(128), c(256), 3, (3, 2), 1),
            res(256),
            res(256),
            Conv2d(c(256), c(512), 3, 1, 0),
            Conv2d(c(512), c(512), 1, 1, 0),
        )

    def forward(self, mel: Tensor, faces: Tensor) -> tuple[Tensor, Tensor]:
        """(B,1,80,16) mel + (B,15,48,96) faces -> (audio_emb, face_emb), each (B, D) with unit L2 norm."""
        return self.embed_audio(mel), self.embed_faces(faces)

    def embed_audio(self, mel: Tensor) -> Tensor:
        """(B,1,80,16) mel windows -> (B, D) unit-norm audio embeddings (the offset search embeds each side once)."""
        return F.normalize(self.audio_encoder(mel).flatten(1), p=2, dim=1)

    def embed_faces(self, faces: Tensor) -> Tensor:
        """(B,15,48,96) lower-half windows -> (B, D) unit-norm face embeddings, centred first if configured."""
        if self.config.center_frames:
            frames = faces.unflatten(1, (SYNC_FRAMES, 3))
            faces = (frames - frames.mean(dim=1, keepdim=True)).flatten(1, 2)
        return F.normalize(self.face_encoder(faces).flatten(1), p=2, dim=1)

    @classmethod
    def from_checkpoint(cls, path: str | Path, map_location: Any = "cpu") -> SyncNet:
        """Load our checkpoint, a released `lipsync_expert.pth`, a bare state dict or TorchScript, in eval mode."""
        return model_from_checkpoint(cls, SyncNetConfig, _WIDTH_PROBES, path, map_location)


def build(config: SyncNetConfig = SyncNetConfig()) -> SyncNet:
    """A freshly initialised expert."""
    return SyncNet(config)


def sync_probability(audio_emb: Tensor, face_emb: Tensor) -> Tensor:
    """Cosine similarity of the two embeddings, (B,); in [0, 1] because both come out of a ReLU."""
    return F.cosine_similarity(audio_emb, face_emb, dim=1)


def sync_loss(audio_emb: Tensor, face_emb: Tensor, target: Tensor) -> Tensor:
    """BCE of the sync probability against `target` (1 = in sync, 0 = off sync), `cosine_loss` of the release.

    The probability is clamped away from 0 and 1 so an orthogonal pair gives a large finite loss
    and a finite gradient instead of inf/NaN. `target` may be (B,) or (B, 1).
    """
    # float32 because BCE is refused under autocast and fp16 cannot hold 1 - 1e-7.
    p = sync_probability(audio_emb.float(), face_emb.float()).clamp(_EPS, 1.0 - _EPS)
    return F.binary_cross_entropy(p, target.reshape(p.shape).float())
