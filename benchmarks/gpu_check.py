"""The one prepared GPU check: CUDA tests, speed benchmarks and reference runs in one command.

Made for a GPU machine lent for a few minutes (one NVIDIA H200, 15 minutes of device time with
its start-up included): everything worth learning from such a machine, within 8 minutes, into
one folder with a summary. On the lent machine, from the root of a copy of this tree with the
CIFAR-10 JPEG tarball carried along (the device tool's ``carry: ["cifar10-jpeg.tgz"]``, and a
``timeout_s`` of about 540; ``tar xzf cifar10-jpeg.tgz -C data/`` gives
``data/cifar10/{train,test}/<class>/*.jpg``, and the check unpacks it when that is missing):

    PYTHONPATH=. python benchmarks/gpu_check.py --tarball cifar10-jpeg.tgz \\
        --out /tmp/gpu-check --bundle $OUT

The lent machine sends back at most 8 files, no more than 2 folders down, so ``--bundle $OUT``
puts three files there: summary.md, summary.json and gpu-check.tgz (the whole --out folder
except checkpoints), refreshed after every stage and finished run. With ``--out $OUT/...``
most of the folder would not come back. A second call with the same --out on the same machine
continues: finished runs and evaluations are kept, an interrupted run resumes from its
checkpoint. Elsewhere, ``make gpu-check`` runs it with the defaults into gpu-check-out/.

Stages, each printed with its wall time. Each has a cap in seconds, and a stage gets no more
than leaves the later stages their minimum, so the whole check stays within --budget (450 s);
a stage that no longer fits is skipped. A failed run or stage is reported, never fatal.

  1. data     unpack --tarball if --data is missing; load the folder once (checks it and fills
              ipskit's decoded-image cache where there is one).
  2. bench    benchmarks/bench_swap.py and bench_train.py (ce vs ips steps, ResNet-18 at
              32x32, batch 128, 256 and 512, each eager and captured in a CUDA graph) on the
              otherwise idle GPU.
  3. runs     the reference runs: ResNet-18, 15 epochs, batch 128, lr 0.1 on the image
              folder; ce and ips x seeds 0, 1, 2; label_smoothing, cskd, cutmix, mixup,
              ips+cutmix x seed 0. Each is its own ``python -m ipskit train`` process with its
              own log. ips seed 0 trains first and alone (nothing else on the GPU; its step
              captured in a CUDA graph, training's default): its wall time is the "15-epoch
              IPS run in <= 45 s" target. It has 90 s alone (twice the target); stopped
              there, it resumes among the others. Then --jobs of the rest share the GPU
              (pair methods first: they take longest); each finished run is evaluated
              (``ipskit eval --max-samples 2000``) in the next free slot. Alongside those,
              outside the slots:
     tests    ``pytest -m cuda tests/test_cuda.py`` with a junit xml;
     ddp      ``python -m torch.distributed.run --standalone --nproc_per_node=1 -m ipskit
              train --method ips --epochs 1 ...``: one process joins an nccl process group (gloo
              on the CPU) and trains under DDP, with its own log. A one-GPU machine cannot run
              two nccl ranks, so this checks the nccl group and the DDP wrapping with one rank.
  4. compare  ``ipskit compare`` on the evaluated runs: compare/compare.md and figures.

Under --out: summary.md (the speed targets, each measured value with met / not met / not
measured; step times captured vs eager per batch size; the torchrun run; tables: mean +- sd
top-1 %, NLL and ECE of the last epoch per method; stage timings; device, torch, commit),
summary.json (the same, and the benchmark numbers), cuda-tests.xml, bench/,
runs/<method>-s<seed>/ (run folders; ips+cutmix is ips-cutmix-s0, as in results/: the lent
machine sends back only names of letters, digits, '.', '_' and '-'), ddp/ (the torchrun run),
logs/ (one log per process) and compare/.

The targets (one H200, ResNet-18, 32x32): a captured CE step <= 2.8 ms at batch 128; a captured
IPS step <= 1.1x a captured CE step at batch 256; the 15-epoch IPS run alone, evaluating each
epoch, <= 45 s wall (its summary.json's wall_time_s); patch_swap <= 10 kernels a call; patch_swap
<= 2x the two-`where` floor at batch 256 on the GPU. Timings are judged only at full scale on
CUDA; --tiny shows its CPU values as not measured.

The exit status is 0 when no stage failed, timed out or was left out for lack of time.

``--tiny`` runs the same code path on the CPU in about a minute: a CIFAR-shaped tarball
made from scikit-learn's digits (16x16 RGB JPEGs, 300 train / 80 test), smallcnn, 1 epoch,
256 training images, ce and ips x 2 seeds (ips seed 0 alone first), 2 jobs at once, the
benchmarks at their quickest (eager steps only), the CUDA tests invoked (all skipped without a
GPU) and the torchrun run over gloo. tests/test_gpu_check.py runs it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import time
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STAGES = ("data", "bench", "runs", "tests", "ddp", "compare")
DDP_RUN = "ips-torchrun-x1"  # the one-process torchrun run, under OUT/ddp/


@dataclass(frozen=True)
class Scale:
    """What every stage runs at one scale: the H200 check, or its --tiny CPU rehearsal."""

    device: str
    jobs: int  # training processes sharing the device
    budget_s: float  # the whole check; 450 leaves 30 s of the 8 minutes for start-up and exit
    model: str
    epochs: int
    batch_size: int
    lr: float
    image_size: int | None  # None: the data's own (32 for CIFAR-10)
    max_train_samples: int | None
    runs: tuple[tuple[str, int], ...]  # (method, seed), in the order of the tables
    solo: tuple[str, int]  # the run trained alone first: its wall time is a target
    target_batches: tuple[int, int]  # bench batch sizes of the CE-step and IPS/CE targets
    bench_swap: tuple[str, ...]  # flags for benchmarks/bench_swap.py
    bench_train: tuple[str, ...]  # flags for benchmarks/bench_train.py
    eval_flags: tuple[str, ...]  # shared by ipskit eval and compare, so compare hits the cache
    caps: dict = field(default_factory=dict)  # stage -> most seconds it may take
    floors: dict = field(default_factory=dict)  # stage -> seconds earlier stages must leave it


FULL = Scale(
    device="cuda",
    jobs=6,
    budget_s=450,
    model="resnet18",
    epochs=15,
    batch_size=128,
    lr=0.1,
    image_size=None,
    max_train_samples=None,
    runs=(
        *((m, s) for m in ("ce", "ips") for s in (0, 1, 2)),
        *((m, 0) for m in ("label_smoothing", "cskd", "cutmix", "mixup", "ips+cutmix")),
    ),
    solo=("ips", 0),
    target_batches=(128, 256),
    bench_swap=(),
    bench_train=(
        "--model",
        "resnet18",
        "--batch-size",
        "128",
        "256",
        "512",
        "--rounds",
        "5",
        "--steps",
        "10",
        "--max-train-samples",
        "4096",
    ),
    eval_flags=("--max-samples", "2000"),
    # Measured on an H200 (eager steps): a 15-epoch ResNet-18 run 75-100 s alone, 100-190 s
    # with 4-6 sharing; the captured step aims at <= 45 s alone. solo: the run alone first
    # (stopped there and resumed among the others past it); ddp: the one-process torchrun run.
    caps={"data": 120, "bench": 110, "solo": 90, "tests": 240, "ddp": 120, "compare": 40},
    floors={"runs": 200, "compare": 30},
)

TINY = Scale(
    device="cpu",
    jobs=2,
    budget_s=600,
    model="smallcnn",
    epochs=1,
    batch_size=32,
    lr=0.05,
    image_size=16,
    max_train_samples=256,
    runs=(("ce", 0), ("ce", 1), ("ips", 0), ("ips", 1)),
    solo=("ips", 0),
    target_batches=(16, 16),
    bench_swap=("--quick",),
    bench_train=("--model", "smallcnn", "--batch-size", "16", "--quick"),
    eval_flags=(
        "--max-samples",
        "100",
        "--epsilons",
        "0",
        "0.01",
        "--corruptions",
        "gaussian_noise",
        "contrast",
        "--severities",
        "1",
        "3",
    ),
    # Generous: a rehearsal on a busy 2-core machine takes 1-2 minutes and must not time out.
    caps={"data": 120, "bench": 120, "solo": 120, "tests": 300, "ddp": 120, "compare": 120},
    floors={"runs": 60, "compare": 20},
)


def run_name(method: str, seed: int) -> str:
    """The run folder's name: ``<method>-s<seed>``, '+' written '-' (``ips-cutmix-s0``)."""
    return f"{method.replace('+', '-')}-s{seed}"


