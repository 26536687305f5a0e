"""The gateway's HTTP boundary on loopback: every bad request gets a clear 4xx JSON answer, never a crash."""

from __future__ import annotations

import json

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
