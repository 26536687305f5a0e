"""The Wav2Lip generator: a masked face + reference face and a 200 ms mel window in, a 96x96 face out.

Module names and shapes equal the released model at width 1.0 (tests/data/reference/wav2lip_state_dict_keys.tsv),
so `wav2lip.pth`, `wav2lip_gan.pth` and the TorchScript `.pt` files load strictly. A width
multiplier scales every inner channel count for CPU-sized variants with the same topology.

Two output heads (`Wav2LipConfig.head`):
- "image", the paper's: the last 1x1 convolution draws the whole face, 3 channels through a sigmoid.
  Released checkpoints have it (files without a saved config load with it).
- "composite", this project's identity-preserving head: the same convolution gives 4 channels,
  new content and a soft mask, and the network returns reference + mask * (content - reference),
  its own reference input composited under the new content. At inference the reference is the
  current frame, so wherever the mask is 0 the real skin, stubble and lip colour come through
  untouched. Inputs and output are the contract's either way (the export does not change).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from lipsync.client.contract import check_mel_offset
from lipsync.client.networks.blocks import Conv2d, Conv2dTranspose, check_width, scaled_channels
from lipsync.client.networks.checkpoints import WidthProbe, model_from_checkpoint

HEADS = ("image", "composite")


@dataclass(frozen=True)
class Wav2LipConfig:
    """Architecture of the generator; `width` scales every inner channel count (1.0 = released model)."""

    width: float = 1.0
    head: str = "image"
    # Not a layer: the audio alignment the weights were trained with (contract.lookahead_ms). Kept
    # here because this config travels with the weights into every file made from them.
    mel_offset: int = 0

    def __post_init__(self) -> None:
        check_width(self.width, smallest=16, owner=type(self).__name__)
        check_mel_offset(self.mel_offset)
        if self.head not in HEADS:
            raise ValueError(f"{type(self).__name__}.head must be one of {list(HEADS)}, got {self.head!r}")

    @property
    def output_channels(self) -> int:
        return 4 if self.head == "composite" else 3

    def ch(self, channels: int) -> int:
        return scaled_channels(channels, self.width)


# Channel counts at which the width of a file can be read: the encoder's output of each stage.
_WIDTH_PROBES = (
    WidthProbe("face_encoder_blocks.0.0.conv_block.0.weight", 0, 16),
    WidthProbe("face_encoder_blocks.1.0.conv_block.0.weight", 0, 32),
    WidthProbe("face_encoder_blocks.2.0.conv_block.0.weight", 0, 64),
    WidthProbe("face_encoder_blocks.3.0.conv_block.0.weight", 0, 128),
    WidthProbe("face_encoder_blocks.4.0.conv_block.0.weight", 0, 256),
    WidthProbe("face_encoder_blocks.5.0.conv_block.0.weight", 0, 512),
    WidthProbe("face_decoder_blocks.3.0.conv_block.0.weight", 1, 384),
)


class Wav2Lip(nn.Module):
    """Generator G of Prajwal et al. (2020): (B,1,80,16) mel + (B,6,96,96) faces -> (B,3,96,96) in [0,1].

    The 6 face channels are [target with rows 48: zeroed, reference], both BGR in [0, 1].
    """

    def __init__(self, config: Wav2LipConfig = Wav2LipConfig()) -> None:
        super().__init__()
        self.config = config
        c = config.ch

        def res(n: int) -> Conv2d:
            return Conv2d(c(n), c(n), 3, 1, 1, residual=True)

        self.face_encoder_blocks = nn.ModuleList(
            [
                nn.Sequential(Conv2d(6, c(16), 7, 1, 3)),  # 96x96
                nn.Sequential(Conv2d(c(16), c(32), 3, 2, 1), res(32), res(32)),  # 48x48
                nn.Sequential(Conv2d(c(32), c(64), 3, 2, 1), res(64), res(64), res(64)),  # 24x24
                nn.Sequential(Conv2d(c(64), c(128), 3, 2, 1), res(128), res(128)),  # 12x12
                nn.Sequential(Conv2d(c(128), c(256), 3, 2, 1), res(256), res(256)),  # 6x6
                nn.Sequential(Conv2d(c(256), c(512), 3, 2, 1), res(512)),  # 3x3
                nn.Sequential(Conv2d(c(512), c(512), 3, 1, 0), Conv2d(c(512), c(512), 1, 1, 0)),  # 1x1
            ]
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
            Conv2d(c(256), c(512), 3, 1, 0),
            Conv2d(c(512), c(512), 1, 1, 0),
        )

        # Each decoder block's output is concatenated with the matching encoder output, so its
        # input is (previous decoder out + encoder skip) channels.
        def up(cin: int, n: int, **kw: Any) -> Conv2dTranspose:
            return Conv2dTranspose(cin, c(n), 3, **kw)

        self.face_decoder_blocks = nn.ModuleList(
            [
                nn.Sequential(Conv2d(c(512), c(512), 1, 1, 0)),  # 1x1
                nn.Sequential(up(c(512) + c(512), 512, stride=1, padding=0), res(512)),  # 3x3
                nn.Sequential(up(c(512) + c(512), 512, stride=2, padding=1, output_padding=1), res(512), res(512)),
                nn.Sequential(up(c(512) + c(256), 384, stride=2, padding=1, output_padding=1), res(384), res(384)),
                nn.Sequential(up(c(384) + c(128), 256, stride=2, padding=1, output_padding=1), res(256), res(256)),
                nn.Sequential(up(c(256) + c(64), 128, stride=2, padding=1, output_padding=1), res(128), res(128)),
                nn.Sequential(up(c(128) + c(32), 64, stride=2, padding=1, output_padding=1), res(64), res(64)),
            ]
        )

        self.output_block = nn.Sequential(
            Conv2d(c(64) + c(16), c(32), 3, 1, 1),
            nn.Conv2d(c(32), config.output_channels, kernel_size=1, stride=1, padding=0),
            nn.Sigmoid(),
        )

    def forward(self, mel: Tensor, face: Tensor) -> Tensor:
        """(B,1,80,16) mel window + (B,6,96,96) [masked target, reference] -> (B,3,96,96) BGR face in [0,1]."""
        out = self.decode(mel, face)
        if self.config.head == "image":
            return out
        content, mask = out[:, :3], out[:, 3:]
        reference = face[:, 3:]
        # Exactly the reference where the mask is 0, exactly the content where it is 1.
        return reference + mask * (content - reference)

    def composite_parts(self, mel: Tensor, face: Tensor) -> tuple[Tensor, Tensor]:
        """The composite head's (B,3,96,96) content and (B,1,96,96) mask, for training losses and pictures."""
        if self.config.head != "composite":
            raise ValueError(f"composite_parts needs head='composite', this network has head={self.config.head!r}")
        out = self.decode(mel, face)
        return out[:, :3], out[:, 3:]

    def decode(self, mel: Tensor, face: Tensor) -> Tensor:
        """The output block's sigmoid channels: the face (image head) or content + mask (composite head)."""
        if mel.dim() != 4 or face.dim() != 4:
            raise ValueError(
                f"Wav2Lip takes 4-D inputs (B,1,80,16) and (B,6,96,96), got {tuple(mel.shape)} and "
                f"{tuple(face.shape)}; fold time into the batch in the data code"
            )
        feats = []
        x = face
        for block in self.face_encoder_blocks:
            x = block(x)
            feats.append(x)

        x = self.audio_encoder(mel)
        for block in self.face_decoder_blocks:
            x = torch.cat((block(x), feats.pop()), dim=1)

        return self.output_block(x)

    @classmethod
    def from_checkpoint(cls, path: str | Path, map_location: Any = "cpu") -> Wav2Lip:
        """Load our checkpoint, a released `.pth`, a bare state dict or a TorchScript `.pt`, in eval mode."""
        return model_from_checkpoint(cls, Wav2LipConfig, _WIDTH_PROBES, path, map_location)


def build(config: Wav2LipConfig = Wav2LipConfig()) -> Wav2Lip:
    """A freshly initialised generator."""
    return Wav2Lip(config)
