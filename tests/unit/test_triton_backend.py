"""The Triton client's boundaries without a server: argument checks and how Triton's errors are reported.

(Everything that needs a server runs against a real tritonserver in tests/integration/test_triton_serving.py.)
"""

from __future__ import annotations

import asyncio
import os

import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

from lipsync.client import contract
from lipsync.client.backends.base import BackendError, BackendTimeout, BackendUnavailable
from lipsync.client.backends.triton import TritonBackend
from lipsync.client.triton_server import ServerConfig, free_port

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("status", "message", "kind", "text"),
    [
        ("StatusCode.DEADLINE_EXCEEDED", "Deadline Exceeded", BackendTimeout, "did not answer in time"),
        ("StatusCode.UNAVAILABLE", "Request timeout expired", BackendTimeout, "did not answer in time"),
        ("StatusCode.UNAVAILABLE", "Exceeds maximum queue size", BackendError, "overloaded"),
        ("StatusCode.UNAVAILABLE", "failed to connect to all addresses", BackendUnavailable, "unreachable"),
        (
            "StatusCode.UNAVAILABLE",
            "Request for unknown model: 'm' has no available versions",
            BackendUnavailable,
            "not ready",
        ),  # fmt: skip
        ("StatusCode.INVALID_ARGUMENT", "bad request: inputs contain NaN", BackendError, "NaN"),
    ],
)
def test_errors_are_reported_by_kind(status: str, message: str, kind: type, text: str) -> None:
    backend = TritonBackend("127.0.0.1:1", timeout_s=2)
    error = backend._translate(InferenceServerException(msg=message, status=status), client=None)
    assert type(error) is kind
    assert text in str(error) and "127.0.0.1:1" in str(error)


def test_an_unreachable_server_drops_the_channel_so_the_next_call_dials_afresh() -> None:
    backend = TritonBackend("127.0.0.1:1")
    client = backend._sync_client()
    backend._translate(InferenceServerException(msg="Connection refused", status="StatusCode.UNAVAILABLE"), client)
    assert backend._sync_client() is not client
    backend.close()


def test_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="gRPC host:port"):
        TritonBackend("http://127.0.0.1:8000")
    with pytest.raises(ValueError, match="timeout_s"):
        TritonBackend(timeout_s=0)
    with pytest.raises(ValueError, match="port"):
        ServerConfig(grpc_port=70000)


async def test_infer_frame_checks_shapes_before_sending() -> None:
    backend = TritonBackend("127.0.0.1:1")
    face = np.zeros(contract.FACE_INPUT.shape, np.float32)
    with pytest.raises(ValueError, match=contract.MEL_INPUT.name):
        await backend.infer_frame(np.zeros((80, 16), np.float32), face)
    with pytest.raises(ValueError, match="batch sizes differ"):
        await backend.infer_async(np.zeros((2, 1, 80, 16), np.float32), np.zeros((3, 6, 96, 96), np.float32))
    await backend.aclose()


def _open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts descriptors through Linux /proc")
async def test_probing_a_server_that_is_down_does_not_leak_channels() -> None:
    # A gateway probes an absent Triton about once a second; each probe that finds it down drops its
    # channel. Those channels must be closed once no call can be waiting on them, not kept until shutdown:
    # a kept one redials, and when the server is back each holds a connection (154 descriptors in the soak).
    backend = TritonBackend(f"127.0.0.1:{free_port()}", timeout_s=0.2, ready_timeout_s=0.2)
    assert not await backend.is_ready_async()
    before = _open_descriptors()
    for _ in range(25):
        assert not await backend.is_ready_async()
        await asyncio.sleep(0.15)
    grown = _open_descriptors() - before
    # Within the last 1.2 s (deadline + 1 s) at most 8 probes dropped channels that are not yet closed.
    assert len(backend._stale_aio) <= 9, f"{len(backend._stale_aio)} dropped channels are kept"
    assert grown < 15, f"{grown} descriptors more after 25 probes of a server that is down"
    await backend.aclose()
