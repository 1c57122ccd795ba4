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

Sizes that g does not divide: row ``r`` belongs to cell ``floor(r * g / H)``, so cells differ
by at most one pixel and every pixel belongs to exactly one cell (nothing is dropped or zeroed).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = ["SwapDecision", "draw_swap", "apply_swap", "patch_swap", "PatchSwap", "pixel_mask",
           "resolve_grid", "cell_index"]


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

    def to(self, device: torch.device | str) -> "SwapDecision":
        return SwapDecision(self.swapped.to(device), self.cells.to(device), self.grid)

    def __len__(self) -> int:
        return int(self.swapped.shape[0])


def resolve_grid(height: int, width: int, grid: int | None = None,
                 patch_size: int | None = None) -> int:
    """Turn ``grid`` or ``patch_size`` into the number of cells per side, checking both.

    Args:
        height, width: image size in pixels.
        grid: cells per side (g). Exactly one of ``grid`` and ``patch_size`` must be given.
        patch_size: cell side in pixels (p); must divide H and W and give the same g on both.
    Returns:
        g, an int >= 2 with at least one pixel per cell.
    """
    if (grid is None) == (patch_size is None):
        raise ValueError(f"give exactly one of grid and patch_size, got grid={grid!r}, "
                         f"patch_size={patch_size!r}")
    if patch_size is not None:
        if isinstance(patch_size, bool) or not isinstance(patch_size, int) or patch_size < 1:
            raise ValueError(f"patch_size must be a positive int (pixels), got {patch_size!r}")
        if height % patch_size or width % patch_size or height // patch_size != width // patch_size:
            raise ValueError(f"patch_size {patch_size} does not split a {height}x{width} image "
                             f"into the same whole number of cells per side; pass grid=g instead "
                             f"(cells may then differ by one pixel)")
        grid = height // patch_size
    if isinstance(grid, bool) or not isinstance(grid, int):
        raise TypeError(f"grid must be an int, got {type(grid).__name__}")
    if grid < 1:
        raise ValueError(f"grid must be >= 2 (cells per side), got {grid}")
    if grid == 1:
        raise ValueError("grid 1 has a single cell: nothing can be swapped without exchanging "
                         "the whole images; use grid >= 2")
    if grid > min(height, width):
        raise ValueError(f"grid {grid} has more cells per side than the {height}x{width} image "
                         f"has pixels; use grid <= {min(height, width)}")
    return grid


def _check_pr(pr: float) -> float:
    if isinstance(pr, bool) or not isinstance(pr, (int, float)) or not 0.0 <= pr <= 1.0:
        raise ValueError(f"pr (swap probability per pair) must be a number in [0, 1], got {pr!r}")
    return float(pr)


