"""The publisher's boundary and its behaviour without a server: URLs checked with specific errors that
never show the stream key, the back-off schedule, and a live source that is never blocked while the
server is away (real PyAV, a closed loopback port). tests/integration/test_rtmp_publish.py has the server."""

from __future__ import annotations

import socket
import time

import numpy as np
import pytest

from lipsync.client.lipsync import LipSyncConfig
from lipsync.client.stream_publish import (
    PublishUnreachable,
    PublishUrl,
    PublishUrlError,
    ReconnectPolicy,
    StreamPublisher,
    StreamSpec,
    protocol_available,
    redact_url,
)
from lipsync.streaming.config import GatewayConfig, parse_args

pytestmark = pytest.mark.unit

KEY = "live_123456789_secret"


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens there once the socket is closed


def test_rtmp_urls_are_accepted_and_shown_without_key_or_credentials() -> None:
    target = PublishUrl(f"rtmp://user:pass@a.rtmp.youtube.com/live2/{KEY}")
    assert (target.scheme, target.format) == ("rtmp", "flv")
    assert target.redacted == "rtmp://a.rtmp.youtube.com/live2/***"
    assert PublishUrl(f"rtmps://live.twitch.tv:443/app/{KEY}").redacted == "rtmps://live.twitch.tv:443/app/***"
    assert redact_url(f"srt://10.0.0.1:9000?streamid={KEY}&passphrase=x") == "srt://10.0.0.1:9000?***"
    assert redact_url(None) is None


@pytest.mark.parametrize(
    ("url", "message"),
    [
        (f"http://example.com/live/{KEY}", "got http://"),
        (f"example.com/live/{KEY}", "got no scheme"),
        ("rtmp:///live/key", "no host"),
        ("rtmp://example.com/live", "needs an application and a stream key"),
        (f"rtmp://example.com:99999/live/{KEY}", "bad port"),
        ("srt://example.com", "needs a port"),
    ],
)
def test_bad_urls_get_a_specific_error_without_the_key(url: str, message: str) -> None:
    with pytest.raises(PublishUrlError, match=message) as caught:
        PublishUrl(url)
    assert KEY not in str(caught.value)
    assert isinstance(caught.value, ValueError)  # the commands' config errors are ValueErrors


def test_srt_is_refused_plainly_where_ffmpeg_lacks_it() -> None:
    assert protocol_available("rtmp") and protocol_available("rtmps")
    assert not protocol_available("no-such-protocol")
    if protocol_available("srt"):
        assert PublishUrl("srt://127.0.0.1:9000").format == "mpegts"
    else:  # the PyPI PyAV wheels: no libsrt
        with pytest.raises(PublishUrlError, match=r"srt:// is not in this PyAV's FFmpeg"):
            PublishUrl("srt://127.0.0.1:9000")


def test_back_off_doubles_from_half_a_second_to_eight() -> None:
    waits = ReconnectPolicy().waits()
    assert [next(waits) for _ in range(7)] == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    with pytest.raises(ValueError, match="start_attempts"):
        ReconnectPolicy(start_attempts=0)


def test_gateway_publish_option_is_validated_and_redacted(tmp_path) -> None:
    face = tmp_path / "face.png"
    face.write_bytes(b"not read here")
    config = parse_args(["--presenter_image", str(face), "--publish", f"rtmp://127.0.0.1/live/{KEY}"])
    assert config.publish.endswith(KEY)
    assert config.public()["publish"] == "rtmp://127.0.0.1/live/***"
    with pytest.raises(ValueError, match="needs presenter_image or presenter_clip"):
        GatewayConfig(publish=f"rtmp://127.0.0.1/live/{KEY}")
    with pytest.raises(ValueError, match="got udp://"):
        GatewayConfig(presenter_image=str(face), publish="udp://127.0.0.1:9000")
    assert GatewayConfig().public()["publish"] is None


def test_offline_publish_option_is_validated_before_any_work(tmp_path) -> None:
    assert LipSyncConfig(audio=tmp_path / "a.wav", face=tmp_path / "f.mp4", publish="rtmp://h/app/k").publish
    with pytest.raises(ValueError, match="got file://"):
        LipSyncConfig(audio=tmp_path / "a.wav", face=tmp_path / "f.mp4", publish="file:///tmp/out.flv")


def test_start_up_tries_are_bounded_and_the_error_names_the_target_not_the_key() -> None:
    port = closed_port()
    publisher = StreamPublisher(
        f"rtmp://127.0.0.1:{port}/live/{KEY}",
        StreamSpec(64, 48),
        policy=ReconnectPolicy(first_s=0.05, start_attempts=3),
    )
    started = time.monotonic()
    with pytest.raises(PublishUnreachable) as caught:
        publisher.connect()
    message = str(caught.value)
    assert f"rtmp://127.0.0.1:{port}/live/***" in message and "ConnectionRefusedError" in message, message
    assert "3 tries" in message and KEY not in message
    assert time.monotonic() - started < 5  # 0.05 + 0.1 s of waits, refusals are immediate
    assert publisher.snapshot()["state"] == "failed"


def test_a_live_source_is_never_blocked_while_the_server_is_away() -> None:
    """No server: every frame is dropped and counted as offline at once, retries follow the back-off, and
    closing does not wait for a server."""
    port = closed_port()
    publisher = StreamPublisher(
        f"rtmp://127.0.0.1:{port}/live/{KEY}",
        StreamSpec(64, 48),
        policy=ReconnectPolicy(first_s=0.2, max_s=0.4, start_attempts=None),
    ).start()
    image = np.zeros((48, 64, 3), np.uint8)
    started = time.monotonic()
    for i in range(50):
        assert publisher.send_video(image, i / 25)
        publisher.send_audio(np.zeros(1920, np.float32), i / 25)
        time.sleep(0.02)
    assert time.monotonic() - started < 3
    stats = publisher.close(drain=False, timeout_s=5)
    assert stats["frames_sent"] == 0 and stats["connects"] == 0 and stats["drops"] == 0, stats
    assert stats["frames_dropped"].get("offline", 0) + stats["frames_dropped"].get("closing", 0) == 50, stats
    assert stats["audio_dropped_s"] == pytest.approx(50 * 0.04, abs=0.05)
    assert "ConnectionRefusedError" in stats["last_error"] and stats["state"] == "closed"
