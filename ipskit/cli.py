"""The ``ipskit`` command line (also ``python -m ipskit``).

Commands:
    ipskit demo                         train ce and ips on digits, print a comparison table
    ipskit train --method ips ...       one run; every TrainConfig field is a flag
    ipskit sweep --name SWEEP --grid 2 4 --pr 0.25 0.5 --seed 0 1 [--jobs 4]
                                        a grid of runs into one tidy, resumable CSV
    ipskit sweep ... --launcher submitit --launcher-opt slurm_partition=gpu
                                        the same grid, one Slurm job a run
    ipskit swap-demo --grid 4           save a picture of patch-swapped pairs
    ipskit eval RUN_DIR ...             evaluation (ipskit.evaluate)
    ipskit compare RUN_DIR ...          compare runs (ipskit.evaluate)
    ipskit download cifar10 --root data fetch CIFAR-10 or CIFAR-100 (needs a network)
    torchrun --nproc_per_node=N -m ipskit train ...   data-parallel training

Bad input and faults a user can fix (permissions, a full disk, missing files or data, an
unavailable device) print ``error: <one line>`` on stderr and exit with status 2; a diverged
run (non-finite loss) exits with status 1. Anything else is a bug in ipskit and keeps its
traceback; ``ipskit --debug ...`` (or ``IPSKIT_DEBUG=1``) shows the traceback of every error.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import os
import signal
import sys
import typing
from pathlib import Path

from ipskit.checks import InputError, check_int

__all__ = ["main", "build_parser", "add_config_arguments", "config_from_args", "config_to_argv"]

DEBUG_ENV = "IPSKIT_DEBUG"
MAX_DEMO_PAIRS = 64  # swap-demo draws one figure row a pair
MAX_IMAGE_SIZE = 1024  # as TrainConfig.image_size

_GROUPS = {
    "data": "data",
    "model": "model",
    "method": "method settings",
    "training": "optimisation",
    "runtime": "runtime and output",
}


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad flag gives one ``error:`` line (and a hint) instead of the usage."""

    def error(self, message: str):
        sys.stderr.write(f"error: {message} (see '{self.prog} --help')\n")
        raise SystemExit(2)


def _optional(typ):
    def parse(text: str):
        return None if text.lower() == "none" else typ(text)

    parse.__name__ = typ.__name__
    return parse


def _bool(text: str) -> bool:
    low = text.lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


