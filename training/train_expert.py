"""Training of the lip-sync expert (SyncNet_color, reference 3.4-3.5): BCE on the cosine similarity of its embeddings."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from lipsync.client.networks.syncnet import SyncNet, SyncNetConfig, sync_probability
from lipsync.training.config import ExpertTrainConfig, build_config
from lipsync.training.data.lrs2 import ExpertDataset
from lipsync.training.losses import cosine_bce
from lipsync.training.runtime import (
    Dist,
    TrainLoop,
    all_reduce_mean,
    samples_per_clip,
    seed_everything,
    setup_distributed,
    teardown_distributed,
)


def _correct(audio_emb: Tensor, face_emb: Tensor, y: Tensor) -> Tensor:
    """Per-sample 0/1: is the sync probability on the label's side of 0.5?"""
    return ((sync_probability(audio_emb, face_emb) > 0.5).float() == y.view(-1)).float()


class ExpertTrainer(TrainLoop):
    """One expert run: 5 lower-half frames vs a 200 ms mel window, aligned (y=1) or shifted (y=0).

    Adam with default betas and no schedule, as color_syncnet_train.py; or Adamax, which users of the
    original report to leave the long 0.69 plateau much sooner.
    """

    name = "expert"

    def __init__(self, config: ExpertTrainConfig, ctx: Dist, resume: Path | None = None) -> None:
        super().__init__(config, ctx)
        seed_everything(config.seed)
        self.model = SyncNet(SyncNetConfig(width=config.width, center_frames=config.center_frames)).to(ctx.device)
        optimizer = torch.optim.Adamax if config.optimizer == "adamax" else torch.optim.Adam
        self.optimizer = optimizer(self.model.parameters(), lr=config.lr)
        self.best_val_loss = math.inf
        if resume is not None:
            self.load(resume)
        self.train_model: nn.Module = self.model
        if ctx.distributed:
            ids = [ctx.device.index] if ctx.device.type == "cuda" else None
            self.train_model = DistributedDataParallel(self.model, device_ids=ids)
        common = {"seed": config.seed, "mel_cache_mb": config.mel_cache_mb, "min_offset": config.min_negative_offset}
        self.train_set = ExpertDataset(config.data_root, "train", **common)
        per_clip = samples_per_clip(config.eval_batches * config.batch_size * ctx.world_size, config.data_root, "val")
        self.val_set = ExpertDataset(config.data_root, "val", fixed=True, samples_per_clip=per_clip, **common)

    def train_step(self, batch: list[Tensor]) -> dict[str, float]:
        faces, mel, y = (t.to(self.ctx.device, non_blocking=True) for t in batch)
        self.train_model.train()
        audio_emb, face_emb = self.train_model(mel, faces)
        loss = cosine_bce(audio_emb, face_emb, y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        with torch.no_grad():
            accuracy = _correct(audio_emb, face_emb, y).mean()
        return {"loss": loss.item(), "accuracy": accuracy.item()}

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Mean validation BCE and accuracy at probability 0.5 over `eval_batches` fixed batches."""
        self.model.eval()
        sums = {"loss": 0.0, "accuracy": 0.0}
        count = 0
        for i, batch in enumerate(self.val_loader):
            if i >= self.config.eval_batches:
                break
            faces, mel, y = (t.to(self.ctx.device) for t in batch)
            audio_emb, face_emb = self.model(mel, faces)
            sums["loss"] += cosine_bce(audio_emb, face_emb, y).item() * y.shape[0]
            sums["accuracy"] += _correct(audio_emb, face_emb, y).sum().item()
            count += y.shape[0]
        result = all_reduce_mean(sums, count, self.ctx)
        self.best_val_loss = min(self.best_val_loss, result["loss"])
        return result

    def checkpoint_extra(self) -> dict[str, Any]:
        return {"best_val_loss": self.best_val_loss}

    def load_extra(self, extra: dict[str, Any], path: Path) -> None:
        self.best_val_loss = float(extra.get("best_val_loss", math.inf))


def train(config: ExpertTrainConfig, resume: Path | None = None) -> dict[str, Any]:
    """Run (or continue) expert training; returns the final step and validation results."""
    config = build_config(ExpertTrainConfig, dataclasses.asdict(config))
    ctx = setup_distributed(config.device, config.torch_threads)
    try:
        trainer = ExpertTrainer(config, ctx, resume)
        return {**trainer.run(), "best_val_loss": trainer.best_val_loss}
    finally:
        teardown_distributed()
