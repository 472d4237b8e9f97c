"""Merge per-tile detections into one set per image: no duplicates, no cut objects at seams.

The rule (also in the README):

1. Every detection is flagged *cut* when it comes within ``margin`` px of an inner tile edge
   (an edge shared with a neighbouring tile, not the image border): the tile may show only
   part of it. It is *owned* when its centre lies in its tile's owned region (the overlaps are
   split in the middle, so exactly one tile owns each point).
2. Detections that lie entirely in the part of their tile no other tile covers are kept as
   they are: no other tile can have seen them.
3. The others are visited in priority order: not cut first, then owned, then by score. A
   detection is a *duplicate* of an already kept one from another tile when, inside the area
   both tiles cover, their masks (or rotated boxes) overlap with IoU >= ``iou_thr`` (both
   tiles look at the same pixels there, so the same object gives the same outline), or, for
   a cut detection, when ``iou_thr`` of its own area there lies inside the kept one (a
   sliver at a tile edge has an unreliable outline but a reliable position). A duplicate is
   dropped; if both copies are cut (an object larger than the overlap, cut in
   every tile) the fragments are joined (mask union; for rotated boxes the minimum-area
   rectangle around both). Detections from the same tile never suppress each other (the
   model's own NMS already decided there), so touching or overlapping objects survive.

Rotated boxes are compared as their corner polygons (shapely, float64), so the answer is the
same however a tile writes a box (angle + pi, w/h swapped with angle + pi/2); mmcv's rotated IoU,
wrong for such coincident boxes, is not used (see :mod:`em_lightning.evaluation.rotated_iou`).
Joined fragments come back in le90.

An object smaller than the overlap is therefore always taken whole from a tile that sees it
entirely, preferably the one owning its centre; matching is class-agnostic, so the kept copy
(the one that saw the object whole) decides the class.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

import cv2
import numpy as np
from shapely.geometry import Polygon
from shapely.geometry import box as shapely_box

from em_lightning.data.rotated_formats import corners_to_rbox
from em_lightning.inference.detections import Detection
from em_lightning.inference.tiling import Tile

__all__ = ["flag_detection", "merge_tiles", "same_object"]


def flag_detection(det: Detection, tile: Tile, margin: int) -> Detection:
    """Set ``tile``, ``cut`` and ``owned`` of a detection given in image coordinates."""
    x0, y0, x1, y1 = det.box
    left, top, right, bottom = tile.inner
    cut = bool((left and x0 < tile.x0 + margin) or (top and y0 < tile.y0 + margin)
               or (right and x1 > tile.x1 - margin) or (bottom and y1 > tile.y1 - margin))
    cx, cy = det.centre
    ox0, oy0, ox1, oy1 = tile.own
    owned = bool(ox0 <= cx < ox1 and oy0 <= cy < oy1)
    return replace(det, tile=tile.index, cut=cut, owned=owned)


def _shared(a: Tile, b: Tile) -> tuple[int, int, int, int] | None:
    x0, y0, x1, y1 = max(a.x0, b.x0), max(a.y0, b.y0), min(a.x1, b.x1), min(a.y1, b.y1)
    return (x0, y0, x1, y1) if x1 > x0 and y1 > y0 else None


def _overlap(a: Detection, b: Detection, region: tuple[int, int, int, int]
             ) -> tuple[float, float, float]:
    """(intersection, area of a, area of b) of two detections inside ``region``."""
    if a.rbox is not None and b.rbox is not None:
        clip = shapely_box(*region)
        pa = Polygon(a.outline()).intersection(clip)
        pb = Polygon(b.outline()).intersection(clip)
        return float(pa.intersection(pb).area), float(pa.area), float(pb.area)
    if a.mask is None or b.mask is None:
        return 0.0, 0.0, 0.0
    x0 = max(region[0], int(min(a.box[0], b.box[0])))
    y0 = max(region[1], int(min(a.box[1], b.box[1])))
    x1 = min(region[2], int(max(a.box[2], b.box[2])))
    y1 = min(region[3], int(max(a.box[3], b.box[3])))
    if x1 <= x0 or y1 <= y0:
        return 0.0, 0.0, 0.0
    wa, wb = a.window(x0, y0, x1, y1), b.window(x0, y0, x1, y1)
    return (float(np.count_nonzero(wa & wb)), float(np.count_nonzero(wa)),
            float(np.count_nonzero(wb)))


def same_object(det: Detection, other: Detection, region: tuple[int, int, int, int],
                thr: float) -> bool:
    """Inside the area both tiles cover: IoU >= ``thr``; for a cut ``det`` it is enough that
    ``thr`` of its own area there lies inside ``other`` (a cut view's outline, a sliver at
    the tile edge, is unreliable, but where it is is not)."""
    inter, area, other_area = _overlap(det, other, region)
    if inter <= 0:
        return False
    if det.cut and inter >= thr * area:
        return True
    return inter >= thr * (area + other_area - inter)


def _join(a: Detection, b: Detection) -> Detection:
    """One detection from two fragments of an object that every tile cuts."""
    score = max(a.score, b.score)
    if a.rbox is not None and b.rbox is not None:
        pts = np.concatenate([a.outline(), b.outline()]).astype(np.float32)
        corners = cv2.boxPoints(cv2.minAreaRect(pts)).astype(np.float64)
        rbox = np.array(corners_to_rbox(corners), float)
        box = np.array([*corners.min(0), *corners.max(0)], float)
        return replace(a, score=score, rbox=rbox, box=box)
    x0, y0 = (int(min(a.box[i], b.box[i])) for i in (0, 1))
    x1, y1 = (int(max(a.box[i], b.box[i])) for i in (2, 3))
    mask = a.window(x0, y0, x1, y1) | b.window(x0, y0, x1, y1)
    return replace(a, score=score, mask=mask, origin=(x0, y0),
                   box=np.array([x0, y0, x1, y1], float))


def _in_other_tile(det: Detection, tiles: Sequence[Tile]) -> bool:
    x0, y0, x1, y1 = det.box
    return any(t.index != det.tile and x0 < t.x1 and x1 > t.x0 and y0 < t.y1 and y1 > t.y0
               for t in tiles)


def _matches(det: Detection, members: Sequence[Detection], tiles: Mapping[int, Tile],
             iou_thr: float) -> bool:
    """Is ``det`` the object that ``members`` (its copies/fragments from other tiles) show?"""
    if any(m.tile == det.tile for m in members):  # its own tile saw another object there
        return False
    for member in members:
        region = _shared(tiles[member.tile], tiles[det.tile])
        if region is not None and same_object(det, member, region, iou_thr):
            return True
    return False


def merge_tiles(detections: Sequence[Detection], tiles: Sequence[Tile],
                iou_thr: float = 0.5) -> list[Detection]:
    """The merged detections of one image (see the module docstring for the rule).

    ``detections`` are in image coordinates and flagged with :func:`flag_detection`. Each
    kept object remembers every copy/fragment it absorbed, so a fragment from a third tile is
    matched against the copy from a tile it actually shares pixels with.
    """
    if len(tiles) <= 1:
        return list(detections)
    by_index = {t.index: t for t in tiles}
    kept: list[Detection] = []
    contested: list[Detection] = []
    for det in detections:
        (contested if _in_other_tile(det, tiles) else kept).append(det)
    contested.sort(key=lambda d: (d.cut, not d.owned, -d.score))
    objects: list[Detection] = []
    members: list[list[Detection]] = []
    boxes = np.zeros((len(contested), 4))
    for det in contested:
        n = len(objects)
        near = np.flatnonzero((boxes[:n, 0] < det.box[2]) & (boxes[:n, 2] > det.box[0])
                              & (boxes[:n, 1] < det.box[3]) & (boxes[:n, 3] > det.box[1]))
        match = next((int(k) for k in near if _matches(det, members[k], by_index, iou_thr)),
                     None)
        if match is None:
            boxes[n] = det.box
            objects.append(det)
            members.append([det])
            continue
        members[match].append(det)
        if det.cut and objects[match].cut:  # fragments of an object that every tile cuts
            objects[match] = _join(objects[match], det)
            boxes[match] = objects[match].box
    return sorted(kept + objects, key=lambda d: -d.score)
