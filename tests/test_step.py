"""The training step as a unit (ipskit.step) and what its capture in a CUDA graph relies on, on
the CPU: the eager step is the loop's old step, a learning rate held in a tensor follows the
schedule in place, checkpoints of a captured run hold plain floats, and the capture setting is
checked. The capture itself needs a GPU: tests/test_cuda.py."""

import copy
import io

import pytest
import torch
from torch import nn
from train_helpers import cache_datasets, tiny

from ipskit.checks import InputError
from ipskit.config import TrainConfig
from ipskit.methods import build_method
from ipskit.step import (
    CapturedStep,
    TrainStep,
    keep_rate_tensors,
    lr_value,
    portable_state,
    use_tensor_lr,
)
from ipskit.train import fit, lr_factor, prepare_data


def _model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 16), nn.ReLU(), nn.Linear(16, 4))


def _batch(n=16, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 8, 8, generator=g), torch.arange(n) % 4


def _schedule(opt, steps=8):
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, steps, 2, "cosine"))


def _ips(**changes):
    cfg = TrainConfig(method="ips", grid=2, image_size=8, **changes)
    return build_method(cfg, num_classes=4, image_size=8, fill=(0.5, 0.5, 0.5))


def test_train_step_is_the_method_step_backward_and_update():
    """A TrainStep call changes the weights exactly as the loop's steps always did, and its
    sums are the loss, ce, kd (times the samples) and the correct count of that step."""
    method, (x, y) = _ips(), _batch()
    x, y = x.repeat(2, 1, 1, 1), y.repeat(2)  # 16 pairs: anchors then partners, same classes
    model_a, model_b = _model(), _model()
    opt_a = torch.optim.SGD(model_a.parameters(), lr=0.1, momentum=0.9)
    opt_b = torch.optim.SGD(model_b.parameters(), lr=0.1, momentum=0.9)
    gen_a, gen_b = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    step = TrainStep(model_a, method, opt_a, gen_a)
    for _ in range(3):
        out = step(x, y)
        ref = method.step(model_b, x, y, gen_b)
        opt_b.zero_grad(set_to_none=True)
        ref.loss.backward()
        opt_b.step()
        n = 16  # anchors
        assert (out.samples, out.scored) == (n, ref.targets.shape[0])
        correct = (ref.logits.argmax(1) == ref.targets).sum().item()
        expected = [ref.loss.item() * n, ref.ce.item() * n, ref.kd.item() * n, correct]
        assert out.sums.dtype == torch.float64
        assert out.sums.tolist() == pytest.approx(expected, rel=1e-6)
    for a, b in zip(model_a.parameters(), model_b.parameters()):
        assert torch.equal(a, b)


def test_tensor_lr_follows_the_schedule_in_place_and_trains_like_a_float_lr():
    """A captured update reads the rate from one tensor: the scheduler must fill that same
    tensor (a new one would leave the graph reading a stale rate), and training with it must
    match training with float rates."""
    method, (x, y) = _ips(), _batch()
    x, y = x.repeat(2, 1, 1, 1), y.repeat(2)
    runs = []
    for tensor_lr in (False, True):
        model = _model()
        opt = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9, weight_decay=5e-4)
        sched = _schedule(opt)
        if tensor_lr:
            use_tensor_lr(opt, torch.device("cpu"))
        lr_tensor, rates = opt.param_groups[0]["lr"], []
        step = TrainStep(model, method, opt, torch.Generator().manual_seed(0))
        for _ in range(6):
            step(x, y)
            rates.append(lr_value(opt.param_groups[0]["lr"]))
            sched.step()
            assert opt.param_groups[0]["lr"] is lr_tensor or not tensor_lr
        runs.append((rates, [p.detach().clone() for p in model.parameters()]))
    (rates_f, weights_f), (rates_t, weights_t) = runs
    assert rates_t == pytest.approx(rates_f, rel=1e-6)  # float32 tensor vs Python float
    assert rates_f == pytest.approx([0.2 * lr_factor(s, 8, 2, "cosine") for s in range(6)])
    for a, b in zip(weights_f, weights_t):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_rate_tensors_survive_a_scheduler_that_assigns_new_rates():
    """The graph reads the rate from the tensors it was captured with: whatever a scheduler
    puts in the param group is copied into them before the next replay."""
    opt = torch.optim.SGD(_model().parameters(), lr=0.2, momentum=0.9)
    use_tensor_lr(opt, torch.device("cpu"))
    rates = [g["lr"] for g in opt.param_groups]
    keep_rate_tensors(opt, rates)  # nothing to do
    assert opt.param_groups[0]["lr"] is rates[0] and rates[0].item() == pytest.approx(0.2)
    opt.param_groups[0]["lr"] = 0.05  # what an older scheduler does
    keep_rate_tensors(opt, rates)
    assert opt.param_groups[0]["lr"] is rates[0] and rates[0].item() == pytest.approx(0.05)
    opt.param_groups[0]["lr"] = torch.tensor(0.01)  # a new tensor
    keep_rate_tensors(opt, rates)
    assert opt.param_groups[0]["lr"] is rates[0] and rates[0].item() == pytest.approx(0.01)


