"""CUDA tests: the swap, augmentation, mixers, methods and IPS loss give the CPU's result on a GPU;
a whole training step never waits for the host and, captured in a CUDA graph, trains as the
eager step does; training (bf16, channels-last, torch.compile, capture, resume), evaluation and
Grad-CAM run there.

Every test is marked ``cuda`` and skips without a CUDA device, so the CPU suite collects them
and reports them skipped. On a GPU machine: ``pytest -m cuda tests/test_cuda.py`` (as
``benchmarks/gpu_check.py`` does). Random choices are drawn once, on the CPU, and applied on both
devices, so the two results are compared for the same decision. Training on a GPU is not
bit-exact (cuDNN, bf16), so runs are checked for learning and for what they record, not for
equality with the CPU.
"""

import copy
import json
import math
import shutil
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn
from train_helpers import cache_datasets, tiny

import ipskit.train as T
from ipskit import IPSLoss, apply_swap, draw_swap, ips_loss, patch_swap, runs
from ipskit.augment import AugmentSpec, apply_augment, augment_batch, draw_augment
from ipskit.config import METHOD_NAMES, TrainConfig
from ipskit.evaluate import evaluate_run
from ipskit.methods import CutMixer, Cutout, build_method
from ipskit.models import build_model
from ipskit.step import CapturedStep, TrainStep, use_tensor_lr
from ipskit.train import fit

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

CUDA = torch.device("cuda")
K = 5
FAST_EVAL = {
    "max_samples": 120,
    "epsilons": [0.0, 0.01, 0.1],
    "corruptions": ["gaussian_noise", "contrast"],
    "severities": [1, 5],
}


@pytest.fixture(autouse=True)
def _cached(monkeypatch):
    cache_datasets(monkeypatch)


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _cuda_gen(seed=0):
    return torch.Generator(device=CUDA).manual_seed(seed)


def _same(gpu: torch.Tensor, cpu: torch.Tensor, atol: float = 1e-6) -> None:
    """A tensor computed on the GPU equals the CPU's: exactly for integers and bools, to float
    rounding otherwise."""
    assert gpu.device.type == "cuda", gpu.device
    if cpu.is_floating_point():
        torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-5, atol=atol)
    else:
        assert torch.equal(gpu.cpu(), cpu)


# ----- swap, augmentation, mixers, loss: the same decision gives the same result ---------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.uint8])
@pytest.mark.parametrize("size, grid", [((32, 32), 8), ((7, 10), 3), ((224, 224), 2)])
def test_apply_swap_on_cuda_equals_cpu(dtype, size, grid):
    g = _gen(0)
    x_a = (torch.rand(6, 3, *size, generator=g) * 255).to(dtype)
    x_b = (torch.rand(6, 3, *size, generator=g) * 255).to(dtype)
    decision = draw_swap(6, grid, pr=0.7, generator=_gen(1))  # drawn on the CPU
    a_cpu, b_cpu = apply_swap(x_a, x_b, decision)
    a_gpu, b_gpu = apply_swap(x_a.to(CUDA), x_b.to(CUDA), decision)  # moved inside
    assert torch.equal(a_gpu.cpu(), a_cpu) and torch.equal(b_gpu.cpu(), b_cpu)
    assert torch.equal(decision.to(CUDA).pixel_mask(*size).cpu(), decision.pixel_mask(*size))


