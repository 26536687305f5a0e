"""Generator training against the frozen lip-sync expert, with the visual-quality GAN (hq_wav2lip_train, reference 3.7, 5)."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from lipsync.client.networks.checkpoints import CheckpointError, strict_load
from lipsync.client.networks.quality_disc import QualityDiscConfig, QualityDiscriminator
from lipsync.client.networks.syncnet import SyncNet
from lipsync.client.networks.wav2lip import Wav2Lip, Wav2LipConfig
from lipsync.training.config import GeneratorTrainConfig, build_config
from lipsync.training.data.lrs2 import GeneratorDataset
from lipsync.training.losses import (
    adversarial_loss,
    combine_generator_loss,
    expert_sync_loss,
    fold_time,
    l1_loss,
    unfold_time,
)
from lipsync.training.runtime import (
    Dist,
    TrainLoop,
    all_reduce_mean,
    keep_configured_hyperparameters,
    samples_per_clip,
    seed_everything,
    setup_distributed,
    teardown_distributed,
)

logger = logging.getLogger(__name__)


def generate_window(generator: nn.Module, indiv_mels: Tensor, x: Tensor) -> Tensor:
    """(B,5,1,80,16) mels + (B,6,5,96,96) faces -> (B,3,5,96,96): one 4-D generator call, time folded into the batch."""
    batch = x.shape[0]
    mels = torch.cat([indiv_mels[:, t] for t in range(indiv_mels.shape[1])], dim=0)
    return unfold_time(generator(mels, fold_time(x)), batch)


def generate_window_with_mask(generator: Wav2Lip, indiv_mels: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
    """The composite head's (B,3,5,96,96) output and its (B,1,5,96,96) mask, from one generator call."""
    batch = x.shape[0]
    mels = torch.cat([indiv_mels[:, t] for t in range(indiv_mels.shape[1])], dim=0)
    faces = fold_time(x)
    content, mask = generator.composite_parts(mels, faces)
    reference = faces[:, 3:]
    return unfold_time(reference + mask * (content - reference), batch), unfold_time(mask, batch)


def initialise_from(model: Wav2Lip, path: str | Path, mask_bias: float = 0.0) -> list[str]:
    """Copy a generator checkpoint's weights into model; an image head grows the composite head's mask channel.

    The new mask channel starts with zero weights and `mask_bias`: sigmoid(0) = 0.5 mixes content and
    reference evenly, where the mask learns fastest; a bias of 3 (mask 0.95) starts as the image head,
    but the saturated sigmoid then moved the mean mask only from 0.944 to 0.940 in 200 steps.

    Returns the names of tensors that were adapted rather than copied. Any other mismatch is an error.
    """
    source = Wav2Lip.from_checkpoint(path).state_dict()
    target = model.state_dict()
    adapted = []
    for name, tensor in target.items():
        if name not in source:
            raise CheckpointError(f"--init-from {path} has no tensor {name}")
        have = source[name]
        if have.shape == tensor.shape:
            tensor.copy_(have)
        elif name.startswith("output_block.1.") and have.shape[0] == 3 and tensor.shape[0] == 4:
            tensor[:3].copy_(have)
            tensor[3:].fill_(mask_bias if name.endswith("bias") else 0.0)
            adapted.append(name)
        else:
            raise CheckpointError(
                f"--init-from {path}: {name} has shape {tuple(have.shape)}, this network needs {tuple(tensor.shape)}"
            )
    return adapted


