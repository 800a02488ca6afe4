"""GeoJSON truth as QuPath 0.2 to 0.8 writes it (rules in :mod:`wsi_seg.evaluation.annotations`):
a FeatureCollection, a Feature, a list of Features or a bare geometry, optionally gzip.

A FeatureCollection of :data:`STREAM_MIN_BYTES` or more (a gzip: inflated) is read one
Feature at a time by ``json``'s own decoder (:class:`_JsonText`: what :func:`json.loads`
accepts, ``NaN`` included, with its messages; ijson's parsers refuse ``NaN``), and Features
become polygons :data:`BATCH_FEATURES` at a time in vectorized shapely calls
(:func:`iter_geojson`); the polygons are the ones the Feature-by-Feature path builds.
"""

from __future__ import annotations

import codecs
import gzip
import io
import json
import re
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from shapely.geometry import MultiPolygon, Polygon, shape
from shapely.geometry.base import BaseGeometry

from wsi_seg.core.errors import AnnotationError
from wsi_seg.core.files import MiB, decode_json, gunzip_capped, read_capped
from wsi_seg.evaluation.truth import MAX_TRUTH_BYTES, Annotation, drawn_areas, repair


def _class_of(props: dict[str, Any]) -> str:
    cls = props.get("classification")
    if isinstance(cls, str):
        return cls
    if isinstance(cls, dict):
        if isinstance(cls.get("name"), str):
            return str(cls["name"])
        names = cls.get("names")
        if isinstance(names, list) and names:
            return ": ".join(str(n) for n in names)  # QuPath's derived-class notation
    return ""


def _features(doc: Any, path: Path) -> list[dict[str, Any]]:
    """The Features of any top level QuPath accepts (FORMATS.md); may be empty ("no tumour")."""
    geometry_types = {"Polygon", "MultiPolygon", "Point", "MultiPoint", "LineString",
                      "MultiLineString", "GeometryCollection"}
    feats: Any = None
    if isinstance(doc, list):
        feats = doc
    elif isinstance(doc, dict):
        kind = doc.get("type")
        if kind == "FeatureCollection":
            feats = doc.get("features")
        elif kind == "Feature":
            feats = [doc]
        elif kind in geometry_types:
            feats = [{"type": "Feature", "geometry": doc, "properties": {}}]
    if not isinstance(feats, list):
        raise AnnotationError("no GeoJSON Features (expected a FeatureCollection, a Feature, "
                              "a list of Features or a geometry)", path)
    for i, feat in enumerate(feats):
        if not isinstance(feat, dict):
            raise AnnotationError(f"feature {i} is not a JSON object", path)
    return feats


def _read_json_doc(path: Path) -> Any:
    """The parsed JSON of a (possibly gzip) file, within :data:`MAX_TRUTH_BYTES`."""
    with open(path, "rb") as fh:
        gzipped = fh.read(2) == b"\x1f\x8b"
    raw = (gunzip_capped(path, MAX_TRUTH_BYTES, AnnotationError, "annotation file") if gzipped
           else read_capped(path, MAX_TRUTH_BYTES, AnnotationError, "annotation file"))
    return decode_json(raw, path, AnnotationError)


def _shape(geom_json: dict[str, Any], i: int, path: Path) -> BaseGeometry:
    """A Feature's geometry; AnnotationError for one shapely cannot build or with a NaN or
    infinite coordinate (GEOS cannot repair or measure those)."""
    try:
        # errstate: NaN coordinates raise our one line below, not a numpy warning first.
        with np.errstate(invalid="ignore"):
            geom = shapely.force_2d(shape(geom_json))  # a z (QuPath's plane) is not used
            coords = shapely.get_coordinates(geom)
    except KeyError as exc:
        raise AnnotationError(f"feature {i}: bad geometry: no {exc} member", path) from None
    except Exception as exc:  # shapely raises several types for bad coordinates
        raise AnnotationError(f"feature {i}: bad geometry: {exc}", path) from None
    if not np.isfinite(coords).all():
        raise AnnotationError(f"feature {i}: NaN or infinite coordinate", path)
    return geom


