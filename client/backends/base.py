"""The one small interface every way of running the generator implements.

A backend takes a batch of mel windows and face pairs (see client.contract) and returns the
generated faces. In-process backends (ONNX Runtime, PyTorch) and the Triton client all sit
behind it, so the offline command, the gateway and the benchmarks never know which one runs.
"""

from __future__ import annotations

import asyncio
import functools
from abc import ABC, abstractmethod

import numpy as np

from lipsync.client import contract


class BackendError(RuntimeError):
    """The backend could not produce a result (server down, timeout, bad model file)."""


class BackendUnavailable(BackendError):
    """The backend is not reachable right now; callers may pass frames through and retry later."""


class BackendTimeout(BackendError):
    """The backend did not answer within the time the caller gave the request."""


def check_frame(mel: np.ndarray, face: np.ndarray) -> None:
    """Raise ValueError unless mel and face are one frame's inputs of the contract's shapes."""
    if mel.shape != contract.MEL_INPUT.shape:
        raise ValueError(f"{contract.MEL_INPUT.name} must have shape {contract.MEL_INPUT.shape}, got {mel.shape}")
    if face.shape != contract.FACE_INPUT.shape:
        raise ValueError(f"{contract.FACE_INPUT.name} must have shape {contract.FACE_INPUT.shape}, got {face.shape}")


class LipSyncBackend(ABC):
    """Runs the generator: (B,1,80,16) mel + (B,6,96,96) faces -> (B,3,96,96) faces, float32 in [0, 1]."""

    #: Short name used on the command line and in metrics ("onnxruntime", "pytorch", "triton").
    name: str = "backend"
    #: Largest batch one call accepts; larger inputs are split by `infer`.
    max_batch: int = contract.MAX_BATCH
    #: The audio alignment the served weights were trained with (contract.lookahead_ms): read by each
    #: backend from what it loads (checkpoint config, ONNX metadata, Triton model config), 0 if unsaid.
    mel_offset: int = 0

    @property
    def lookahead_ms(self) -> float:
        """How far past a frame's time its mel window must reach for this model."""
        return contract.lookahead_ms(self.mel_offset)

    def infer(self, mel: np.ndarray, faces: np.ndarray) -> np.ndarray:
        """Run a batch of any size, splitting it into chunks of at most `max_batch`."""
        batch = contract.check_batch(mel, faces)
        mel = np.ascontiguousarray(mel, dtype=np.float32)
        faces = np.ascontiguousarray(faces, dtype=np.float32)
        if batch <= self.max_batch:
            return self._infer_batch(mel, faces)
        parts = [
            self._infer_batch(mel[i : i + self.max_batch], faces[i : i + self.max_batch])
            for i in range(0, batch, self.max_batch)
        ]
        return np.concatenate(parts, axis=0)

    async def infer_async(self, mel: np.ndarray, faces: np.ndarray) -> np.ndarray:
        """Async form of `infer`; in-process backends run in the default executor."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, functools.partial(self.infer, mel, faces))

    async def infer_frame(self, mel: np.ndarray, face: np.ndarray, timeout_s: float | None = None) -> np.ndarray:
        """One live frame: a (1, 80, 16) mel window and a (6, 96, 96) face pair -> the (3, 96, 96) face.

        What the gateway calls per frame. In-process backends run it as a batch of one; the Triton
        backend sends it as one request, and the server's dynamic batcher forms the batches.
        `timeout_s` bounds the wait: BackendTimeout when it passes (the work itself may still finish).
        """
        check_frame(mel, face)
        if timeout_s is None:
            return (await self.infer_async(mel[None], face[None]))[0]
        try:
            async with asyncio.timeout(timeout_s):
                return (await self.infer_async(mel[None], face[None]))[0]
        except TimeoutError as exc:
            raise BackendTimeout(f"{self.name} did not answer within {1000 * timeout_s:.0f} ms") from exc

    @abstractmethod
    def _infer_batch(self, mel: np.ndarray, faces: np.ndarray) -> np.ndarray:
        """Run one validated, contiguous float32 batch of at most `max_batch` items."""

    def close(self) -> None:  # noqa: B027 - optional hook, most backends hold nothing to release
        """Release sessions, connections and device memory."""

    async def aclose(self) -> None:
        self.close()

    def __enter__(self) -> LipSyncBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
