"""The training loop: ``train_one_epoch``, ``evaluate_epoch`` and ``fit``, kept visible on purpose.

One recipe for every method in ``ipskit.methods`` (IPS, Choi et al. 2025, and its baselines):
SGD with momentum, a cosine or step schedule stepped every iteration, the same data, the same
seeds. Layout after torchvision's references/classification/train.py and MAE's engine:

    summary = fit(TrainConfig(method="ips", epochs=10))     # writes runs/<name>/
    summary = fit(cfg, resume=True)                          # continue an interrupted run

``fit`` writes the run folder of docs/ARCHITECTURE.md: config.json, metrics.jsonl (one line per
epoch), env.json, checkpoint.pt (atomically, every epoch) and summary.json at the end.
Resuming restores weights, optimizer, schedule and RNG state; every other random draw is a
function of (seed, epoch, rank), so on a CPU a resumed run ends with exactly the metrics and
weights of an uninterrupted one. Under ``torchrun`` the model is wrapped in
DistributedDataParallel (nccl on CUDA, gloo on CPU), each process loads its share of the
anchors, and only rank 0 writes. ``batch_size`` is per process.

Everything a run could reject (names, sizes, an existing folder, a checkpoint that does not
match) is checked before the folder is created or changed.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

from ipskit import metrics as M
from ipskit import runs
from ipskit.checks import InputError, check_device
from ipskit.config import TrainConfig
from ipskit.data import derive_seed  # public here too: ipskit.train.derive_seed
from ipskit.methods import Method, build_method
from ipskit.step import CapturedStep, TrainStep, autocast, lr_value, portable_state, use_tensor_lr

__all__ = [
    "fit",
    "fit_or_reuse",
    "train_one_epoch",
    "evaluate_epoch",
    "resolve_device",
    "lr_factor",
    "derive_seed",
    "prepare_data",
    "TrainData",
]

# Settings that may differ on resume: where and how fast, not what is computed.
_RESUME_FREE = {
    "out_dir",
    "data_root",
    "name",
    "device",
    "compile",
    "num_workers",
    "amp",
    "channels_last",
    "capture",
}


# ----- small helpers ---------------------------------------------------------------------------
def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` -> cuda if available, else mps, else cpu; other names are checked (InputError
    for a name that is not a device or a device this machine lacks)."""
    check_device(name)
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(
            f"device {name!r} asked for but CUDA is not available; use --device cpu or auto"
        )
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise InputError(
            f"device {name!r} asked for but MPS is not available; use --device cpu or auto"
        )
    return dev