def test_patch_swap_with_cpu_and_cuda_generators():
    x_a, x_b = torch.rand(2, 16, 3, 32, 32, generator=_gen(0)).unbind(0)
    # 1. A CPU generator on GPU data: the CPU's draw, applied on the GPU.
    a_cpu, b_cpu, d_cpu = patch_swap(x_a, x_b, grid=4, pr=0.5, generator=_gen(5))
    a_gpu, b_gpu, d_gpu = patch_swap(x_a.to(CUDA), x_b.to(CUDA), grid=4, pr=0.5, generator=_gen(5))
    _same(d_gpu.cells, d_cpu.cells)
    assert torch.equal(a_gpu.cpu(), a_cpu) and torch.equal(b_gpu.cpu(), b_cpu)
    # 2. A generator on the GPU: drawn there, the CPU's invariants, repeatable from its seed.
    xa, xb = x_a.to(CUDA), x_b.to(CUDA)
    a, b, d = patch_swap(xa, xb, grid=4, pr=1.0, generator=_cuda_gen(0))
    assert d.cells.device.type == "cuda" and bool(d.swapped.all())
    assert bool(((d.num_swapped >= 1) & (d.num_swapped <= 15)).all())  # never none, never all
    mask = d.pixel_mask(32, 32)
    assert torch.equal(a, torch.where(mask, xb, xa)) and torch.equal(b, torch.where(mask, xa, xb))
    assert torch.equal(a + b, xa + xb)  # pixels exchanged, none lost
    a2, _, d2 = patch_swap(xa, xb, grid=4, pr=1.0, generator=_cuda_gen(0))
    assert torch.equal(d2.cells, d.cells) and torch.equal(a2, a)


@pytest.mark.parametrize("padding_mode", ["zeros", "reflect", "replicate"])
@pytest.mark.parametrize("uint8", [True, False])
def test_augment_on_cuda_equals_cpu(padding_mode, uint8):
    spec = AugmentSpec(crop_padding=4, flip=True, padding_mode=padding_mode)
    x = torch.randint(0, 256, (16, 3, 32, 32), generator=_gen(0), dtype=torch.uint8)
    x = x if uint8 else x.float() / 255
    params = draw_augment(16, spec, _gen(1))  # drawn on the CPU, moved inside apply_augment
    out = apply_augment(x.to(CUDA), params, spec)
    assert out.dtype == torch.float32
    _same(out, apply_augment(x, params, spec))


def test_augment_batch_with_a_cuda_generator():
    spec = AugmentSpec.for_size(32, flip=True)
    x = torch.randint(0, 256, (64, 3, 32, 32), generator=_gen(0), dtype=torch.uint8).to(CUDA)
    a = augment_batch(x, spec, _cuda_gen(3))
    b = augment_batch(x, spec, _cuda_gen(3))
    assert a.device.type == "cuda" and a.shape == x.shape and torch.equal(a, b)
    assert 0.0 <= float(a.min()) and float(a.max()) <= 1.0
    assert not torch.equal(a, augment_batch(x, spec, _cuda_gen(4)))


@pytest.mark.parametrize(
    "make",
    [
        lambda: CutMixer("cutmix", K, prob=1.0),
        lambda: CutMixer("mixup", K, prob=1.0),
        lambda: Cutout(4, (0.1, 0.2, 0.3)),
    ],
    ids=["cutmix", "mixup", "cutout"],
)
def test_mixers_on_cuda_equal_cpu(make):
    g = _gen(0)
    x_a, x_b = torch.rand(2, 8, 3, 12, 12, generator=g).unbind(0)
    y = torch.randint(K, (8,), generator=g)
    mixer = make()
    (ca, cb), target_cpu = mixer([x_a, x_b], y, _gen(1))
    (ga, gb), target_gpu = mixer([x_a.to(CUDA), x_b.to(CUDA)], y.to(CUDA), _gen(1))
    assert not torch.equal(ca, x_a)  # prob 1: something was mixed
    _same(ga, ca)
    _same(gb, cb)
    _same(target_gpu, target_cpu)