#: A FeatureCollection file this large (a gzip: inflated) is parsed one Feature at a time,
#: not whole: parsed whole, JSON holds ~10x its text in Python objects.
STREAM_MIN_BYTES = 16 * MiB
#: Features turned into polygons together (one vectorized shapely call per batch): what a
#: reader holds of a streamed file at once, besides what it keeps.
BATCH_FEATURES = 512
_READ_BYTES = MiB // 4
_WHITESPACE = re.compile(r"[ \t\n\r]*")


def _inflated_bytes(path: Path) -> int:
    """What a gzip file inflates to, counted up to :data:`MAX_TRUTH_BYTES` + 1 and keeping
    nothing; a file that inflates to more, or is corrupt, raises the capped read's one line."""
    total = 0
    try:
        with gzip.open(path, "rb") as fh:
            while total <= MAX_TRUTH_BYTES:
                chunk = fh.read(_READ_BYTES)
                if not chunk:
                    return total
                total += len(chunk)
    except (EOFError, OSError, zlib.error):
        pass
    gunzip_capped(path, MAX_TRUTH_BYTES, AnnotationError, "annotation file")  # raises
    raise AssertionError("unreachable: the capped read refuses what the count refused")


def _open_bytes(path: Path, gzipped: bool) -> io.BufferedIOBase:
    return gzip.open(path, "rb") if gzipped else open(path, "rb")


class _JsonText:
    """A JSON text read a piece at a time, each value parsed by ``json``'s own decoder, so it
    accepts what :func:`json.loads` accepts (``NaN`` too, which QuPath may write as a
    coordinate's z) and fails with its messages, lines and columns. What it holds is the
    value being parsed plus one read."""

    def __init__(self, fh: io.BufferedIOBase, path: Path) -> None:
        self._fh, self.path = fh, path
        head = fh.read(4)
        self._text = codecs.getincrementaldecoder(json.detect_encoding(head))("strict")
        self._decoder = json.JSONDecoder()
        self.buf, self.pos, self._eof = "", 0, False
        self._offset = 0  # characters dropped before buf
        self._lines_dropped, self._last_newline = 0, -1  # in what was dropped
        self._append(head, final=not head)

    def _append(self, raw: bytes, final: bool) -> None:
        try:
            self.buf += self._text.decode(raw, final)
        except UnicodeDecodeError:
            raise AnnotationError("malformed JSON: not UTF-8 text", self.path) from None
        self._eof = final

    def more(self, at_least: int = _READ_BYTES) -> None:
        """Read on (at least ``at_least`` bytes), first dropping what was parsed."""
        if self.pos > _READ_BYTES:
            done = self.buf[: self.pos]
            newline = done.rfind("\n")
            if newline >= 0:
                self._lines_dropped += done.count("\n")
                self._last_newline = self._offset + newline
            self._offset += self.pos
            self.buf, self.pos = self.buf[self.pos :], 0
        try:
            raw = self._fh.read(at_least)
        except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
            raise AnnotationError(f"truncated or corrupt gzip: {exc or type(exc).__name__}",
                                  self.path) from None
        self._append(raw, final=not raw)

    def error(self, msg: str, pos: int | None = None) -> AnnotationError:
        """``json``'s one line for a failure at ``pos`` (default: here) of buf."""
        at = self.pos if pos is None else pos
        newline = self.buf.rfind("\n", 0, at)
        line = self._lines_dropped + self.buf.count("\n", 0, at) + 1
        col = at - newline if newline >= 0 else self._offset + at - self._last_newline
        return AnnotationError(f"malformed JSON: {msg} at line {line} column {col}", self.path)

    def peek(self) -> str:
        """The next character after whitespace ("" at the end of the text)."""
        while True:
            self.pos = _WHITESPACE.match(self.buf, self.pos).end()  # type: ignore[union-attr]
            if self.pos < len(self.buf) or self._eof:
                return self.buf[self.pos : self.pos + 1]
            self.more()

    def expect(self, char: str, msg: str) -> None:
        if self.peek() != char:
            raise self.error(msg)
        self.pos += 1

    def value(self) -> Any:
        """The JSON value here (after whitespace), read on until it is complete."""
        self.peek()
        seen: tuple[str, int] | None = None
        while True:
            try:
                value, end = self._decoder.raw_decode(self.buf, self.pos)
            except json.JSONDecodeError as exc:
                if self._eof:
                    raise self.error(exc.msg, exc.pos) from None
                # The same failure with more text read is not a value cut short (a string
                # may be longer than what was read, though).
                failure = (exc.msg, self._offset + exc.pos)
                if failure == seen and not exc.msg.startswith("Unterminated string"):
                    raise self.error(exc.msg, exc.pos) from None
                seen = failure
                self.more(max(_READ_BYTES, len(self.buf) - self.pos))
                continue
            except RecursionError:
                raise AnnotationError("malformed JSON: nested too deeply to parse",
                                      self.path) from None
            if end == len(self.buf) and not self._eof:  # a number may go on
                self.more()
                continue
            self.pos = end
            return value


