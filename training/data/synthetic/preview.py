"""A contact sheet of a corpus: a few crops of each clip in a grid, to look at what the model will see."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np


def contact_sheet(root: str | Path, out: str | Path, clips: int = 20, frames_per_clip: int = 8, scale: int = 1) -> Path:
    """One row per clip (the first `clips` of all filelists): evenly spaced crops, clip name on the left."""
    root, out = Path(root), Path(out)
    names: list[str] = []
    for split in ("train", "val", "test"):
        path = root / "filelists" / f"{split}.txt"
        if path.is_file():
            names += [f"{line.split()[0]}" for line in path.read_text().splitlines() if line.strip()]
    names = sorted(names)[:clips]
    if not names:
        raise FileNotFoundError(f"no clips listed under {root / 'filelists'}")
    rows = []
    for name in names:
        jpgs = sorted((root / name).glob("*.jpg"), key=lambda p: int(p.stem))
        picks = [jpgs[int(i)] for i in np.linspace(0, len(jpgs) - 1, frames_per_clip)]
        tiles = [cv2.imread(str(p)) for p in picks]
        size = tiles[0].shape[0]
        label = np.full((size, 2 * size, 3), 32, np.uint8)
        cv2.putText(label, name, (4, size // 2), cv2.FONT_HERSHEY_SIMPLEX, 0.38, (230, 230, 230), 1, cv2.LINE_AA)
        rows.append(np.hstack([label, *tiles]))
    sheet = np.vstack(rows)
    if scale != 1:
        sheet = cv2.resize(sheet, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
    out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(out), sheet)
    return out
