"""syncnet_python's `S` (syncnet_v2.model), the network behind the LSE-D / LSE-C lip-sync metrics.

Keys equal tests/data/reference/syncnet_v2_S_state_dict_keys.tsv. It embeds 5 BGR frames of 224x224 (raw 0-255)
and 13 MFCC x 20 steps (0.2 s) into unnormalised 1024-d vectors compared by Euclidean distance.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from lipsync.client.networks.checkpoints import load_state_dict, strict_load

EMBEDDING_DIM = 1024


def _fc() -> nn.Sequential:
    return nn.Sequential(nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Linear(512, EMBEDDING_DIM))


class SyncNetV2(nn.Module):
    """Audio-visual sync embedder: `forward_lip` (N,3,5,224,224) and `forward_aud` (N,1,13,20) -> (N,1024)."""

    def __init__(self) -> None:
        super().__init__()
        # Sequential indices are part of the key names (e.g. netcnnaud.18.weight): keep every layer.
        self.netcnnaud = nn.Sequential(
            nn.Conv2d(1, 64, kernel_size=3, stride=1, padding=1),
            nn.BatchNorm2d(64),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=1, stride=1),
            nn.Conv2d(64, 192, kernel_size=3, stride=1, padding=1),
            nn.BatchNorm2d(192),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=(1, 2)),
            nn.Conv2d(192, 384, kernel_size=3, padding=1),
            nn.BatchNorm2d(384),
            nn.ReLU(),
            nn.Conv2d(384, 256, kernel_size=3, padding=1),
            nn.BatchNorm2d(256),
            nn.ReLU(),
            nn.Conv2d(256, 256, kernel_size=3, padding=1),
            nn.BatchNorm2d(256),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(256, 512, kernel_size=(5, 4), padding=0),
            nn.BatchNorm2d(512),
            nn.ReLU(),
        )
        self.netfcaud = _fc()
        self.netfclip = _fc()
        self.netcnnlip = nn.Sequential(
            nn.Conv3d(3, 96, kernel_size=(5, 7, 7), stride=(1, 2, 2), padding=0),
            nn.BatchNorm3d(96),
            nn.ReLU(),
            nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2)),
            nn.Conv3d(96, 256, kernel_size=(1, 5, 5), stride=(1, 2, 2), padding=(0, 1, 1)),
            nn.BatchNorm3d(256),
            nn.ReLU(),
            nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)),
            nn.Conv3d(256, 256, kernel_size=(1, 3, 3), padding=(0, 1, 1)),
            nn.BatchNorm3d(256),
            nn.ReLU(),
            nn.Conv3d(256, 256, kernel_size=(1, 3, 3), padding=(0, 1, 1)),
            nn.BatchNorm3d(256),
            nn.ReLU(),
            nn.Conv3d(256, 256, kernel_size=(1, 3, 3), padding=(0, 1, 1)),
            nn.BatchNorm3d(256),
            nn.ReLU(),
            nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2)),
            nn.Conv3d(256, 512, kernel_size=(1, 6, 6), padding=0),
            nn.BatchNorm3d(512),
            nn.ReLU(),
        )

    def forward_aud(self, mfcc: Tensor) -> Tensor:
        """(N,1,13,20) MFCC (13 coefficients x 20 steps of 10 ms) -> (N,1024)."""
        return self.netfcaud(self.netcnnaud(mfcc).flatten(1))

    def forward_lip(self, frames: Tensor) -> Tensor:
        """(N,3,5,224,224) five BGR frames, raw 0-255 -> (N,1024)."""
        return self.netfclip(self.netcnnlip(frames).flatten(1))

    def forward(self, mfcc: Tensor, frames: Tensor) -> tuple[Tensor, Tensor]:
        """Both embeddings at once: (audio (N,1024), lip (N,1024))."""
        return self.forward_aud(mfcc), self.forward_lip(frames)

    @classmethod
    def from_checkpoint(cls, path: str | Path, map_location: Any = "cpu") -> SyncNetV2:
        """Load `syncnet_v2.model` (a bare state dict), our checkpoint format or TorchScript, in eval mode.

        Like syncnet_python's `loadParameters`, a file may lack the `num_batches_tracked` buffers
        (written by torch < 0.4.1); every other key must be present, known and of the right shape.
        """
        state, _ = load_state_dict(path, map_location)
        model = cls()
        strict_load(model, state, path, optional=lambda key: key.endswith(".num_batches_tracked"))
        if isinstance(map_location, str | torch.device):
            model = model.to(map_location)
        return model.eval()
