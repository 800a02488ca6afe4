"""Joining the open pieces of a region across chunk borders.

Facing edge strips of neighbouring chunks (global open-piece ids, :class:`.chunk._Strips`)
give the pairs of pieces that are 8-adjacent across the border (:func:`_border_pairs`), which
union-find groups (:class:`_OpenRegions`: no geometric search). A group is complete once no
piece of it reaches the bottom of the chunk row just finished; it is then merged
(:func:`_merge_group`). Each group's *shells* are unioned: their rings have a vertex at every
pixel corner on a chunk border, so pieces share identical segments there and form a polygon
coverage (``shapely.coverage_union_all``, several times faster than an overlay union, and
exact: integer coordinates). The pieces' holes, which never touch a chunk border, are put back
afterwards, each piece's into the part of the union that holds the piece (:func:`_part_of`) -
unioning hole-riddled pieces directly is orders of magnitude slower.

Saddles across chunk borders: two pixels that touch only at a corner there belong to one
region, written as polygons touching at one point (each valid) that share the region's
probability statistics.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
import shapely
from shapely.geometry import Polygon

from wsi_seg.stages.vectorize.chunk import _areal, _Batch, _Piece, _Strips


def _pairs(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Id pairs of two facing edge strips that are 8-adjacent across the border."""
    both = [(a, b), (a[:-1], b[1:]), (a[1:], b[:-1])]
    out = [np.c_[x[(x >= 0) & (y >= 0)], y[(x >= 0) & (y >= 0)]] for x, y in both]
    return np.concatenate(out) if out else np.empty((0, 2), dtype=np.int64)


def _border_pairs(strips: dict[tuple[int, int], _Strips], i: int, j: int) -> list[np.ndarray]:
    """Adjacent open-piece id pairs between chunk (i, j) and its already-processed neighbours."""
    me = strips[(i, j)]
    out = []
    if (i, j - 1) in strips:
        out.append(_pairs(strips[(i, j - 1)].right, me.left))
    if (i - 1, j) in strips:
        out.append(_pairs(strips[(i - 1, j)].bottom, me.top))
    corner = strips.get((i - 1, j - 1))  # diagonal neighbours touch at one pixel corner
    if corner is not None and corner.bottom[-1] >= 0 and me.top[0] >= 0:
        out.append(np.array([[corner.bottom[-1], me.top[0]]]))
    corner = strips.get((i - 1, j + 1))
    if corner is not None and corner.bottom[0] >= 0 and me.top[-1] >= 0:
        out.append(np.array([[corner.bottom[0], me.top[-1]]]))
    return out


class _OpenRegions:
    """Pieces cut by chunk borders, grouped by union-find as border pairs arrive.

    A group is complete once none of its pieces lies on the bottom edge of the chunk row just
    finished (only those can continue downwards); it is then merged and released, so memory
    holds only the regions that cross the current chunk row.
    """

    def __init__(self) -> None:
        self.parent: list[int] = []
        self.pieces: dict[int, _Piece] = {}

    def add(self, first_id: int, pieces: list[_Piece]) -> None:
        assert first_id == len(self.parent)
        for k, piece in enumerate(pieces):
            self.parent.append(first_id + k)
            self.pieces[first_id + k] = piece

    def find(self, i: int) -> int:
        parent = self.parent
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def link(self, pairs: Iterable[np.ndarray]) -> None:
        for arr in pairs:
            for a, b in arr.tolist():
                ra, rb = self.find(a), self.find(b)
                if ra != rb:
                    self.parent[max(ra, rb)] = min(ra, rb)

    def pop_complete(self, active_ids: np.ndarray | None) -> Iterator[list[_Piece]]:
        """Release every group with no piece in ``active_ids`` (None: all groups)."""
        active = set() if active_ids is None else {self.find(int(g)) for g in active_ids}
        groups: dict[int, list[int]] = {}
        for gid in self.pieces:
            root = self.find(gid)
            if root not in active:
                groups.setdefault(root, []).append(gid)
        for members in groups.values():
            yield [self.pieces.pop(g) for g in members]


def _merge_group(live: list[_Piece], min_hole_px: float) -> _Batch:
    """One region's polygons from its pieces: shells unioned, the holes put back.

    Holes that the union itself closes (a ring of tumour across chunk borders) are filled when
    smaller than ``min_hole_px`` raster pixels, like holes found inside one chunk.
    """
    suspect = any(p.suspect for p in live)
    if len(live) == 1:
        shell = live[0].shell
    elif suspect:  # a repaired shell: not densified, general union
        shell = shapely.union_all([p.shell for p in live])
    else:  # exact pixel partition with matching border vertices: a valid coverage
        shell = shapely.coverage_union_all([p.shell for p in live])
    parts = _areal(shell)
    if min_hole_px > 0 and any(p.interiors for p in parts):
        parts = [Polygon(p.exterior, [r for r in p.interiors if Polygon(r).area >= min_hole_px])
                 for p in parts]
    owned: list[list[np.ndarray]] = [[] for _ in parts]
    for piece in live:
        if piece.holes.size:
            owned[_part_of(piece, parts) if len(parts) > 1 else 0].append(piece.holes)
    polys = [shapely.polygons(p.exterior, holes=np.concatenate(
                 [np.array(list(p.interiors), dtype=object), *own])) if own else p
             for p, own in zip(parts, owned, strict=True)]
    stats = np.array([sum(p.count for p in live), sum(p.total for p in live),
                      max(p.vmax for p in live)], dtype=np.int64)
    return _Batch(np.array(polys, dtype=object), np.tile(stats, (len(polys), 1)),
                  np.full(len(polys), suspect))


def _part_of(piece: _Piece, parts: list[Polygon]) -> int:
    """Which part of a region (shells joined only at corners) holds a piece.

    A point inside the piece's shell lies inside exactly one part, and not in that part's
    holes (the union closed those outside every piece). Testing the *hole's* point against
    the parts' outer rings instead is wrong when one part sits in another's hole: its holes
    then went to the outer part, nested in that part's hole (an invalid polygon).
    """
    inside = shapely.point_on_surface(piece.shell)
    x, y = shapely.get_x(inside), shapely.get_y(inside)
    for k, part in enumerate(parts):
        minx, miny, maxx, maxy = part.bounds
        if minx < x < maxx and miny < y < maxy and shapely.contains_xy(part, x, y):
            return k
    return int(np.argmin(shapely.distance(np.array(parts, dtype=object), inside)))