def lr_factor(step: int, total_steps: int, warmup_steps: int, schedule: str) -> float:
    """Multiplier of the peak learning rate for optimisation step ``step`` (0-based).

    Linear warm-up over ``warmup_steps``; then ``cosine`` decays to 0 at ``total_steps``,
    ``step`` multiplies by 0.1 at 50% and again at 75% of ``total_steps``.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "cosine":
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return 0.1 ** ((step >= 0.5 * total_steps) + (step >= 0.75 * total_steps))


# ----- one epoch ----------------------------------------------------------------------------
def train_one_epoch(
    model: nn.Module,
    method: Method,
    loader,
    optimizer: torch.optim.Optimizer,
    scheduler,
    generator: torch.Generator,
    epoch: int,
    device: torch.device,
    *,
    amp: bool = False,
    channels_last: bool = False,
    progress: bool = True,
    desc: str = "train",
    sync_every: int = 10,
    step_fn: Callable | None = None,
) -> dict:
    """Train for one pass over ``loader``.

    Args:
        model: the (possibly DDP-wrapped) classifier, [N, C, H, W] in [0, 1] -> [N, K].
        method: turns a batch into a loss (``ipskit.methods``).
        loader: yields (x [N, C, H, W] float in [0, 1], y [N]) batches.
        optimizer, scheduler: stepped once per batch.
        generator: random choices of the method (swaps, mixing), on ``device``.
        epoch: 1-based epoch, for messages.
        amp: bf16 autocast. channels_last: feed channels-last images.
        progress: show a tqdm bar with running loss and accuracy.
        sync_every: read the running sums back from the device every this many steps.
        step_fn: the step to run (``ipskit.step.TrainStep`` or ``CapturedStep`` over the same
            model, method, optimizer and generator; ``fit`` passes one that lives across
            epochs); default: an eager ``TrainStep``.
    Returns:
        dict: train_loss, train_ce, train_kd (means over samples), train_acc, lr (of the last
        step), steps. Summed over processes under DDP.
    Raises:
        FloatingPointError naming the epoch and step of the first non-finite loss.
    """
    model.train()
    step_fn = step_fn or TrainStep(model, method, optimizer, generator, amp=amp)
    # Running sums stay on the device (no sync per step): loss*n, ce*n, kd*n, correct, where
    # n is the number of samples (anchors) and m the number of predictions scored.
    sums = torch.zeros(4, device=device, dtype=torch.float64)
    first_bad = torch.full((), -1, device=device, dtype=torch.long)
    n_total = m_total = 0
    # A bar driven by hand: tqdm.auto's async flavour calls iter() on what it wraps twice.
    bar = tqdm(total=len(loader), desc=desc, leave=False, disable=not progress, dynamic_ncols=True)
    lr, step, last = lr_value(optimizer.param_groups[0]["lr"]), -1, len(loader) - 1
    for step, (x, y) in enumerate(loader):
        x = x.to(device, non_blocking=True)
        y = y.to(device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        out = step_fn(x, y)
        first_bad = torch.where((first_bad < 0) & ~torch.isfinite(out.loss), step, first_bad)
        if step == last:  # the rate this step used (a device tensor when captured: one sync)
            lr = lr_value(optimizer.param_groups[0]["lr"])
        scheduler.step()
        n_total, m_total = n_total + out.samples, m_total + out.scored
        sums += out.sums
        if (step + 1) % sync_every == 0 or step == last:
            bad = first_bad.clone()
            if dist.is_initialized():  # every rank must stop together, or the others hang
                dist.all_reduce(bad, op=dist.ReduceOp.MAX)
            if int(bad) >= 0:
                raise FloatingPointError(
                    f"non-finite loss at epoch {epoch}, step {int(bad) + 1}: training stopped; "
                    f"try a lower --lr or check the data"
                )
            s = sums.tolist()
            bar.set_postfix(
                loss=f"{s[0] / n_total:.3f}", acc=f"{100 * s[3] / m_total:.1f}%", refresh=False
            )
        bar.update(1)
    bar.close()
    if step < 0:
        raise InputError("the training loader yielded no batch; lower --batch-size")
    totals = torch.cat([sums, torch.tensor([n_total, m_total], device=device, dtype=torch.float64)])
    if dist.is_initialized():
        dist.all_reduce(totals)
    s = totals.tolist()
    return {
        "train_loss": s[0] / s[4],
        "train_ce": s[1] / s[4],
        "train_kd": s[2] / s[4],
        "train_acc": s[3] / s[5],
        "lr": lr,
        "steps": step + 1,
    }


@torch.no_grad()
def evaluate_epoch(
    model: nn.Module,
    loader,
    device: torch.device,
    *,
    amp: bool = False,
    channels_last: bool = False,
) -> dict:
    """Accuracy, loss and calibration of ``model`` over ``loader`` (eval mode).

    Args:
        model: classifier, [N, C, H, W] in [0, 1] -> [N, K].
        loader: yields (x [N, C, H, W] in [0, 1], y [N]) batches, each sample once.
    Returns:
        dict: test_acc, test_loss (mean NLL, nats), ece (15 bins), mean_max_prob.
    """
    model.eval()
    logits, labels = [], []
    for x, y in loader:  # logits stay on the device: one copy to the host at the end
        x = x.to(device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(device, amp):
            logits.append(model(x).float())
        labels.append(y)
    z, y = torch.cat(logits).cpu(), torch.cat(labels).long().cpu()  # (N, K), (N,)
    if not torch.isfinite(z).all():
        raise FloatingPointError(
            "the model gives non-finite logits on the test set; training diverged: try a lower --lr"
        )
    return {
        "test_acc": M.accuracy(z, y),
        "test_loss": M.nll(z, y),
        "ece": M.expected_calibration_error(z, y),
        "mean_max_prob": float(z.softmax(dim=1).max(dim=1).values.mean()),
    }


def evaluate(
    model: nn.Module, loader, device: torch.device, amp: bool = False, channels_last: bool = False
) -> dict:
    """Deprecated name of :func:`evaluate_epoch` (it shadowed the ``ipskit.evaluate`` module);
    kept for one release."""
    import warnings

    warnings.warn(
        "ipskit.train.evaluate is renamed evaluate_epoch", DeprecationWarning, stacklevel=2
    )
    return evaluate_epoch(model, loader, device, amp=amp, channels_last=channels_last)


# ----- data ------------------------------------------------------------------------------------
@dataclasses.dataclass
class TrainData:
    """What ``prepare_data`` gives ``fit``: the bundle, loaders and the training labels used."""

    bundle: object
    train_loader: object
    test_loader: object
    samplers: list  # objects with set_epoch(e), called every epoch
    train_labels: torch.Tensor  # [N] labels trained on (after subset and label noise)
    flipped: torch.Tensor  # [N] bool, True where label noise changed the label


class _Relabelled(torch.utils.data.Dataset):
    """A dataset subset with replaced labels (label noise, subsets) for the DataLoader path."""

    def __init__(self, dataset, indices, labels):
        self.dataset, self.indices, self.labels = dataset, indices.tolist(), labels.tolist()

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, i):
        return self.dataset[self.indices[i]][0], self.labels[i]


def prepare_data(
    cfg: TrainConfig, device: torch.device, world: int = 1, rank: int = 0
) -> TrainData:
    """Load the dataset and build the train/test loaders the config asks for.

    The training subset (``max_train_samples``, capped at the dataset size) and the label
    noise are drawn from ``cfg.seed``; the test set is always complete and clean.
    """
    from ipskit.data import InMemoryLoader, load_dataset
    from ipskit.noise import noisy_labels
    from ipskit.pairs import SameClassPairSampler

    bundle = load_dataset(
        cfg.dataset,
        root=cfg.data_root,
        image_size=cfg.image_size,
        skip_bad_files=cfg.skip_bad_files,
    )
    cfg.check_image_size(bundle.image_size)
    augment, train_set = bundle.augment, bundle.train_dataset
    if not cfg.augment:  # both pipelines: no augmentation
        augment, train_set = None, copy.copy(train_set)
        train_set.augment = None
    labels = torch.as_tensor(np.asarray(bundle.train_targets)).long()
    idx = torch.arange(len(labels))
    if cfg.max_train_samples is not None and cfg.max_train_samples < len(labels):
        perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(cfg.seed))
        idx = perm[: cfg.max_train_samples].sort().values
    labels = labels[idx]
    flipped = torch.zeros(len(labels), dtype=torch.bool)
    if cfg.label_noise > 0:
        labels, flipped = noisy_labels(
            labels, bundle.num_classes, cfg.label_noise, cfg.label_noise_kind, seed=cfg.seed
        )
    per_rank = len(labels) // world
    if per_rank < cfg.batch_size:
        raise InputError(
            f"batch_size {cfg.batch_size} is larger than the {per_rank} training "
            f"samples per process; lower --batch-size"
        )

    # Pair methods: same-class pairs (2B indices per batch); otherwise a shuffled split.
    samplers, batch_sampler = [], None
    if cfg.uses_pairs:
        batch_sampler = SameClassPairSampler(
            labels, cfg.batch_size, seed=cfg.seed, drop_last=True, num_replicas=world, rank=rank
        )
        samplers.append(batch_sampler)
    elif world > 1:
        inner = torch.utils.data.DistributedSampler(
            range(len(labels)), world, rank, shuffle=True, seed=cfg.seed
        )
        batch_sampler = torch.utils.data.BatchSampler(inner, cfg.batch_size, drop_last=True)
        samplers.append(inner)
    aug_seed = derive_seed(cfg.seed, rank, 1)
    eval_batch = max(256, cfg.batch_size)
    if cfg.fast_path and bundle.train_x is not None:
        train = InMemoryLoader(
            bundle.train_x[idx],
            labels,
            cfg.batch_size,
            augment=augment,
            device=device,
            seed=aug_seed,
            shuffle=True,
            drop_last=True,
            batch_sampler=batch_sampler,
        )
        test = InMemoryLoader(
            bundle.test_x, bundle.test_y, eval_batch, augment=None, device=device, shuffle=False
        )
    else:
        train = _DataLoaderPerEpoch(
            _Relabelled(train_set, idx, labels),
            cfg.batch_size,
            batch_sampler,
            cfg.num_workers,
            aug_seed,
            pin=device.type == "cuda",
        )
        test = torch.utils.data.DataLoader(
            bundle.test_dataset, eval_batch, num_workers=cfg.num_workers
        )
    samplers.append(train)
    return TrainData(bundle, train, test, samplers, labels, flipped)


class _DataLoaderPerEpoch:
    """A standard DataLoader rebuilt each epoch with a generator seeded from (seed, epoch), so
    shuffling and worker augmentation repeat exactly after a resume."""

    def __init__(self, dataset, batch_size, batch_sampler, num_workers, seed, pin):
        self.dataset, self.batch_size, self.batch_sampler = dataset, batch_size, batch_sampler
        self.num_workers, self.seed, self.pin, self.epoch = num_workers, seed, pin, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _loader(self):
        # Worker seeds come from g; with num_workers=0 the dataset's transforms use the global
        # RNG, which fit() reseeds from (seed, epoch, rank) at the start of every epoch.
        g = torch.Generator().manual_seed(derive_seed(self.seed, self.epoch))
        if self.batch_sampler is not None:
            return torch.utils.data.DataLoader(
                self.dataset,
                batch_sampler=self.batch_sampler,
                num_workers=self.num_workers,
                generator=g,
                pin_memory=self.pin,
            )
        return torch.utils.data.DataLoader(
            self.dataset,
            self.batch_size,
            shuffle=True,
            drop_last=True,
            num_workers=self.num_workers,
            generator=g,
            pin_memory=self.pin,
        )

    def __len__(self):
        return (
            len(self.batch_sampler)
            if self.batch_sampler is not None
            else (len(self.dataset) // self.batch_size)
        )

    def __iter__(self):
        return iter(self._loader())


# ----- the run -------------------------------------------------------------------------------
def _init_distributed(device_name: str) -> tuple[int, int, int, bool]:
    """(world, rank, local_rank, initialised_here) from torchrun's environment variables."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    # torchrun sets LOCAL_RANK and MASTER_ADDR: even one process then joins a process group
    # (one nccl rank is how a one-GPU machine checks the multi-GPU path).
    if world <= 1 and not ("LOCAL_RANK" in os.environ and "MASTER_ADDR" in os.environ):
        return 1, 0, 0, False
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if dist.is_initialized():
        return dist.get_world_size(), dist.get_rank(), local, False
    cuda = device_name.startswith("cuda") or (device_name == "auto" and torch.cuda.is_available())
    if cuda:
        torch.cuda.set_device(local)
    dist.init_process_group("nccl" if cuda else "gloo")
    return dist.get_world_size(), dist.get_rank(), local, True


