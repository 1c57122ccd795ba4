"""Tiny trained runs for the explorer's tests (tests/test_app.py, tests/test_app_browser.py).

Trains, once per test session, two demo-like runs (``demo/ce``, ``demo/ips``) and a 2 x 2
grid x pr sweep with its ``results.csv``, each for one epoch on a slice of ``digits`` with the
smallest model: a few seconds on a CPU. Both test files call :func:`tiny_runs`; the folder is
built on the first call and shared after that.
"""

from __future__ import annotations

from pathlib import Path

_BUILT: dict[str, Path] = {}

TINY = dict(
    dataset="digits", model="smallcnn", epochs=1, max_train_samples=128, batch_size=64, device="cpu"
)


def tiny_runs(tmp_path_factory) -> Path:
    """A runs folder holding demo/ce, demo/ips and sweep/ (4 runs + results.csv)."""
    if "root" not in _BUILT:
        from ipskit.config import TrainConfig
        from ipskit.sweep import run_sweep
        from ipskit.train import fit

        root = tmp_path_factory.mktemp("app_runs")
        for method in ("ce", "ips"):
            fit(
                TrainConfig(method=method, out_dir=str(root), name=f"demo/{method}", **TINY),
                progress=False,
                verbose=False,
            )
        run_sweep(
            {
                "method": ["ips"],
                "grid": [2, 4],
                "pr": [0.5, 1.0],
                "out_dir": [str(root)],
                **{k: [v] for k, v in TINY.items()},
            },
            "sweep",
            progress=False,
        )
        _BUILT["root"] = root
    return _BUILT["root"]