def uses_pairs(method: str) -> bool:
    """As TrainConfig.uses_pairs (not imported: this process stays free of torch)."""
    return method == "cskd" or method.startswith("ips")


# ----- processes -------------------------------------------------------------------------------
@dataclass
class Job:
    """One subprocess: what it runs, where it logs, how it ended."""

    name: str
    kind: str  # data | bench | train | eval | tests | compare
    cmd: list
    log: Path
    timeout: float = math.inf  # seconds from its start
    append: bool = True  # add to the log (a resumed run keeps its history) or start it anew
    env: dict = field(default_factory=dict)  # environment variables of this job only
    status: str = "queued"  # queued | running | finished | failed | timeout | not started
    rc: int | None = None
    seconds: float = 0.0
    start: float = 0.0
    proc: subprocess.Popen | None = field(default=None, repr=False)
    out: object = field(default=None, repr=False)

    def begin(self, env: dict) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self.out = open(self.log, "a" if self.append else "w")
        self.out.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(map(str, self.cmd))}\n")
        self.out.flush()
        self.start, self.status = time.monotonic(), "running"
        self.proc = subprocess.Popen(
            [str(c) for c in self.cmd],
            cwd=ROOT,
            env={**env, **self.env},
            stdout=self.out,
            stderr=subprocess.STDOUT,
        )

    def end(self, status: str) -> None:
        if self.proc.poll() is None:  # stop it: politely, then for sure
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.rc, self.status = self.proc.returncode, status
        self.seconds = time.monotonic() - self.start
        self.out.close()

    def tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def run_jobs(
    queue: list, slots: int, deadline: float, env: dict, on_done=None, extra: tuple = ()
) -> None:
    """Run queued jobs, at most ``slots`` at once, until all end or ``deadline`` passes.

    ``extra`` jobs start at once, outside the slots. A job past its own timeout or the
    deadline is stopped ("timeout"); jobs still queued at the deadline become "not started".
    ``on_done(job)`` is called as each job ends and may append jobs to ``queue``.
    """
    running = list(extra)
    for job in extra:
        job.begin(env)
    try:
        while queue or running:
            now = time.monotonic()
            while queue and now < deadline and sum(j not in extra for j in running) < slots:
                queue[0].begin(env)
                running.append(queue.pop(0))
            ended = [j for j in running if j.proc.poll() is not None]
            late = [
                j
                for j in running
                if j not in ended and (now >= deadline or now - j.start > j.timeout)
            ]
            for job in late:  # all asked to stop first, so none waits on another
                job.proc.terminate()
            for job in ended + late:
                job.end(
                    "timeout"
                    if job in late
                    else "finished"
                    if job.proc.returncode == 0
                    else "failed"
                )
                running.remove(job)
                if on_done is not None:
                    on_done(job)
            if now >= deadline and not running:
                break
            time.sleep(0.2)
    finally:  # interrupted (Ctrl-C, SIGTERM): leave no process behind
        for job in running:
            job.proc.terminate()
        for job in running:
            job.end("timeout")
    for job in queue:
        job.status = "not started"


# ----- the check -------------------------------------------------------------------------------
@dataclass
class Stage:
    name: str
    status: str = "not run"  # passed | failed | timeout | skipped | not run
    seconds: float = 0.0
    detail: str = ""
    started_s: float | None = None  # seconds after the check began


