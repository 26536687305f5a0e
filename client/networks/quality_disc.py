"""The visual-quality discriminator (Wav2Lip_disc_qual): is the lower half of a face real or generated?

Keys equal the released `visual_quality_disc.pth` at width 1.0
(tests/data/reference/wav2lip_disc_qual_state_dict_keys.tsv). Convolutions without BatchNorm, LeakyReLU(0.01).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from lipsync.client.contract import FACE_SIZE, MASK_START_ROW
from lipsync.client.networks.blocks import NoNormConv2d, check_width, scaled_channels
from lipsync.client.networks.checkpoints import WidthProbe, model_from_checkpoint


@dataclass(frozen=True)
class QualityDiscConfig:
    """Architecture of the discriminator; `width` scales every inner channel count (1.0 = released model)."""

    width: float = 1.0

    def __post_init__(self) -> None:
        check_width(self.width, smallest=32, owner=type(self).__name__)

    def ch(self, channels: int) -> int:
        return scaled_channels(channels, self.width)


_WIDTH_PROBES = (
    WidthProbe("face_encoder_blocks.0.0.conv_block.0.weight", 0, 32),
    WidthProbe("face_encoder_blocks.1.0.conv_block.0.weight", 0, 64),
    WidthProbe("face_encoder_blocks.2.0.conv_block.0.weight", 0, 128),
    WidthProbe("face_encoder_blocks.3.0.conv_block.0.weight", 0, 256),
    WidthProbe("face_encoder_blocks.4.0.conv_block.0.weight", 0, 512),
)


class QualityDiscriminator(nn.Module):
    """(N,3,96,96) BGR faces in [0,1] -> (N,1) probability that the lower half (rows 48:) is real."""

    def __init__(self, config: QualityDiscConfig = QualityDiscConfig()) -> None:
        super().__init__()
        self.config = config
        c = config.ch

        conv = NoNormConv2d  # (cin, cout, kernel, stride, padding)

        self.face_encoder_blocks = nn.ModuleList(
            [
                nn.Sequential(conv(3, c(32), 7, 1, 3)),  # 48x96
                nn.Sequential(conv(c(32), c(64), 5, (1, 2), 2), conv(c(64), c(64), 5, 1, 2)),  # 48x48
                nn.Sequential(conv(c(64), c(128), 5, 2, 2), conv(c(128), c(128), 5, 1, 2)),  # 24x24
                nn.Sequential(conv(c(128), c(256), 5, 2, 2), conv(c(256), c(256), 5, 1, 2)),  # 12x12
                nn.Sequential(conv(c(256), c(512), 3, 2, 1), conv(c(512), c(512), 3, 1, 1)),  # 6x6
                nn.Sequential(conv(c(512), c(512), 3, 2, 1), conv(c(512), c(512), 3, 1, 1)),  # 3x3
                nn.Sequential(conv(c(512), c(512), 3, 1, 0), conv(c(512), c(512), 1, 1, 0)),  # 1x1
            ]
        )
        self.binary_pred = nn.Sequential(nn.Conv2d(c(512), 1, kernel_size=1, stride=1, padding=0), nn.Sigmoid())

    def forward(self, faces: Tensor) -> Tensor:
        """(N,3,96,96) faces -> (N,1) probability of being real, judged on rows 48: only."""
        if faces.dim() != 4 or faces.shape[-2:] != (FACE_SIZE, FACE_SIZE):
            raise ValueError(
                f"QualityDiscriminator takes (N,3,{FACE_SIZE},{FACE_SIZE}) faces, got {tuple(faces.shape)}"
            )
        x = faces[:, :, MASK_START_ROW:]
        for block in self.face_encoder_blocks:
            x = block(x)
        return self.binary_pred(x).view(-1, 1)

    @classmethod
    def from_checkpoint(cls, path: str | Path, map_location: Any = "cpu") -> QualityDiscriminator:
        """Load our checkpoint, a released `visual_quality_disc.pth`, a bare state dict or TorchScript, in eval mode."""
        return model_from_checkpoint(cls, QualityDiscConfig, _WIDTH_PROBES, path, map_location)


def build(config: QualityDiscConfig = QualityDiscConfig()) -> QualityDiscriminator:
    """A freshly initialised discriminator."""
    return QualityDiscriminator(config)
