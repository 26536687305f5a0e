"""`lipsync-train publish`: turn a training checkpoint into shippable weights (model, config, provenance).

The optimizer state is dropped (it triples the size); the step, the training config and the
last evaluation stay, so a model card and `lipsync` can say how far the model was trained.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from lipsync.client.networks.checkpoints import load_checkpoint, write_atomically


def publish(checkpoint: Path, out: Path) -> dict:
    state = load_checkpoint(checkpoint)
    extra = state.get("extra") or {}
    shipped = {
        "model": state["model"],
        "config": state["config"],
        "config_class": state["config_class"],
        "optimizer": None,
        "step": state["step"],
        "extra": {"published_from": checkpoint.name, **{k: v for k, v in extra.items() if k != "disc"}},
    }
    write_atomically(shipped, out)
    return {"out": str(out), "step": state["step"], "config": state["config"], "bytes": out.stat().st_size}


def add_subcommand(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("publish", help="strip a training checkpoint down to shippable weights")
    p.add_argument("checkpoint", type=Path, help="a checkpoint written by `expert` or `generator`")
    p.add_argument("out", type=Path, help="where to write the weights (e.g. training/weights/wav2lip_cpu.pt)")
    p.set_defaults(func=lambda args: print(json.dumps(publish(args.checkpoint, args.out), indent=2)) or 0)