def _streamed_features(path: Path) -> Iterator[dict[str, Any]] | None:
    """The Features of a large FeatureCollection file (plain or gzip), one at a time, or None
    when the file is small, too large, or does not start as a FeatureCollection (a
    ``"type"`` member before ``"features"``): it is then parsed whole, which gives a small
    file's, an odd file's and an oversized file's one-line cause."""
    with open(path, "rb") as raw:
        gzipped = raw.read(2) == b"\x1f\x8b"
    size = _inflated_bytes(path) if gzipped else path.stat().st_size
    if size < STREAM_MIN_BYTES or size > MAX_TRUTH_BYTES:
        return None  # small: parsed whole; too large: refused by the capped read
    fh = _open_bytes(path, gzipped)
    try:
        text = _JsonText(fh, path)
        kind = None
        if text.peek() != "{":
            raise ValueError
        text.pos += 1
        while True:  # the members before "features"
            if text.peek() != '"':
                raise ValueError
            key = text.value()
            text.expect(":", "Expecting ':' delimiter")
            if key == "features":
                if kind != "FeatureCollection" or text.peek() != "[":
                    raise ValueError
                break
            value = text.value()
            if key == "type":
                kind = value
            text.expect(",", "Expecting ',' delimiter")
    except (ValueError, AnnotationError):
        fh.close()
        return None
    return _features_from(text, fh)


def _features_from(text: _JsonText, fh: io.BufferedIOBase) -> Iterator[dict[str, Any]]:
    """The items of the ``"features"`` array ``text`` stands at, then the rest of the text
    checked as :func:`json.loads` would (members after the array, nothing after the object).
    """
    with fh:
        text.pos += 1  # the "["
        i = 0
        if text.peek() == "]":
            text.pos += 1
        else:
            while True:
                feat = text.value()
                if not isinstance(feat, dict):
                    raise AnnotationError(f"feature {i} is not a JSON object", text.path)
                yield feat
                i += 1
                char = text.peek()
                text.pos += 1
                if char == "]":
                    break
                if char != ",":
                    raise text.error("Expecting ',' delimiter", text.pos - 1)
        while True:
            char = text.peek()
            text.pos += 1
            if char == "}":
                break
            if char != ",":
                raise text.error("Expecting ',' delimiter", text.pos - 1)
            if text.peek() != '"':
                raise text.error("Expecting property name enclosed in double quotes")
            text.value()
            text.expect(":", "Expecting ':' delimiter")
            text.value()
        if text.peek():
            raise text.error("Extra data")


def _fast_rings(geom_json: dict[str, Any]) -> list[list[Any]] | None:
    """The rings of each polygon a Polygon or MultiPolygon geometry draws, when every ring is
    a list of at least 4 positions (what QuPath writes); None for anything else, which takes
    the general path (:func:`_shape`), errors included."""
    kind, coords = geom_json.get("type"), geom_json.get("coordinates")
    if not isinstance(coords, list) or not coords:
        return None
    polys = [coords] if kind == "Polygon" else coords if kind == "MultiPolygon" else None
    if polys is None:
        return None
    for rings in polys:
        if not isinstance(rings, list) or not rings:
            return None
        for ring in rings:
            if not isinstance(ring, list) or len(ring) < 4:
                return None
    return polys


