"""Intra-class patch swap: exchange a random subset of grid cells between two images.

From "Intra-class Patch Swap for Self-Distillation" (Choi et al., Neurocomputing 2025,
arXiv 2505.14124). Two images of the same class are cut into the same g x g grid and a random
subset of cells is exchanged at the same positions, so one result tends to keep the
discriminative parts and the other the weak ones.

The random choices and their application are kept apart (docs/ARCHITECTURE.md, Conventions,
"Randomness apart from application"):

    decision = draw_swap(batch_size=B, grid=4, pr=0.5, generator=g)   # which pairs, which cells
    x_a2, x_b2 = apply_swap(x_a, x_b, decision)                       # deterministic
    mask = decision.pixel_mask(H, W)                                  # [B, 1, H, W], for drawing

or in one call: ``x_a2, x_b2, decision = patch_swap(x_a, x_b, grid=4, pr=0.5)``.

Settings are checked where they enter (the public functions, ``PatchSwap.__init__``). A training
step whose settings were checked once calls ``_draw_swap`` / ``_apply_swap``, which skip those
checks (``ipskit.methods.IPS.step``); only the grid is still checked against the image size.

Sizes that g does not divide: row ``r`` belongs to cell ``floor(r * g / H)``, so cells differ
by at most one pixel and every pixel belongs to exactly one cell (nothing is dropped or zeroed).

On a GPU a swap is 9 kernels and never waits for the device: no ``.item()``, no
data-dependent shapes, and the pixel-to-cell tables are built once per (H, W, g, device) and
cached, so it can be captured in a CUDA graph (run it once before capturing, to fill that
cache; ``python benchmarks/bench_swap.py --device cuda`` captures and replays it).
"""

from __future__ import annotations

import functools
import numbers
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ipskit.checks import InputError, check_float, check_int

__all__ = [
    "SwapDecision",
    "draw_swap",
    "apply_swap",
    "patch_swap",
    "PatchSwap",
    "pixel_mask",
    "resolve_grid",
    "cell_index",
]


@dataclass(frozen=True)
class SwapDecision:
    """The random choices of one patch swap, ready to be applied or drawn.

    Attributes:
        swapped: bool [B], whether pair i is swapped at all (probability ``pr``).
        cells: bool [B, g, g], the cells exchanged for pair i (all False when not swapped).
        grid: g, the number of cells along each side.
    """

    swapped: Tensor
    cells: Tensor
    grid: int

    @property
    def num_swapped(self) -> Tensor:
        """long [B]: how many cells each pair exchanges (0 for pairs not swapped)."""
        return self.cells.flatten(1).sum(dim=1)

    def pixel_mask(self, height: int, width: int) -> Tensor:
        """bool [B, 1, H, W]: True where pixels come from the partner image."""
        return pixel_mask(self, height, width)

    def to(self, device: torch.device | str) -> SwapDecision:
        return SwapDecision(self.swapped.to(device), self.cells.to(device), self.grid)

    def __len__(self) -> int:
        return int(self.swapped.shape[0])


class _WrongType(InputError, TypeError):
    """Bad input of the wrong type: an InputError like all bad input (one line at the command
    line), and still the TypeError this module raised for it before ``ipskit.checks``."""


_GRID_RULE = "(cells per side; grid 1 is a single cell: nothing can be swapped)"


def _check_grid(grid) -> int:
    try:
        return check_int("grid", grid, minimum=2, why=_GRID_RULE)
    except InputError as err:
        if isinstance(grid, numbers.Integral) and not isinstance(grid, bool):
            raise  # an integer out of range
        raise _WrongType(str(err)) from None


def _check_generator(generator) -> None:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise _WrongType(
            f"generator must be a torch.Generator or None, got "
            f"{type(generator).__name__} {generator!r}"
        )