def draw_swap(batch_size: int, grid: int, pr: float = 0.5,
              generator: torch.Generator | None = None, device: torch.device | str | None = None,
              swap_fraction: float | None = None) -> SwapDecision:
    """Draw which pairs are swapped and which cells they exchange.

    Args:
        batch_size: number of pairs B.
        grid: cells per side g (>= 2).
        pr: probability that a pair is swapped at all, in [0, 1].
        generator: source of randomness. Draws happen on the generator's device and the result
            is moved to ``device``; pass a generator on the data's device to avoid a copy.
        device: where the decision lives (default: the generator's device, else CPU).
        swap_fraction: None (default) draws k uniformly in {1, ..., g*g - 1}; a float in (0, 1)
            fixes k = round(fraction * g*g), clipped to that range.
    Returns:
        A SwapDecision with ``swapped`` [B] and ``cells`` [B, g, g].
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 0:
        raise ValueError(f"batch_size must be an int >= 0, got {batch_size!r}")
    if isinstance(grid, bool) or not isinstance(grid, int) or grid < 2:
        raise ValueError(f"grid must be an int >= 2 (a single cell cannot be swapped), got {grid!r}")
    pr = _check_pr(pr)
    n = grid * grid
    draw_device = generator.device if generator is not None else torch.device(device or "cpu")

    # 1. Per pair: swap at all?
    swapped = torch.rand(batch_size, generator=generator, device=draw_device) < pr  # (B,)
    # 2. Per pair: how many cells k, never 0 and never all n.
    if swap_fraction is None:
        k = torch.randint(1, n, (batch_size,), generator=generator, device=draw_device)  # (B,)
    else:
        if not 0.0 < float(swap_fraction) < 1.0:
            raise ValueError(f"swap_fraction must be in (0, 1) or None, got {swap_fraction!r}")
        k = torch.full((batch_size,), min(max(round(swap_fraction * n), 1), n - 1),
                       device=draw_device)
    # 3. Which k cells: the k smallest of n uniform scores form a uniform random k-subset.
    # One argsort, then scatter "rank < k" back to the cells (exact even when scores tie).
    order = torch.rand(batch_size, n, generator=generator, device=draw_device).argsort(dim=1)
    first_k = torch.arange(n, device=draw_device) < k[:, None]  # (B, n), by rank
    cells = torch.zeros_like(first_k).scatter_(1, order, first_k) & swapped[:, None]  # (B, n)
    decision = SwapDecision(swapped, cells.view(batch_size, grid, grid), grid)
    return decision if device is None else decision.to(device)


def cell_index(size: int, grid: int, device: torch.device | str | None = None) -> Tensor:
    """long [size]: the cell (0..grid-1) each pixel row/column belongs to."""
    return torch.arange(size, device=device) * grid // size


def pixel_mask(decision: SwapDecision, height: int, width: int) -> Tensor:
    """Expand a decision's cell mask to pixels.

    Returns:
        bool [B, 1, H, W], True where a pixel is taken from the partner image.
    """
    g = decision.grid
    if g > min(height, width):
        raise ValueError(f"a grid of {g} cells per side does not fit a {height}x{width} image")
    dev = decision.cells.device
    # Flat cell id of every pixel, then one gather: [B, g*g] -> [B, H*W].
    cell_of_pixel = cell_index(height, g, dev)[:, None] * g + cell_index(width, g, dev)[None, :]
    flat = decision.cells.reshape(len(decision), g * g)[:, cell_of_pixel.view(-1)]  # (B, H*W)
    return flat.view(len(decision), 1, height, width)  # (B, 1, H, W)


def _check_pair(x_a: Tensor, x_b: Tensor) -> None:
    if not isinstance(x_a, Tensor) or not isinstance(x_b, Tensor):
        raise TypeError(f"x_a and x_b must be tensors, got {type(x_a).__name__} and "
                        f"{type(x_b).__name__}")
    if x_a.dim() != 4:
        raise ValueError(f"x_a must be a 4-D batch [B, C, H, W], got shape {tuple(x_a.shape)}")
    if x_a.shape != x_b.shape:
        raise ValueError(f"x_a and x_b must have the same shape, got {tuple(x_a.shape)} and "
                         f"{tuple(x_b.shape)}")
    if x_a.dtype != x_b.dtype:
        raise TypeError(f"x_a and x_b must have the same dtype, got {x_a.dtype} and {x_b.dtype}")
    if x_a.device != x_b.device:
        raise ValueError(f"x_a and x_b must be on the same device, got {x_a.device} and "
                         f"{x_b.device}")


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
        raise ValueError(f"decision is for {len(decision)} pairs but the batch has "
                         f"{x_a.shape[0]}")
    mask = pixel_mask(decision.to(x_a.device), x_a.shape[2], x_a.shape[3])  # (B, 1, H, W)
    return torch.where(mask, x_b, x_a), torch.where(mask, x_a, x_b)


def patch_swap(x_a: Tensor, x_b: Tensor, grid: int | None = None, patch_size: int | None = None,
               pr: float = 0.5, generator: torch.Generator | None = None,
               swap_fraction: float | None = None) -> tuple[Tensor, Tensor, SwapDecision]:
    """Swap random cells between same-class pairs (draw + apply in one call).

    Args:
        x_a, x_b: [B, C, H, W] images of the same shape and dtype; pair i shares a class.
        grid: cells per side g; or ``patch_size`` p in pixels (g = H / p). Give exactly one.
        pr: per-pair swap probability in [0, 1].
        generator: a torch.Generator for reproducible draws.
        swap_fraction: None for k uniform in {1..g*g-1}, or a fixed fraction of cells.
    Returns:
        (x_a', x_b', decision): swapped images [B, C, H, W] and the SwapDecision used.
    """
    _check_pair(x_a, x_b)
    g = resolve_grid(x_a.shape[2], x_a.shape[3], grid, patch_size)
    _check_pr(pr)
    decision = draw_swap(x_a.shape[0], g, pr, generator=generator, device=x_a.device,
                         swap_fraction=swap_fraction)
    return (*apply_swap(x_a, x_b, decision), decision)


class PatchSwap(nn.Module):
    """Module form of :func:`patch_swap` with fixed settings.

    Example:
        >>> swap = PatchSwap(grid=4, pr=0.5)
        >>> x_a2, x_b2, decision = swap(x_a, x_b, generator=torch.Generator().manual_seed(0))
    """

    def __init__(self, grid: int | None = None, patch_size: int | None = None, pr: float = 0.5,
                 swap_fraction: float | None = None):
        super().__init__()
        if (grid is None) == (patch_size is None):
            raise ValueError(f"give exactly one of grid and patch_size, got grid={grid!r}, "
                             f"patch_size={patch_size!r}")
        self.grid, self.patch_size, self.pr = grid, patch_size, _check_pr(pr)
        self.swap_fraction = swap_fraction

    def forward(self, x_a: Tensor, x_b: Tensor, generator: torch.Generator | None = None
                ) -> tuple[Tensor, Tensor, SwapDecision]:
        return patch_swap(x_a, x_b, self.grid, self.patch_size, self.pr, generator,
                          self.swap_fraction)

    def extra_repr(self) -> str:
        size = f"grid={self.grid}" if self.grid is not None else f"patch_size={self.patch_size}"
        return f"{size}, pr={self.pr}, swap_fraction={self.swap_fraction}"
