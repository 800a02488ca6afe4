"""Joining the open pieces of a region across chunk borders.

Facing edge strips of neighbouring chunks (global open-piece ids, :class:`.chunk._Strips`)
give the pairs of pieces that are 8-adjacent across the border (:func:`_border_pairs`), which
union-find groups (:class:`_OpenRegions`: no geometric search). A group is complete once no
piece of it reaches the bottom of the chunk row just finished; it is then merged
(:func:`_merge_group`). Each group's *shells* are unioned: their rings have a vertex at every
pixel corner on a chunk border, so pieces share identical segments there and form a polygon
coverage: the union drops the edges run both ways and links what is left into rings
(:func:`_dissolved`; ``shapely.coverage_union_all`` where that does not give one polygon), exact
on integer coordinates. The pieces' holes, which never touch a chunk border, are put back
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
from shapely.geometry.base import BaseGeometry

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


def _merge_group(live: list[_Piece], min_hole_px: float, spacing: int) -> _Batch:
    """One region's polygons from its pieces: shells unioned, the holes put back.

    Holes that the union itself closes (a ring of tumour across chunk borders) are filled when
    smaller than ``min_hole_px`` raster pixels, like holes found inside one chunk.
    ``spacing`` is the chunk edge (pixels): where the pieces' shells meet.
    """
    suspect = any(p.suspect for p in live)
    if len(live) == 1:
        shell = live[0].shell
    elif suspect:  # a repaired shell: not densified, general union
        shell = shapely.union_all([p.shell for p in live])
    else:  # exact pixel partition with matching border vertices: a valid coverage
        shells = [p.shell for p in live]
        shell = _dissolved(shells, spacing)
        if shell is None:
            shell = shapely.coverage_union_all(shells)
    parts = _areal(shell)
    if min_hole_px > 0 and any(p.interiors for p in parts):
        parts = [_without_small_holes(p, min_hole_px) for p in parts]
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


def _without_small_holes(poly: Polygon, min_hole_px: float) -> Polygon:
    """``poly`` with its holes under ``min_hole_px`` (area, raster pixels) filled."""
    holes = shapely.get_interior_ring(poly, np.arange(shapely.get_num_interior_rings(poly)))
    big = shapely.area(shapely.polygons(holes)) >= min_hole_px
    return poly if big.all() else shapely.polygons(poly.exterior, holes=holes[big])


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


def _dissolved(shells: list[BaseGeometry], spacing: int) -> Polygon | None:
    """The union of pieces' shells as one polygon, by cancelling the edges they share; None
    when they do not make one simply outlined region (then GEOS's coverage union does it).

    The shells are Polygons without holes on integer pixel corners whose rings have a vertex
    at every pixel corner on the chunk borders (multiples of ``spacing``), so two pieces
    share whole unit edges there, run once each way when every ring runs counter-clockwise.
    Those edges are dropped; what is left of the rings are runs that link end to start into
    the union's rings: one counter-clockwise shell, clockwise holes. Same polygon as
    ``coverage_union_all``, several times faster on a noise map's region of hundreds of
    pieces (its time goes into the general overlay's bookkeeping).
    """
    geoms = np.asarray(shells, dtype=object)
    if (shapely.get_type_id(geoms) != 3).any() or shapely.get_num_interior_rings(geoms).any():
        return None
    rings = shapely.get_exterior_ring(geoms)
    rings = np.where(shapely.is_ccw(rings), rings, shapely.reverse(rings))
    coords, ring_of = shapely.get_coordinates(rings, return_index=True)
    xy = coords.astype(np.int64)
    if not np.array_equal(xy, coords):
        return None
    seg = np.nonzero(ring_of[1:] == ring_of[:-1])[0]  # segment k runs xy[k] -> xy[k + 1]
    kept = _unshared(xy[seg], xy[seg + 1], spacing)
    if kept is None:
        return None
    seg = seg[kept]
    return _linked(xy, seg, ring_of[seg])


def _unshared(p: np.ndarray, q: np.ndarray, spacing: int) -> np.ndarray | None:
    """Which segments ``p -> q`` are not shared with another piece: a unit edge on a chunk
    border that another segment runs the other way. None if the pieces overlap (an edge run
    twice the same way, or more than twice)."""
    d = q - p
    unit_x = (d[:, 1] == 0) & (np.abs(d[:, 0]) == 1) & (p[:, 1] % spacing == 0)
    unit_y = (d[:, 0] == 0) & (np.abs(d[:, 1]) == 1) & (p[:, 0] % spacing == 0)
    cand = np.nonzero(unit_x | unit_y)[0]
    lo = np.minimum(p[cand], q[cand])
    key = _corner_key(lo) << 1 | unit_y[cand]
    order = np.argsort(key, kind="stable")
    sorted_key = key[order]
    twin = np.nonzero(sorted_key[1:] == sorted_key[:-1])[0]
    if twin.size and (np.diff(twin) == 1).any():
        return None  # one edge three times or more
    first, second = cand[order[twin]], cand[order[twin + 1]]
    if (d[first] != -d[second]).any():
        return None
    kept = np.ones(p.shape[0], dtype=bool)
    kept[first] = False
    kept[second] = False
    return kept


def _linked(xy: np.ndarray, seg: np.ndarray, ring: np.ndarray) -> Polygon | None:
    """The rings made by linking the runs of kept segments (``seg``: indices into ``xy``, of
    input rings ``ring``) end to start, as one Polygon; None unless every run end meets one
    run start and exactly one ring runs counter-clockwise (the shell)."""
    if not seg.size:
        return None
    cont = np.r_[False, (seg[1:] == seg[:-1] + 1) & (ring[1:] == ring[:-1])]
    run_first = np.nonzero(~cont)[0]
    run_last = np.r_[run_first[1:], seg.size] - 1
    head, tail = xy[seg[run_first]], xy[seg[run_last] + 1]
    head_key, tail_key = _corner_key(head), _corner_key(tail)
    order = np.argsort(head_key)
    sorted_key = head_key[order]
    if (sorted_key[1:] == sorted_key[:-1]).any():
        return None  # the outline touches itself at a corner
    nxt = order[np.minimum(np.searchsorted(sorted_key, tail_key), order.size - 1)]
    if not np.array_equal(head_key[nxt], tail_key):
        return None
    chains = _cycles(nxt)
    if chains is None:
        return None
    runs = np.concatenate(chains)
    n_seg = seg[run_last[runs]] - seg[run_first[runs]] + 1  # a run's vertices, its tail not
    start = np.repeat(seg[run_first[runs]] - np.cumsum(n_seg) + n_seg, n_seg)
    points = xy[start + np.arange(int(n_seg.sum()))].astype(np.float64)
    per_ring = np.add.reduceat(n_seg, np.cumsum([0] + [len(c) for c in chains[:-1]]))
    rings = shapely.linearrings(points, indices=np.repeat(np.arange(len(chains)), per_ring))
    shell = shapely.is_ccw(rings)
    if shell.sum() != 1:
        return None
    return shapely.polygons(rings[shell][0], holes=rings[~shell])


def _corner_key(xy: np.ndarray) -> np.ndarray:
    """One int64 per integer pixel corner ``(x, y)`` (each below 2**26: 67 M px)."""
    return (xy[:, 0] << 26) | xy[:, 1]


def _cycles(nxt: np.ndarray) -> list[list[int]] | None:
    """The cycles of the permutation ``nxt`` (run k is followed by run ``nxt[k]``); None if
    it is not one."""
    seen = [False] * nxt.size
    follow = nxt.tolist()
    chains = []
    for first in range(nxt.size):
        if seen[first]:
            continue
        chain = []
        k = first
        while not seen[k]:
            seen[k] = True
            chain.append(k)
            k = follow[k]
        if k != first:
            return None
        chains.append(chain)
    return chains
