"""ipskit: a research and teaching kit for Intra-class Patch Swap (IPS) self-distillation.

IPS (Choi, Jeon, Shukla, Turaga, "Intra-class Patch Swap for Self-Distillation",
Neurocomputing 2025, arXiv 2505.14124) trains one network, no teacher: two images of the same
class exchange random patches and the network learns from both, with cross-entropy on each and
a KL term aligning their softened predictions.

The core, usable in any training loop:
    from ipskit import SameClassPairSampler, split_pair, patch_swap, ips_loss
    x_a, x_b, y = split_pair(x, y)                  # batch from a SameClassPairSampler loader
    x_a, x_b, decision = patch_swap(x_a, x_b, grid=4, pr=0.5)
    out = ips_loss(model(x_a), model(x_b), y)       # out.loss, out.ce, out.kd

See docs/ARCHITECTURE.md for where everything else lives.
"""

# Training and runs (heavier imports: torchvision, the data sets and models).
from ipskit.config import METHOD_NAMES, TrainConfig
from ipskit.losses import BLOG_INTENT, IPSLoss, IPSLossOutput, ips_loss, kl_divergence, pair_teacher
from ipskit.methods import build_method
from ipskit.pairs import SameClassPairSampler, split_pair
from ipskit.runs import list_runs, load_model, load_run
from ipskit.swap import PatchSwap, SwapDecision, apply_swap, draw_swap, patch_swap, pixel_mask
from ipskit.sweep import run_demo, run_sweep
from ipskit.train import evaluate_epoch, fit, train_one_epoch

__version__ = "0.1.0"

__all__ = [
    "BLOG_INTENT",
    "IPSLoss",
    "IPSLossOutput",
    "ips_loss",
    "kl_divergence",
    "pair_teacher",
    "SameClassPairSampler",
    "split_pair",
    "PatchSwap",
    "SwapDecision",
    "apply_swap",
    "draw_swap",
    "patch_swap",
    "pixel_mask",
    "TrainConfig",
    "METHOD_NAMES",
    "build_method",
    "list_runs",
    "load_model",
    "load_run",
    "run_demo",
    "run_sweep",
    "fit",
    "train_one_epoch",
    "evaluate_epoch",
    "__version__",
]
