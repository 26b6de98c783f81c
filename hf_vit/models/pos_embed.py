"""Resizing learned position embeddings to another token grid.

Travels to the Hub with the modeling code, so it imports nothing from hf_vit.
"""

import torch
from torch.nn import functional as F


def resize_pos_embed(
    pos_embed: torch.Tensor,
    old_grid: tuple[int, int],
    new_grid: tuple[int, int],
    num_prefix_tokens: int = 1,
    method: str = "official",
) -> torch.Tensor:
    """Resize `pos_embed` (1, prefix + old_h*old_w, D) to the grid `new_grid`, keeping the prefix (cls) slots.

    `"official"` is bilinear with aligned corners, which is what `scipy.ndimage.zoom(order=1)` computes in the
    official code; `"bicubic"` matches timm and transformers (align_corners=False).
    """
    # A symbolic grid (torch.export or torch.compile with dynamic shapes) always takes the resize path: comparing
    # it would pin the traced graph to one size, and resizing to the same grid is the identity in both methods.
    symbolic = any(isinstance(side, torch.SymInt) for side in new_grid)
    if not symbolic and tuple(old_grid) == tuple(new_grid):
        return pos_embed
    if method not in ("official", "bicubic"):
        raise ValueError(f"Unknown position-embedding interpolation {method!r}; use 'official' or 'bicubic'.")
    prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    dim = grid.shape[-1]
    # Interpolate in at least float32: bf16 grids would lose the small differences between neighbours.
    grid = grid.reshape(1, old_grid[0], old_grid[1], dim).permute(0, 3, 1, 2)
    grid = grid.to(torch.promote_types(grid.dtype, torch.float32))
    if method == "official":
        grid = F.interpolate(grid, size=tuple(new_grid), mode="bilinear", align_corners=True)
    else:
        grid = F.interpolate(grid, size=tuple(new_grid), mode="bicubic", align_corners=False)
    grid = grid.to(pos_embed.dtype).permute(0, 2, 3, 1).reshape(1, new_grid[0] * new_grid[1], dim)
    return torch.cat([prefix, grid], dim=1)