def _check_settings(
    grid, patch_size, pr, swap_fraction
) -> tuple[int | None, int | None, float, float | None]:
    """(grid, patch_size, pr, swap_fraction) checked and as plain Python numbers."""
    if (grid is None) == (patch_size is None):
        raise InputError(
            f"give exactly one of grid and patch_size, got grid={grid!r}, patch_size={patch_size!r}"
        )
    if grid is not None:
        grid = _check_grid(grid)
    else:
        patch_size = check_int("patch_size", patch_size, minimum=1, why="(pixels per cell side)")
    pr = check_float("pr (swap probability per pair)", pr, 0, 1)
    if swap_fraction is not None:
        swap_fraction = check_float(
            "swap_fraction", swap_fraction, 0, 1, lo_open=True, hi_open=True
        )
    return grid, patch_size, pr, swap_fraction


def _fit_grid(height: int, width: int, grid: int | None, patch_size: int | None) -> int:
    """The checked grid or patch size, checked against this image size: g."""
    if patch_size is not None:
        if height % patch_size or width % patch_size or height // patch_size != width // patch_size:
            raise InputError(
                f"patch_size {patch_size} does not split a {height}x{width} image "
                f"into the same whole number of cells per side; pass grid=g instead "
                f"(cells may then differ by one pixel)"
            )
        if height // patch_size < 2:
            raise InputError(
                f"patch_size {patch_size} makes a {height}x{width} image a single "
                f"cell: nothing can be swapped; use patch_size <= {height // 2}"
            )
        return height // patch_size
    if grid > min(height, width):
        raise InputError(
            f"grid {grid} has more cells per side than the {height}x{width} image "
            f"has pixels; use grid <= {min(height, width)}"
        )
    return grid


def resolve_grid(
    height: int, width: int, grid: int | None = None, patch_size: int | None = None
) -> int:
    """Turn ``grid`` or ``patch_size`` into the number of cells per side, checking both.

    Args:
        height, width: image size in pixels.
        grid: cells per side (g). Exactly one of ``grid`` and ``patch_size`` must be given.
        patch_size: cell side in pixels (p); must divide H and W and give the same g on both.
    Returns:
        g, an int >= 2 with at least one pixel per cell.
    Raises:
        InputError: neither or both given, a value of the wrong type (also a TypeError), or a
            size that does not fit the image.
    """
    grid, patch_size, _, _ = _check_settings(grid, patch_size, 0.0, None)
    return _fit_grid(height, width, grid, patch_size)


def draw_swap(
    batch_size: int,
    grid: int,
    pr: float = 0.5,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    swap_fraction: float | None = None,
) -> SwapDecision:
    """Draw which pairs are swapped and which cells they exchange.

    Args:
        batch_size: number of pairs B.
        grid: cells per side g (>= 2).
        pr: probability that a pair is swapped at all, in [0, 1].
        generator: source of randomness (a torch.Generator, or None for torch's global RNG).
            Draws happen on the generator's device and the result is moved to ``device``; pass
            a generator on the data's device to avoid a copy.
        device: where the decision lives (default: the generator's device, else CPU).
        swap_fraction: None (default) draws k uniformly in {1, ..., g*g - 1}; a float in (0, 1)
            fixes k = round(fraction * g*g), clipped to that range.
    Returns:
        A SwapDecision with ``swapped`` [B] and ``cells`` [B, g, g].
    Raises:
        InputError: a setting out of range or of the wrong type.
    """
    batch_size = check_int("batch_size", batch_size, minimum=0)
    grid, _, pr, swap_fraction = _check_settings(grid, None, pr, swap_fraction)
    _check_generator(generator)
    return _draw_swap(batch_size, grid, pr, generator, device, swap_fraction)


