"""The Triton client as a backend: each frame is its own gRPC request, so Triton's dynamic batcher
forms the batches, across the frames of one call and across sessions.

A batch fans out as concurrent per-frame requests (callbacks on the sync client, tasks on the aio
client). Every request carries a deadline that is also sent to the server, whose queue then drops
frames that can no longer arrive in time. A server that cannot be reached raises BackendUnavailable
and the channel is rebuilt on the next call, so a restarted server is picked up at once instead of
after gRPC's reconnect back-off.

The served weights' mel offset (contract.lookahead_ms) is a parameter of the model's config, which
`lipsync-export` writes; the backend reads it from the server once the model is ready, never in the
constructor, so a backend can be made before its server is up (see `mel_offset`).

No shared memory: on this project's CPU hosts a frame's whole trip without compute (gRPC upload of
its 226 KB, the batcher's 2 ms queue delay, the Python backend's hand-off) measured 3.4 ms p50
against 25-80 ms of compute per frame (benchmarks/serving.py, row "triton, no compute"), so shared
memory could win a few per cent at most, while costing registered regions per in-flight request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
from tritonclient.grpc import service_pb2
from tritonclient.utils import InferenceServerException

from lipsync.client import contract
from lipsync.client.backends.base import (
    BackendError,
    BackendTimeout,
    BackendUnavailable,
    LipSyncBackend,
    check_frame,
)

log = logging.getLogger(__name__)

# Per-frame requests in flight per call; the server's queue is bounded too (export/model_repository.py).
DEFAULT_MAX_IN_FLIGHT = 2 * contract.MAX_BATCH
_CHANNEL_ARGS = [
    # tritonclient's own defaults, which passing channel_args replaces.
    ("grpc.max_send_message_length", 2**31 - 1),
    ("grpc.max_receive_message_length", 2**31 - 1),
    # gRPC shares subchannels between channels to the same address, so a rebuilt channel would
    # inherit the old one's reconnect back-off (seconds after a refused connection): use our own,
    # and keep the back-off short so even a channel that is not rebuilt retries within a second.
    ("grpc.use_local_subchannel_pool", 1),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
]


class TritonBackend(LipSyncBackend):
    """Runs the generator on a Triton server over gRPC (sync and asyncio), one request per frame."""

    name = "triton"

    def __init__(
        self,
        url: str = "127.0.0.1:8001",
        model: str = contract.EMBEDDED_MODEL,
        *,
        timeout_s: float = 10.0,
        ready_timeout_s: float = 2.0,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
    ) -> None:
        if not url or url.startswith(("http://", "https://")):
            raise ValueError(f"url must be a gRPC host:port such as 127.0.0.1:8001, got {url!r}")
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be >= 1, got {max_in_flight}")
        self.url = url
        self.model = model
        self.timeout_s = float(timeout_s)
        self.ready_timeout_s = float(ready_timeout_s)
        # One request per frame, at most this many in flight: `infer` sends larger inputs in waves.
        self.max_in_flight = max_in_flight
        self._lock = threading.Lock()
        self._client: grpcclient.InferenceServerClient | None = None
        self._aio: tuple[asyncio.AbstractEventLoop, aioclient.InferenceServerClient] | None = None
        # (loop, channel, when it was dropped): closed once no call on it can still be waiting.
        self._stale_aio: list[tuple[asyncio.AbstractEventLoop, aioclient.InferenceServerClient, float]] = []
        self._outputs = [grpcclient.InferRequestedOutput(contract.FACE_OUTPUT.name)]
        # What `lipsync` reports as the weights it runs: the server knows, the client names the model.
        self.metadata = {"weights": "Triton model", "checkpoint": f"{model} at {url}"}
        # The served model's mel offset (see `mel_offset`): the last one read from its config, whether it
        # was read since the server or model last went away, and why the config's value is unusable.
        self._mel_offset: int | None = None
        self._mel_offset_current = False
        self._mel_offset_error: str | None = None
        self._mel_offset_reading = False  # an async read is under way: concurrent frames do not repeat it
        self._mel_offset_guessed = False  # the 'not known yet' warning was logged

    # ------------------------------------------------------------------ the served weights' alignment

    @property
    def mel_offset(self) -> int:  # type: ignore[override]  # a property over the base class's attribute
        """The mel offset the served model's weights were trained with, from its config (0 if it names none).

        Read from the server at the first successful readiness check (`is_ready`, `is_ready_async`,
        `wait_until_ready`) or inference, and again at the first one after the server or the model went
        away (it may come back with other weights; until then the last value stands). Not known yet,
        reading it from synchronous code asks the server there and then (one call of at most
        `ready_timeout_s`); inside a running event loop it never blocks and is 0 until a frame has been
        answered: the released alignment, whose look-ahead is the longest, so a delay sized from it is
        never too short (await `is_ready_async()` first to have the served value from the start). A
        server that cannot answer leaves it 0 for now. A config whose value is not a mel offset raises
        BackendError: the model was exported wrongly.
        """
        if self._mel_offset is None and self._mel_offset_error is None and not _in_event_loop():
            self._read_mel_offset(self._sync_client())
        if self._mel_offset_error is not None:
            raise BackendError(self._mel_offset_error)
        if self._mel_offset is None:
            if not self._mel_offset_guessed:
                self._mel_offset_guessed = True
                log.warning(
                    "the mel offset of %r at %s is not read from the server yet: 0 (the released alignment) until it is",
                    self.model,
                    self.url,
                )
            return 0
        return self._mel_offset

    def _take_mel_offset(self, response: service_pb2.ModelConfigResponse) -> None:
        parameters = response.config.parameters
        key = contract.MEL_OFFSET_METADATA_KEY
        # Configs written before the offset was recorded name none: the released alignment.
        value = parameters[key].string_value if key in parameters else "0"
        self._mel_offset_current = True
        try:
            self._mel_offset, self._mel_offset_error = contract.check_mel_offset(int(value)), None
        except ValueError as exc:
            self._mel_offset_error = (
                f"model {self.model!r} on Triton at {self.url} has parameter {key}={value!r}, which is not a mel "
                f"offset ({exc}); export it again with `lipsync-export`"
            )
            log.error("%s", self._mel_offset_error)

    def _read_mel_offset(self, client: grpcclient.InferenceServerClient) -> None:
        """Read the offset from the model's config if it is not current; a failure only leaves it so."""
        if self._mel_offset_current:
            return
        try:
            self._take_mel_offset(client.get_model_config(self.model, client_timeout=self.ready_timeout_s))
        except InferenceServerException as exc:
            self._translate(exc, client)

    async def _read_mel_offset_async(self, client: aioclient.InferenceServerClient) -> None:
        if self._mel_offset_current or self._mel_offset_reading:
            return
        self._mel_offset_reading = True
        try:
            self._take_mel_offset(await client.get_model_config(self.model, client_timeout=self.ready_timeout_s))
        except InferenceServerException as exc:
            self._translate(exc, client)
        finally:
            self._mel_offset_reading = False

    # ------------------------------------------------------------------ connections

    def _sync_client(self) -> grpcclient.InferenceServerClient:
        with self._lock:
            if self._client is None:
                self._client = grpcclient.InferenceServerClient(self.url, channel_args=_CHANNEL_ARGS)
            return self._client

    def _aio_client(self) -> aioclient.InferenceServerClient:
        # A grpc.aio channel belongs to the event loop that created it.
        loop = asyncio.get_running_loop()
        with self._lock:
            if self._aio is None or self._aio[0] is not loop:
                self._aio = (loop, aioclient.InferenceServerClient(self.url, channel_args=_CHANNEL_ARGS))
            return self._aio[1]

    def _reset(self, client: object) -> None:
        """Drop a channel that saw the server go away; the next call dials afresh.

        The old channel is not closed here: that would cancel the calls still failing on it. A sync
        client closes itself when collected; an aio one is closed by the next call on its loop once
        every call on it has passed its deadline (`_close_stale_channels`), or by aclose().
        """
        with self._lock:
            if self._client is client:
                self._client = None
            elif self._aio is not None and self._aio[1] is client:
                self._stale_aio.append((*self._aio, time.monotonic()))
                self._aio = None

    async def _close_stale_channels(self) -> None:
        """Close the aio channels dropped longer ago than a request's deadline: no call can still be
        waiting on them. (Left until aclose(), each channel a readiness probe dropped during an outage
        kept redialling, and once Triton was back held a connection: 154 descriptors after a 100-s
        outage in the soak benchmark.)"""
        if not self._stale_aio:
            return
        loop = asyncio.get_running_loop()
        cutoff = time.monotonic() - self.timeout_s - 1.0
        with self._lock:
            due = [entry for entry in self._stale_aio if entry[0] is loop and entry[2] <= cutoff]
            self._stale_aio = [entry for entry in self._stale_aio if entry not in due]
        for _, client, _ in due:
            with contextlib.suppress(Exception):  # a channel to a dead server may fail to close cleanly
                await client.close()

    def _translate(self, exc: InferenceServerException, client: object) -> BackendError:
        status = str(exc.status() or "")
        message = exc.message() or str(exc)
        if "DEADLINE_EXCEEDED" in status or "request timeout expired" in message.lower():
            return BackendTimeout(f"Triton at {self.url} did not answer in time ({message})")
        if "queue size" in message:
            return BackendError(f"Triton at {self.url} is overloaded, its queue is full ({message})")
        if "unknown model" in message or "no available versions" in message or "not ready" in message:
            self._mel_offset_current = False  # it may be loaded again from other weights
            return BackendUnavailable(f"model {self.model!r} is not ready on Triton at {self.url} ({message})")
        if "UNAVAILABLE" in status:
            self._reset(client)
            self._mel_offset_current = False  # a server that comes back may serve other weights
            return BackendUnavailable(
                f"Triton at {self.url} is unreachable ({message}); start one with `lipsync-server`"
            )
        return BackendError(f"Triton at {self.url}, model {self.model!r}: {message} ({status})")

    # ------------------------------------------------------------------ readiness

    def is_ready(self) -> bool:
        """The server is live and the model is loaded and ready (never raises); then reads `mel_offset`."""
        client = self._sync_client()
        try:
            ready = bool(
                client.is_server_ready(client_timeout=self.ready_timeout_s)
                and client.is_model_ready(self.model, client_timeout=self.ready_timeout_s)
            )
        except InferenceServerException as exc:
            self._translate(exc, client)  # resets the channel when the server is gone
            return False
        if ready:
            self._read_mel_offset(client)
        else:
            self._mel_offset_current = False
        return ready

    async def is_ready_async(self) -> bool:
        await self._close_stale_channels()
        client = self._aio_client()
        try:
            ready = bool(
                await client.is_server_ready(client_timeout=self.ready_timeout_s)
                and await client.is_model_ready(self.model, client_timeout=self.ready_timeout_s)
            )
        except InferenceServerException as exc:
            self._translate(exc, client)
            return False
        if ready:
            await self._read_mel_offset_async(client)
        else:
            self._mel_offset_current = False
        return ready

    def wait_until_ready(self, timeout_s: float) -> bool:
        """Poll is_ready() until it holds or `timeout_s` passes."""
        deadline = time.monotonic() + timeout_s
        while True:
            if self.is_ready():
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(min(0.25, max(0.0, deadline - time.monotonic())))

    # ------------------------------------------------------------------ inference

    def _inputs(self, mel: np.ndarray, face: np.ndarray) -> list[grpcclient.InferInput]:
        inputs = []
        for spec, array in ((contract.MEL_INPUT, mel), (contract.FACE_INPUT, face)):
            tensor = grpcclient.InferInput(spec.name, list(array.shape), spec.dtype)
            tensor.set_data_from_numpy(array)
            inputs.append(tensor)
        return inputs

    @property
    def _server_timeout_us(self) -> int:
        return int(self.timeout_s * 1e6)

    def _infer_batch(self, mel: np.ndarray, faces: np.ndarray) -> np.ndarray:
        client = self._sync_client()

        def done(future: Future, result: grpcclient.InferResult | None, error: InferenceServerException | None):
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(result.as_numpy(contract.FACE_OUTPUT.name))

        outputs: list[np.ndarray] = []
        try:
            for start in range(0, mel.shape[0], self.max_in_flight):  # waves of concurrent requests
                futures = []
                for i in range(start, min(start + self.max_in_flight, mel.shape[0])):
                    future: Future = Future()
                    futures.append(future)
                    client.async_infer(
                        self.model,
                        self._inputs(mel[i : i + 1], faces[i : i + 1]),
                        callback=lambda result, error, f=future: done(f, result, error),
                        outputs=self._outputs,
                        client_timeout=self.timeout_s,
                        timeout=self._server_timeout_us,
                    )
                deadline = time.monotonic() + self.timeout_s + 1.0
                outputs += [f.result(timeout=max(0.0, deadline - time.monotonic())) for f in futures]
        except InferenceServerException as exc:
            raise self._translate(exc, client) from exc
        except FutureTimeout as exc:
            raise BackendError(f"Triton at {self.url} did not answer within {self.timeout_s:g} s") from exc
        self._read_mel_offset(client)
        return np.concatenate(outputs, axis=0)

    async def _infer_one(
        self, client: aioclient.InferenceServerClient, mel: np.ndarray, face: np.ndarray, timeout_s: float | None = None
    ) -> np.ndarray:
        timeout_s = self.timeout_s if timeout_s is None else min(timeout_s, self.timeout_s)
        try:
            result = await client.infer(
                self.model,
                self._inputs(mel, face),
                outputs=self._outputs,
                client_timeout=timeout_s,
                timeout=int(timeout_s * 1e6),
            )
        except InferenceServerException as exc:
            raise self._translate(exc, client) from exc
        await self._read_mel_offset_async(client)
        return result.as_numpy(contract.FACE_OUTPUT.name)

    async def infer_async(self, mel: np.ndarray, faces: np.ndarray) -> np.ndarray:
        """The batch as concurrent per-frame requests on the asyncio gRPC client."""
        batch = contract.check_batch(mel, faces)
        mel = np.ascontiguousarray(mel, dtype=np.float32)
        faces = np.ascontiguousarray(faces, dtype=np.float32)
        await self._close_stale_channels()
        client = self._aio_client()
        outputs: list[np.ndarray] = []
        for start in range(0, batch, self.max_in_flight):
            stop = min(start + self.max_in_flight, batch)
            results = await asyncio.gather(
                *(self._infer_one(client, mel[i : i + 1], faces[i : i + 1]) for i in range(start, stop)),
                return_exceptions=True,
            )
            for result in results:
                if isinstance(result, BaseException):
                    raise result
            outputs.extend(results)
        return np.concatenate(outputs, axis=0)

    async def infer_frame(self, mel: np.ndarray, face: np.ndarray, timeout_s: float | None = None) -> np.ndarray:
        """One live frame as one request (no batch of one to re-check, chunk and gather).

        `timeout_s` becomes the call's gRPC deadline (and Triton's own request timeout), so a frame that
        runs out of time ends inside gRPC. Cancelling a grpc.aio call from asyncio instead leaks native
        memory in grpcio 1.85 (measured 2-3 KB per cancelled call at 1,500 calls, none at the deadline:
        the gateway's memory grew about 1.4 MB per 20-s session under load)."""
        check_frame(mel, face)
        mel = np.ascontiguousarray(mel[None], dtype=np.float32)
        face = np.ascontiguousarray(face[None], dtype=np.float32)
        await self._close_stale_channels()
        return (await self._infer_one(self._aio_client(), mel, face, timeout_s))[0]

    # ------------------------------------------------------------------ statistics and shutdown

    def statistics(self) -> dict:
        """Triton's inference statistics for the model (batch sizes executed, queue and compute times)."""
        client = self._sync_client()
        try:
            return client.get_inference_statistics(self.model, as_json=True, client_timeout=self.ready_timeout_s)
        except InferenceServerException as exc:
            raise self._translate(exc, client) from exc

    def batch_executions(self, settle_s: float = 1.0) -> dict[int, int]:
        """How many times the server ran the model at each batch size so far.

        Triton counts an execution just after it answers, so this reads until two reads agree (at most
        `settle_s`): a request that just returned is then counted.
        """
        previous = None
        deadline = time.monotonic() + settle_s
        while True:
            (model,) = self.statistics()["model_stats"]
            counts = {int(s["batch_size"]): int(s["compute_infer"]["count"]) for s in model.get("batch_stats", [])}
            if counts == previous or time.monotonic() > deadline:
                return counts
            previous = counts
            time.sleep(0.05)

    def close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()

    async def aclose(self) -> None:
        with self._lock:
            channels = [entry[:2] for entry in self._stale_aio] + ([self._aio] if self._aio else [])
            self._aio, self._stale_aio = None, []
        loop = asyncio.get_running_loop()
        for owner, client in channels:
            if owner is loop:  # a channel of another (finished) loop cannot be closed from here
                await client.close()
        self.close()


def _in_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True
