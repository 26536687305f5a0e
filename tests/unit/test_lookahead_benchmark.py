"""benchmarks/lookahead.py on two clips: each model is measured with its own windows and compared
with the 200 ms model; a checkpoint whose stored offset is not the one named is refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def low_lookahead_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped weights saved as if trained with offset -10: same network, windows cut 125 ms earlier."""
    from lipsync.client.backends import DEFAULT_CHECKPOINT
    from lipsync.client.networks.checkpoints import save_checkpoint
    from lipsync.client.networks.wav2lip import Wav2Lip, Wav2LipConfig

    shipped = Wav2Lip.from_checkpoint(DEFAULT_CHECKPOINT)
    model = Wav2Lip(Wav2LipConfig(width=shipped.config.width, head=shipped.config.head, mel_offset=-10))
    model.load_state_dict(shipped.state_dict())
    path = tmp_path_factory.mktemp("weights") / "offset-10.pt"
    save_checkpoint(path, model=model, config=model.config)
    return path


def test_each_model_is_measured_at_its_own_offset(low_lookahead_checkpoint: Path, tmp_path: Path) -> None:
    from lipsync.benchmarks.lookahead import run
    from lipsync.client.backends import DEFAULT_CHECKPOINT

    out = tmp_path / "lookahead.json"
    report = run({0: DEFAULT_CHECKPOINT, -10: low_lookahead_checkpoint}, clips=2, out=out)
    assert json.loads(out.read_text())["benchmark"] == "lookahead" and out.with_suffix(".png").stat().st_size > 10_000
    rows = {row["mel_offset"]: row for row in report["models"]}
    assert rows[0]["lookahead_ms"] == 200.0 and rows[-10]["lookahead_ms"] == 75.0
    assert all(v == 1.0 for kind in rows[0]["ratio_to_200ms"].values() for v in kind.values())
    for kind in ("own", "dubbed"):
        assert set(rows[-10]["figures"][kind]) >= {"lse_d", "lse_c", "sync_lip_vs_loudness", "lower_face_psnr_db"}
    # The same weights fed audio 125 ms too early are a different, worse-synced model: the windows moved.
    assert rows[-10]["figures"]["own"] != rows[0]["figures"]["own"]


def test_a_checkpoint_with_another_offset_is_refused(low_lookahead_checkpoint: Path, tmp_path: Path) -> None:
    from lipsync.benchmarks.lookahead import run

    with pytest.raises(SystemExit, match="trained with mel offset -10, not -13"):
        run({-13: low_lookahead_checkpoint}, clips=2, out=tmp_path / "x.json")