def test_portable_state_holds_floats_and_resumes_an_eager_run():
    """A captured run's checkpoint (rates in device tensors) loads into a plain optimizer and
    scheduler, which continue the schedule where it stopped."""
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9)
    sched = _schedule(opt)
    use_tensor_lr(opt, torch.device("cpu"))
    step = TrainStep(model, _ips(), opt, torch.Generator().manual_seed(0))
    x, y = _batch()
    for _ in range(3):
        step(x.repeat(2, 1, 1, 1), y.repeat(2))
        sched.step()
    saved = {"optimizer": portable_state(opt), "scheduler": portable_state(sched)}
    buf = io.BytesIO()
    torch.save(saved, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)
    groups = loaded["optimizer"]["param_groups"]
    assert all(type(g["lr"]) is float and type(g["initial_lr"]) is float for g in groups)
    assert all(type(v) is float for v in loaded["scheduler"]["_last_lr"])
    assert "momentum_buffer" in next(iter(loaded["optimizer"]["state"].values()))

    model2 = copy.deepcopy(model)
    opt2 = torch.optim.SGD(model2.parameters(), lr=0.2, momentum=0.9)
    sched2 = _schedule(opt2)
    opt2.load_state_dict(loaded["optimizer"])
    sched2.load_state_dict(loaded["scheduler"])
    sched.step(), sched2.step()
    assert opt2.param_groups[0]["lr"] == pytest.approx(lr_value(opt.param_groups[0]["lr"]))
    assert opt2.param_groups[0]["lr"] == pytest.approx(0.2 * lr_factor(4, 8, 2, "cosine"))


def test_capture_setting_is_checked_and_cpu_runs_are_eager(tmp_path, monkeypatch):
    cache_datasets(monkeypatch)
    with pytest.raises(InputError, match=r"unknown capture .yes.; choose one of: auto, on, off"):
        TrainConfig(capture="yes")
    with pytest.raises(InputError, match="capture 'on' needs a CUDA device.*--capture auto or off"):
        fit(tiny(tmp_path, capture="on", device="cpu"), progress=False, verbose=False)
    assert not (tmp_path / tiny(tmp_path).run_name).exists()  # refused before the folder
    summary = fit(tiny(tmp_path, method="ips"), progress=False, verbose=False)
    assert summary["train_step"] == "eager"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only refusal")
def test_captured_step_refuses_a_machine_without_cuda():
    step = TrainStep(_model(), _ips(), torch.optim.SGD(_model().parameters(), lr=0.1), None)
    with pytest.raises(ValueError, match="warmup must be >= 1"):
        CapturedStep(step, warmup=0)
    with pytest.raises(RuntimeError, match="needs a CUDA device"):
        CapturedStep(step)


def test_pair_batches_reach_the_device_in_one_copy_per_epoch(tmp_path, monkeypatch):
    """The in-memory loader moves an epoch's pair indices at once: a copy per batch from
    pageable memory would make a GPU's host wait every step. Same batches as before."""
    cache_datasets(monkeypatch)
    data = prepare_data(tiny(tmp_path, method="ips", augment=False), torch.device("cpu"))
    loader = data.train_loader
    loader.set_epoch(2)
    sampler_batches = [list(b) for b in loader.batch_sampler]
    copies = []
    real_to = torch.Tensor.to

    def counting_to(self, *args, **kwargs):
        copies.append(self.shape)
        return real_to(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "to", counting_to)
    batches = list(loader)
    monkeypatch.undo()
    assert len(copies) == 1 and copies[0][0] == sum(len(b) for b in sampler_batches)
    assert len(batches) == len(sampler_batches)
    for (x, y), idx in zip(batches, sampler_batches):
        assert torch.equal(y, loader.y[idx])
        assert torch.equal(x, loader.x[idx].float() / 255)
