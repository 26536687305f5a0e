"""What both trainers share: the step loop, process group and device, a resumable sampler, metrics CSV, checkpoint files."""

from __future__ import annotations

import csv
import dataclasses
import logging
import os
import random
import re
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, Sampler

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Dist:
    """This process's place in the run."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(name: str) -> torch.device:
    """auto -> cuda when available, else cpu; a cuda device without CUDA is an error."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} requested but CUDA is not available")
    return torch.device(name)


def setup_distributed(device: str, torch_threads: int = 0) -> Dist:
    """Join the torchrun process group when WORLD_SIZE > 1 (NCCL, one GPU per process; gloo on CPUs).

    Rank 0 alone writes logs, samples and checkpoints.
    """
    if torch_threads:
        torch.set_num_threads(torch_threads)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(0, 1, 0, resolve_device(device))
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return Dist(rank, world, local_rank, dev)


def teardown_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def all_reduce_mean(values: Mapping[str, float], count: int, ctx: Dist) -> dict[str, float]:
    """Average per-process sums over all processes: `values` are sums over `count` items."""
    keys = sorted(values)
    if not ctx.distributed:
        return {k: values[k] / max(count, 1) for k in keys}
    t = torch.tensor([values[k] for k in keys] + [float(count)], dtype=torch.float64, device=ctx.device)
    dist.all_reduce(t)
    total = max(t[-1].item(), 1.0)
    return {k: t[i].item() / total for i, k in enumerate(keys)}


class StepSampler(Sampler[int]):
    """Endless keys `epoch * size + index` for one rank, positioned by global step.

    Each epoch is a seeded permutation of the dataset; rank r takes every world-th item
    (DistributedSampler semantics) and an epoch is `batches_per_epoch` full batches. The key
    carries the epoch to the dataset, whose per-sample RNG depends on it, so one DataLoader with
    persistent workers (and their mel caches) serves the whole run, and a resumed run continues
    the same stream from its step.
    """

    def __init__(
        self, size: int, *, batch_size: int, seed: int, start_step: int = 0, rank: int = 0, world_size: int = 1
    ) -> None:
        self.size = size
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.start_step = start_step
        self.batches_per_epoch = max(size // (world_size * batch_size), 1)

    def epoch_keys(self, epoch: int) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        order = torch.randperm(self.size, generator=g).tolist()
        need = self.batches_per_epoch * self.batch_size * self.world_size
        while len(order) < need:  # a dataset smaller than one global batch repeats its items
            order = order + order
        mine = order[self.rank : need : self.world_size]
        return [epoch * self.size + i for i in mine]

    def __iter__(self) -> Iterator[int]:
        epoch, skip = divmod(self.start_step, self.batches_per_epoch)
        keys = self.epoch_keys(epoch)[skip * self.batch_size :]
        while True:
            yield from keys
            epoch += 1
            keys = self.epoch_keys(epoch)


def step_loader(
    dataset: Dataset, *, batch_size: int, seed: int, start_step: int, ctx: Dist, num_workers: int
) -> DataLoader:
    """An endless DataLoader whose n-th batch is the one of global step `start_step + n`."""
    sampler = StepSampler(
        len(dataset), batch_size=batch_size, seed=seed, start_step=start_step, rank=ctx.rank, world_size=ctx.world_size
    )
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        pin_memory=ctx.device.type == "cuda",
        drop_last=True,
        persistent_workers=num_workers > 0,
        prefetch_factor=4 if num_workers > 0 else None,
    )


class _Shard(Sampler[int]):
    def __init__(self, size: int, rank: int, world_size: int) -> None:
        self.items = list(range(rank, size, world_size))

    def __iter__(self) -> Iterator[int]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)