def _batch_areas(feats: list[dict[str, Any]], first: int, path: Path
                 ) -> list[list[Polygon | MultiPolygon]]:
    """``drawn_areas(_shape(...))`` of each Feature of a batch (``first``: the first one's
    index), the same polygons, built by one vectorized shapely call for the rings
    :func:`_fast_rings` accepts whose positions are finite 2-D or 3-D numbers and closed; the
    others, and any that repair must split or drop, one at a time as before."""
    out: list[list[Polygon | MultiPolygon]] = [[] for _ in feats]
    fast: list[list[list[Any]] | None] = []
    for feat in feats:
        geom_json = feat.get("geometry")
        fast.append(_fast_rings(geom_json) if isinstance(geom_json, dict) else None)
    flat: list[Any] = []
    ring_len: list[int] = []
    rings_of_poly: list[int] = []
    poly_owner: list[int] = []
    for k, polys in enumerate(fast):
        for rings in polys or ():
            for ring in rings:
                flat.extend(ring)
                ring_len.append(len(ring))
            rings_of_poly.append(len(rings))
            poly_owner.append(k)
    good = np.zeros(len(feats), dtype=bool)
    polygons: np.ndarray = np.empty(0, dtype=object)
    built_owner: list[int] = []  # the Feature of each built polygon
    if flat:
        try:
            xy = np.array(flat)
        except (ValueError, TypeError):  # ragged positions: the general path decides
            xy = np.empty((0, 0))
        if xy.ndim == 2 and xy.shape[1] in (2, 3) and xy.dtype.kind in "iuf":
            lens = np.asarray(ring_len)
            ends = np.cumsum(lens)
            # Closed as drawn, z included (shapely closes a ring whose z differs, NaN too).
            closed = (xy[ends - lens] == xy[ends - 1]).all(axis=1)
            xy = xy[:, :2].astype(np.float64)  # a z (QuPath's plane) is not used
            ring_ok = closed & np.logical_and.reduceat(np.isfinite(xy).all(axis=1), ends - lens)
            poly_of_ring = np.repeat(np.arange(len(rings_of_poly)), rings_of_poly)
            owner = np.asarray(poly_owner)
            good[owner] = True
            good[owner[poly_of_ring[~ring_ok]]] = False
            keep_ring = good[owner[poly_of_ring]]
            keep_xy = np.repeat(keep_ring, lens)
            rings = shapely.linearrings(xy[keep_xy],
                                        indices=np.repeat(np.arange(int(keep_ring.sum())),
                                                          lens[keep_ring]))
            keep_poly = good[owner]
            polygons = shapely.polygons(rings, indices=np.repeat(
                np.arange(int(keep_poly.sum())), np.asarray(rings_of_poly)[keep_poly]))
            built_owner = [k for k, kept in zip(poly_owner, keep_poly, strict=True) if kept]
    valid = shapely.is_valid(polygons) & (shapely.area(polygons) > 0)
    for k, poly, ok in zip(built_owner, polygons, valid, strict=True):
        if ok:
            out[k].append(poly)
        else:  # invalid (repair may split it) or without area (dropped)
            repaired = repair(poly)
            if repaired is not None:
                out[k].append(repaired)
    for k, feat in enumerate(feats):
        geom_json = feat.get("geometry")
        if not good[k] and isinstance(geom_json, dict):
            out[k] = drawn_areas(_shape(geom_json, first + k, path))
    return out


def iter_geojson(path: Path) -> Iterator[Annotation]:
    """The annotations of a GeoJSON file in file order, built :data:`BATCH_FEATURES` Features
    at a time: consecutive Features of one class in a batch are one :class:`Annotation`
    (their polygons in order). A large FeatureCollection is streamed, so what is held at
    once is one batch, whatever the file holds."""
    streamed = _streamed_features(path)
    feats: Iterable[dict[str, Any]] = (streamed if streamed is not None
                                       else _features(_read_json_doc(path), path))
    batch: list[dict[str, Any]] = []
    first = 0
    for feat in feats:
        batch.append(feat)
        if len(batch) == BATCH_FEATURES:
            yield from _batch_annotations(batch, first, path)
            first += len(batch)
            batch = []
    if batch:
        yield from _batch_annotations(batch, first, path)


def _batch_annotations(feats: list[dict[str, Any]], first: int, path: Path
                       ) -> Iterator[Annotation]:
    names = []
    for feat in feats:
        props = feat.get("properties")
        names.append(_class_of(props if isinstance(props, dict) else {}))
    areas = _batch_areas(feats, first, path)
    start = 0
    for k in range(1, len(feats) + 1):
        if k == len(feats) or names[k] != names[start]:
            yield Annotation(names[start], tuple(p for a in areas[start:k] for p in a))
            start = k


def parse_geojson(path: Path) -> list[Annotation]:
    """Every annotation of a GeoJSON file (:func:`iter_geojson`)."""
    return list(iter_geojson(path))
