"""Split a large image into overlapping tiles whose owned regions partition the image.

Every tile has the full ``size`` (the last row/column of tiles is shifted back to end at the
image border), so a batch of tiles needs no padding and the model sees the same context
everywhere. The *owned* region of a tile ends half-way through each overlap with a neighbour:
the owned regions partition the image, which gives every point exactly one owning tile
(used by the seam merge in :mod:`em_lightning.inference.merge`).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Tile", "axis_starts", "tile_grid"]


@dataclass(frozen=True)
class Tile:
    """One tile: pixel extent ``[x0, x1) x [y0, y1)`` and owned region in image coordinates.

    ``inner`` flags the edges (left, top, right, bottom) that lie inside the image, i.e. where
    an object can be cut by the tile rather than by the image border.
    """

    index: int
    x0: int
    y0: int
    x1: int
    y1: int
    own: tuple[float, float, float, float]
    inner: tuple[bool, bool, bool, bool]

    @property
    def shape(self) -> tuple[int, int]:
        return self.y1 - self.y0, self.x1 - self.x0


def axis_starts(length: int, size: int | None, overlap: int) -> list[int]:
    """Tile start offsets along one axis: stride ``size - overlap``, last tile flush with the
    end. One tile when tiling is off (``size`` None or <= 0) or the axis fits in one tile."""
    if size is None or size <= 0 or length <= size:
        return [0]
    if not 0 <= overlap < size:
        raise ValueError(f"tile overlap must be in [0, tile size {size}), got {overlap}")
    stride = size - overlap
    starts = list(range(0, length - size, stride))
    return starts + [length - size]


def _owned(starts: list[int], ends: list[int], length: int) -> list[tuple[float, float]]:
    """Owned interval of each tile: split every overlap in the middle."""
    lo = [0.0] + [(s + e) / 2 for s, e in zip(starts[1:], ends[:-1])]
    hi = lo[1:] + [float(length)]
    return list(zip(lo, hi))


def tile_grid(height: int, width: int, size: int | None, overlap: int) -> list[Tile]:
    """Row-major tiles covering an image of ``height x width`` pixels."""
    if height <= 0 or width <= 0:
        raise ValueError(f"image must have a positive size, got {height}x{width}")
    xs, ys = axis_starts(width, size, overlap), axis_starts(height, size, overlap)
    x_ends = [min(x + size, width) if size and size > 0 else width for x in xs]
    y_ends = [min(y + size, height) if size and size > 0 else height for y in ys]
    x_own, y_own = _owned(xs, x_ends, width), _owned(ys, y_ends, height)
    tiles = []
    for j, (y0, y1) in enumerate(zip(ys, y_ends)):
        for i, (x0, x1) in enumerate(zip(xs, x_ends)):
            inner = (x0 > 0, y0 > 0, x1 < width, y1 < height)
            own = (x_own[i][0], y_own[j][0], x_own[i][1], y_own[j][1])
            tiles.append(Tile(len(tiles), x0, y0, x1, y1, own, inner))
    return tiles
