"""One optimisation step as a unit (``TrainStep``), and the same step captured in a CUDA graph
(``CapturedStep``) so that a GPU never waits for Python to launch it.

A step is: the method's forward (swap or mixer drawn from a generator, both sides of the pairs
in one batch), the loss, backward and the optimizer update, plus the running sums the epoch
reports. At CIFAR scale a GPU finishes a ResNet-18 step faster than Python can launch its few
hundred kernels one by one, so the card idles. Captured once in a CUDA graph, the whole step is
launched by one ``replay()``.

    step = TrainStep(model, method, optimizer, generator, amp=True)
    step = CapturedStep(step)           # CUDA only; the first calls run eagerly (warm-up)
    out = step(x, y)                    # x [N, C, H, W], y [N] on the device
    sums += out.sums                    # float64 [4]: loss*n, ce*n, kd*n, correct

What a captured step needs, and where ipskit provides it:

1. Static shapes: training loaders drop the last, short batch.
2. No host-device sync inside the step: the swap, augmentation, mixers and IPS loss draw and
   apply on the device (``tests/test_cuda.py`` runs a step under sync debug mode "error").
3. A learning rate the graph reads from memory: :func:`use_tensor_lr` turns each param group's
   ``lr`` into a device tensor, which the scheduler fills in place (:func:`keep_rate_tensors`
   restores it before each replay if a scheduler assigned a new value instead), and the
   optimizer is fused SGD (``fused=True``: its update reads a tensor lr without a sync).
4. Fresh random draws on every replay: the method's generator is registered with the graph,
   so each replay advances it as an eager step would and ``manual_seed`` still reseeds it.
5. Autocast without its weight cache (the cache would hold tensors freed after capture).

``fit`` builds these from ``TrainConfig.capture`` ("auto": captured on CUDA in a single
process) and prints what the capture cost. A capture that fails under "auto" falls back to the
eager step with one line saying why; under "on" it is an error.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from typing import NamedTuple

import torch
from torch import Tensor, nn

__all__ = [
    "StepResult",
    "TrainStep",
    "CapturedStep",
    "use_tensor_lr",
    "keep_rate_tensors",
    "lr_value",
    "portable_state",
]


class StepResult(NamedTuple):
    """What one step leaves for the epoch loop.

    Attributes:
        loss: detached float32 scalar (the loss back-propagated, before the update).
        sums: float64 [4]: loss * n, ce * n, kd * n and the number of correct predictions,
            where n is the number of samples (anchors for pair methods).
        samples: n. scored: the number of predictions scored for accuracy.
    """

    loss: Tensor
    sums: Tensor
    samples: int
    scored: int


def autocast(device: torch.device, enabled: bool, cache: bool = True):
    """bf16 autocast on ``device`` when ``enabled``; ``cache=False`` while capturing a graph."""
    if not enabled:
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=cache)


class TrainStep:
    """The eager training step: forward, loss, backward and update, with no host sync.

    Args:
        model: classifier (possibly DDP- or compile-wrapped), [N, C, H, W] in [0, 1] -> [N, K].
        method: an ``ipskit.methods.Method``: turns a batch into a loss.
        optimizer: stepped once per call (the scheduler is the caller's).
        generator: the method's random draws, on the batch's device.
        amp: bf16 autocast.
    """

    def __init__(
        self,
        model: nn.Module,
        method,
        optimizer: torch.optim.Optimizer,
        generator: torch.Generator,
        *,
        amp: bool = False,
    ):
        self.model, self.method, self.optimizer = model, method, optimizer
        self.generator, self.amp = generator, amp
        self.autocast_cache = True

    def __call__(self, x: Tensor, y: Tensor) -> StepResult:
        with autocast(x.device, self.amp, self.autocast_cache):
            out = self.method.step(self.model, x, y, self.generator)
        loss = out.loss.float()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        n = y.shape[0] // 2 if self.method.needs_pairs else y.shape[0]
        correct = (out.logits.argmax(dim=1) == out.targets).sum()
        parts = [loss.detach() * n, out.ce.float() * n, out.kd.float() * n, correct.float()]
        sums = torch.stack(parts)
        return StepResult(loss.detach(), sums.double(), n, out.targets.shape[0])


class CapturedStep:
    """A :class:`TrainStep` captured once in a CUDA graph and replayed for every later batch.

    The first ``warmup`` calls run the step eagerly on a side stream (they train on their
    batches like any step, and create what the step creates lazily: momentum buffers, cuDNN
    plans, the swap's cell tables). The next call captures the step on static copies of its
    batch and replays the graph, which trains that batch; every later call copies its batch
    into the static inputs and replays. The optimizer must hold its learning rate as a device
    tensor (:func:`use_tensor_lr`) and be fused SGD.

    Args:
        step: the eager step to capture.
        warmup: eager calls before the capture (PyTorch's CUDA-graph notes ask for a few).
        fallback: if the capture fails, say so once (through ``log``) and keep training
            eagerly; otherwise the error propagates.
        log: where the one-line reports go.
    Attributes:
        mode: "warm-up", "graph" or "eager" (after a fallback).
        setup_s: seconds spent on warm-up calls and the capture (the cost of capturing).
    """

    def __init__(self, step: TrainStep, *, warmup: int = 3, fallback: bool = False, log=print):
        if warmup < 1:  # the first update creates the momentum buffers: never inside a graph
            raise ValueError(f"warmup must be >= 1 eager step before the capture, got {warmup}")
        if not torch.cuda.is_available():
            raise RuntimeError("a CUDA graph needs a CUDA device")
        self.step, self.warmup, self.fallback, self.log = step, warmup, fallback, log
        self.step.autocast_cache = False
        self.mode, self.setup_s, self.error = "warm-up", 0.0, None
        self._calls, self._graph, self._x, self._y, self._out = 0, None, None, None, None

    def __call__(self, x: Tensor, y: Tensor) -> StepResult:
        if self.mode == "graph":
            if x.shape != self._x.shape or y.shape != self._y.shape:
                raise ValueError(
                    f"a captured step replays batches of shape {tuple(self._x.shape)} only, "
                    f"got {tuple(x.shape)}; use drop_last loaders or capture='off'"
                )
            keep_rate_tensors(self.step.optimizer, self._rates)
            self._x.copy_(x)
            self._y.copy_(y)
            self._graph.replay()
            return self._out
        if self.mode == "eager":
            return self.step(x, y)
        t0 = time.perf_counter()
        if self._calls < self.warmup:
            self._calls += 1
            out = self._side_stream(x, y)
        else:
            out = self._capture(x, y)
        torch.cuda.synchronize(x.device)
        self.setup_s += time.perf_counter() - t0
        return out

    def _side_stream(self, x: Tensor, y: Tensor) -> StepResult:
        here = torch.cuda.current_stream(x.device)
        side = torch.cuda.Stream(x.device)
        side.wait_stream(here)
        with torch.cuda.stream(side):
            out = self.step(x, y)
        here.wait_stream(side)
        for t in (out.loss, out.sums):  # made on the side stream, read on this one
            t.record_stream(here)
        return out

    def _capture(self, x: Tensor, y: Tensor) -> StepResult:
        self._x, self._y = x.clone(), y.clone()  # the graph's inputs: same shape and layout
        graph = torch.cuda.CUDAGraph()
        graph.register_generator_state(self.step.generator)
        try:
            # Gradients set to None now are allocated inside the graph: a replay writes them
            # afresh instead of adding to the last step's.
            self.step.optimizer.zero_grad(set_to_none=True)
            # thread_local: a DataLoader's pin-memory thread may call CUDA meanwhile.
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                out = self.step(self._x, self._y)
        except RuntimeError as e:
            if not self.fallback:
                raise
            self.mode, self.error = "eager", str(e).strip().splitlines()[0]
            self.step.autocast_cache = True
            self.log(f"capturing the training step failed ({self.error}); training eagerly")
            return self.step(x, y)
        self._graph, self._out, self.mode = graph, out, "graph"
        self._rates = [group["lr"] for group in self.step.optimizer.param_groups]
        graph.replay()  # capturing runs nothing: this replay trains the captured batch
        return out


def use_tensor_lr(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    """Hold every param group's learning rate as a 0-dim float32 tensor on ``device`` (what a
    captured update reads; ``LRScheduler`` fills such a tensor in place)."""
    for group in optimizer.param_groups:
        group["lr"] = torch.tensor(lr_value(group["lr"]), dtype=torch.float32, device=device)


def keep_rate_tensors(optimizer: torch.optim.Optimizer, rates: list[Tensor]) -> None:
    """Point every param group's ``lr`` back at the tensor in ``rates`` the graph reads, filled
    with the rate the group now holds. A scheduler that fills the tensor in place (recent
    PyTorch) leaves nothing to do; one that assigns a new value instead would otherwise leave
    the graph training at a stale rate."""
    for group, rate in zip(optimizer.param_groups, rates):
        if group["lr"] is not rate:
            rate.fill_(lr_value(group["lr"]))
            group["lr"] = rate


def lr_value(lr: float | Tensor) -> float:
    """A learning rate as a Python float (one host sync for a device tensor)."""
    return float(lr.item()) if isinstance(lr, Tensor) else float(lr)


def portable_state(obj) -> dict:
    """``obj.state_dict()`` of an optimizer or LR scheduler with every learning rate a float,
    so that a checkpoint of a captured run resumes on any device, captured or not."""
    state = obj.state_dict()
    if "param_groups" in state:  # an optimizer
        state["param_groups"] = [
            {k: lr_value(v) if k in ("lr", "initial_lr") else v for k, v in g.items()}
            for g in state["param_groups"]
        ]
    for key in ("base_lrs", "_last_lr"):  # a scheduler
        if key in state:
            state[key] = [lr_value(v) for v in state[key]]
    return state