class _Recorder(nn.Module):
    """A linear classifier (fp32 matmuls on both devices) that keeps the last batch it saw."""

    def __init__(self, channels=3, size=8):
        super().__init__()
        self.fc = nn.Linear(channels * size * size, K)
        self.seen = None

    def forward(self, x):
        self.seen = x.detach().float().cpu()
        return self.fc(x.flatten(1))


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_every_method_step_on_cuda_gives_the_cpu_result(name):
    g = _gen(0)
    y = torch.randint(K, (8,), generator=g).repeat(2)  # anchors, then same-class partners
    x = torch.rand(16, 3, 8, 8, generator=g)
    method = build_method(
        TrainConfig(method=name, grid=4, mix_prob=1.0), K, image_size=8, fill=(0.5, 0.5, 0.5)
    )
    torch.manual_seed(0)
    cpu_model = _Recorder()
    gpu_model = copy.deepcopy(cpu_model).to(CUDA)
    out_cpu = method.step(cpu_model, x, y, _gen(1))
    out_gpu = method.step(gpu_model, x.to(CUDA), y.to(CUDA), _gen(1))
    torch.testing.assert_close(gpu_model.seen, cpu_model.seen, rtol=0, atol=1e-6)  # same images
    _same(out_gpu.loss, out_cpu.loss, atol=1e-5)
    _same(out_gpu.logits, out_cpu.logits, atol=1e-5)
    _same(out_gpu.targets, out_cpu.targets)
    out_cpu.loss.backward()
    out_gpu.loss.backward()
    _same(gpu_model.fc.weight.grad, cpu_model.fc.weight.grad, atol=1e-5)


@pytest.mark.parametrize(
    "settings",
    [
        {},
        {"kd_direction": "confident"},
        {"detach_target": False, "t2_scale": True},
        {"temperature": 1.0, "alpha": 0.5, "gamma": 2.0},
    ],
)
@pytest.mark.parametrize("soft", [False, True], ids=["class ids", "soft labels"])
def test_ips_loss_on_cuda_equals_cpu(settings, soft):
    g = _gen(0)
    z_a, z_b = (3 * torch.randn(2, 16, K, generator=g)).unbind(0)
    y = torch.randint(K, (16,), generator=g)
    if soft:
        y = torch.randn(16, K, generator=g).softmax(dim=1)
    results = {}
    for dev in ("cpu", "cuda"):
        a = z_a.detach().to(dev).clone().requires_grad_(True)
        b = z_b.detach().to(dev).clone().requires_grad_(True)
        out = ips_loss(a, b, y.to(dev), **settings)
        out.loss.backward()
        results[dev] = (out.loss, out.ce, out.kd, a.grad, b.grad)
    for gpu, cpu in zip(results["cuda"], results["cpu"]):
        _same(gpu.detach(), cpu.detach())
    module = IPSLoss(**settings)(z_a.to(CUDA), z_b.to(CUDA), y.to(CUDA))
    _same(module.loss, results["cpu"][0].detach())


# ----- training on the GPU ---------------------------------------------------------------------
def test_fit_bf16_channels_last_learns_on_cuda(tmp_path):
    cfg = TrainConfig(
        method="ips",
        model="resnet8",
        epochs=2,
        device="cuda",
        amp=True,
        channels_last=True,
        out_dir=str(tmp_path),
        seed=0,
    )
    s = fit(cfg, progress=False, verbose=False)
    run_dir = tmp_path / cfg.run_name
    rows = runs.load_run(run_dir)["metrics"]
    assert s["status"] == "finished" and [r["epoch"] for r in rows] == [1, 2]
    assert all(math.isfinite(r[k]) for r in rows for k in ("train_loss", "test_loss", "ece"))
    assert rows[0]["train_kd"] > 0
    assert rows[1]["train_loss"] < rows[0]["train_loss"]
    assert s["test_acc"] > 0.3  # chance is 0.1; on the CPU these settings reach about 0.6
    env = json.loads((run_dir / "env.json").read_text())
    assert env["device"].startswith("cuda") and env["device_name"] == torch.cuda.get_device_name()
    weights = torch.load(run_dir / "checkpoint.pt", weights_only=True)["model"]
    assert all(w.dtype != torch.bfloat16 for w in weights.values())  # bf16 only inside autocast


