"""Simplification of traced polygons (Douglas-Peucker, topology preserved).

Ordinary polygons go through GEOS's topology-preserving simplifier. Its time grows as
vertices x rings, so a giant polygon with very many holes (a noisy map's) is simplified ring by
ring instead (:func:`_simplify_ringwise`): each ring by plain Douglas-Peucker, given back its
exact vertices where it then meets itself (:func:`_simplify_rings`: the nodes GEOS finds say
where), and rings that conflict with each other given back their exact vertices
(:func:`_ring_conflicts`, :func:`_restore_near`). On a noise map's giant region this is ~2x
faster than GEOS's topology-preserving simplifier ring by ring, which tests every shortcut
against the whole ring.

Douglas-Peucker's result depends on how a polygon is written, not only on its shape: where
each ring starts, which way it runs, vertices that lie on a straight run (the chunk-border
corners that joining needs) and the order of the holes (GEOS simplifies rings in order, each
against those before it). How chunk borders cut a region changes all four, so polygons are
first written one canonical way (:func:`canonical_polygons`): then the simplified polygons,
like the exact ones, depend on the thresholded raster alone, not on the chunk size. (Exactly
so as long as the region's pixels are: chunks decide 2x2 saddles over a halo of
:data:`.trace.SADDLE_HALO_PX`, and a chain of saddle decisions longer than that, not seen on
real or noise maps, could still be decided differently, and then the pixels differ.)
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

import numpy as np
import shapely
from shapely.geometry import Polygon

# GEOS's topology-preserving simplifier takes time ~ vertices x rings (see simplify_polygons);
# above this product a polygon is simplified ring by ring. A tumour outline with a few hundred
# gland lumens stays below it (same result as before); a noise map's giant region does not.
_RINGWISE_WORK = 1 << 26

#: A vertex exactly at the tolerance from a shortcut is kept (Douglas-Peucker as GEOS runs it
#: drops it): the tolerance is shrunk by this relative hair. Traced rings run on pixel edges
#: and the tolerance is often a whole number of pixels (1 µm on a 1 µm/px mosaic, the default),
#: so a tie is common; dropping tied vertices folds 1 px wide inlets and spurs flat onto
#: themselves, and 40 % of a noise map's rings then touch themselves and need mending.
#: Keeping them is as true to the tolerance and leaves none to mend there.
_TIE = 1e-9


def canonical_polygons(polys: np.ndarray) -> np.ndarray:
    """The Polygons ``polys`` (object array) written one canonical way, shape unchanged:
    without repeated vertices or vertices on a straight run, the shell counter-clockwise and
    the holes clockwise (shapely's sense, :func:`shapely.is_ccw`), each ring starting at its
    lexicographically smallest vertex (least ``x``, then least ``y``), the holes ordered by
    their first two vertices. Other geometries (empty, MultiPolygons) are left as they are.

    Two writings of one point set then have identical coordinates, so what is computed from
    them (Douglas-Peucker, GeoJSON bytes) is the same too. Meant for traced coordinates
    (raster pixel edges, integers), where "on a straight run" is decided exactly. In bulk, in
    time linear in the vertices except for sorting the rings (~0.15 s for a 2048 px noise
    map's 1.5 million vertices).
    """
    out = np.array(polys, dtype=object, copy=True)
    todo = np.nonzero((shapely.get_type_id(out) == _POLYGON) & ~shapely.is_empty(out))[0]
    if not todo.size:
        return out
    oriented = shapely.orient_polygons(out[todo], exterior_cw=False)
    rings, poly_of = shapely.get_rings(oriented, return_index=True)
    x, y, ring_of = _without_redundant_vertices(*shapely.get_coordinates(rings,
                                                                         return_index=True))
    starts = np.searchsorted(ring_of, np.arange(rings.size))
    lengths = np.diff(np.r_[starts, ring_of.size])
    first = _smallest_vertex(x, y, starts, lengths)  # in each ring, from its start
    # Shells first, then holes by their first two vertices (distinct: two holes of a valid
    # polygon can share a vertex, but never leave it along the same edge).
    is_hole = np.r_[False, poly_of[1:] == poly_of[:-1]]
    one, two = starts + first, starts + (first + 1) % lengths
    order = np.lexsort((y[two], x[two], y[one], x[one], is_hole, poly_of))
    # Each ring in that order from its smallest vertex round to it again (closed).
    n_closed = lengths[order] + 1
    step = np.arange(int(n_closed.sum())) - np.repeat(np.cumsum(n_closed) - n_closed, n_closed)
    at = (np.repeat(starts[order], n_closed)
          + (step + np.repeat(first[order], n_closed)) % np.repeat(lengths[order], n_closed))
    new_rings = shapely.linearrings(np.c_[x[at], y[at]],
                                    indices=np.repeat(np.arange(order.size), n_closed))
    out[todo] = shapely.polygons(new_rings, indices=poly_of[order])
    return out


_POLYGON = 3  # shapely's type id


def _without_redundant_vertices(xy: np.ndarray, ring_of: np.ndarray
                                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``x``, ``y`` and ring of the vertices of closed rings (``xy``; ``ring_of``: each
    vertex's ring, ascending), each ring open and without vertices that repeat the one before
    or lie on the straight run from the one before to the one after. One pass suffices:
    dropping such a vertex leaves its neighbours' runs as they were."""
    is_open = np.ones(ring_of.size, dtype=bool)  # shapely closes each ring: drop the repeat
    is_open[:-1] = ring_of[1:] == ring_of[:-1]
    is_open[-1] = False
    x, y, ring_of = xy[is_open, 0], xy[is_open, 1], ring_of[is_open]
    prev = _previous(ring_of)
    keep = (x != x[prev]) | (y != y[prev])
    x, y, ring_of = x[keep], y[keep], ring_of[keep]
    prev = _previous(ring_of)
    nxt = np.empty_like(prev)
    nxt[prev] = np.arange(prev.size)
    in_x, in_y = x - x[prev], y - y[prev]
    out_x, out_y = x[nxt] - x, y[nxt] - y
    straight = (in_x * out_y == in_y * out_x) & (in_x * out_x + in_y * out_y > 0)
    keep = ~straight  # a spike (turning back) is no straight run: kept
    return x[keep], y[keep], ring_of[keep]


def _previous(ring_of: np.ndarray) -> np.ndarray:
    """Each vertex's previous vertex in its open ring (``ring_of`` ascending)."""
    prev = np.arange(-1, ring_of.size - 1)
    first = np.nonzero(np.r_[True, ring_of[1:] != ring_of[:-1]])[0]
    prev[first] = np.r_[first[1:], ring_of.size] - 1
    return prev


def _smallest_vertex(x: np.ndarray, y: np.ndarray, starts: np.ndarray, lengths: np.ndarray
                     ) -> np.ndarray:
    """Per open ring (its vertices ``starts[k]`` on, ``lengths[k]`` of them), the position
    from its start of its vertex of least ``x``, then least ``y`` (unique: a simple ring
    visits a point once)."""
    min_x = np.repeat(np.minimum.reduceat(x, starts), lengths)
    y_there = np.where(x == min_x, y, np.inf)
    min_y = np.repeat(np.minimum.reduceat(y_there, starts), lengths)
    hit = np.nonzero(y_there == min_y)[0]
    ring = np.repeat(np.arange(starts.size), lengths)[hit]
    best = hit[np.r_[True, ring[1:] != ring[:-1]]]  # each ring's first (only) hit
    return best - starts


def simplify_polygons(geoms: np.ndarray, tolerance: float, workers: int = 1) -> np.ndarray:
    """Topology-preserving Douglas-Peucker simplification of an array of Polygons.

    As ``shapely.simplify(..., preserve_topology=True)``, except that a vertex exactly at the
    tolerance is kept (``_TIE``) and that polygons with many rings and vertices go through
    :func:`_simplify_ringwise`: GEOS tests every shortcut it takes against every ring of the
    polygon (so no ring jumps over another), so its time grows as vertices x rings: 4 s for a
    2048 px noise map's 10^6 vertices and 370 holes, 65 s at 4096 px, hours at 8192 px.

    Args:
        geoms: Polygons (object array); tolerance: in their coordinate units.
        workers: threads sharing the rings of a large many-ring polygon.

    Returns:
        Valid Polygons or, rarely, MultiPolygons (where rings simplified apart crossed).
    """
    out = np.array(geoms, dtype=object, copy=True)
    if out.size == 0:
        return out
    tolerance *= 1 - _TIE
    rings = shapely.get_num_interior_rings(out).astype(np.int64) + 1  # int32 would overflow
    work = rings * shapely.get_num_coordinates(out)
    many = work >= _RINGWISE_WORK
    out[~many] = shapely.simplify(out[~many], tolerance, preserve_topology=True)
    for k in np.nonzero(many)[0]:
        out[k] = _simplify_ringwise(out[k], tolerance, workers)
    return out


def _simplify_ringwise(poly: Polygon, tolerance: float, workers: int) -> Polygon:
    """Topology-preserving simplification of a polygon with many holes, in time about linear
    in its vertices.

    Each ring is simplified on its own and kept simple (:func:`_simplify_rings`), in
    ``workers`` threads. Rings far apart cannot interfere, as each moves little. Where the
    simplified rings cross or touch, or a hole leaves the shell or enters another hole, those
    holes get their exact rings back, and so does the shell near them (its shortcuts within
    a few tolerances of such a hole get their original vertices back), until nothing
    conflicts: the exact polygon is valid, so at worst this ends there.
    """
    rings = np.array([poly.exterior, *poly.interiors], dtype=object)
    simple = _simplify_rings(rings, tolerance, workers)
    exact = np.zeros(rings.size, dtype=bool)  # holes given their exact ring back
    near = np.zeros(rings.size, dtype=bool)  # holes the shell is exact next to
    moved = None  # rings changed since the last test (None: all, the first time)
    for _ in range(8):
        pairs = _ring_conflicts(simple, moved)
        # Rings that touch at a point in the exact polygon (valid) still do: no conflict.
        a, b = pairs[:, 0], pairs[:, 1]
        pairs = pairs[~np.where(a == 0, exact[b] & near[b], exact[a] & exact[b])]
        if not pairs.size:
            # Valid: rings simple (GEOS), no new contacts, holes inside the shell and apart.
            # (Not checked again: that costs as much as a third of the simplification.)
            return shapely.polygons(simple[0], holes=simple[1:])
        holes = np.unique(pairs[pairs > 0])
        simple[holes] = rings[holes]
        exact[holes] = True
        moved = np.zeros(rings.size, dtype=bool)
        moved[holes] = True
        by_shell = pairs[pairs[:, 0] == 0, 1]
        if by_shell.size:
            moved[0] = True
            # GEOS strays up to ~1.55 tolerances from a ring, so 3 leave a margin.
            simple[0] = _restore_near(rings[0], simple[0], rings[by_shell], 3 * tolerance)
            # Exact stretches of the shell can meet its other shortcuts (Douglas-Peucker
            # keeps no distance from the exact ring): mend the shell again if so.
            simple[:1] = _kept_simple(rings[:1], simple[:1])
            near[by_shell] = True
    return poly  # rings still conflict after many rounds (not seen): keep the exact polygon


def _restore_near(exact: Any, simple: Any, near: np.ndarray, distance: float) -> Any:
    """``simple`` (a simplification of the ring ``exact``: a subset of its vertices in ring
    order) with the original vertices put back along every shortcut that passes within
    ``distance`` of one of the geometries ``near``."""
    kept = shapely.get_coordinates(simple)[:-1]
    shortcuts = _shortcuts(kept)
    hit = shapely.STRtree(shortcuts).query(near, predicate="dwithin", distance=distance)[1]
    if hit.size == 0:
        return simple
    return shapely.linearrings(_put_back(shapely.get_coordinates(exact)[:-1], kept, hit))


def _shortcuts(kept: np.ndarray) -> np.ndarray:
    """The segments of a simplified ring (``kept``: its open vertex array) as linestrings;
    shortcut ``k`` runs from ``kept[k]`` to ``kept[k + 1]``."""
    return shapely.linestrings(np.stack([kept, np.roll(kept, -1, axis=0)], axis=1))


def _put_back(orig: np.ndarray, kept: np.ndarray, hit: np.ndarray) -> np.ndarray:
    """Vertices of a simplified ring (``kept``: a subset of the open ring ``orig`` in ring
    order) with ``orig``'s vertices restored along the shortcuts ``hit`` (shortcut ``k`` runs
    from ``kept[k]`` to ``kept[k + 1]``)."""
    n = orig.shape[0]
    # Each kept vertex's position in the exact ring (vertices do not repeat there, except
    # OpenCV's doubled corners of hole rings, which sit next to each other).
    key = orig[:, 0] + 1j * orig[:, 1]
    order = np.argsort(key, kind="stable")
    at = order[np.searchsorted(key[order], kept[:, 0] + 1j * kept[:, 1])]
    span = np.ones(at.size, dtype=np.int64)
    span[hit] = (np.roll(at, -1)[hit] - at[hit]) % n  # the shortcut's vertices, its start on
    span[span == 0] = 1
    step = np.arange(span.sum()) - np.repeat(np.cumsum(span) - span, span)
    return orig[(np.repeat(at, span) + step) % n]


def _simplify_rings(rings: np.ndarray, tolerance: float, workers: int) -> np.ndarray:
    """Each ring simplified on its own and kept simple, slices of similar vertex counts in
    ``workers`` threads when there are many vertices (GEOS releases the GIL).

    Plain Douglas-Peucker (GEOS's topology-preserving variant costs ~15x more, as it tests
    each shortcut against the whole ring), then the rings that are no longer simple get
    their exact vertices back along the shortcuts that meet another part of the ring
    (:func:`_mend_crossings`), until every ring is simple: at worst the exact ring, which is.
    """
    size = shapely.get_num_coordinates(rings)
    if workers <= 1 or size.sum() < 200_000:
        return _simple_rings(rings, tolerance)
    cuts = np.searchsorted(np.cumsum(size), np.linspace(0, size.sum(), 4 * workers + 1)[1:-1])
    with ThreadPoolExecutor(workers, thread_name_prefix="simplify") as pool:
        parts = pool.map(partial(_simple_rings, tolerance=tolerance), np.split(rings, cuts))
        return np.concatenate(list(parts))


def _simple_rings(rings: np.ndarray, tolerance: float) -> np.ndarray:
    """:func:`_simplify_rings` in this thread."""
    return _kept_simple(rings, np.asarray(shapely.simplify(rings, tolerance,
                                                            preserve_topology=False)))


def _kept_simple(rings: np.ndarray, simplified: np.ndarray) -> np.ndarray:
    """``simplified`` (a subset of each ring's vertices, in ring order) with exact vertices
    put back where a ring is not simple (:func:`_mend_crossings`), until every ring is."""
    out = simplified.copy()
    todo = np.arange(rings.size)
    for _ in range(_MEND_ROUNDS):
        # A ring that collapsed (GEOS gives a LineString) keeps its exact vertices.
        flat = ((shapely.get_type_id(out[todo]) != _LINEARRING)
                | (shapely.get_num_coordinates(out[todo]) < 4))
        out[todo[flat]] = rings[todo[flat]]
        todo = todo[~flat]
        # One ring as a polygon is valid exactly when the ring is simple (cheaper to ask).
        todo = todo[~shapely.is_valid(shapely.polygons(out[todo]))]
        if not todo.size:
            return out
        out[todo] = _mend_crossings(rings[todo], out[todo])
    out[todo] = rings[todo]  # still crossing after many rounds (not seen): exact
    return out


_LINEARRING = 2  # shapely's type id
_MEND_ROUNDS = 8


def _mend_crossings(exact: np.ndarray, simple: np.ndarray) -> np.ndarray:
    """Rings ``simple`` (simplifications of the rings ``exact``, not simple) with the exact
    vertices put back along every shortcut that passes through a point where the ring meets
    itself (the nodes GEOS finds, which include crossings, touches and overlaps)."""
    noded = shapely.get_parts(shapely.node(simple), return_index=True)
    nodes = np.concatenate([shapely.get_point(noded[0], 0), shapely.get_point(noded[0], -1)])
    node_ring = np.concatenate([noded[1], noded[1]])
    coords, ring_of = shapely.get_coordinates(simple, return_index=True)
    seg = np.nonzero(ring_of[1:] == ring_of[:-1])[0]  # segment k: coords[k] to coords[k + 1]
    seg_ring = ring_of[seg]
    seg_local = seg - np.searchsorted(ring_of, seg_ring)  # the shortcut's index in its ring
    shortcuts = shapely.linestrings(np.stack([coords[seg], coords[seg + 1]], axis=1))
    at, hit = shapely.STRtree(shortcuts).query(nodes, predicate="dwithin", distance=1e-9)
    own = node_ring[at] == seg_ring[hit]
    hit_ring, hit_local = seg_ring[hit[own]], seg_local[hit[own]]
    out = simple.copy()
    for k in np.unique(hit_ring):
        kept = shapely.get_coordinates(simple[k])[:-1]
        orig = shapely.get_coordinates(exact[k])[:-1]
        out[k] = shapely.linearrings(_put_back(orig, kept, np.unique(hit_local[hit_ring == k])))
    return out


def _ring_conflicts(rings: np.ndarray, moved: np.ndarray | None = None) -> np.ndarray:
    """Pairs of rings (0: the shell, 1...: holes) that keep the polygon from being valid.

    A pair conflicts when its rings touch or cross, or when the hole lies outside the shell or
    inside the other hole. Each test prepares the one large geometry or queries a tree, never
    a large ring against every hole.

    Args:
        rings: the shell, then the holes (LinearRings).
        moved: which rings changed since the last call (None: all). Holes that did not are
            not tested against each other again (the costliest test: large ragged rings).

    Returns:
        ``(k, 2)`` int64 ring indices, each pair once, the lower index first.
    """
    holes = rings[1:]
    if holes.size == 0:
        return np.empty((0, 2), dtype=np.int64)
    tree = shapely.STRtree(holes)
    pairs = []
    hit = tree.query(rings[0], predicate="intersects")  # the shell is prepared once
    pairs.append(np.c_[np.zeros_like(hit), 1 + hit])
    ids = np.arange(holes.size) if moved is None else np.nonzero(moved[1:])[0]
    # Boxes first, then each pair once (a tree query with the predicate tests every pair
    # both ways and each hole against itself: 2.4x slower on a noise map's giant region).
    a, b = tree.query(holes[ids])
    a = ids[a]
    keep = (a < b) if moved is None else (a != b)  # all queried: each pair came both ways
    a, b = np.minimum(a, b)[keep], np.maximum(a, b)[keep]
    if moved is not None and a.size:  # two moved holes meet twice in the query
        a, b = np.unique(np.c_[a, b], axis=0).T
    hit = shapely.intersects(holes[a], holes[b])
    pairs.append(np.c_[1 + a[hit], 1 + b[hit]])
    # No crossings: a hole lies inside the shell (or another hole) when its first vertex does.
    first = shapely.get_point(holes, 0)
    shell = shapely.polygons(rings[0])
    shapely.prepare(shell)
    outside = np.nonzero(~shapely.contains(shell, first))[0]
    pairs.append(np.c_[np.zeros_like(outside), 1 + outside])
    a, b = shapely.STRtree(shapely.polygons(holes)).query(first, predicate="within")
    pairs.append(np.sort(np.c_[1 + a[a != b], 1 + b[a != b]], axis=1))
    return np.unique(np.concatenate(pairs).astype(np.int64), axis=0)


