"""The convolution wrappers every Wav2Lip network is built from (models/conv.py of the release).

The attribute names `conv_block` and `act` are part of the checkpoint format: they produce keys
such as `face_encoder_blocks.0.0.conv_block.0.weight`, so released weights load unchanged.
"""

from __future__ import annotations

from torch import Tensor, nn

_Size = int | tuple[int, int]


class Conv2d(nn.Module):
    """Conv + BatchNorm + ReLU; with `residual` the input is added after BN, before the ReLU."""

    def __init__(
        self, cin: int, cout: int, kernel_size: _Size, stride: _Size, padding: _Size, residual: bool = False
    ) -> None:
        super().__init__()
        if residual and cin != cout:
            raise ValueError(f"a residual Conv2d needs cin == cout, got {cin} -> {cout}")
        self.conv_block = nn.Sequential(nn.Conv2d(cin, cout, kernel_size, stride, padding), nn.BatchNorm2d(cout))
        self.act = nn.ReLU()
        self.residual = residual

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv_block(x)
        if self.residual:
            out = out + x
        return self.act(out)


class Conv2dTranspose(nn.Module):
    """Transposed conv + BatchNorm + ReLU (the decoder's upsampling step)."""

    def __init__(
        self, cin: int, cout: int, kernel_size: _Size, stride: _Size, padding: _Size, output_padding: _Size = 0
    ) -> None:
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ConvTranspose2d(cin, cout, kernel_size, stride, padding, output_padding), nn.BatchNorm2d(cout)
        )
        self.act = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.conv_block(x))


class NoNormConv2d(nn.Module):
    """Conv + LeakyReLU(0.01) without BatchNorm (`nonorm_Conv2d`, used by the quality discriminator)."""

    def __init__(self, cin: int, cout: int, kernel_size: _Size, stride: _Size, padding: _Size) -> None:
        super().__init__()
        self.conv_block = nn.Sequential(nn.Conv2d(cin, cout, kernel_size, stride, padding))
        self.act = nn.LeakyReLU(0.01, inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.conv_block(x))


def scaled_channels(channels: int, width: float) -> int:
    """Channel count of a layer whose full-width count is `channels` (round half up, so it is invertible)."""
    return int(channels * width + 0.5)


def check_width(width: float, smallest: int, owner: str) -> None:
    """Validate a width multiplier: 0 < width <= 1 and the narrowest layer keeps at least 4 channels."""
    if not isinstance(width, int | float) or isinstance(width, bool):
        raise TypeError(f"{owner}.width must be a number, got {width!r}")
    if not 0.0 < width <= 1.0:
        raise ValueError(f"{owner}.width must be in (0, 1], got {width}")
    if scaled_channels(smallest, width) < 4:
        min_width = 3.5 / smallest
        raise ValueError(
            f"{owner}.width={width} leaves {scaled_channels(smallest, width)} channels in the narrowest layer "
            f"({smallest} at full width); use width >= {min_width:g}"
        )