def test_fit_with_torch_compile_on_cuda(tmp_path):
    # amp and channels_last left at their CUDA defaults (on), as a GPU run uses them.
    cfg = tiny(tmp_path, method="ips", epochs=2, device="cuda", compile=True, name="compiled")
    s = fit(cfg, progress=False, verbose=False)
    rows = runs.load_run(tmp_path / "compiled")["metrics"]
    assert s["status"] == "finished" and [r["epoch"] for r in rows] == [1, 2]
    assert all(math.isfinite(r["train_loss"]) for r in rows)
    assert rows[1]["train_loss"] < rows[0]["train_loss"]
    # the compiled model computes what the eager one does (same seed, data and draws)
    fit(cfg.replace(compile=False, name="eager"), progress=False, verbose=False)
    eager = runs.load_run(tmp_path / "eager")["metrics"]
    assert abs(eager[0]["train_loss"] - rows[0]["train_loss"]) < 0.1


class _Kill(Exception):
    pass


def test_resume_on_cuda_continues_the_recorded_history(tmp_path, monkeypatch):
    # Eager: the run is killed through method.step, which a captured step calls only until its
    # capture (test_captured_fit_... covers resuming a captured run).
    cfg = tiny(tmp_path, method="ips+cutmix", epochs=3, device="cuda", name="broken", capture="off")
    real = T.train_one_epoch

    # 1. A run killed after a few steps of epoch 2 ...
    def dies_in_epoch_2(*args, **kwargs):
        if args[6] == 2:
            method, calls = args[1], iter(range(100))
            step = method.step

            def dying_step(*a, **k):
                if next(calls) == 4:
                    raise _Kill
                return step(*a, **k)

            monkeypatch.setattr(method, "step", dying_step)
        return real(*args, **kwargs)

    monkeypatch.setattr(T, "train_one_epoch", dies_in_epoch_2)
    with pytest.raises(_Kill):
        fit(cfg, progress=False, verbose=False)
    monkeypatch.setattr(T, "train_one_epoch", real)
    before = runs.load_run(tmp_path / "broken")["metrics"]
    assert [r["epoch"] for r in before] == [1]
    assert not (tmp_path / "broken" / "summary.json").exists()

    # 2. ... resumed on the GPU: the recorded epoch kept as it was, the rest trained.
    s = fit(cfg, resume=True, progress=False, verbose=False)
    after = runs.load_run(tmp_path / "broken")["metrics"]
    assert s["status"] == "finished" and [r["epoch"] for r in after] == [1, 2, 3]
    assert after[0] == before[0] and all(set(r) == set(before[0]) for r in after)
    assert torch.load(tmp_path / "broken" / "checkpoint.pt", weights_only=True)["epoch"] == 3
    # 3. An uninterrupted run records the same history shape (values need not match on a GPU).
    fit(cfg.replace(name="straight"), progress=False, verbose=False)
    straight = runs.load_run(tmp_path / "straight")["metrics"]
    assert [r["epoch"] for r in straight] == [1, 2, 3] and set(straight[0]) == set(after[0])
    # resuming a finished run trains nothing
    monkeypatch.setattr(T, "train_one_epoch", None)
    assert fit(cfg, resume=True, progress=False, verbose=False)["status"] == "finished"


# ----- the whole step: no host sync, captured in a CUDA graph ---------------------------------
def _step_setup(name, seed=0, amp=False, channels_last=False):
    """A resnet8 (fp32 weights), fused SGD with its rate in a device tensor under a cosine
    schedule, the method and a CUDA generator: what fit builds for a captured run."""
    cfg = TrainConfig(method=name, grid=4, mix_prob=1.0, image_size=16)
    torch.manual_seed(seed)
    model = build_model("resnet8", K, 3, 16, (0.5,) * 3, (0.25,) * 3).to(CUDA)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4, fused=True)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: T.lr_factor(s, 12, 2, "cosine"))
    use_tensor_lr(opt, CUDA)
    method = build_method(cfg, K, image_size=16, fill=(0.5, 0.5, 0.5))
    gen = _cuda_gen(seed)
    return model, opt, sched, TrainStep(model, method, opt, gen, amp=amp), gen