def eval_loader(dataset: Dataset, *, batch_size: int, ctx: Dist, num_workers: int) -> DataLoader:
    """Fixed evaluation batches, sharded over the ranks (no padding: sums are all-reduced with their counts)."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=_Shard(len(dataset), ctx.rank, ctx.world_size),
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
    )


class MetricsLog:
    """Append-only CSV of `step, time, split, name, value` rows (one file per run; appended on resume)."""

    FIELDS = ("step", "time", "split", "name", "value")

    def __init__(self, path: str | Path, enabled: bool = True) -> None:
        self.path = Path(path)
        self.enabled = enabled
        if enabled and not self.path.exists():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("w", newline="") as f:
                csv.writer(f).writerow(self.FIELDS)

    def log(self, step: int, split: str, values: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        now = round(time.time(), 3)
        with self.path.open("a", newline="") as f:
            w = csv.writer(f)
            for name, value in values.items():
                w.writerow((step, now, split, name, f"{float(value):.6g}"))

    def drop_after(self, step: int) -> None:
        """Forget rows past `step`: a run resumed from an earlier checkpoint logs those steps again."""
        if not self.enabled or not self.path.exists():
            return
        rows = [r for r in read_metrics(self.path) if int(r["step"]) <= step]
        with self.path.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=self.FIELDS)
            w.writeheader()
            w.writerows(rows)


def read_metrics(path: str | Path) -> list[dict[str, str]]:
    with Path(path).open(newline="") as f:
        return list(csv.DictReader(f))


_STEP_FILE = re.compile(r"^checkpoint_step(\d{9})\.pt$")


def checkpoint_path(out_dir: str | Path, step: int) -> Path:
    return Path(out_dir) / f"checkpoint_step{step:09d}.pt"


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    """The highest-step `checkpoint_stepNNNNNNNNN.pt` in `out_dir`, or None."""
    out = Path(out_dir)
    if not out.is_dir():
        return None
    found = [(int(m.group(1)), p) for p in out.iterdir() if (m := _STEP_FILE.match(p.name))]
    return max(found)[1] if found else None


def resolve_resume(resume: str | None, out_dir: str | Path) -> Path | None:
    """`--resume auto` -> the latest checkpoint in out_dir (None if there is none); a path -> that file."""
    if not resume:
        return None
    if resume == "auto":
        return latest_checkpoint(out_dir)
    path = Path(resume)
    if path.is_dir():
        found = latest_checkpoint(path)
        if found is None:
            raise FileNotFoundError(f"--resume {resume}: no checkpoint_step*.pt in that folder")
        return found
    if not path.is_file():
        raise FileNotFoundError(f"--resume {resume}: no such file")
    return path


def prune_checkpoints(out_dir: str | Path, keep: int) -> None:
    """Delete all but the `keep` newest step checkpoints (keep=0 keeps all)."""
    if keep <= 0:
        return
    out = Path(out_dir)
    found = sorted((int(m.group(1)), p) for p in out.iterdir() if (m := _STEP_FILE.match(p.name)))
    for _, path in found[:-keep]:
        path.unlink(missing_ok=True)


def progress(total: int, initial: int, enabled: bool, desc: str):
    """A tqdm bar on the main process; a no-op object elsewhere."""
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, desc=desc, dynamic_ncols=True, smoothing=0.05)


def setup_logging(ctx: Dist | None = None) -> None:
    """Entry-point logging: INFO on rank 0, warnings only on the others."""
    rank = int(os.environ.get("RANK", "0")) if ctx is None else ctx.rank
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format=f"%(asctime)s [rank{rank}] %(levelname)s %(name)s: %(message)s"
        if rank
        else "%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def saved_train_config(path: str | Path) -> dict:
    """The training config stored in a trainer's checkpoint (a resumed run starts from it)."""
    from lipsync.client.networks.checkpoints import CheckpointError, load_checkpoint

    extra = load_checkpoint(path).get("extra") or {}
    if "train_config" not in extra:
        raise CheckpointError(f"checkpoint {path} has no saved training config (not written by a trainer)")
    return dict(extra["train_config"])