class Check:
    """The stages in order, their bookkeeping, and the summary written after each."""

    def __init__(self, args, scale: Scale):
        self.scale, self.args = scale, args
        self.out = Path(args.out).resolve()
        self.data = Path(args.data).resolve()
        self.tarball = Path(args.tarball).resolve() if args.tarball else None
        self.device, self.jobs = args.device or scale.device, args.jobs or scale.jobs
        self.budget = args.budget or scale.budget_s
        self.stages_wanted = args.stages
        self.t0 = time.monotonic()
        self.deadline = self.t0 + self.budget
        self.stages = {name: Stage(name) for name in STAGES}
        self.runs: dict[str, dict] = {}  # name -> method, seed, train / eval Job
        self.solo: dict = {}  # the run trained alone first: name, Job (or "kept")
        # what an earlier call with this --out found (its solo run, when this call keeps it)
        self.earlier = read_json(self.out / "summary.json", {}) or {}
        self.ddp: dict = {}  # how the one-process torchrun run went
        self.info: dict = {}
        threads = max(1, (os.cpu_count() or 1) // self.jobs)  # no oversubscribed CPU ops
        self.env = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "MPLBACKEND": "Agg",
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(threads)),
            "PYTHONPATH": os.pathsep.join(
                p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p
            ),
        }

    # ----- helpers
    def say(self, message: str) -> None:
        print(f"[{time.monotonic() - self.t0:5.0f} s] {message}", flush=True)

    def time_for(self, stage: str) -> float:
        """Seconds ``stage`` may take: its cap, less what it must leave the later stages."""
        later = STAGES[STAGES.index(stage) + 1 :]
        reserve = sum(self.scale.floors.get(s, 0) for s in later if s in self.stages_wanted)
        left = self.deadline - time.monotonic() - reserve
        return min(self.scale.caps.get(stage, math.inf), left)

    def python(self, *args) -> list:
        return [sys.executable, *args]

    def run_one(self, job: Job, until: float) -> Job:
        """Run one job to its end, or stop it at ``until`` (time.monotonic)."""
        run_jobs([job], 1, until, self.env)
        return job

    def finish(self, stage: Stage, status: str, started: float, detail: str = "") -> None:
        stage.status, stage.detail = status, detail
        stage.seconds = time.monotonic() - started
        stage.started_s = started - self.t0
        self.say(
            f"== {stage.name}: {status} in {stage.seconds:.1f} s{': ' + detail if detail else ''}"
        )
        self.write_summary()

    # ----- 0. what runs where
    def describe(self) -> None:
        probe = (
            "import json, platform, torch; c = torch.cuda.is_available(); print(json.dumps("
            "{'torch': torch.__version__, 'cuda': c, 'cuda_version': torch.version.cuda, "
            "'device_name': torch.cuda.get_device_name(0) if c else "
            "(platform.processor() or 'cpu')}))"
        )
        try:
            text = subprocess.run(
                self.python("-c", probe), capture_output=True, text=True, timeout=120, env=self.env
            ).stdout
            self.info = json.loads(text.strip().splitlines()[-1])
        except (subprocess.SubprocessError, OSError, ValueError, IndexError):
            self.info = {"torch": "unknown", "cuda": False, "device_name": "unknown"}
        try:
            git = ["git", "-C", str(ROOT)]
            commit = subprocess.run(
                [*git, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
            ).stdout.strip()
            if (
                commit
                and subprocess.run(
                    [*git, "status", "--porcelain", "--untracked-files=no"],
                    capture_output=True,
                    text=True,
                    timeout=10,
                ).stdout
            ):
                commit += " (with uncommitted changes)"
        except (subprocess.SubprocessError, OSError):
            commit = ""
        self.info.update(
            git_commit=commit or "unknown",
            python=platform.python_version(),
            device=self.device,
            jobs=self.jobs,
            budget_s=self.budget,
        )
        self.say(
            f"{self.info['device_name']} ({self.device}), torch {self.info['torch']}, "
            f"commit {self.info['git_commit'][:12]}, {self.jobs} jobs, budget "
            f"{self.budget:.0f} s -> {self.out}"
        )

    # ----- 1. data
    def stage_data(self) -> None:
        stage, started = self.stages["data"], time.monotonic()
        until = started + self.time_for("data")
        if self.args.tiny and not self.data.exists() and self.tarball is None:
            self.tarball = self.out / "tiny-data.tgz"
            make_tiny_tarball(self.tarball, self.data.name)
        if not self.data.exists():
            if self.tarball is None:
                return self.finish(
                    stage, "failed", started, f"{self.data} is missing and no --tarball was given"
                )
            self.data.parent.mkdir(parents=True, exist_ok=True)
            job = self.run_one(
                Job(
                    "unpack",
                    "data",
                    ["tar", "xzf", self.tarball, "-C", self.data.parent],
                    self.out / "logs" / "data.log",
                ),
                until,
            )
            if job.status != "finished" or not self.data.is_dir():
                return self.finish(
                    stage,
                    "failed",
                    started,
                    f"unpacking {self.tarball} into "
                    f"{self.data.parent} gave no {self.data.name}/ ({job.status})",
                )
        size = self.scale.image_size
        probe = (
            "import json, sys; from ipskit.data import load_dataset; b = load_dataset("
            f"'imagefolder:' + sys.argv[1], image_size={size!r}); print(json.dumps("
            "{'classes': len(b.classes), 'train': len(b.train_targets), "
            "'test': len(b.test_targets), 'image_size': b.image_size}))"
        )
        job = self.run_one(
            Job(
                "load", "data", self.python("-c", probe, self.data), self.out / "logs" / "data.log"
            ),
            until,
        )
        found = [line for line in job.tail(5).splitlines() if line.startswith("{")]
        if job.status != "finished" or not found:
            return self.finish(
                stage, "failed" if job.status == "finished" else job.status, started, job.tail(1)
            )
        self.info["data"] = {"path": str(self.data), **json.loads(found[-1])}
        d = self.info["data"]
        self.finish(
            stage,
            "passed",
            started,
            f"{d['classes']} classes, {d['train']} train / "
            f"{d['test']} test images, {d['image_size']} px",
        )

    # ----- 2. benchmarks
    def stage_bench(self) -> None:
        stage, started = self.stages["bench"], time.monotonic()
        until = started + self.time_for("bench")
        bench, size = self.out / "bench", self.scale.image_size
        bench.mkdir(parents=True, exist_ok=True)
        scripts = {
            "swap": ["benchmarks/bench_swap.py", "--device", self.device, *self.scale.bench_swap],
            "train": [
                "benchmarks/bench_train.py",
                "--device",
                self.device,
                "--dataset",
                f"imagefolder:{self.data}",
                *self.scale.bench_train,
                *(["--image-size", str(size)] if size else []),
            ],
        }
        failed = []
        for name, cmd in scripts.items():
            if until - time.monotonic() < 1:
                failed.append(f"{name}: out of time")
                continue
            job = self.run_one(
                Job(
                    f"bench-{name}",
                    "bench",
                    self.python(*cmd, "--json", bench / f"{name}.json"),
                    bench / f"{name}.md",
                    append=False,
                ),
                until,
            )
            if job.status != "finished":
                failed.append(f"{name}: {job.status}")
        self.finish(
            stage,
            "failed" if failed else "passed",
            started,
            "; ".join(failed) or "bench/swap.md, bench/train.md",
        )

    # ----- 3. reference runs (+ evaluation), with the CUDA tests alongside
    def train_args(self, method: str, seed: int, epochs: int, out_dir: Path, name: str) -> list:
        """The ``ipskit train`` flags of one run at this scale (after ``-m ipskit train``)."""
        s = self.scale
        args = ["--dataset", f"imagefolder:{self.data}", "--model", s.model, "--method", method]
        args += ["--seed", seed, "--epochs", epochs, "--batch-size", s.batch_size, "--lr", s.lr]
        args += ["--device", self.device, "--out-dir", out_dir, "--name", name, "--no-progress"]
        if s.image_size:
            args += ["--image-size", s.image_size]
        if s.max_train_samples:
            args += ["--max-train-samples", s.max_train_samples]
        return args

    def train_job(self, method: str, seed: int) -> Job:
        name = run_name(method, seed)
        args = self.train_args(method, seed, self.scale.epochs, self.out / "runs", name)
        cmd = self.python("-m", "ipskit", "train", *args, "--resume")
        return Job(name, "train", cmd, self.out / "logs" / f"{name}.log")

    def eval_job(self, name: str) -> Job:
        return Job(
            f"eval {name}",
            "eval",
            self.python(
                "-m",
                "ipskit",
                "eval",
                self.out / "runs" / name,
                *self.scale.eval_flags,
                "--device",
                self.device,
                "--no-progress",
            ),
            self.out / "logs" / f"eval-{name}.log",
        )

    def tests_job(self) -> Job:
        xml = self.out / "cuda-tests.xml"
        return Job(
            "cuda tests",
            "tests",
            self.python(
                "-m",
                "pytest",
                "-m",
                "cuda",
                "tests/test_cuda.py",
                "-q",
                "-p",
                "no:cacheprovider",
                f"--junitxml={xml}",
            ),
            self.out / "logs" / "cuda-tests.log",
            timeout=self.scale.caps["tests"],
        )

    def ddp_job(self) -> Job:
        """One process under torchrun: it joins a process group (nccl on CUDA, gloo on the CPU)
        and trains under DDP, which is all a one-GPU machine can check of the multi-GPU path."""
        args = self.train_args("ips", 0, 1, self.out / "ddp", DDP_RUN)
        cmd = self.python(
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=1",
            "-m",
            "ipskit",
            "train",
            *args,
            "--overwrite",
        )
        return Job(
            "torchrun x1",
            "ddp",
            cmd,
            self.out / "logs" / "torchrun.log",
            timeout=self.scale.caps["ddp"],
            append=False,
            # NCCL's start-up lines (its version) show in the log that nccl ran
            env={"NCCL_DEBUG": "INFO", "NCCL_DEBUG_SUBSYS": "INIT"},
        )

    def stage_runs(self) -> None:
        stage, started = self.stages["runs"], time.monotonic()
        want_runs = "runs" in self.stages_wanted and self.stages["data"].status != "failed"
        queue, counts = [], {"train": 0, "eval": 0}
        solo_name = run_name(*self.scale.solo)
        if want_runs:
            # Pair methods first: they forward two images a sample and finish last otherwise.
            for method, seed in sorted(self.scale.runs, key=lambda r: not uses_pairs(r[0])):
                name = run_name(method, seed)
                self.runs[name] = {"method": method, "seed": seed, "train": None, "eval": None}
                if read_run(self.out / "runs" / name).get("status") == "finished":
                    self.say(f"{name}: finished in an earlier call, kept")
                    self.runs[name]["train"] = "kept"
                    self.runs[name]["eval"] = self.eval_job(name)
                else:
                    self.runs[name]["train"] = self.train_job(method, seed)
                    queue.append(self.runs[name]["train"])
            queue += [r["eval"] for r in self.runs.values() if r["eval"] is not None]
        solo = self.runs.get(solo_name, {}).get("train")
        if isinstance(solo, Job):  # trained alone, before everything else of this stage
            queue.remove(solo)
            solo.timeout = self.scale.caps["solo"]
            self.solo = {"name": solo_name, "job": solo}
        elif solo == "kept":
            self.solo = {"name": solo_name, "job": "kept"}
        extra = tuple(
            job()
            for name, job in (("tests", self.tests_job), ("ddp", self.ddp_job))
            if name in self.stages_wanted
            and (name != "ddp" or self.stages["data"].status != "failed")
        )
        if "ddp" in self.stages_wanted and self.stages["data"].status == "failed":
            self.stages["ddp"].status, self.stages["ddp"].detail = "skipped", "no data"
        n_train = sum(isinstance(r["train"], Job) for r in self.runs.values())

        def on_done(job: Job) -> None:
            nonlocal n_train
            if job.kind == "tests":
                return self.finish_tests(job)
            if job.kind == "ddp":
                return self.finish_ddp(job)
            counts[job.kind] += 1
            run = next(r for r in self.runs.values() if job in (r["train"], r["eval"]))
            name = run_name(run["method"], run["seed"])
            r = read_run(self.out / "runs" / name)
            alone = " alone" if job is self.solo.get("job") else ""
            if alone:
                self.solo["epochs_alone"] = r["epochs_done"]
            if job.kind == "train" and r.get("status") == "finished":
                self.say(
                    f"[train {counts['train']}/{n_train}] {name} finished{alone} in "
                    f"{job.seconds:.0f} s: top-1 {100 * r['test_acc']:.2f}%, NLL "
                    f"{r['test_loss']:.3f}, ECE {r['ece']:.3f}"
                )
                run["eval"] = self.eval_job(name)
                queue.append(run["eval"])  # behind the training runs: fills the last slots
            elif job.kind == "train":
                why = (
                    f"at epoch {r['epochs_done']}/{self.scale.epochs}"
                    if job.status == "timeout"
                    else f"(exit {job.rc}): {job.tail(1)}"
                )
                self.say(
                    f"[train {counts['train']}/{n_train}] {name} {job.status.upper()}{alone} "
                    f"after {job.seconds:.0f} s {why}; log logs/{job.log.name}"
                )
                if alone and job.status == "timeout":  # finish it among the others
                    run["train"] = self.train_job(run["method"], run["seed"])
                    queue.insert(0, run["train"])
                    n_train += 1
            else:
                self.say(f"[eval] {name}: {job.status} in {job.seconds:.0f} s")
            self.write_summary()

        seconds = self.time_for("runs")
        if seconds < 1:
            for job in queue:
                job.status = "not started"
            for name in ("tests", "ddp"):
                self.stages[name].status, self.stages[name].detail = "skipped", "out of time"
            return self.finish(stage, "skipped", started, "out of time")
        until = time.monotonic() + seconds
        if self.solo.get("job") not in (None, "kept"):
            self.say(f"{solo_name} alone first (nothing else on the device): its wall time")
            run_jobs([self.solo["job"]], 1, until, self.env, on_done)
            if until - time.monotonic() < 1:  # the solo run took the stage's time
                for job in extra:
                    self.stages[job.kind].status = "skipped"
                    self.stages[job.kind].detail = "out of time"
                extra = ()
        run_jobs(queue, self.jobs, until, self.env, on_done, extra)
        if not want_runs:
            return self.finish(
                stage,
                "skipped",
                started,
                "not asked for" if "runs" not in self.stages_wanted else "no data",
            )
        status = {n: self.run_status(n) for n in self.runs}
        evaluated = sum(
            isinstance(r["eval"], Job) and r["eval"].status == "finished"
            for r in self.runs.values()
        )
        trained = sum(s == "finished" for s in status.values())
        bad = [f"{n} {s}" for n, s in status.items() if s != "finished"]
        ok = trained == evaluated == len(self.runs)
        self.finish(
            stage,
            "passed" if ok else "failed",
            started,
            f"{trained}/{len(self.runs)} runs finished, {evaluated} evaluated"
            + (f"; {', '.join(bad)}" if bad else ""),
        )

    def finish_tests(self, job: Job) -> None:
        counts = junit_counts(self.out / "cuda-tests.xml")
        self.info["cuda_tests"] = counts
        if job.status == "finished" and counts.get("passed") == 0 and counts.get("skipped"):
            status = "skipped"
        else:
            status = {"finished": "passed", "timeout": "timeout"}.get(job.status, "failed")
        stage = self.stages["tests"]
        detail = ", ".join(
            f"{counts[k]} {k}" for k in ("passed", "skipped", "failures", "errors") if counts.get(k)
        )
        self.finish(stage, status, job.start, detail or job.tail(1))

    def finish_ddp(self, job: Job) -> None:
        """Passed: torchrun exited 0, the run finished and its log says "x1 (DDP)"."""
        run = read_run(self.out / "ddp" / DDP_RUN)
        try:
            log = job.log.read_text(errors="replace")
        except OSError:
            log = ""
        nccl = re.search(r"NCCL version (\S+)", log)
        cuda = self.device.startswith("cuda")
        ddp = {
            "command": "python " + " ".join(map(str, job.cmd[1:])),
            "backend": "nccl" if cuda else "gloo",
            "nccl_version": nccl.group(1) if nccl else None,
            "ddp_wrapped": "x1 (DDP)" in log,
            "status": job.status,
            "seconds": job.seconds,
            "epoch_time_s": run.get("epoch_time_s"),
            "train_step": run.get("train_step"),
            "log": f"logs/{job.log.name}",
        }
        self.ddp = ddp
        ok = job.status == "finished" and run.get("status") == "finished" and ddp["ddp_wrapped"]
        if ok:
            status = "passed"
            detail = (
                f"1 rank over {ddp['backend']}"
                + (f" (NCCL {ddp['nccl_version']})" if ddp["nccl_version"] else "")
                + f", DDP: 1 ips epoch in {ddp['epoch_time_s']:.1f} s "
                f"({job.seconds:.0f} s with start-up)"
            )
        else:
            status = "timeout" if job.status == "timeout" else "failed"
            detail = (
                "no 'x1 (DDP)' in its log"
                if job.status == "finished" and not ddp["ddp_wrapped"]
                else job.tail(1)
            ) + f" (log {ddp['log']})"
        ddp["status"] = status
        self.finish(self.stages["ddp"], status, job.start, detail)

    # ----- 4. compare
    def stage_compare(self) -> None:
        stage, started = self.stages["compare"], time.monotonic()
        names = [
            n
            for n, r in self.runs.items()
            if isinstance(r["eval"], Job) and r["eval"].status == "finished"
        ]
        if not names:
            return self.finish(stage, "skipped", started, "no evaluated runs")
        seconds = self.time_for("compare")
        if seconds < 1:
            return self.finish(stage, "skipped", started, "out of time")
        cmd = self.python(
            "-m",
            "ipskit",
            "compare",
            *(self.out / "runs" / n for n in names),
            *self.scale.eval_flags,
            "--device",
            self.device,
            "--no-progress",
            "--out",
            self.out / "compare",
        )
        job = self.run_one(
            Job("compare", "compare", cmd, self.out / "logs" / "compare.log"),
            time.monotonic() + seconds,
        )
        self.finish(
            stage,
            "passed" if job.status == "finished" else job.status,
            started,
            f"{len(names)} runs -> compare/compare.md" if job.status == "finished" else job.tail(1),
        )

    # ----- the whole check
    def run(self) -> int:
        self.out.mkdir(parents=True, exist_ok=True)
        self.describe()
        if self.device.startswith("cuda") and not self.info.get("cuda"):
            print(
                f"error: --device {self.device} but torch sees no CUDA device here; use "
                "--tiny (or --device cpu) for a CPU rehearsal",
                file=sys.stderr,
            )
            return 2
        try:
            for name, step in (("data", self.stage_data), ("bench", self.stage_bench)):
                if name not in self.stages_wanted:
                    continue
                if name == "bench" and self.stages["data"].status == "failed":
                    self.stages[name].status, self.stages[name].detail = "skipped", "no data"
                elif self.time_for(name) < 1:
                    self.stages[name].status, self.stages[name].detail = "skipped", "out of time"
                else:
                    step()
            if {"runs", "tests", "ddp"} & set(self.stages_wanted):
                self.stage_runs()
            if "compare" in self.stages_wanted:
                self.stage_compare()
        finally:
            self.write_summary()
            self.say(f"done in {time.monotonic() - self.t0:.0f} s -> {self.out / 'summary.md'}")
        bad = [
            s.name
            for s in self.stages.values()
            if s.status in ("failed", "timeout") or s.detail == "out of time"
        ]
        return 1 if bad else 0

    # ----- summary
    def run_status(self, name: str) -> str:
        """finished (its folder says so, whatever its process did), else how its process ended."""
        if read_run(self.out / "runs" / name).get("status") == "finished":
            return "finished"
        train = self.runs[name]["train"]
        return train.status if isinstance(train, Job) else "not started"

    def run_rows(self) -> list:
        rows = []
        for name, r in self.runs.items():
            s = read_run(self.out / "runs" / name)
            rows.append(
                {
                    "name": name,
                    "method": r["method"],
                    "seed": r["seed"],
                    "status": self.run_status(name),
                    "epochs_done": s.get("epochs_done", 0),
                    "eval": r["eval"].status if isinstance(r["eval"], Job) else None,
                    **{k: s.get(k) for k in ("test_acc", "test_loss", "ece", "wall_time_s")},
                    "train_step": s.get("train_step"),
                    "started_s": self.started_s(
                        self.solo["job"] if name == self.solo.get("name") else r["train"]
                    ),
                    "log": f"logs/{name}.log",
                }
            )
        return rows

    def started_s(self, job) -> float | None:
        """When ``job`` started, in seconds since the check began (None: not started)."""
        return job.start - self.t0 if isinstance(job, Job) and job.start else None

    def solo_row(self) -> dict | None:
        """The run trained alone first: whether it finished alone, and its wall time."""
        if not self.solo:
            return None
        name, job = self.solo["name"], self.solo["job"]
        r = read_run(self.out / "runs" / name)
        started = self.started_s(job)
        if job == "kept":  # finished in an earlier call: as that call reported it, if it did
            earlier = self.earlier.get("solo") or {}
            if earlier.get("name") == name:
                return {**earlier, "kept": True, "started_s": None, "ended_s": None}
            status, alone = "kept", None
        else:
            status = job.status
            alone = status == "finished" and r.get("status") == "finished"
        return {
            "name": name,
            "status": status,
            "alone": alone,
            "wall_time_s": r.get("wall_time_s") if alone is not False else None,
            "job_s": job.seconds if isinstance(job, Job) and job.status != "queued" else None,
            "train_step": r.get("train_step"),
            "epochs_done": self.solo.get("epochs_alone", r["epochs_done"]),  # alone
            "epochs": self.scale.epochs,
            "started_s": started,
            "ended_s": started + job.seconds
            if started is not None and job.status not in ("queued", "running")
            else None,
        }

    def method_rows(self, rows: list) -> list:
        out = []
        for method in dict.fromkeys(m for m, _ in self.scale.runs):
            done = [r for r in rows if r["method"] == method and r["status"] == "finished"]
            if not done:
                out.append({"method": method, "seeds": [], "n": 0})
                continue
            stats = {
                k: mean_sd([r[k] for r in done])
                for k in ("test_acc", "test_loss", "ece", "wall_time_s")
            }
            out.append(
                {
                    "method": method,
                    "seeds": [r["seed"] for r in done],
                    "n": len(done),
                    **{
                        f"{k}_{w}": v
                        for k, (m, sd) in stats.items()
                        for w, v in (("mean", m), ("sd", sd))
                    },
                }
            )
        return out

    def write_summary(self) -> None:
        rows = self.run_rows()
        methods = self.method_rows(rows)
        bench = {k: read_json(self.out / "bench" / f"{k}.json") for k in ("swap", "train")}
        s, solo = self.scale, self.solo_row()
        summary = {
            "info": self.info,
            "tiny": bool(self.args.tiny),
            "recipe": {
                "dataset": f"imagefolder:{self.data}",
                "model": s.model,
                "epochs": s.epochs,
                "batch_size": s.batch_size,
                "lr": s.lr,
                "image_size": s.image_size,
                "max_train_samples": s.max_train_samples,
                "eval_flags": list(s.eval_flags),
            },
            "wall_s": time.monotonic() - self.t0,
            "stages": {k: asdict(v) for k, v in self.stages.items()},
            "methods": methods,
            "runs": rows,
            "solo": solo,
            "ddp": self.ddp or None,
            "targets": target_rows(bench, solo, s, bool(self.args.tiny), self.device),
            "bench": bench,
        }
        self.out.mkdir(parents=True, exist_ok=True)
        atomic_text(self.out / "summary.json", json.dumps(summary, indent=1) + "\n")
        atomic_text(self.out / "summary.md", render_markdown(summary, self.out))
        if self.args.bundle:
            self.write_bundle(Path(self.args.bundle))

    def write_bundle(self, where: Path) -> None:
        """summary.md, summary.json and gpu-check.tgz (all of --out but checkpoints, data)."""
        where.mkdir(parents=True, exist_ok=True)
        for name in ("summary.md", "summary.json"):
            shutil.copyfile(self.out / name, where / name)
        skip = {self.data, self.out / "tiny-data.tgz", where.resolve()}

        def keep(info: tarfile.TarInfo):
            path = self.out.parent / info.name
            return None if path.suffix == ".pt" or path in skip else info

        tmp = where / ".gpu-check.tgz.tmp"
        with tarfile.open(tmp, "w:gz") as tar:
            tar.add(self.out, arcname=self.out.name, filter=keep)
        os.replace(tmp, where / "gpu-check.tgz")


# ----- small readers and writers -----------------------------------------------------------------
def read_json(path: Path, default=None):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return default


def read_run(run_dir: Path) -> dict:
    """A run folder's summary.json (status, last-epoch metrics) plus ``epochs_done``."""
    try:
        epochs = sum(
            1 for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()
        )
    except OSError:
        epochs = 0
    return {**(read_json(run_dir / "summary.json", {}) or {}), "epochs_done": epochs}


def atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def mean_sd(values: list) -> tuple:
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def junit_counts(path: Path) -> dict:
    """tests, failures, errors, skipped and passed from a pytest junit xml ({} if unreadable)."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return {}
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    c = {
        k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")
    }
    c["passed"] = c["tests"] - c["failures"] - c["errors"] - c["skipped"]
    return c


def make_tiny_tarball(path: Path, top: str) -> None:
    """A CIFAR-shaped tarball from scikit-learn's digits, for --tiny: ``top/{train,test}/<digit>/
    <i>.jpg``, 16x16 RGB JPEGs, 30 train and 8 test images a class."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    staging = path.with_name(path.name + ".d")
    shutil.rmtree(staging, ignore_errors=True)
    for c in range(10):
        for k, i in enumerate(np.flatnonzero(digits.target == c)[:38]):
            pixels = (digits.images[i] * (255 / 16)).astype(np.uint8)  # 0..16 -> 0..255
            img = Image.fromarray(pixels).resize((16, 16), Image.BILINEAR).convert("RGB")
            file = staging / top / ("train" if k < 30 else "test") / str(c) / f"{k}.jpg"
            file.parent.mkdir(parents=True, exist_ok=True)
            img.save(file, quality=95)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        tar.add(staging / top, arcname=top)
    shutil.rmtree(staging)


# ----- targets ---------------------------------------------------------------------------------
def target_rows(bench: dict, solo: dict | None, scale: Scale, tiny: bool, device: str) -> list:
    """The speed targets of one H200 (ResNet-18, 32x32), each with what this check measured
    and "met", "not met" or "not measured". Timings are judged only at full scale on CUDA (a
    --tiny rehearsal shows its CPU values, "not measured"); kernel counts wherever counted."""
    train, swap = (bench or {}).get("train") or {}, (bench or {}).get("swap") or {}
    steps = {row["batch_size"]: row for row in train.get("steps", [])}
    on = train.get("device", device)
    full_gpu = not tiny and device.startswith("cuda")
    rows = []

    def add(target, goal, limit, value, measured, judged, unit, status=None):
        if status is None:
            if value is None or not judged:
                status = "not measured"
            else:
                status = "met" if value <= limit else "not met"
        rows.append(
            {
                "target": target,
                "goal": goal,
                "limit": limit,
                "unit": unit,
                "value": value,
                "measured": measured,
                "status": status,
            }
        )

    # 1. CE step at batch 128, captured. 2. IPS / CE step at batch 256, captured.
    b_ce, b_ips = scale.target_batches
    row = steps.get(b_ce)
    value = row and row.get("ce_graph_ms")
    if row is None:
        measured = "no step timings" + (f" at batch {b_ce}" if steps else "")
    elif value is None:
        measured = f"no captured step on {on}; eager {row['ce_ms']:.2f} ms at batch {b_ce}"
    else:
        measured = f"{value:.2f} ms captured, {row['ce_ms']:.2f} ms eager (batch {b_ce})"
    add("CE step at batch 128, captured", "<= 2.8 ms", 2.8, value, measured, full_gpu, "ms")
    row = steps.get(b_ips)
    value = row and row.get("ips_over_ce_graph")
    if row is None:
        measured = "no step timings" + (f" at batch {b_ips}" if steps else "")
    elif value is None:
        measured = f"no captured step on {on}; eager {row['ips_over_ce']:.2f}x at batch {b_ips}"
    else:
        measured = (
            f"{value:.2f}x captured ({row['ips_graph_ms']:.2f} / {row['ce_graph_ms']:.2f} ms), "
            f"{row['ips_over_ce']:.2f}x eager (batch {b_ips})"
        )
    add("IPS step / CE step at batch 256, captured", "<= 1.1x", 1.1, value, measured, full_gpu, "x")

    # 3. The 15-epoch IPS run alone, evaluation each epoch.
    status, value = None, None
    if solo is None:
        measured = "not run"
    elif solo["alone"] is False:
        measured = {
            "timeout": f"{solo['name']} stopped after {solo['job_s'] or 0:.0f} s alone (its cap) "
            f"at epoch {solo['epochs_done']}/{solo['epochs']}, then resumed among the others",
            "failed": f"{solo['name']} failed alone after {solo['job_s'] or 0:.0f} s",
        }.get(solo["status"], f"{solo['name']}: {solo['status']}")
        status = "not met" if solo["status"] == "timeout" and full_gpu else None
    else:
        value = solo["wall_time_s"]
        measured = (
            f"{value:.1f} s, train step {solo['train_step']}"
            + (
                f" ({solo['job_s']:.0f} s with the process start-up)"
                if solo["job_s"]
                else " (finished in an earlier call of the check)"
            )
            + ("; measured by an earlier call of the check" if solo.get("kept") else "")
            + (
                ""
                if full_gpu
                else f"; a rehearsal: {scale.model}, {scale.epochs} epoch"
                f"{'s' if scale.epochs != 1 else ''} on {device}"
            )
        )
    add(
        "15-epoch IPS run alone, evaluation each epoch (CIFAR-10)",
        "<= 45 s",
        45.0,
        value,
        measured,
        full_gpu,
        "s",
        status,
    )

    # 4. Kernels of one patch_swap call (counted, so judged on any device).
    op = next((o for o in swap.get("ops", []) if o["op"].startswith("patch_swap")), None)
    value = op and op["kernels"]
    measured = (
        "no op counts"
        if op is None
        else f"{value} kernels, {op['views']} views, {op['syncs']} host syncs "
        f"({op['op']}, counted on {swap.get('device')})"
    )
    add("patch_swap kernels a call", "<= 10", 10, value, measured, True, "kernels")

    # 5. patch_swap time vs the two-`where` floor at B=256, 32x32, on a GPU.
    case = next(
        (c for c in swap.get("swap", []) if c["batch"] == 256 and c["image"][1:] == [32, 32]),
        None,
    )
    value = case and case["ipskit_ms"] / case["floor_ms"]
    on = swap.get("device", device)
    measured = (
        "no swap timings at batch 256"
        if case is None
        else f"{value:.2f}x ({case['ipskit_ms']:.3f} / {case['floor_ms']:.3f} ms) on {on}"
        + ("" if on.startswith("cuda") else ": the target is for a GPU")
    )
    add(
        "patch_swap time / two-`where` floor at B=256 (3x32x32, grid 8), GPU",
        "<= 2x",
        2.0,
        value,
        measured,
        on.startswith("cuda") and not tiny,
        "x",
    )
    return rows


def _fmt(mean, sd, scale=1.0, digits=2) -> str:
    if mean is None:
        return "-"
    return f"{scale * mean:.{digits}f}" + ("" if sd is None else f" ± {scale * sd:.{digits}f}")


def _ms(value) -> str:
    return "-" if value is None else f"{value:.2f}"


def render_targets(s: dict) -> list:
    """summary.md's Targets section, the step times captured vs eager, and the torchrun run."""
    device = s["info"].get("device_name", "unknown")
    lines = [
        "",
        f"## Targets ({device})",
        "",
        "For one H200, ResNet-18 at 32x32. "
        + (
            "A --tiny rehearsal on the CPU measures none of them at their scale: its values "
            "are shown, marked not measured (kernel counts excepted)."
            if s["tiny"]
            else "Step times from bench/train.json (captured: the whole step in a CUDA graph)."
        ),
        "",
        "| target | goal | measured | status |",
        "|---|---|---|---|",
    ]
    for t in s.get("targets", []):
        lines.append(f"| {t['target']} | {t['goal']} | {t['measured']} | {t['status']} |")
    steps = ((s.get("bench") or {}).get("train") or {}).get("steps") or []
    if steps:
        lines += [
            "",
            "### Training step, ms: captured (CUDA graph) vs eager",
            "",
            "| batch | ce eager | ce captured | ips eager | ips captured | ce at 2x batch eager "
            "| ce at 2x batch captured | ips / ce eager | ips / ce captured |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in steps:
            ratio = r.get("ips_over_ce_graph")
            lines.append(
                f"| {r['batch_size']} | {_ms(r['ce_ms'])} | {_ms(r.get('ce_graph_ms'))} | "
                f"{_ms(r['ips_ms'])} | {_ms(r.get('ips_graph_ms'))} | "
                f"{_ms(r['ce_2x_batch_ms'])} | {_ms(r.get('ce_2x_batch_graph_ms'))} | "
                f"{r['ips_over_ce']:.2f}x | {'-' if ratio is None else f'{ratio:.2f}x'} |"
            )
        if not any(r.get("ce_graph_ms") is not None for r in steps):
            lines += ["", "No captured times: the captured step needs CUDA."]
    ddp = s.get("ddp")
    lines += ["", "## torchrun, one process (DDP)", ""]
    if ddp:
        epoch = ddp.get("epoch_time_s")
        lines.append(
            f"`{ddp['command']}`: **{ddp['status']}**; one rank over {ddp['backend']}"
            + (f" (NCCL {ddp['nccl_version']})" if ddp.get("nccl_version") else "")
            + (", wrapped in DDP (its log says x1 (DDP))" if ddp["ddp_wrapped"] else "")
            + (f"; the epoch took {epoch:.1f} s" if epoch is not None else "")
            + f" ({ddp['seconds']:.0f} s with torchrun's start-up; log {ddp['log']})."
        )
    else:
        lines.append("Not run.")
    lines += [
        "",
        "A one-GPU machine cannot run two nccl ranks, so this checks the nccl process group and "
        "the DDP wrapping with one rank only (two ranks run on the CPU over gloo in "
        "tests/test_ddp.py).",
    ]
    return lines


def render_markdown(s: dict, out: Path) -> str:
    info, recipe = s["info"], s["recipe"]
    lines = [
        f"# GPU check{' (--tiny rehearsal)' if s['tiny'] else ''}: "
        f"{info.get('device_name', 'unknown')}",
        "",
        f"torch {info.get('torch')}, CUDA {info.get('cuda_version')}, Python "
        f"{info.get('python')}, ipskit commit {info.get('git_commit')}; device "
        f"{info.get('device')}, {info.get('jobs')} jobs at once; total wall "
        f"{s['wall_s']:.0f} s (budget {info.get('budget_s', 0):.0f} s).",
        "",
        "## Stages",
        "",
        "| stage | status | wall s | detail |",
        "|---|---|---:|---|",
    ]
    for st in s["stages"].values():
        lines.append(
            f"| {st['name']} | {st['status']} | {st['seconds']:.1f} | "
            f"{st['detail'].replace('|', '/')} |"
        )
    lines += render_targets(s)
    solo = s.get("solo")
    lines += [
        "",
        "## Reference runs: last epoch, mean ± sd over seeds",
        "",
        f"{recipe['model']}, {recipe['epochs']} epochs, batch {recipe['batch_size']}, "
        f"lr {recipe['lr']}, {recipe['dataset']}"
        + (
            f", {recipe['max_train_samples']} training images"
            if recipe["max_train_samples"]
            else ""
        )
        + "; the whole test set; "
        + (
            f"{solo['name']} trained alone first, the others shared the device (their train s "
            "are not solo times)."
            if solo
            else "runs shared the device, so train s are not solo times."
        ),
        "",
        "| method | seeds | top-1 % | NLL | ECE | train s |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for m in s["methods"]:
        if not m["n"]:
            lines.append(f"| {m['method']} | none finished | - | - | - | - |")
            continue
        lines.append(
            f"| {m['method']} | {','.join(map(str, m['seeds']))} | "
            f"{_fmt(m['test_acc_mean'], m['test_acc_sd'], 100)} | "
            f"{_fmt(m['test_loss_mean'], m['test_loss_sd'], digits=3)} | "
            f"{_fmt(m['ece_mean'], m['ece_sd'], digits=3)} | "
            f"{_fmt(m['wall_time_s_mean'], None, digits=0)} |"
        )
    lines += [
        "",
        "| run | status | epochs | top-1 % | NLL | ECE | train s | eval |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in s["runs"]:
        lines.append(
            f"| {r['name']} | {r['status']} | {r['epochs_done']} | "
            f"{_fmt(r['test_acc'], None, 100)} | {_fmt(r['test_loss'], None, digits=3)}"
            f" | {_fmt(r['ece'], None, digits=3)} | "
            f"{_fmt(r['wall_time_s'], None, digits=0)} | {r['eval'] or '-'} |"
        )
    for title, path in (
        (
            "Evaluation (ipskit compare " + " ".join(recipe["eval_flags"]) + ")",
            out / "compare" / "compare.md",
        ),
        ("Benchmark: patch swap", out / "bench" / "swap.md"),
        ("Benchmark: training steps", out / "bench" / "train.md"),
    ):
        if path.exists():
            text = path.read_text(errors="replace").strip()
            lines += [
                "",
                f"## {title}",
                "",
                "\n".join(line for line in text.splitlines() if not line.startswith("=== ")),
            ]
    failed = [r for r in s["runs"] if r["status"] not in ("finished", "not started")]
    failed_stages = [st for st in s["stages"].values() if st["status"] in ("failed", "timeout")]
    if failed or failed_stages:
        lines += ["", "## What failed", ""]
        lines += [f"- stage {st['name']}: {st['status']}: {st['detail']}" for st in failed_stages]
        for r in failed:
            log = out / r["log"]
            tail = log.read_text(errors="replace").splitlines()[-8:] if log.exists() else []
            lines += [f"- run {r['name']}: {r['status']} (log {r['log']})", "", "```", *tail, "```"]
    return "\n".join(lines) + "\n"


# ----- command line ----------------------------------------------------------------------------
def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="gpu_check.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--out",
        default="gpu-check-out",
        help="folder for everything the check writes (default: gpu-check-out)",
    )
    p.add_argument(
        "--data",
        default=None,
        help="the CIFAR-10 image folder, {train,test}/<class>/"
        " (default: data/cifar10; with --tiny: OUT/data/tiny-cifar)",
    )
    p.add_argument(
        "--tarball",
        default=None,
        help="a .tgz that unpacks into --data's parent "
        "folder, used when --data is missing (cifar10-jpeg.tgz)",
    )
    p.add_argument(
        "--jobs",
        type=int,
        default=None,
        help="training processes sharing the GPU "
        "(default: 6; six kept an H200 busy and were ~4x faster than one at a time)",
    )
    p.add_argument("--device", default=None, help="cuda (default), cuda:N or cpu")
    p.add_argument(
        "--budget",
        type=float,
        default=None,
        help="seconds for the whole check "
        "(default: 450, within the 8 minutes the lent machine allows)",
    )
    p.add_argument(
        "--stages",
        nargs="+",
        choices=STAGES,
        default=list(STAGES),
        help="stages to run (default: all); e.g. --stages runs compare to redo those",
    )
    p.add_argument(
        "--bundle",
        default=None,
        metavar="DIR",
        help="also copy summary.md, "
        "summary.json and gpu-check.tgz (--out without checkpoints) into DIR",
    )
    p.add_argument(
        "--tiny",
        action="store_true",
        help="the same stages on the CPU in well "
        "under a minute (a rehearsal: digits as a tiny image folder, smallcnn)",
    )
    args = p.parse_args(argv)
    if args.jobs is not None and args.jobs < 1:
        p.error(f"--jobs must be >= 1, got {args.jobs}")
    if args.data is None:
        args.data = str(Path(args.out) / "data" / "tiny-cifar") if args.tiny else "data/cifar10"

    def stop(signum, frame):  # a SIGTERM ends the child processes too (run_jobs' finally)
        raise SystemExit(128 + signum)

    before = signal.signal(signal.SIGTERM, stop)
    try:
        return Check(args, TINY if args.tiny else FULL).run()
    finally:
        signal.signal(signal.SIGTERM, before)


if __name__ == "__main__":
    raise SystemExit(main())