class _TrueIfBare(argparse.Action):
    """A sweep's true/false flag: ``--flag`` alone is ``[True]``, ``--flag true false`` an
    axis."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, list(values) or [True])


def add_config_arguments(
    parser: argparse.ArgumentParser, multi: bool = False, exclude: tuple[str, ...] = ()
) -> None:
    """One flag per TrainConfig field (``--batch-size`` for ``batch_size``), help from the field.

    Args:
        parser: where to add the flags, in argument groups.
        multi: every flag takes one or more values (for ``ipskit sweep``).
        exclude: fields to leave out.
    Flags left out are absent from the parsed namespace, so the dataclass defaults apply.
    """
    from ipskit.config import TrainConfig

    hints = typing.get_type_hints(TrainConfig)
    groups = {k: parser.add_argument_group(v) for k, v in _GROUPS.items()}
    for f in dataclasses.fields(TrainConfig):
        if f.name in exclude:
            continue
        hint = hints[f.name]
        args = typing.get_args(hint)
        base = next(a for a in args if a is not type(None)) if args else hint
        default = f.default
        shown = "" if default is None else f" (default: {default})"  # None: help says it
        help_text = f"{f.metadata['help']}{shown}".replace("%", "%%")
        kw = dict(default=argparse.SUPPRESS, help=help_text, dest=f.name)
        if "choices" in f.metadata:
            kw["choices"] = f.metadata["choices"]
        if base is bool and not multi:
            kw["action"] = argparse.BooleanOptionalAction
        else:
            parse = _bool if base is bool else base
            kw["type"] = _optional(parse) if args else parse
            if "choices" not in f.metadata:  # argparse shows {a,b,c} itself
                kw["metavar"] = f.name.upper()
            if multi:
                kw["nargs"] = "+"
            if multi and base is bool:  # --flag alone means true, as for ipskit train
                kw.update(nargs="*", action=_TrueIfBare, metavar="true|false")
        groups[f.metadata["group"]].add_argument("--" + f.name.replace("_", "-"), **kw)


def config_to_argv(cfg) -> list[str]:
    """The ``ipskit train`` flags that rebuild ``cfg`` (every field, defaults included), so a
    run can be started as its own process and its command line shown."""
    argv = []
    for f in dataclasses.fields(cfg):
        value, flag = getattr(cfg, f.name), "--" + f.name.replace("_", "-")
        if "bool" in str(f.type):  # --x / --no-x; an unset (None) one keeps its default
            if value is not None:
                argv.append(flag if value else "--no-" + flag[2:])
        else:
            argv += [flag, "none" if value is None else str(value)]
    return argv


def config_from_args(ns: argparse.Namespace, **overrides):
    """A TrainConfig from the parsed flags (only the flags given), plus ``overrides``."""
    from ipskit.config import TrainConfig

    names = {f.name for f in dataclasses.fields(TrainConfig)}
    return TrainConfig(**{**{k: v for k, v in vars(ns).items() if k in names}, **overrides})


def build_parser() -> argparse.ArgumentParser:
    """The ``ipskit`` parser with its sub-commands."""
    p = _Parser(prog="ipskit", description="Intra-class Patch Swap (IPS) self-distillation kit.")
    p.add_argument(
        "--debug",
        action="store_true",
        help=f"show the full traceback of any error (also with {DEBUG_ENV}=1)",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    t = sub.add_parser(
        "train",
        help="train one run (every setting is a flag)",
        description="Train one model; writes OUT_DIR/NAME/ (config.json, "
        "metrics.jsonl, checkpoint.pt, summary.json). Start with the defaults "
        "on digits, then change one setting at a time; compare methods over "
        "several --seed values.",
    )
    add_config_arguments(t)
    _run_flags(t)

    d = sub.add_parser(
        "demo",
        help="train ce and ips on digits and compare them (~1-2 min)",
        description="Trains plain cross-entropy and IPS under the same recipe "
        "on the digits dataset and prints a comparison table. The runs stay in "
        "OUT/ce and OUT/ips for the notebooks and the app.",
    )
    d.add_argument(
        "--out", default="runs/demo", help="folder for the two runs (default: runs/demo)"
    )
    d.add_argument("--epochs", type=int, default=None, help="override the demo's epochs")
    d.add_argument("--seed", type=int, default=0, help="seed of both runs (default: 0)")
    d.add_argument("--overwrite", action="store_true", help="retrain even if the runs exist")
    d.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")

    s = sub.add_parser(
        "sweep",
        help="a grid of runs into one resumable CSV",
        description="Every flag may take several values; the sweep trains "
        "every combination (e.g. --grid 2 4 8 --pr 0.25 0.5 --seed 0 1 2) under "
        "OUT_DIR/NAME/ and writes one row per run to OUT_DIR/NAME/results.csv. "
        "Re-running the same command skips finished runs and resumes an "
        "interrupted one.",
    )
    s.add_argument(
        "--name",
        required=True,
        dest="sweep_name",
        metavar="SWEEP",
        help="folder under out_dir holding the sweep's runs and results.csv",
    )
    s.add_argument(
        "--csv", default=None, help="where to write the table (default: OUT_DIR/SWEEP/results.csv)"
    )
    add_config_arguments(s, multi=True, exclude=("name",))
    r = s.add_argument_group("running the runs")
    r.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="runs trained at once, each in its own "
        "process (CPU threads split between them; GPUs shared, or spread when "
        "several are visible). Default 1",
    )
    r.add_argument(
        "--launcher",
        choices=("local", "submitit"),
        default="local",
        help="local (this machine) or submitit (each run a Slurm job; pip install "
        "submitit). Default local",
    )
    r.add_argument(
        "--launcher-opt",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a submitit executor parameter, e.g. slurm_partition=gpu, "
        "gpus_per_node=1, timeout_min=120, cluster=local (repeat the flag)",
    )
    s.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")

    w = sub.add_parser(
        "swap-demo",
        help="save a picture of patch-swapped same-class pairs",
        description="Draws same-class pairs from a dataset, swaps patches as "
        "IPS does during training, and saves a figure (exchanged cells "
        "outlined). Try --grid 2, 4 and 8 to see what the patch grid means.",
    )
    w.add_argument("--dataset", default="digits", help="dataset name (default: digits)")
    w.add_argument("--image-size", type=int, default=None, help="image side in pixels")
    w.add_argument("--grid", type=int, default=4, help="cells per side (default: 4)")
    w.add_argument(
        "--pr",
        type=float,
        default=1.0,
        help="swap probability per pair "
        "(default: 1.0, so every pair shows a swap; training uses 0.5)",
    )
    w.add_argument("--pairs", type=int, default=4, help="pairs to show (default: 4)")
    w.add_argument("--seed", type=int, default=0, help="seed of the pairs and the swap")
    w.add_argument(
        "--out", default="swap_demo.png", help="PNG file to write (default: swap_demo.png)"
    )

    g = sub.add_parser(
        "download",
        help="download CIFAR-10 or CIFAR-100 (needs a network)",
        description="Downloads torchvision's CIFAR-10 or CIFAR-100 (about 170 MB) "
        "into ROOT, checks that it loads and prints the command that trains on "
        "it. Without a network, put the archive into ROOT by hand, or use an "
        "image folder: --dataset imagefolder:PATH.",
    )
    g.add_argument("dataset", choices=("cifar10", "cifar100"), help="which dataset")
    g.add_argument(
        "--root",
        default="data",
        help="folder to put it in, the --data-root of training (default: data)",
    )

    from ipskit import evaluate

    for name, helptext, description in (
        ("eval", "evaluate runs (writes eval.json)", evaluate.EVAL_DESCRIPTION),
        ("compare", "compare runs side by side", evaluate.COMPARE_DESCRIPTION),
    ):
        e = sub.add_parser(
            name,
            help=helptext,
            description=description,
            epilog=evaluate._ADVICE,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        evaluate.add_eval_arguments(e, compare=name == "compare")
    return p


def _run_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("run control")
    g.add_argument(
        "--resume",
        action="store_true",
        help="continue OUT_DIR/NAME from its "
        "checkpoint (same settings required); a finished run is left as is",
    )
    g.add_argument("--overwrite", action="store_true", help="delete OUT_DIR/NAME first")
    g.add_argument(
        "--no-progress",
        dest="progress",
        action="store_false",
        help="no progress bars (epoch lines are still printed)",
    )


def _train(ns) -> int:
    from ipskit.train import fit

    cfg = config_from_args(ns)
    s = fit(cfg, resume=ns.resume, overwrite=ns.overwrite, progress=ns.progress)
    print(f"done: test accuracy {100 * s['test_acc']:.2f}%, ECE {s['ece']:.4f} -> {s['run_dir']}")
    return 0


def _sweep(ns) -> int:
    from ipskit.sweep import run_sweep

    run_flags = (
        "command",
        "sweep_name",
        "csv",
        "progress",
        "debug",
        "jobs",
        "launcher",
        "launcher_opt",
    )
    axes = {k: v for k, v in vars(ns).items() if k not in run_flags}
    options = {}
    for item in ns.launcher_opt:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InputError(f"--launcher-opt takes KEY=VALUE, got {item!r}")
        options[key] = int(value) if value.isdigit() else value

    def stop(signum, frame):  # SIGTERM (kill, a cluster's pre-emption) as Ctrl-C: the table
        raise KeyboardInterrupt  # keeps every finished run, running jobs are stopped

    before = signal.signal(signal.SIGTERM, stop)
    try:
        path = run_sweep(
            axes,
            ns.sweep_name,
            csv_path=ns.csv,
            progress=ns.progress,
            epoch_bars=True,
            jobs=ns.jobs,
            launcher=ns.launcher,
            launcher_options=options,
        )
    finally:
        signal.signal(signal.SIGTERM, before)
    print(f"sweep table -> {path}")
    return 0


def _demo(ns) -> int:
    from ipskit.sweep import run_demo

    run_demo(
        out=ns.out, epochs=ns.epochs, seed=ns.seed, overwrite=ns.overwrite, progress=ns.progress
    )
    return 0


def _swap_demo(ns) -> int:
    import torch

    from ipskit.data import load_dataset
    from ipskit.pairs import SameClassPairSampler, split_pair
    from ipskit.plots import swap_pair_figure
    from ipskit.runs import atomic_write
    from ipskit.swap import patch_swap

    check_int(
        "--pairs",
        ns.pairs,
        minimum=1,
        maximum=MAX_DEMO_PAIRS,
        why="(one figure row a pair; more rows are unreadable)",
    )
    if ns.image_size is not None:
        check_int(
            "--image-size",
            ns.image_size,
            minimum=4,
            maximum=MAX_IMAGE_SIZE,
            why="(images are held in memory)",
        )
    bundle = load_dataset(ns.dataset, image_size=ns.image_size)
    idx = next(iter(SameClassPairSampler(bundle.train_targets, ns.pairs, seed=ns.seed)))
    plain = copy.copy(bundle.train_dataset)
    plain.augment = None  # show the images as stored, not randomly cropped
    x = torch.stack([plain[i][0] for i in idx])  # (2P, C, H, W) in [0, 1]
    y = torch.as_tensor([int(bundle.train_targets[i]) for i in idx])
    x_a, x_b, _ = split_pair(x, y)
    out_a, out_b, decision = patch_swap(
        x_a, x_b, grid=ns.grid, pr=ns.pr, generator=torch.Generator().manual_seed(ns.seed)
    )
    fig = swap_pair_figure(x_a, x_b, out_a, out_b, decision, max_pairs=ns.pairs)
    atomic_write(ns.out, lambda f: fig.savefig(f, format="png", dpi=120))
    print(f"saved {ns.out}")
    return 0


def _download(ns) -> int:
    from torchvision.datasets import CIFAR10, CIFAR100

    from ipskit.data import load_dataset

    bundle = load_dataset(
        ns.dataset, root=ns.root, download=True
    )  # offline: DatasetUnavailableError
    folder = Path(ns.root) / (CIFAR10 if ns.dataset == "cifar10" else CIFAR100).base_folder
    print(
        f"{ns.dataset}: {len(bundle.train_targets):,} training and {len(bundle.test_targets):,} test "
        f"images in {folder}/"
    )
    print(f"next: ipskit train --dataset {ns.dataset} --data-root {ns.root} --method ips")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``ipskit`` console script; returns the exit status."""
    from ipskit import evaluate

    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        ns = build_parser().parse_args(argv)
    except SystemExit as e:  # --help (0) or a bad flag (2, message already printed)
        return int(e.code or 0)
    commands = {
        "train": _train,
        "sweep": _sweep,
        "demo": _demo,
        "swap-demo": _swap_demo,
        "download": _download,
        "eval": evaluate.eval_command,
        "compare": evaluate.compare_command,
    }
    debug = ns.debug or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    quiet = getattr(ns, "progress", True) is False  # --no-progress: data loading's bars too
    with _environment(TQDM_DISABLE="1") if quiet else contextlib.nullcontext():
        return _guard(lambda: commands[ns.command](ns), debug, _AFTER_INTERRUPT.get(ns.command, ""))