def _capture_wanted(setting: str, device: torch.device, distributed: bool) -> bool:
    """Whether to capture the training step in a CUDA graph (``TrainConfig.capture``)."""
    if setting == "on" and device.type != "cuda":
        raise InputError(
            f"capture 'on' needs a CUDA device (the step is captured in a CUDA graph), "
            f"this run is on {device.type}; use --capture auto or off"
        )
    if setting == "on" and distributed:
        raise InputError(
            "capture 'on' is for one process; under torchrun use --capture auto (eager there)"
        )
    return setting != "off" and device.type == "cuda" and not distributed


def _git_commit(package_dir: str | os.PathLike | None = None) -> str | None:
    """The commit of the ipskit checkout this code runs from, or None: an installed copy, or a
    package that merely sits inside some other project's git repository, has no commit of its
    own (the repository's top level must be the folder holding the package)."""
    here = Path(package_dir or Path(__file__).parent).resolve()

    def git(*args) -> str:
        return subprocess.run(
            ["git", *args], cwd=here, capture_output=True, text=True, timeout=5
        ).stdout.strip()

    try:
        top = git("rev-parse", "--show-toplevel")
        if not top or Path(top).resolve() != here.parent:
            return None
        return git("rev-parse", "HEAD") or None
    except (OSError, subprocess.SubprocessError):
        return None