def _batches(n, seed=0, channels_last=False):
    g = _gen(seed)
    out = []
    for _ in range(n):
        y = torch.randint(K, (16,), generator=g).repeat(2)  # anchors, then same-class partners
        x = torch.rand(32, 3, 16, 16, generator=g).to(CUDA)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        out.append((x, y.to(CUDA)))
    return out


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_a_whole_training_step_never_waits_for_the_host(name):
    """Swap or mixer, forward (bf16, channels-last), loss, backward, fused update with a
    tensor rate, scheduler and running sums: no host-device sync, so it can be captured."""
    model, opt, sched, step, gen = _step_setup(name, amp=True, channels_last=True)
    batches = _batches(3, channels_last=True)
    step(*batches[0])  # first call: lazy state (momentum buffers, cuDNN plans, cell tables)
    sched.step()
    sums = torch.zeros(4, device=CUDA, dtype=torch.float64)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for x, y in batches[1:]:
            out = step(x, y)
            sums += out.sums
            sched.step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(sums).all()


@pytest.mark.parametrize("name", ["ce", "ips", "ips+cutmix", "cskd", "mixup"])
def test_captured_step_trains_like_the_eager_step(name):
    """The same 9 batches through the eager step and through a CapturedStep (3 eager warm-up
    calls, then capture and replays): same losses, same random draws (the generator is
    registered with the graph, and a reseed mid-way reaches the replays), same weights."""
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    batches = _batches(9)
    results = []
    for captured in (False, True):
        model, opt, sched, step, gen = _step_setup(name)
        if captured:
            step = CapturedStep(step, warmup=3)
        losses = []
        for i, (x, y) in enumerate(batches):
            if i == 6:
                gen.manual_seed(123)  # as fit reseeds every epoch
            losses.append(step(x, y).loss.item())
            sched.step()
        if captured:
            assert step.mode == "graph" and step.setup_s > 0
        results.append((losses, [p.detach().clone() for p in model.parameters()]))
    (eager_losses, eager_w), (graph_losses, graph_w) = results
    assert graph_losses == pytest.approx(eager_losses, rel=1e-4, abs=1e-5)
    for a, b in zip(eager_w, graph_w):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)


def test_captured_fit_logs_its_capture_and_resumes_on_the_cpu(tmp_path, capsys):
    cfg = tiny(tmp_path, method="ips", epochs=2, device="cuda", name="captured")
    s = fit(cfg, progress=False, verbose=True)
    assert s["train_step"] == "graph"
    assert "training step captured in a CUDA graph after 3 eager steps" in capsys.readouterr().out
    rows = runs.load_run(tmp_path / "captured")["metrics"]
    assert rows[1]["train_loss"] < rows[0]["train_loss"]
    eager = fit(cfg.replace(capture="off", name="eager"), progress=False, verbose=False)
    assert eager["train_step"] == "eager"
    assert abs(eager["train_loss"] - s["train_loss"]) < 0.1
    lrs = [r["lr"] for r in runs.load_run(tmp_path / "eager")["metrics"]]
    assert [r["lr"] for r in rows] == pytest.approx(lrs, rel=1e-5)  # the schedule reached it
    # the checkpoint holds plain floats: the run continues on the CPU, eagerly
    more = fit(cfg.replace(epochs=3, device="cpu"), resume=True, progress=False, verbose=False)
    assert more["status"] == "finished" and more["train_step"] == "eager"
    assert [r["epoch"] for r in runs.load_run(tmp_path / "captured")["metrics"]] == [1, 2, 3]


