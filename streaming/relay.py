"""Fan-out of a session's outgoing video and audio to every peer that receives them (its own, WHEP viewers).

The A/V synchroniser hands each frame out once: two senders reading it would split the frames between
them, and the audio position would run at twice the speed. So each outgoing track has exactly one
reader here, running for the whole session and paced by the synchroniser's send times, and each
receiving peer gets a `RelayTrack` of its own. With nobody receiving (a WHIP publisher sends only, and
no viewer is connected) the frames are read at their send time and let go: nothing in the session
backs up. aiortc's MediaRelay does not suit: its reader task has no owner, its buffered queues have no
bound, and unbuffered it drops audio without a word.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable

from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError

from lipsync.streaming.av_sync import AvSynchronizer
from lipsync.streaming.metrics import GatewayObserver
from lipsync.streaming.tracks import DelayedAudioTrack, LipSyncVideoTrack

logger = logging.getLogger(__name__)

# Per receiver. Video: only the newest picture waits (a receiver whose encoder is behind skips to the
# present, as AvSynchronizer drops late frames). Audio: 100 ms of 20 ms frames, what AvSynchronizer
# lets its own reader fall behind before it skips ahead; beyond that the oldest goes, counted and logged.
VIDEO_QUEUE = 1
AUDIO_QUEUE = 5


class RelayTrack(MediaStreamTrack):
    """One receiver's copy of a relayed track.

    It takes frames only once its reader has asked for one: the sender of a peer that never sends (a
    sendonly WHIP publisher) or has not connected yet holds nothing, and a new reader starts at the
    present. At most `maxsize` frames wait; a new one then pushes out the oldest, counted in `dropped`.
    """

    def __init__(self, relay: TrackRelay, kind: str, maxsize: int) -> None:
        super().__init__()
        self.kind = kind
        self._relay: TrackRelay | None = relay
        self._frames: deque = deque()
        self._maxsize = maxsize
        self._ready = asyncio.Event()
        self._ended = False
        self.reading = False
        self.dropped = 0

    def put(self, frame) -> bool:
        """Queue a frame for this reader; False when that pushed out an older one."""
        kept = len(self._frames) < self._maxsize
        if not kept:
            self._frames.popleft()
            self.dropped += 1
        self._frames.append(frame)
        self._ready.set()
        return kept

    def end(self) -> None:
        """No more frames: the reader's next recv raises MediaStreamError (its sender then stops quietly)."""
        self._ended = True
        self._ready.set()

    async def recv(self):
        self.reading = True
        while True:
            if self._ended:
                raise MediaStreamError
            if self._frames:
                return self._frames.popleft()
            self._ready.clear()
            await self._ready.wait()

    def stop(self) -> None:
        super().stop()
        if self._relay is not None:
            self._relay.unsubscribe(self)
            self._relay = None
        self.end()


class TrackRelay:
    """Reads one source track in a task of its own and hands every frame to each reading subscriber."""

    def __init__(
        self, source: MediaStreamTrack, *, maxsize: int, on_drop: Callable[[RelayTrack], None], name: str
    ) -> None:
        self.source = source
        self._maxsize = maxsize
        self._on_drop = on_drop
        self._name = name
        self._subscribers: set[RelayTrack] = set()
        self._task: asyncio.Task | None = None
        self.frames = 0  # read from the source, whether anyone received them or not

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    def subscribe(self) -> RelayTrack:
        track = RelayTrack(self, self.source.kind, self._maxsize)
        self._subscribers.add(track)
        return track

    def unsubscribe(self, track: RelayTrack) -> None:
        self._subscribers.discard(track)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=self._name)

    async def _run(self) -> None:
        try:
            with contextlib.suppress(MediaStreamError):
                while True:
                    frame = await self.source.recv()
                    self.frames += 1
                    for track in list(self._subscribers):
                        if track.reading and not track.put(frame):
                            self._on_drop(track)
        finally:
            self._end_all()

    def _end_all(self) -> None:
        for track in list(self._subscribers):
            track.end()
        self._subscribers.clear()

    async def aclose(self) -> None:
        """Stop reading (the task is cancelled and awaited) and end every subscriber's track."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._end_all()
        self.source.stop()


class SessionOutputs:
    """A session's lip-synced video and delayed audio, each read once and relayed to every receiver."""

    def __init__(self, sync: AvSynchronizer, observer: GatewayObserver, session_id: str) -> None:
        self._session = session_id
        self.video = TrackRelay(
            LipSyncVideoTrack(sync),
            maxsize=VIDEO_QUEUE,
            on_drop=lambda _: observer.dropped(session_id, "receiver_behind"),
            name=f"{session_id}-relay-video",
        )
        self.audio = TrackRelay(
            DelayedAudioTrack(sync), maxsize=AUDIO_QUEUE, on_drop=self._audio_dropped, name=f"{session_id}-relay-audio"
        )

    def subscribe(self, kind: str) -> RelayTrack:
        """A new receiver's track of `kind` ("video" or "audio")."""
        if kind == "video":
            return self.video.subscribe()
        if kind == "audio":
            return self.audio.subscribe()
        raise ValueError(f"no outgoing track of kind {kind!r}; there are 'video' and 'audio'")

    def start(self) -> None:
        self.video.start()
        self.audio.start()

    async def aclose(self) -> None:
        await asyncio.gather(self.video.aclose(), self.audio.aclose())

    def _audio_dropped(self, track: RelayTrack) -> None:
        # Audio is never dropped silently (DESIGN.md): a receiver's first dropped frame is logged, then each second's worth.
        if track.dropped % 50 == 1:
            logger.warning(
                "a receiver reads the session's audio too slowly: %d ms of it dropped so far",
                20 * track.dropped,
                extra={"session_id": self._session},
            )