def lower_half_psnr(generated: Tensor, gt: Tensor) -> Tensor:
    """(B,) PSNR in dB of the lower half (rows 48:, what the generator must make) of 5-frame windows in [0, 1]."""
    rows = slice(generated.shape[-2] // 2, None)
    mse = ((generated[..., rows, :].float() - gt[..., rows, :].float()) ** 2).flatten(1).mean(dim=1)
    return 10.0 * torch.log10(1.0 / mse.clamp_min(1e-10))


def sample_grid(x: Tensor, generated: Tensor, gt: Tensor, max_items: int = 2) -> np.ndarray:
    """BGR uint8 image: one row per frame, columns reference | masked input | generated | ground truth."""
    rows = []
    for b in range(min(max_items, x.shape[0])):
        for t in range(x.shape[2]):
            tiles = [x[b, 3:, t], x[b, :3, t], generated[b, :, t], gt[b, :, t]]
            row = torch.cat([tile.detach().float().cpu().clamp(0, 1) for tile in tiles], dim=2)  # (3, 96, 384)
            rows.append(row)
    grid = torch.cat(rows, dim=1).permute(1, 2, 0).numpy()
    return (grid * 255.0 + 0.5).astype(np.uint8)


class GeneratorTrainer(TrainLoop):
    """One generator run: generator, frozen expert, quality discriminator, optimisers and the sync switch.

    Loss `syncnet_wt * E_sync + disc_wt * L_adv + (1 - syncnet_wt - disc_wt) * L1`; syncnet_wt is 0
    until the validation sync loss first drops below `sync_threshold` (0.75), then
    `config.syncnet_wt` (0.03) for good. With disc_wt 0 no discriminator is built (the non-GAN
    model). Checkpoints hold the switch state and the discriminator too, so a resume is exact.
    """

    name = "generator"

    def __init__(self, config: GeneratorTrainConfig, ctx: Dist, resume: Path | None = None) -> None:
        if not config.expert_checkpoint:
            raise ValueError("GeneratorTrainConfig.expert_checkpoint is required: train the expert first")
        super().__init__(config, ctx)
        if ctx.distributed and config.mask_wt > 0:
            raise ValueError("mask_wt > 0 reads the composite head's mask outside DDP's forward: train on one process")
        seed_everything(config.seed)
        device = ctx.device
        self.model = Wav2Lip(Wav2LipConfig(width=config.width, head=config.head, mel_offset=config.mel_offset))
        if config.init_from and resume is None:
            adapted = initialise_from(self.model, config.init_from, config.mask_init_bias)
            logger.info("initialised from %s (adapted: %s)", config.init_from, ", ".join(adapted) or "none")
        self.model = self.model.to(device)
        self.expert = SyncNet.from_checkpoint(config.expert_checkpoint, map_location=device)
        self.expert.eval().requires_grad_(False)  # frozen: eval-mode BN, no gradients into it
        betas = (config.adam_beta1, config.adam_beta2)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.lr, betas=betas)
        self.disc: QualityDiscriminator | None = None
        self.opt_d: torch.optim.Optimizer | None = None
        if config.disc_wt > 0:
            self.disc = QualityDiscriminator(QualityDiscConfig(width=config.disc_width)).to(device)
            self.opt_d = torch.optim.Adam(self.disc.parameters(), lr=config.disc_lr, betas=betas)
        self.sync_enabled = False
        self._generated: Tensor | None = None
        if resume is not None:
            self.load(resume)

        self.g_train: nn.Module = self.model
        self.d_train: nn.Module | None = self.disc
        if ctx.distributed:
            ids = [device.index] if device.type == "cuda" else None
            self.g_train = DistributedDataParallel(self.model, device_ids=ids)
            if self.disc is not None:
                self.d_train = DistributedDataParallel(self.disc, device_ids=ids)

        common = {
            "seed": config.seed,
            "mel_cache_mb": config.mel_cache_mb,
            "mel_shift": config.mel_shift,
            "mel_offset": config.mel_offset,
        }
        self.train_set = GeneratorDataset(config.data_root, "train", **common)
        per_clip = samples_per_clip(config.eval_batches * config.batch_size * ctx.world_size, config.data_root, "val")
        self.val_set = GeneratorDataset(config.data_root, "val", fixed=True, samples_per_clip=per_clip, **common)

    @property
    def syncnet_wt(self) -> float:
        return self.config.syncnet_wt if self.sync_enabled else 0.0

    # ---- one optimisation step (reference 3.7) ----
    def train_step(self, batch: list[Tensor]) -> dict[str, float]:
        x, indiv_mels, mel, gt = (t.to(self.ctx.device, non_blocking=True) for t in batch)
        cfg = self.config
        self.g_train.train()
        mask_mean: Tensor | None = None
        if cfg.mask_wt > 0:
            # composite_parts is not a DDP forward: only single-process runs take this path.
            generated, mask = generate_window_with_mask(self.model, indiv_mels, x)
            mask_mean = mask.mean()
        else:
            generated = generate_window(self.g_train, indiv_mels, x)
        l1 = l1_loss(generated, gt)
        sync: Tensor | float = 0.0
        if self.syncnet_wt > 0:
            sync = expert_sync_loss(self.expert, mel, generated)
        adv: Tensor | float = 0.0
        if self.disc is not None:
            # The discriminator judges G's output here but is not updated by this loss: freezing its
            # parameters equals the original's "backprop into D, then zero D's gradients".
            self.disc.requires_grad_(False)
            adv = adversarial_loss(self.disc(fold_time(generated)), real=True)
            self.disc.requires_grad_(True)
        loss = combine_generator_loss(l1, sync, adv, self.syncnet_wt, cfg.disc_wt)
        if mask_mean is not None:
            loss = loss + cfg.mask_wt * mask_mean
        extra = self.extra_loss(x, indiv_mels, generated)
        if extra is not None:
            loss = loss + extra
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self._generated = generated.detach()

        out = {"loss": loss.item(), "l1": l1.item()}
        if extra is not None:
            out["extra"] = extra.item()
        if mask_mean is not None:
            out["mask"] = mask_mean.item()
        if isinstance(sync, Tensor):
            out["sync"] = sync.item()
        if self.d_train is not None and self.opt_d is not None and isinstance(adv, Tensor):
            self.d_train.train()
            real, fake = fold_time(gt), fold_time(self._generated)
            # One call on [real; fake]: the network has no batch statistics, so this equals the original's
            # two forward/backward passes, and DDP sees one forward per backward.
            pred = self.d_train(torch.cat([real, fake], dim=0))
            d_real = adversarial_loss(pred[: real.shape[0]], real=True)
            d_fake = adversarial_loss(pred[real.shape[0] :], real=False)
            self.opt_d.zero_grad(set_to_none=True)
            (d_real + d_fake).backward()
            self.opt_d.step()
            out.update(adv=adv.item(), disc_real=d_real.item(), disc_fake=d_fake.item())
        return out

    def train_values(self) -> dict[str, float]:
        return {"syncnet_wt": self.syncnet_wt}

    def extra_loss(self, x: Tensor, indiv_mels: Tensor, generated: Tensor) -> Tensor | None:
        """A subclass's additional, already weighted loss term for this step (None: nothing added)."""
        return None

    def after_step(self, batch: list[Tensor]) -> None:
        cfg = self.config
        if (
            self.ctx.is_main
            and self._generated is not None
            and (self.step % cfg.sample_interval == 0 or self.step == cfg.steps)
        ):
            self.write_samples(batch[0], self._generated, batch[3])

    # ---- validation and the sync-loss switch ----
    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        self.model.eval()
        if self.disc is not None:
            self.disc.eval()
        sums: dict[str, float] = {"l1": 0.0, "sync": 0.0, "lower_psnr": 0.0}
        if self.disc is not None:
            sums.update(adv=0.0, disc_real=0.0, disc_fake=0.0)
        count = 0
        for i, batch in enumerate(self.val_loader):
            if i >= self.config.eval_batches:
                break
            x, indiv_mels, mel, gt = (t.to(self.ctx.device) for t in batch)
            g = generate_window(self.model, indiv_mels, x)
            n = x.shape[0]
            sums["l1"] += l1_loss(g, gt).item() * n
            sums["sync"] += expert_sync_loss(self.expert, mel, g).item() * n
            sums["lower_psnr"] += lower_half_psnr(g, gt).sum().item()
            if self.disc is not None:
                fake_pred = self.disc(fold_time(g))
                sums["adv"] += adversarial_loss(fake_pred, real=True).item() * n
                sums["disc_fake"] += adversarial_loss(fake_pred, real=False).item() * n
                sums["disc_real"] += adversarial_loss(self.disc(fold_time(gt)), real=True).item() * n
            count += n
        result = all_reduce_mean(sums, count, self.ctx)
        if not self.sync_enabled and result["sync"] < self.config.sync_threshold:
            self.sync_enabled = True  # never switched back off, as in the original
            logger.info(
                "eval sync loss %.4f < %.2f at step %d: expert sync loss on, syncnet_wt=%g",
                result["sync"],
                self.config.sync_threshold,
                self.step,
                self.config.syncnet_wt,
            )
        result["syncnet_wt"] = self.syncnet_wt
        return result

    # ---- checkpoint contents besides the generator and its optimiser ----
    def checkpoint_extra(self) -> dict[str, Any]:
        extra: dict[str, Any] = {"sync_enabled": self.sync_enabled, "syncnet_wt": self.syncnet_wt, "disc": None}
        if self.disc is not None and self.opt_d is not None:
            extra["disc"] = {
                "model": self.disc.state_dict(),
                "config": dataclasses.asdict(self.disc.config),
                "optimizer": self.opt_d.state_dict(),
            }
        return extra

    def load_extra(self, extra: dict[str, Any], path: Path) -> None:
        self.sync_enabled = bool(extra.get("sync_enabled", False))
        if self.disc is not None and self.opt_d is not None:
            disc = extra.get("disc")
            if disc is None:
                raise CheckpointError(f"checkpoint {path} has no discriminator but disc_wt={self.config.disc_wt} > 0")
            strict_load(self.disc, disc["model"], path)
            keep_configured_hyperparameters(self.opt_d, disc["optimizer"])

    def write_samples(self, x: Tensor, generated: Tensor, gt: Tensor) -> Path:
        path = self.out_dir / "samples" / f"step{self.step:09d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), sample_grid(x, generated, gt))
        return path


def train(config: GeneratorTrainConfig, resume: Path | None = None) -> dict[str, Any]:
    """Run (or continue) generator training; returns the final step, switch state and last validation."""
    config = build_config(GeneratorTrainConfig, dataclasses.asdict(config))
    ctx = setup_distributed(config.device, config.torch_threads)
    try:
        trainer = GeneratorTrainer(config, ctx, resume)
        return {**trainer.run(), "sync_enabled": trainer.sync_enabled}
    finally:
        teardown_distributed()