def _env_info(device: torch.device, world: int) -> dict:
    import torchvision

    from ipskit import __version__

    commit = _git_commit()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    return {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "ipskit": __version__,
        "platform": platform.platform(),
        "device": str(device),
        "device_name": name or "cpu",
        "num_threads": torch.get_num_threads(),
        "world_size": world,
        "git_commit": commit,
    }


def _resume_state(cfg: TrainConfig, run_dir: Path, resume: bool, overwrite: bool):
    """Decide what to do with ``run_dir`` (nothing is changed here).

    Returns:
        None to start fresh, or the checkpoint dict to continue from.
    Raises:
        ValueError (one line) for an existing run without resume/overwrite, or a checkpoint
        that is corrupt or was trained with other settings.
    """
    if not run_dir.exists() or not any(run_dir.iterdir()):
        return None
    if not (run_dir / runs.CONFIG).exists():  # never delete or reuse a folder that is not a run
        raise InputError(
            f"{run_dir} exists and is not an ipskit run folder (no "
            f"{runs.CONFIG}); choose another --name or --out-dir"
        )
    if overwrite:
        runs.check_replaceable(run_dir, cfg.out_dir)
        return None
    if not resume:
        raise InputError(
            f"run folder {run_dir} already exists; pass --resume to continue it, "
            f"--overwrite to replace it, or --name for a new one"
        )
    ckpt_path = run_dir / runs.CHECKPOINT
    if not ckpt_path.exists():  # killed before the first epoch ended: nothing to keep
        runs.check_replaceable(run_dir, cfg.out_dir)
        return None
    ckpt = runs.load_checkpoint(ckpt_path)
    saved = ckpt.get("config") or {}
    now = dataclasses.asdict(cfg)
    diff = [k for k in now if k not in _RESUME_FREE and saved.get(k, now[k]) != now[k]]
    if diff or not saved:
        k = diff[0] if diff else "config"
        raise InputError(
            f"checkpoint {ckpt_path} does not match these settings ({k}: "
            f"{saved.get(k)!r} in the run, {now.get(k)!r} now); resume with the "
            f"same settings or pass --overwrite"
        )
    return ckpt


