"""Regenerate the README's pictures: `python docs/figures.py` (writes docs/img/*.png).

swap_pair.png: two pairs of same-class digits (the built-in data) before and after a 4x4
patch swap, with the exchanged cells outlined.
"""

from pathlib import Path

import torch

from ipskit.data import load_dataset, to_float01
from ipskit.plots import swap_pair_figure
from ipskit.swap import apply_swap, draw_swap

OUT = Path(__file__).parent / "img"


def swap_pair_png(path: Path) -> None:
    bundle = load_dataset("digits")
    x, y = to_float01(bundle.train_x), bundle.train_y
    picks_a, picks_b = [], []
    for cls in (3, 7):  # two classes, two images of each
        idx = torch.nonzero(y == cls).flatten()
        picks_a.append(int(idx[0]))
        picks_b.append(int(idx[1]))
    x_a, x_b = x[picks_a], x[picks_b]
    decision = draw_swap(len(picks_a), grid=4, pr=1.0, generator=torch.Generator().manual_seed(3))
    out_a, out_b = apply_swap(x_a, x_b, decision)
    fig = swap_pair_figure(x_a, x_b, out_a, out_b, decision)
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    OUT.mkdir(exist_ok=True)
    swap_pair_png(OUT / "swap_pair.png")
    print(f"wrote {OUT / 'swap_pair.png'}")
