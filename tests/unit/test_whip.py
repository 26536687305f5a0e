"""WHIP/WHEP at the HTTP boundary on loopback, and the relay that fans a session's output out.

The gateway runs with the grey-mouth fake backend (the media path is tests/integration/test_whip_whep.py's);
offers are real aiortc SDP, posted as application/sdp the way any WHIP/WHEP client does.
"""

from __future__ import annotations

import asyncio
import itertools

import cv2
import numpy as np
import pytest
from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection
from aiortc.mediastreams import MediaStreamError

from lipsync.streaming.relay import TrackRelay
from lipsync.streaming.whip import MAX_VIEWERS, media_directions
from tests.unit.test_streaming_server import error_of, make_client

pytestmark = pytest.mark.unit

SDP = {"Content-Type": "application/sdp"}


async def sdp_offer(video: str = "sendonly", audio: str | None = "sendonly") -> tuple[RTCPeerConnection, str]:
    """A plain aiortc offer with these directions (no tracks: only the SDP matters here)."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver("video", direction=video)
    if audio is not None:
        pc.addTransceiver("audio", direction=audio)
    await pc.setLocalDescription(await pc.createOffer())
    return pc, pc.localDescription.sdp


@pytest.fixture
async def peers():
    made: list[RTCPeerConnection] = []
    yield made
    for pc in made:
        await pc.close()


async def offer(peers: list, **directions) -> str:
    pc, sdp = await sdp_offer(**directions)
    peers.append(pc)
    return sdp


def test_media_directions_reads_each_m_line_and_the_session_default() -> None:
    sdp = "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\na=recvonly\r\nm=audio 9 X 111\r\nm=video 9 X 96\r\na=sendonly\r\n"
    assert media_directions(sdp) == [("audio", "recvonly"), ("video", "sendonly")]
    assert media_directions("v=0\nm=video 9 X 96\n") == [("video", "sendrecv")]
    for bad in ("", "hello", "v=1\r\n", "v=0\r\nnot sdp\r\n"):
        with pytest.raises(ValueError):
            media_directions(bad)


async def test_whip_publish_answers_201_and_delete_ends_the_session(peers) -> None:
    client, gateway = await make_client()
    try:
        response = await client.post("/whip", data=await offer(peers), headers=SDP)
        assert response.status == 201, await response.text()
        assert response.headers["Content-Type"] == "application/sdp"
        sid = response.headers["X-Session-Id"]
        assert response.headers["Location"] == f"/whip/{sid}"
        answer = await response.text()
        assert answer.startswith("v=0")
        assert media_directions(answer) == [("video", "recvonly"), ("audio", "recvonly")]
        assert gateway.peers[sid].protocol == "whip"
        stats = await (await client.get(f"/sessions/{sid}/stats")).json()
        assert (stats["speech"], stats["mode"], stats["viewers"]) == ("microphone", "camera", 0)
        # Nobody reads the sendonly publisher's output, yet the relay keeps taking it: nothing waits.
        audio = gateway.peers[sid].outputs.audio
        for _ in range(100):  # 20 ms frames, paced by the clock: a loaded machine may take a while
            if audio.frames > 10:
                break
            await asyncio.sleep(0.1)
        assert audio.frames > 10

        assert (await client.patch(response.headers["Location"], data="a=end-of-candidates")).status == 405
        assert (await client.delete(f"/whep/{sid}")).status == 404  # not a WHEP session
        deleted = await client.delete(response.headers["Location"])
        assert deleted.status == 200 and (await deleted.json())["closed"] == sid
        assert gateway.peers == {} and (await (await client.get("/healthz")).json())["sessions"] == 0
        assert (await client.delete(response.headers["Location"])).status == 404
    finally:
        await client.close()


async def test_whip_query_selects_what_offer_json_does(peers) -> None:
    client, gateway = await make_client()
    try:
        response = await client.post("/whip?speech=push", data=await offer(peers, audio=None), headers=SDP)
        assert response.status == 201, await response.text()
        assert gateway.peers[response.headers["X-Session-Id"]].session.options.speech == "push"
        response = await client.post("/whip?speech=shouting", data=await offer(peers), headers=SDP)
        assert response.status == 400 and "'speech' must be one of" in await error_of(response)
        response = await client.post("/whip?avatar=nobody", data=await offer(peers), headers=SDP)
        assert response.status == 400 and "unknown avatar 'nobody'" in await error_of(response)
        response = await client.post("/whip?colour=red", data=await offer(peers), headers=SDP)
        assert response.status == 400 and "unknown query parameters ['colour']" in await error_of(response)
    finally:
        await client.close()


async def test_refusals_name_what_is_wrong(peers) -> None:
    client, gateway = await make_client(max_sessions=1)
    try:
        sdp = await offer(peers)
        response = await client.post("/whip", data=sdp, headers={"Content-Type": "application/json"})
        assert response.status == 415 and "application/sdp" in await error_of(response)
        assert (await client.post("/whip", data=sdp.encode())).status == 415  # no type at all
        response = await client.post("/whip", data="hello, I am not an offer", headers=SDP)
        assert response.status == 400 and "not an SDP offer" in await error_of(response)
        # SDP in form, but nothing aiortc can connect with (no ICE credentials, no fingerprint).
        bare = "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=sendonly\r\n"
        bare += "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=sendonly\r\n"
        response = await client.post("/whip", data=bare, headers=SDP)
        assert response.status == 400 and "cannot use this offer" in await error_of(response)
        response = await client.post("/whip", data=await offer(peers, video="recvonly"), headers=SDP)
        assert response.status == 400 and "must send video" in await error_of(response)
        response = await client.post("/whip", data=await offer(peers, audio=None), headers=SDP)
        assert response.status == 400 and "must send audio" in await error_of(response)
        response = await client.post("/whep/nosuchsession", data=await offer(peers, video="recvonly"), headers=SDP)
        assert response.status == 404 and "nosuchsession" in await error_of(response)
        assert (await client.delete("/whip/nosuchsession")).status == 404
        assert (await client.delete("/whep/nosuchsession/viewer")).status == 404
        response = await client.post("/whep", data=await offer(peers, video="recvonly"), headers=SDP)
        assert response.status == 404 and "no presenter" in await error_of(response)
        assert gateway.peers == {}

        first = await client.post("/whip", data=sdp, headers=SDP)
        assert first.status == 201
        second = await client.post("/whip", data=await offer(peers), headers=SDP)
        assert second.status == 503 and second.headers["Retry-After"] == "5"
        assert "sessions are in use" in await error_of(second)
        # The same slots as POST /offer.
        assert (await client.post("/offer", json={"sdp": sdp, "type": "offer"})).status == 503

        patch = await client.patch(first.headers["Location"], data="a=ice-ufrag:x")
        assert patch.status == 405 and patch.headers["Allow"] == "DELETE, OPTIONS"
        assert "trickle ICE" in await error_of(patch)
        options = await client.options("/whip")
        assert options.status == 204 and options.headers["Accept-Post"] == "application/sdp"
        assert "POST" in options.headers["Allow"]
        metrics = await (await client.get("/metrics")).text()
        for reason in ("content_type", "bad_sdp", "max_sessions"):
            assert f'lipsync_requests_rejected_total{{reason="{reason}"}}' in metrics, reason
    finally:
        await client.close()


async def test_token_is_a_bearer_token(peers) -> None:
    client, _ = await make_client(token="s3cret")
    try:
        sdp = await offer(peers)
        for headers in ({}, {"Authorization": "Bearer nope"}):
            response = await client.post("/whip", data=sdp, headers={**SDP, **headers})
            assert response.status == 401 and response.headers["WWW-Authenticate"] == "Bearer"
        response = await client.post("/whip", data=sdp, headers={**SDP, "Authorization": "Bearer s3cret"})
        assert response.status == 201
        location = response.headers["Location"]
        assert (await client.delete(location)).status == 401
        assert (await client.post(f"{location.replace('whip', 'whep')}", data=sdp, headers=SDP)).status == 401
        assert (await client.options("/whip")).status == 204  # a CORS preflight carries no token
        assert (await client.delete(location, headers={"Authorization": "bearer s3cret"})).status == 200
    finally:
        await client.close()


async def test_whep_viewers_come_and_go_up_to_the_cap(peers) -> None:
    client, gateway = await make_client()
    try:
        published = await client.post("/whip", data=await offer(peers), headers=SDP)
        sid = published.headers["X-Session-Id"]
        locations = []
        for _ in range(MAX_VIEWERS):
            # A viewer that also offers to send: the answer refuses it (sendonly), nothing is received.
            response = await client.post(
                f"/whep/{sid}", data=await offer(peers, video="recvonly", audio="sendrecv"), headers=SDP
            )
            assert response.status == 201, await response.text()
            assert response.headers["Location"].startswith(f"/whep/{sid}/")
            assert response.headers["X-Session-Id"] == sid
            assert media_directions(await response.text()) == [("video", "sendonly"), ("audio", "sendonly")]
            locations.append(response.headers["Location"])
        refused = await client.post(f"/whep/{sid}", data=await offer(peers, video="recvonly"), headers=SDP)
        assert refused.status == 503 and refused.headers["Retry-After"] == "5"
        response = await client.post(f"/whep/{sid}", data=await offer(peers, video="sendonly"), headers=SDP)
        assert response.status == 400 and "must receive video" in await error_of(response)
        assert (await (await client.get(f"/sessions/{sid}/stats")).json())["viewers"] == MAX_VIEWERS

        assert (await client.delete(locations[0])).status == 200
        assert (await client.delete(locations[0])).status == 404
        assert (await (await client.get(f"/sessions/{sid}/stats")).json())["viewers"] == MAX_VIEWERS - 1
        outputs = gateway.peers[sid].outputs
        # The session's own (sendonly) peer and the remaining viewers hold subscriptions; the deleted one none.
        assert outputs.video.subscribers == 1 + MAX_VIEWERS - 1
        viewers = list(gateway.peers[sid].viewers.values())
        # Ending the session ends its viewers: their connections close, their tracks end.
        assert (await client.delete(f"/whip/{sid}")).status == 200
        assert all(v.pc.connectionState == "closed" for v in viewers)
        assert all(t.readyState == "ended" for v in viewers for t in v.tracks)
        assert outputs.video.subscribers == 0
    finally:
        await client.close()


async def test_whep_without_a_session_opens_a_presenter_session(peers, tmp_path) -> None:
    from tests.media import astronaut_bgr

    cv2.imwrite(str(tmp_path / "presenter.png"), astronaut_bgr())
    client, gateway = await make_client(presenter_image=str(tmp_path / "presenter.png"))
    try:
        response = await client.post("/whep", data=await offer(peers, video="recvonly", audio="recvonly"), headers=SDP)
        assert response.status == 201, await response.text()
        sid = response.headers["X-Session-Id"]
        assert response.headers["Location"] == f"/whep/{sid}"
        session = gateway.peers[sid].session
        assert (session.options.speech, session.options.mode) == ("push", "presenter")
        pushed = await client.post(f"/speech/{sid}?rate=16000", data=np.zeros(1600, "<i2").tobytes())
        assert pushed.status == 200
        assert (await client.delete(f"/whip/{sid}")).status == 404  # not a WHIP session
        assert (await client.delete(f"/whep/{sid}")).status == 200
        assert gateway.peers == {}
    finally:
        await client.close()


class Counter(MediaStreamTrack):
    """A source of numbered frames every `period` seconds (the relay never looks inside a frame)."""

    kind = "video"

    def __init__(self, period: float = 0.01) -> None:
        super().__init__()
        self.period = period
        self._numbers = itertools.count()

    async def recv(self) -> int:
        await asyncio.sleep(self.period)
        return next(self._numbers)


async def next_frame(track: MediaStreamTrack) -> int:
    return await asyncio.wait_for(track.recv(), 2.0)


async def test_relay_gives_every_reader_each_frame_and_holds_nothing_for_one_that_does_not_read() -> None:
    drops = []
    relay = TrackRelay(Counter(), maxsize=3, on_drop=drops.append, name="test-relay")
    fast, other, idle = relay.subscribe(), relay.subscribe(), relay.subscribe()
    relay.start()
    try:
        first = await next_frame(fast)
        await next_frame(other)
        got_fast = [first] + [await next_frame(fast) for _ in range(10)]
        assert got_fast == list(range(first, first + 11))  # in order, none missed
        # `other` stopped reading after one frame: it holds the newest three, the rest were dropped and counted.
        await asyncio.sleep(0.1)
        assert other.dropped > 0 and drops.count(other) == other.dropped
        held = [await next_frame(other) for _ in range(3)]
        assert held == sorted(held) and held[-1] >= got_fast[-1]
        assert idle.dropped == 0 and not idle.reading  # never read: never given anything
        assert relay.frames > 15
        fast.stop()
        assert relay.subscribers == 2
        with pytest.raises(MediaStreamError):
            await next_frame(fast)
    finally:
        await relay.aclose()
    with pytest.raises(MediaStreamError):
        await next_frame(other)
    assert relay.subscribers == 0 and relay.source.readyState == "ended"