def _log_line(cfg: TrainConfig, row: dict) -> str:
    kd = f" kd {row['train_kd']:.3f}" if row["train_kd"] else ""
    return (
        f"epoch {row['epoch']:>3}/{cfg.epochs}  loss {row['train_loss']:.3f} "
        f"(ce {row['train_ce']:.3f}{kd})  train {100 * row['train_acc']:.1f}%  "
        f"test {100 * row['test_acc']:.1f}%  ece {row['ece']:.3f}  "
        f"lr {row['lr']:.4f}  {row['epoch_time_s']:.1f}s"
    )


def fit(
    cfg: TrainConfig,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    verbose: bool = True,
    on_epoch: Callable[[TrainConfig, dict], None] | None = None,
) -> dict:
    """Train a model as ``cfg`` says and write its run folder.

    Args:
        cfg: the settings (already validated by TrainConfig).
        resume: continue the run in ``out_dir/run_name`` from its checkpoint; a run that has
            already finished is returned as is; a folder without a checkpoint starts over.
        overwrite: delete an existing run folder of the same name first.
        progress: tqdm bars; verbose: one printed line per epoch.
        on_epoch: called as ``on_epoch(cfg, row)`` after every epoch, once the epoch's
            checkpoint and ``metrics.jsonl`` row are written (rank 0 only); ``row`` is that
            metrics row (``row["epoch"]`` of ``cfg.epochs``). For progress displays (the
            explorer's demo button) and early looks at the curves.
    Returns:
        The summary dict (as in summary.json) plus ``run_dir``.
    """
    if not isinstance(cfg, TrainConfig):
        raise TypeError(f"cfg must be a TrainConfig, got {type(cfg).__name__}")
    world, rank, local, owns_pg = _init_distributed(cfg.device)
    try:
        # Rank 0 holds the run folder from before its checks to the end: a second process
        # asking for the same folder is refused at once instead of interleaving its files.
        with runs.claim_run_dir(Path(cfg.out_dir) / cfg.run_name) if rank == 0 else nullcontext():
            return _fit(
                cfg,
                resume,
                overwrite,
                progress and rank == 0,
                verbose and rank == 0,
                world,
                rank,
                local,
                on_epoch if rank == 0 else None,
            )
    finally:
        if owns_pg:
            dist.destroy_process_group()