@contextlib.contextmanager
def _environment(**values):
    """Environment variables set for the duration of a command, then restored."""
    before = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# What to do after Ctrl-C, per command.
_AFTER_INTERRUPT = {
    "train": "; continue the run with --resume",
    "sweep": "; run the same command again to continue (finished runs are reused, the one "
    "in progress resumes from its last epoch)",
    "demo": "; run it again to continue (finished runs are reused)",
}


def _guard(fn, debug: bool = False, after_interrupt: str = "") -> int:
    """Run a command: bad input and faults a user can fix (``InputError``, a missing dataset,
    an ``OSError`` naming a path: permissions, disk, missing files) -> one ``error:`` line and
    status 2; divergence -> status 1; anything else is a bug and keeps its traceback, as does
    everything with ``debug``."""
    from ipskit.data import DatasetUnavailableError
    from ipskit.sweep import SweepFailed

    try:
        return int(fn() or 0)
    except SystemExit as e:
        return int(e.code or 0) if not isinstance(e.code, str) else 2
    except (FloatingPointError, SweepFailed) as e:  # a run diverged or failed: status 1
        if debug:
            raise
        sys.stderr.write(f"error: {e}\n")
        return 1
    except (InputError, DatasetUnavailableError, OSError) as e:
        if debug:
            raise
        sys.stderr.write(f"error: {str(e).splitlines()[0] if str(e) else type(e).__name__}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write(f"\ninterrupted{after_interrupt}\n")  # off any progress bar's line
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