def test_the_readmes_captured_loop_runs_as_written():
    """The README's 'captured in a CUDA graph, for your own loop' example, executed."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    start = readme.index("- The same step captured in a CUDA graph")
    begin = readme.index("```python", start) + len("```python")
    code = textwrap.dedent(readme[begin : readme.index("```", begin)])
    model = build_model("resnet8", 10, 3, 32).to(CUDA)
    loader = [
        (torch.rand(16, 3, 32, 32), torch.arange(8).repeat(2)) for _ in range(6)
    ]  # 8 pairs a batch
    scope = {"torch": torch, "model": model, "gen": _cuda_gen(0), "loader": loader}
    scope["total_steps"] = len(loader)
    exec(code, scope)
    assert scope["step"].mode == "graph" and torch.isfinite(scope["out"].loss)


# ----- evaluation and Grad-CAM on a model trained on the GPU ------------------------------------
@pytest.fixture(scope="module")
def cuda_run(tmp_path_factory):
    """A run folder trained on the GPU: smallcnn, ce, 2 short epochs on 16x16 digits."""
    root = tmp_path_factory.mktemp("cuda-runs")
    cfg = TrainConfig(
        dataset="digits",
        model="smallcnn",
        method="ce",
        epochs=2,
        max_train_samples=300,
        out_dir=str(root),
        name="ce",
        device="cuda",
        seed=0,
    )
    fit(cfg, progress=False, verbose=False)
    return root / "ce"


def test_evaluate_run_on_cuda(cuda_run, tmp_path):
    run = tmp_path / "gpu" / "ce"
    shutil.copytree(cuda_run, run)
    ev = evaluate_run(run, device="cuda", **FAST_EVAL)
    json.dumps(json.loads((run / "eval.json").read_text()), allow_nan=False)  # strict JSON
    assert set(ev) == {"calibration", "smoothing", "fgsm", "corruptions"}
    cal = ev["calibration"]["result"]
    top1 = cal["test"]["top1"]
    assert cal["test"]["n"] == 120 and cal["heldout"]["n"] == 60 and cal["temperature"] > 0
    assert abs(ev["fgsm"]["result"]["accuracy"][0] - top1) <= 1 / 120  # eps 0: the clean images
    assert abs(ev["corruptions"]["result"]["clean"] - top1) <= 1 / 120
    assert set(ev["corruptions"]["result"]["accuracy"]["contrast"]) == {"1", "5"}
    # the CPU agrees on the same checkpoint (TF32 convolutions may flip a prediction or two)
    cpu = tmp_path / "cpu" / "ce"
    shutil.copytree(cuda_run, cpu)
    on_cpu = evaluate_run(cpu, what=("calibration",), device="cpu", max_samples=120)
    assert abs(on_cpu["calibration"]["result"]["test"]["top1"] - top1) <= 3 / 120


def test_gradcam_on_a_cuda_model(cuda_run):
    pytest.importorskip("pytorch_grad_cam")
    from ipskit.cam import cam_mass_in_mask, gradcam
    from ipskit.data import load_dataset

    model, _ = runs.load_model(cuda_run, CUDA)
    x = load_dataset("digits").test_x[:8].float() / 255  # [8, 1, 16, 16] in [0, 1]
    maps = gradcam(model, x.to(CUDA))
    assert maps.shape == (8, 16, 16) and maps.device.type == "cpu"
    assert float(maps.min()) >= 0.0 and float(maps.max()) <= 1.0
    assert not model.training and all(p.grad is None for p in model.parameters())
    hooks = sum(
        len(m._forward_hooks)
        + len(m._forward_pre_hooks)
        + len(m._backward_hooks)
        + len(m._backward_pre_hooks)
        for m in model.modules()
    )
    assert hooks == 0  # the context manager released them
    cpu_model, _ = runs.load_model(cuda_run, "cpu")
    assert float((maps - gradcam(cpu_model, x)).abs().mean()) < 0.05  # TF32 convolutions aside
    share = cam_mass_in_mask(maps, draw_swap(8, 4, pr=1.0, generator=_gen(0)).pixel_mask(16, 16))
    assert share.shape == (8,)