def _draw_swap(
    batch_size: int,
    grid: int,
    pr: float,
    generator: torch.Generator | None,
    device: torch.device | str | None,
    swap_fraction: float | None,
) -> SwapDecision:
    """:func:`draw_swap` without checks, for settings checked once (a training step)."""
    n = grid * grid
    draw_device = generator.device if generator is not None else torch.device(device or "cpu")

    # 1. Per pair, one uniform u decides both whether the pair swaps (u < pr) and, if it does,
    #    how many cells k. For k uniform in 1..n-1: t = (n-1)(1 - u/pr) is > 0 iff u < pr and
    #    then uniform in (0, n-1], and k = ceil(t) is the number of ranks 0..n-1 below t.
    #    Computed as (n-1) - alpha*u, t never exceeds n-1: never all cells.
    u = torch.rand(batch_size, 1, 1, generator=generator, device=draw_device)  # (B, 1, 1)
    if swap_fraction is None:
        top, alpha = (n - 1, (n - 1) / pr) if pr > 0 else (-1, 0.0)
        t = torch.rsub(u, top, alpha=alpha)  # (B, 1, 1)
        swapped = t > 0
    else:
        swapped = u < pr
        t = swapped * min(max(round(swap_fraction * n), 1), n - 1)  # (B, 1, 1), k or 0
    # 2. Which cells: argsort of n uniform scores is a uniform random permutation, so the cells
    #    whose entry is below t are a uniform random subset of size ceil(t) (exact even when
    #    scores tie: it is still a permutation).
    perm = torch.rand(batch_size, n, generator=generator, device=draw_device).argsort(dim=1)
    cells = perm.view(batch_size, grid, grid) < t  # (B, g, g)
    decision = SwapDecision(swapped.view(batch_size), cells, grid)
    return decision if device is None else decision.to(device)


def cell_index(size: int, grid: int, device: torch.device | str | None = None) -> Tensor:
    """long [size]: the cell (0..grid-1) each pixel row/column belongs to."""
    return torch.arange(size, device=device) * grid // size


@functools.lru_cache(maxsize=64)
def _cell_of_pixel(height: int, width: int, grid: int, device: torch.device) -> Tensor:
    """long [H*W]: the flat cell id (row cell * g + column cell) of every pixel, built once per
    size and device so that a swap only indexes it (no per-call arange on the device)."""
    with torch.inference_mode(False):  # usable outside inference mode even if built inside it
        rows, cols = cell_index(height, grid, device), cell_index(width, grid, device)
        return (rows[:, None] * grid + cols[None, :]).view(-1)


def pixel_mask(decision: SwapDecision, height: int, width: int) -> Tensor:
    """Expand a decision's cell mask to pixels.

    Returns:
        bool [B, 1, H, W], True where a pixel is taken from the partner image.
    """
    g = decision.grid
    if g > min(height, width):
        raise InputError(
            f"a grid of {g} cells per side does not fit a {height}x{width} image; "
            f"use grid <= {min(height, width)}"
        )
    b, cell_of_pixel = len(decision), _cell_of_pixel(height, width, g, decision.cells.device)
    # One gather along the cells (on a CPU 2-4x faster than advanced indexing or index_select).
    flat = decision.cells.reshape(b, g * g).gather(1, cell_of_pixel.expand(b, -1))  # (B, H*W)
    return flat.view(b, 1, height, width)  # (B, 1, H, W)


def _check_pair(x_a: Tensor, x_b: Tensor) -> None:
    if not isinstance(x_a, Tensor) or not isinstance(x_b, Tensor):
        raise _WrongType(
            f"x_a and x_b must be tensors, got {type(x_a).__name__} and {type(x_b).__name__}"
        )
    if x_a.dim() != 4:
        raise InputError(f"x_a must be a 4-D batch [B, C, H, W], got shape {tuple(x_a.shape)}")
    if x_a.shape != x_b.shape:
        raise InputError(
            f"x_a and x_b must have the same shape, got {tuple(x_a.shape)} and {tuple(x_b.shape)}"
        )
    if x_a.dtype != x_b.dtype:
        raise _WrongType(f"x_a and x_b must have the same dtype, got {x_a.dtype} and {x_b.dtype}")
    if x_a.device != x_b.device:
        raise InputError(
            f"x_a and x_b must be on the same device, got {x_a.device} and {x_b.device}"
        )


