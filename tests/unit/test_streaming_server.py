"""The gateway's HTTP boundary on loopback: every bad request gets a clear 4xx JSON answer, never a crash."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time

import numpy as np
import pytest
from aiohttp.test_utils import TestClient, TestServer
from aiortc import RTCPeerConnection

from lipsync.streaming.config import GatewayConfig
from lipsync.streaming.ice import rtc_configuration
from lipsync.streaming.server import Gateway
from tests.unit.test_streaming_session import GreyMouthBackend

pytestmark = pytest.mark.unit


async def make_client(**overrides) -> tuple[TestClient, Gateway]:
    config = GatewayConfig(
        backend="onnxruntime", **{"max_request_bytes": 64 * 1024, "max_sdp_bytes": 16 * 1024, **overrides}
    )
    gateway = Gateway(config, backend=GreyMouthBackend())
    client = TestClient(TestServer(gateway.app, host="127.0.0.1"))
    await client.start_server()
    return client, gateway


@pytest.fixture
async def client():
    client, gateway = await make_client()
    yield client
    await client.close()


async def real_offer(speech: bool = True) -> tuple[RTCPeerConnection, str]:
    pc = RTCPeerConnection(rtc_configuration())
    pc.addTransceiver("video", direction="sendrecv")
    pc.addTransceiver("audio", direction="sendrecv" if speech else "recvonly")
    await pc.setLocalDescription(await pc.createOffer())
    return pc, pc.localDescription.sdp


async def error_of(response) -> str:
    body = await response.json()
    assert set(body) == {"error", "status"} and body["status"] == response.status
    return body["error"]


async def test_health_metrics_and_page(client) -> None:
    health = await (await client.get("/healthz")).json()
    assert health["status"] == "ok" and health["sessions"] == 0 and health["backend"] == "grey"
    assert 10 < health["resident_mb"] < 100_000  # this process's own VmRSS, for watching a long run
    metrics = await (await client.get("/metrics")).text()
    assert "lipsync_sessions_active 0.0" in metrics and "lipsync_stage_seconds" in metrics
    page = await (await client.get("/")).text()
    assert "SYNTHETIC VIDEO" in page
    assert (await client.get("/static/app.js")).status == 200


@pytest.mark.parametrize(
    ("body", "headers", "status", "message"),
    [
        ("{}", {"Content-Type": "text/plain"}, 415, "Content-Type application/json"),
        ("{not json", {"Content-Type": "application/json"}, 400, "not valid JSON"),
        ("[1, 2]", {"Content-Type": "application/json"}, 400, "must be a JSON object"),
        (json.dumps({"sdp": "v=0", "type": "answer"}), {"Content-Type": "application/json"}, 400, "'type' must be 'offer'"),
        (json.dumps({"type": "offer"}), {"Content-Type": "application/json"}, 400, "'sdp' must be a non-empty string"),
        (json.dumps({"sdp": "v=0", "type": "offer", "codec": "h264"}), {"Content-Type": "application/json"}, 400, "unknown offer keys ['codec']"),
        (json.dumps({"sdp": "v=0", "type": "offer", "speech": "telepathy"}), {"Content-Type": "application/json"}, 400, "'speech' must be one of"),
        (json.dumps({"sdp": "v=0", "type": "offer", "mode": "presenter"}), {"Content-Type": "application/json"}, 400, "presenter mode needs"),
        (json.dumps({"sdp": "x" * 20_000, "type": "offer"}), {"Content-Type": "application/json"}, 413, "SDP of 20000 bytes"),
        (json.dumps({"sdp": "x" * 70_000, "type": "offer"}), {"Content-Type": "application/json"}, 413, "over the 65536-byte limit"),
        (json.dumps({"sdp": "this is not sdp", "type": "offer"}), {"Content-Type": "application/json"}, 400, "cannot use this offer"),
    ],
)  # fmt: skip
async def test_bad_offers_get_clear_errors(client, body: str, headers: dict, status: int, message: str) -> None:
    response = await client.post("/offer", data=body, headers=headers)
    assert response.status == status
    assert message in await error_of(response)
    assert (await client.get("/healthz")).status == 200  # still serving


async def test_sdp_without_video_is_refused(client) -> None:
    pc = RTCPeerConnection(rtc_configuration())
    pc.addTransceiver("audio", direction="sendrecv")
    await pc.setLocalDescription(await pc.createOffer())
    response = await client.post("/offer", json={"sdp": pc.localDescription.sdp, "type": "offer"})
    await pc.close()
    assert response.status == 400 and "no video" in await error_of(response)


async def test_token_is_required_where_configured() -> None:
    client, _ = await make_client(token="s3cret")
    try:
        pc, sdp = await real_offer()
        response = await client.post("/offer", json={"sdp": sdp, "type": "offer"})
        assert response.status == 401 and "token" in await error_of(response)
        response = await client.post(
            "/offer", json={"sdp": sdp, "type": "offer"}, headers={"Authorization": "Bearer nope"}
        )
        assert response.status == 401
        response = await client.post(
            "/offer", json={"sdp": sdp, "type": "offer"}, headers={"Authorization": "Bearer s3cret"}
        )
        assert response.status == 200
        answer = await response.json()
        assert answer["type"] == "answer" and answer["sdp"].startswith("v=0")
        sid = answer["session_id"]
        assert (await client.get(f"/sessions/{sid}/stats")).status == 401
        assert (await client.get(f"/sessions/{sid}/stats?token=s3cret")).status == 200
        assert (await client.get("/healthz")).status == 200  # health and metrics stay open
        await pc.close()
    finally:
        await client.close()


async def test_session_cap_answers_503_and_frees_on_delete() -> None:
    client, gateway = await make_client(max_sessions=1)
    peers = []
    try:
        pc, sdp = await real_offer()
        peers.append(pc)
        first = await client.post("/offer", json={"sdp": sdp, "type": "offer"})
        assert first.status == 200
        pc, sdp = await real_offer()
        peers.append(pc)
        second = await client.post("/offer", json={"sdp": sdp, "type": "offer"})
        assert second.status == 503 and second.headers["Retry-After"] == "5"
        assert "all 1 sessions are in use" in await error_of(second)
        sid = (await first.json())["session_id"]
        assert (await client.delete(f"/sessions/{sid}")).status == 200
        assert gateway.peers == {}
        third = await client.post("/offer", json={"sdp": sdp, "type": "offer"})
        assert third.status == 200
        metrics = await (await client.get("/metrics")).text()
        assert 'lipsync_requests_rejected_total{reason="max_sessions"} 1.0' in metrics
    finally:
        for pc in peers:
            await pc.close()
        await client.close()


async def test_speech_endpoints_check_the_session() -> None:
    client, _ = await make_client(max_speech_seconds=2.0)
    try:
        assert (await client.post("/speech/nope?rate=16000", data=b"\0\0")).status == 404
        pc, sdp = await real_offer()
        mic = await (await client.post("/offer", json={"sdp": sdp, "type": "offer"})).json()
        response = await client.post(f"/speech/{mic['session_id']}?rate=16000", data=b"\0\0")
        assert response.status == 409 and "uses its microphone" in await error_of(response)
        pc2, sdp = await real_offer(speech=False)
        push = await (await client.post("/offer", json={"sdp": sdp, "type": "offer", "speech": "push"})).json()
        sid = push["session_id"]
        assert (await client.post(f"/speech/{sid}", data=b"\0\0")).status == 400  # no rate
        assert (await client.post(f"/speech/{sid}?rate=abc", data=b"\0\0")).status == 400
        ok = await client.post(f"/speech/{sid}?rate=16000", data=b"\0\0" * 16000)
        assert ok.status == 200 and (await ok.json())["queued_s"] == pytest.approx(1.0, abs=0.05)
        full = await client.post(f"/speech/{sid}?rate=16000", data=b"\0\0" * 32000)  # 2 s more than fits
        assert full.status == 413 and "speech queued" in await error_of(full)
        # The WebSocket form: rate by message, interrupt flushes.
        async with client.ws_connect(f"/speech/{sid}") as ws:
            await ws.send_bytes(b"\0\0" * 100)
            assert "declare the sample rate" in (await ws.receive_json())["error"]
            await ws.send_json({"type": "config", "sample_rate": 16000})
            assert (await ws.receive_json())["sample_rate"] == 16000
            await ws.send_bytes(b"\0\0" * 16000)
            assert (await ws.receive_json())["type"] == "queued"
            await ws.send_json({"type": "interrupt"})
            reply = await ws.receive_json()
            assert reply["type"] == "interrupted" and reply["dropped_s"] > 1.0
            await ws.send_str("not json")
            assert "must be JSON" in (await ws.receive_json())["error"]
        await pc.close()
        await pc2.close()
    finally:
        await client.close()


async def test_offer_body_split_across_tcp_segments_is_read_whole(client) -> None:
    """Real networks split bodies: the second half arrives after the first was already read."""
    body = json.dumps({"sdp": "v=0", "type": "answer"}).encode()  # valid JSON, refused for its type
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    head = f"POST /offer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    writer.write(head.encode() + body[:10])
    await writer.drain()
    await asyncio.sleep(0.3)
    writer.write(body[10:])
    await writer.drain()
    reply = (await asyncio.wait_for(reader.read(4096), 10)).decode()
    writer.close()
    assert reply.startswith("HTTP/1.1 400") and "'type' must be 'offer'" in reply, reply


async def test_deeply_nested_json_is_a_400(client) -> None:
    body = "[" * 30_000 + "]" * 30_000  # 60 KB, under the test cap
    response = await client.post("/offer", data=body, headers={"Content-Type": "application/json"})
    assert response.status == 400 and "nested too deeply" in await error_of(response)


async def test_token_scheme_is_case_insensitive_and_query_tokens_are_not_logged(caplog) -> None:
    caplog.set_level(logging.INFO, logger="aiohttp.access")
    client, _ = await make_client(token="s3cret")
    try:
        ok = await client.get("/sessions/none/stats", headers={"Authorization": "bearer s3cret"})
        assert ok.status == 404  # past the token check: the session does not exist
        assert (await client.get("/sessions/none/stats?token=s3cret&x=1")).status == 404
        assert (await client.get("/sessions/none/stats?TOKEN=wrong")).status == 401
    finally:
        await client.close()
    access = [r.getMessage() for r in caplog.records if r.name == "aiohttp.access"]
    assert any("token=REDACTED&x=1" in line for line in access), access
    assert not any("s3cret" in line or "wrong" in line for line in access), access


async def test_pushed_pcm_split_inside_a_sample_keeps_every_sample() -> None:
    client, _ = await make_client()
    try:
        pc, sdp = await real_offer(speech=False)
        sid = (await (await client.post("/offer", json={"sdp": sdp, "type": "offer", "speech": "push"})).json())[
            "session_id"
        ]

        async def odd_chunks():  # 16001 samples sent as 3-byte pieces: every piece splits a sample
            data = b"\x01\x00" * 16_001
            for i in range(0, len(data), 3 * 4096):
                yield data[i : i + 3 * 4096]

        reply = await (await client.post(f"/speech/{sid}?rate=16000", data=odd_chunks())).json()
        assert reply["received_s"] == pytest.approx(16_001 / 16_000, abs=1e-4), reply
        assert "unpaired_trailing_bytes" not in reply
        half = await (await client.post(f"/speech/{sid}?rate=16000&interrupt=1", data=b"\0\0\0")).json()
        assert half["unpaired_trailing_bytes"] == 1, half  # said, not dropped silently
        async with client.ws_connect(f"/speech/{sid}?rate=16000") as ws:
            await ws.send_bytes(b"\0\0\0")  # one sample and a half: the half waits for the next message
            assert (await ws.receive_json())["type"] == "queued"
            await ws.send_bytes(b"\0")
            assert (await ws.receive_json())["type"] == "queued"
        await pc.close()
    finally:
        await client.close()


async def test_an_offer_that_never_connects_releases_its_session() -> None:
    """The offerer takes the answer but never connects: the slot comes back after the set-up deadline."""
    client, gateway = await make_client(connect_timeout_s=2.0, max_sessions=1)
    try:
        (pc, sdp), (pc2, sdp2) = await real_offer(), await real_offer()  # both ready before the clock runs
        first = await client.post("/offer", json={"sdp": sdp, "type": "offer"})
        assert first.status == 200  # the answer is never applied: ICE cannot complete
        assert (await client.post("/offer", json={"sdp": sdp2, "type": "offer"})).status == 503
        for _ in range(80):
            if not gateway.peers:
                break
            await asyncio.sleep(0.1)
        assert gateway.peers == {} and (await (await client.get("/healthz")).json())["sessions"] == 0
        assert (await client.post("/offer", json={"sdp": sdp2, "type": "offer"})).status == 200
        metrics = await (await client.get("/metrics")).text()
        assert 'lipsync_requests_rejected_total{reason="connect_timeout"} 1.0' in metrics
        await pc.close()
        await pc2.close()
    finally:
        await client.close()


async def test_health_says_whether_inference_really_answers() -> None:
    """Started while the backend is down: degraded (503); back up: ok; answering but never in time (a
    dead model process behind a server that still says ready): degraded again."""
    from lipsync.client.backends.base import BackendError

    client, gateway = await make_client()
    backend = gateway._backend
    try:
        backend.down = True
        gateway.inference.last_answer = None  # as if the warm-up had met the backend down
        response = await client.get("/healthz")
        body = await response.json()
        assert response.status == 503 and body["status"] == "degraded" and not body["inference_answering"], body
        backend.down = False
        response = await client.get("/healthz")
        body = await response.json()
        assert response.status == 200 and body["inference_answering"] and body["last_answer_s_ago"] < 1.0, body

        async def never(*_args):  # the request is taken and never answered
            await asyncio.sleep(3600)
            raise BackendError("unreachable")

        backend.infer_async = never
        for _ in range(5):  # frames time out one after another
            await gateway.inference.generate(np.zeros((80, 16), np.float32), np.zeros((6, 96, 96), np.float32),
                                             deadline=time.monotonic() + 0.05)  # fmt: skip
        response = await client.get("/healthz")
        body = await response.json()
        assert response.status == 503 and body["failed_requests_in_a_row"] >= 5, body
    finally:
        await client.close()


async def test_many_offers_at_once_beyond_the_cap() -> None:
    """Ten offers in the same instant against a cap of two: two sessions, eight clean 503s, nothing leaked."""
    client, gateway = await make_client(max_sessions=2)
    peers = [await real_offer() for _ in range(10)]
    try:
        responses = await asyncio.gather(
            *(client.post("/offer", json={"sdp": sdp, "type": "offer"}) for _, sdp in peers)
        )
        statuses = sorted(r.status for r in responses)
        assert statuses == [200] * 2 + [503] * 8, statuses
        assert len(gateway.peers) == 2
        for response in responses:
            if response.status == 200:
                assert (await client.delete(f"/sessions/{(await response.json())['session_id']}")).status == 200
        assert gateway.peers == {}
        assert (await (await client.get("/healthz")).json())["sessions"] == 0
    finally:
        for pc, _ in peers:
            await pc.close()
        await client.close()


def ws_text_frame(payload: bytes) -> bytes:
    """One masked client text frame (RFC 6455 5.2), written by hand so the test owns the socket."""
    assert len(payload) < 126
    mask = b"\x01\x02\x03\x04"
    return b"\x81" + bytes([0x80 | len(payload)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


async def test_a_speech_client_that_never_reads_is_disconnected_and_holds_nothing() -> None:
    """It sends messages as fast as it can and reads no reply: the gateway's writes would block
    forever. Past the client timeout it is cut off; meanwhile everything else answers at once."""
    import socket

    client, gateway = await make_client(client_timeout_s=1.0, max_sessions=1)
    try:
        pc, sdp = await real_offer(speech=False)
        sid = (await (await client.post("/offer", json={"sdp": sdp, "type": "offer", "speech": "push"})).json())[
            "session_id"
        ]
        loop = asyncio.get_running_loop()
        raw = socket.socket()
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window fills quickly
        raw.setblocking(False)  # the gateway runs on this event loop: the test's socket must not block it
        await loop.sock_connect(raw, (client.server.host, client.server.port))
        await loop.sock_sendall(
            raw,
            f"GET /speech/{sid}?rate=16000 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".encode(),
        )
        assert (await asyncio.wait_for(loop.sock_recv(raw, 4096), 5)).startswith(b"HTTP/1.1 101")
        # The server's kernel buffer kept small too (as on a congested path), so the replies to a few
        # thousand messages fill everything on the way back.
        (server_side,) = gateway.peers[sid].speech_sockets
        server_side.request.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        message = ws_text_frame(b"x" * 100)  # not JSON: each is answered with an error quoting 80 bytes of it
        sent, started = 0, time.monotonic()
        while time.monotonic() - started < 5.0:  # until the gateway stops reading what we send
            try:
                sent += raw.send(message * 64)
            except BlockingIOError:
                await asyncio.sleep(0.05)  # the gateway may still be reading: let it
                try:
                    sent += raw.send(message)
                except BlockingIOError:
                    break
            await asyncio.sleep(0)
        assert sent > 300_000, sent  # the replies to this much fill every buffer on the way back
        t0 = time.monotonic()
        health = await client.get("/healthz")
        assert health.status == 200 and time.monotonic() - t0 < 1.0  # the stalled writer blocks no one else
        for _ in range(60):  # cut off within the 1-s reply deadline (plus the writes before it)
            metrics = await (await client.get("/metrics")).text()
            if 'lipsync_requests_rejected_total{reason="slow_client"} 1.0' in metrics:
                break
            await asyncio.sleep(0.1)
        assert 'lipsync_requests_rejected_total{reason="slow_client"} 1.0' in metrics
        assert gateway.peers[sid].speech_sockets == set()
        with contextlib.suppress(ConnectionResetError):
            while await asyncio.wait_for(loop.sock_recv(raw, 1 << 20), 5):  # buffered replies, then the end
                pass
        raw.close()
        t0 = time.monotonic()
        assert (await client.delete(f"/sessions/{sid}")).status == 200 and time.monotonic() - t0 < 2.0
        pc2, sdp2 = await real_offer()
        assert (await client.post("/offer", json={"sdp": sdp2, "type": "offer"})).status == 200  # the slot is back
        await pc.close()
        await pc2.close()
    finally:
        await client.close()


async def test_closing_a_session_closes_its_speech_socket() -> None:
    client, gateway = await make_client()
    try:
        pc, sdp = await real_offer(speech=False)
        sid = (await (await client.post("/offer", json={"sdp": sdp, "type": "offer", "speech": "push"})).json())[
            "session_id"
        ]
        async with client.ws_connect(f"/speech/{sid}?rate=16000") as ws:
            await ws.send_bytes(b"\0\0" * 160)
            assert (await ws.receive_json())["type"] == "queued"
            assert (await client.delete(f"/sessions/{sid}")).status == 200
            closing = await asyncio.wait_for(ws.receive(), 5)
            # 1001 "going away", with the reason: the session ended, not an error of the client
            assert (closing.type.name, closing.data, closing.extra) == ("CLOSE", 1001, "session closed"), closing
        assert gateway.peers == {}
        await pc.close()
    finally:
        await client.close()


async def test_an_offer_body_that_stalls_gets_408_within_the_client_timeout() -> None:
    client, _ = await make_client(client_timeout_s=1.0)
    try:
        body = json.dumps({"sdp": "v=0", "type": "offer"}).encode()
        reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
        head = (
            f"POST /offer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        writer.write(head.encode() + body[:10])  # and the rest never comes
        await writer.drain()
        t0 = time.monotonic()
        reply = (await asyncio.wait_for(reader.read(4096), 5)).decode()
        writer.close()
        assert reply.startswith("HTTP/1.1 408") and "not received within 1 s" in reply, reply
        assert 0.9 < time.monotonic() - t0 < 3.0
    finally:
        await client.close()