def fit_or_reuse(cfg: TrainConfig, **fit_kwargs) -> Path:
    """The run folder of ``cfg``, trained only if no finished run is there yet.

    A folder whose ``summary.json`` says ``"finished"`` is returned as it is, whatever settings
    it was trained with (its ``config.json`` says what it is): this is how the notebooks share
    runs with ``ipskit demo``, ``ipskit sweep`` and each other without retraining. Otherwise
    ``fit(cfg, resume=True, **fit_kwargs)`` trains it, continuing from a checkpoint if one is
    there. Use :func:`fit` when the settings must match exactly.
    """
    run_dir = Path(cfg.out_dir) / cfg.run_name
    if runs.finished_summary(run_dir):
        return run_dir
    return Path(fit(cfg, resume=True, **fit_kwargs)["run_dir"])


def _fit(cfg, resume, overwrite, progress, verbose, world, rank, local, on_epoch) -> dict:
    from ipskit import __version__
    from ipskit.models import build_model

    # 1. Everything that can be rejected, before the run folder is touched.
    device = resolve_device(cfg.device)
    distributed = dist.is_initialized()
    if device.type == "cuda" and distributed:
        device = torch.device("cuda", local)
    amp = device.type == "cuda" if cfg.amp is None else cfg.amp
    capture = _capture_wanted(cfg.capture, device, distributed)
    channels_last = device.type == "cuda" if cfg.channels_last is None else cfg.channels_last
    run_dir = Path(cfg.out_dir) / cfg.run_name
    ckpt = _resume_state(cfg, run_dir, resume, overwrite)
    summary = runs.read_json(run_dir / runs.SUMMARY, {}) if ckpt is not None else {}
    if ckpt is not None and ckpt["epoch"] >= cfg.epochs and summary.get("status") == "finished":
        if verbose:
            print(f"{run_dir} has already finished its {cfg.epochs} epochs; nothing to do")
        return {**summary, "run_dir": str(run_dir)}
    data = prepare_data(cfg, device, world, rank)
    bundle = data.bundle
    torch.manual_seed(cfg.seed)  # same initial weights for every method at a given seed
    model = build_model(
        cfg.model,
        bundle.num_classes,
        bundle.in_channels,
        bundle.image_size,
        bundle.mean,
        bundle.std,
    ).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    method = build_method(cfg, bundle.num_classes, bundle.image_size, fill=bundle.mean)
    # Fused SGD on CUDA: one kernel for the whole update, and the one a captured step needs.
    fused = device.type == "cuda"
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=cfg.lr,
        momentum=cfg.momentum,
        weight_decay=cfg.weight_decay,
        fused=fused or None,
    )
    steps = len(data.train_loader)
    total, warmup = steps * cfg.epochs, round(cfg.warmup_epochs * steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total, warmup, cfg.schedule)
    )
    history, start, wall_before = [], 1, 0.0
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        torch.set_rng_state(ckpt["rng"]["torch"])
        history, start = list(ckpt.get("history", [])), int(ckpt["epoch"]) + 1
        wall_before = float(ckpt.get("wall_time_s", 0.0))
        for group in optimizer.param_groups:  # how to update is this device's choice
            group["fused"], group["foreach"] = fused or None, None if fused else group["foreach"]
    if capture:
        use_tensor_lr(optimizer, device)
    info = model.model_info
    net = torch.compile(model) if cfg.compile else model
    if distributed:
        net = nn.parallel.DistributedDataParallel(
            net, device_ids=[device.index] if device.type == "cuda" else None
        )

    # 2. The run folder: all ranks have checked it; only rank 0 writes.
    if distributed:
        dist.barrier()
    if rank == 0:
        if ckpt is None:
            runs.replace_run_dir(
                run_dir,
                lambda d: runs.atomic_write_json(
                    d / runs.CONFIG, {**dataclasses.asdict(cfg), "ipskit_version": __version__}
                ),
            )
        runs.atomic_write_json(run_dir / runs.ENV, _env_info(device, world))
        runs.atomic_write_jsonl(run_dir / runs.METRICS, history)
        (run_dir / runs.SUMMARY).unlink(missing_ok=True)
    if verbose:
        what = f"resuming at epoch {start}" if ckpt is not None else "training"
        print(
            f"{what} {cfg.method} on {cfg.dataset} ({len(data.train_labels)} images, "
            f"{bundle.image_size}px) with {cfg.model} on {device}"
            f"{f' x{world} (DDP)' if distributed else ''} -> {run_dir}"
        )

    # 3. Epochs. Randomness per epoch is a function of (seed, epoch, rank) only.
    gen = torch.Generator(device=device)
    step_fn = TrainStep(net, method, optimizer, gen, amp=amp)
    if capture:
        step_fn = CapturedStep(step_fn, fallback=cfg.capture == "auto", log=tqdm.write)
    wall, told_capture = time.perf_counter(), False
    try:
        for epoch in range(start, cfg.epochs + 1):
            t0 = time.perf_counter()
            for s in data.samplers:
                s.set_epoch(epoch)
            gen.manual_seed(derive_seed(cfg.seed, epoch, rank, 0))
            torch.manual_seed(derive_seed(cfg.seed, epoch, rank, 3))
            row = train_one_epoch(
                net,
                method,
                data.train_loader,
                optimizer,
                scheduler,
                gen,
                epoch,
                device,
                amp=amp,
                channels_last=channels_last,
                progress=progress,
                desc=f"{cfg.method} {epoch}/{cfg.epochs}",
                step_fn=step_fn,
            )
            if verbose and capture and step_fn.mode == "graph" and not told_capture:
                told_capture = True  # once, in the epoch the capture happened
                tqdm.write(
                    f"training step captured in a CUDA graph after {step_fn.warmup} eager steps "
                    f"({step_fn.setup_s:.1f} s for those and the capture)"
                )
            row.update(
                evaluate_epoch(
                    model, data.test_loader, device, amp=amp, channels_last=channels_last
                )
            )
            row = {"epoch": epoch, **row, "epoch_time_s": time.perf_counter() - t0}
            history.append(row)
            if rank == 0:
                runs.atomic_torch_save(
                    {
                        "model": model.state_dict(),
                        "optimizer": portable_state(optimizer),
                        "scheduler": portable_state(scheduler),
                        "epoch": epoch,
                        "rng": {"torch": torch.get_rng_state()},
                        "model_info": info,
                        "config": dataclasses.asdict(cfg),
                        "history": history,
                        "wall_time_s": wall_before + time.perf_counter() - wall,
                        "ipskit_version": __version__,
                    },
                    run_dir / runs.CHECKPOINT,
                )
                runs.atomic_write_jsonl(run_dir / runs.METRICS, history)
            if verbose:
                tqdm.write(_log_line(cfg, row))
            if on_epoch is not None:
                on_epoch(cfg, row)
    except FloatingPointError as e:
        if rank == 0:
            runs.atomic_write_json(
                run_dir / runs.SUMMARY, {"status": "failed", "error": str(e), "method": cfg.method}
            )
        raise
    summary = {
        **(history[-1] if history else {}),
        "method": cfg.method,
        "model": cfg.model,
        "dataset": cfg.dataset,
        "seed": cfg.seed,
        "epochs": cfg.epochs,
        "wall_time_s": wall_before + time.perf_counter() - wall,
        "train_step": "graph" if getattr(step_fn, "mode", "") == "graph" else "eager",
        "status": "finished",
    }
    if rank == 0:
        runs.atomic_write_json(run_dir / runs.SUMMARY, summary)
    return {**summary, "run_dir": str(run_dir)}