def apply_swap(x_a: Tensor, x_b: Tensor, decision: SwapDecision) -> tuple[Tensor, Tensor]:
    """Apply a drawn swap. Deterministic; works for any dtype (uint8 included) and device.

    Args:
        x_a, x_b: [B, C, H, W] images, pair i is (x_a[i], x_b[i]).
        decision: from ``draw_swap`` with the same B.
    Returns:
        (x_a', x_b'), each [B, C, H, W]: x_a' takes the swapped cells from x_b and vice versa.
    """
    _check_pair(x_a, x_b)
    if len(decision) != x_a.shape[0]:
        raise InputError(f"decision is for {len(decision)} pairs but the batch has {x_a.shape[0]}")
    return _apply_swap(x_a, x_b, decision)


def _apply_swap(x_a: Tensor, x_b: Tensor, decision: SwapDecision) -> tuple[Tensor, Tensor]:
    """:func:`apply_swap` without the pair checks (the grid still has to fit the image)."""
    mask = pixel_mask(decision.to(x_a.device), x_a.shape[2], x_a.shape[3])  # (B, 1, H, W)
    return torch.where(mask, x_b, x_a), torch.where(mask, x_a, x_b)


def _swap(
    x_a: Tensor,
    x_b: Tensor,
    grid: int | None,
    patch_size: int | None,
    pr: float,
    generator: torch.Generator | None,
    swap_fraction: float | None,
) -> tuple[Tensor, Tensor, SwapDecision]:
    """Draw + apply for checked settings: checks only what depends on this batch."""
    _check_pair(x_a, x_b)
    _check_generator(generator)
    g = _fit_grid(x_a.shape[2], x_a.shape[3], grid, patch_size)
    decision = _draw_swap(x_a.shape[0], g, pr, generator, x_a.device, swap_fraction)
    return (*_apply_swap(x_a, x_b, decision), decision)


def patch_swap(
    x_a: Tensor,
    x_b: Tensor,
    grid: int | None = None,
    patch_size: int | None = None,
    pr: float = 0.5,
    generator: torch.Generator | None = None,
    swap_fraction: float | None = None,
) -> tuple[Tensor, Tensor, SwapDecision]:
    """Swap random cells between same-class pairs (draw + apply in one call).

    Args:
        x_a, x_b: [B, C, H, W] images of the same shape and dtype; pair i shares a class.
        grid: cells per side g; or ``patch_size`` p in pixels (g = H / p). Give exactly one.
        pr: per-pair swap probability in [0, 1].
        generator: a torch.Generator for reproducible draws (None: torch's global RNG).
        swap_fraction: None for k uniform in {1..g*g-1}, or a fixed fraction of cells.
    Returns:
        (x_a', x_b', decision): swapped images [B, C, H, W] and the SwapDecision used.
    Raises:
        InputError: bad images or settings (a wrong type is also a TypeError).
    """
    grid, patch_size, pr, swap_fraction = _check_settings(grid, patch_size, pr, swap_fraction)
    return _swap(x_a, x_b, grid, patch_size, pr, generator, swap_fraction)


class PatchSwap(nn.Module):
    """Module form of :func:`patch_swap` with fixed settings, checked once here.

    Example:
        >>> swap = PatchSwap(grid=4, pr=0.5)
        >>> x_a2, x_b2, decision = swap(x_a, x_b, generator=torch.Generator().manual_seed(0))
    """

    def __init__(
        self,
        grid: int | None = None,
        patch_size: int | None = None,
        pr: float = 0.5,
        swap_fraction: float | None = None,
    ):
        super().__init__()
        self.grid, self.patch_size, self.pr, self.swap_fraction = _check_settings(
            grid, patch_size, pr, swap_fraction
        )

    def forward(
        self, x_a: Tensor, x_b: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor, SwapDecision]:
        return _swap(x_a, x_b, self.grid, self.patch_size, self.pr, generator, self.swap_fraction)

    def extra_repr(self) -> str:
        size = f"grid={self.grid}" if self.grid is not None else f"patch_size={self.patch_size}"
        return f"{size}, pr={self.pr}, swap_fraction={self.swap_fraction}"