def samples_per_clip(n_samples: int, root: str | Path, split: str) -> int:
    """Windows per clip so that a fixed evaluation set holds at least `n_samples`."""
    from lipsync.training.data.lrs2 import read_filelist

    return max(1, -(-n_samples // max(len(read_filelist(root, split)), 1)))


def keep_configured_hyperparameters(optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Load an optimizer's saved moments but keep this run's hyperparameters (lr, betas).

    `load_state_dict` would bring back the saved learning rate too, silently undoing a `--lr` given
    on resume; the moments are what a resume must carry over.
    """
    configured = [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
    optimizer.load_state_dict(state)
    for group, values in zip(optimizer.param_groups, configured, strict=True):
        group.update(values)


class TrainLoop:
    """The step loop both trainers share: batches by global step, metrics.csv, progress bar, eval, checkpoints.

    Subclasses set `model` (the network saved as the checkpoint's model), `optimizer`, `train_set`,
    `val_set`, and implement `train_step`, `evaluate`, `checkpoint_extra` and `load_extra`.
    """

    name = "train"
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    train_set: Dataset
    val_set: Dataset

    def __init__(self, config, ctx: Dist) -> None:
        self.config = config
        self.ctx = ctx
        self.out_dir = Path(config.out_dir)
        self.step = 0
        self.last_eval: dict[str, float] = {}
        self.metrics = MetricsLog(self.out_dir / "metrics.csv", enabled=ctx.is_main)
        self.val_loader: DataLoader | None = None

    # ---- subclass hooks ----
    def train_step(self, batch: list[torch.Tensor]) -> dict[str, float]:
        raise NotImplementedError

    def evaluate(self) -> dict[str, float]:
        raise NotImplementedError

    def checkpoint_extra(self) -> dict:
        return {}

    def load_extra(self, extra: dict, path: Path) -> None:
        pass

    def train_values(self) -> dict[str, float]:
        """Values logged with every train row besides the averaged step outputs."""
        return {}

    def after_step(self, batch: list[torch.Tensor]) -> None:
        pass

    def progress_bar(self):
        """The run's tqdm bar: steps out of config.steps."""
        return progress(self.config.steps, self.step, self.ctx.is_main, self.name)

    def bar_advance(self) -> float:
        return 1

    def before_loop(self) -> None:
        """Called once the loaders exist, before the first step (a baseline evaluation, say)."""

    def eval_due(self, last: bool) -> bool:
        return self.step % self.config.eval_interval == 0 or last

    def should_stop(self) -> str | None:
        """Checked after every step: a reason to end the run early (a time budget, a plateau), or None."""
        return None

    # Validation values shown in the progress bar after each evaluation, when the run has them.
    bar_eval_keys: tuple[str, ...] = ()
    checkpoint_each_eval = False  # also checkpoint after every evaluation (runs paced by time, not steps)

    # ---- checkpoints ----
    def save(self) -> Path | None:
        from lipsync.client.networks.checkpoints import save_checkpoint

        if not self.ctx.is_main:
            return None
        extra = {"train_config": dataclasses.asdict(self.config), "last_eval": dict(self.last_eval)}
        extra.update(self.checkpoint_extra())
        path = save_checkpoint(
            checkpoint_path(self.out_dir, self.step),
            model=self.model,
            config=self.model.config,
            optimizer=self.optimizer,
            step=self.step,
            extra=extra,
        )
        prune_checkpoints(self.out_dir, self.config.keep_checkpoints)
        return path

    def load(self, path: Path) -> None:
        """Restore model, optimizer, step and the subclass's state from one of our checkpoints."""
        from lipsync.client.networks.checkpoints import CheckpointError, load_checkpoint, strict_load

        ckpt = load_checkpoint(path, map_location=self.ctx.device)
        expected = type(self.model.config).__name__
        if ckpt.get("config_class") != expected:
            raise CheckpointError(f"checkpoint {path} holds a {ckpt.get('config_class')} network, not a {expected}")
        if ckpt["config"] != dataclasses.asdict(self.model.config):
            raise CheckpointError(
                f"checkpoint {path}: network {ckpt['config']} differs from this run's {self.model.config}"
            )
        strict_load(self.model, ckpt["model"], path)
        if ckpt.get("optimizer") is None:
            raise CheckpointError(f"checkpoint {path} has no optimizer state to resume from")
        keep_configured_hyperparameters(self.optimizer, ckpt["optimizer"])
        self.step = int(ckpt["step"])
        extra = dict(ckpt.get("extra") or {})
        self.last_eval = dict(extra.get("last_eval") or {})
        self.load_extra(extra, path)
        self.metrics.drop_after(self.step)
        logger.info("resumed %s from %s at step %d", self.name, path, self.step)

    # ---- the loop ----
    def run(self) -> dict:
        cfg, ctx = self.config, self.ctx
        if ctx.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            from lipsync.training.config import save_config

            save_config(cfg, self.out_dir / "config.json", {"world_size": ctx.world_size})
        loader = step_loader(
            self.train_set,
            batch_size=cfg.batch_size,
            seed=cfg.seed,
            start_step=self.step,
            ctx=ctx,
            num_workers=cfg.num_workers,
        )
        self.val_loader = eval_loader(
            self.val_set, batch_size=cfg.batch_size, ctx=ctx, num_workers=min(cfg.num_workers, 1)
        )
        self.before_loop()
        bar = self.progress_bar()
        shown: dict[str, str] = {}
        stopped: str | None = None
        running: dict[str, float] = {}
        n_running, t_last, waited = 0, time.perf_counter(), 0.0
        t_asked = time.perf_counter()
        for batch in loader:
            if self.step >= cfg.steps:
                break
            waited += time.perf_counter() - t_asked
            values = self.train_step(batch)
            self.step += 1
            for k, v in values.items():
                running[k] = running.get(k, 0.0) + v
            n_running += 1
            last = self.step == cfg.steps
            if self.step % cfg.log_interval == 0 or last:
                now = time.perf_counter()
                row = {k: v / n_running for k, v in running.items()}
                row.update(
                    steps_per_s=n_running / (now - t_last), data_wait=waited / (now - t_last), **self.train_values()
                )
                self.metrics.log(self.step, "train", row)
                shown.update({k: f"{row[k]:.4f}" for k in ("loss", "l1", "sync", "accuracy") if k in row})
                bar.set_postfix(shown)
                running, n_running, t_last, waited = {}, 0, now, 0.0
            self.after_step(batch)
            evaluated = self.eval_due(last)
            if evaluated:
                self.last_eval = self.evaluate()
                self.metrics.log(self.step, "val", self.last_eval)
                shown.update(
                    {f"val_{k}": f"{self.last_eval[k]:.3f}" for k in self.bar_eval_keys if k in self.last_eval}
                )
                bar.set_postfix(shown)
                if ctx.is_main:
                    logger.info(
                        "%s step %d val %s",
                        self.name,
                        self.step,
                        ", ".join(f"{k}={v:.4f}" for k, v in self.last_eval.items()),
                    )
            stopped = self.should_stop()
            if self.step % cfg.checkpoint_interval == 0 or last or stopped or (evaluated and self.checkpoint_each_eval):
                self.save()
            bar.update(self.bar_advance())
            if stopped:
                logger.info("%s stopped at step %d: %s", self.name, self.step, stopped)
                break
            t_asked = time.perf_counter()
        bar.close()
        return {"step": self.step, "last_eval": self.last_eval, "stopped": stopped}
