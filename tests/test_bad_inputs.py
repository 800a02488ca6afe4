"""Bad inputs end in one line, through the entry points a user runs.

Truth with NaN or infinite coordinates, JSON nested too deeply, a card whose input size
disagrees with its model, and decompression bombs (a ~1 MB ``.keras`` whose ``config.json``
inflates to 1 GiB, a ~1 MB ``.geojson.gz`` of 1 GiB): each is refused with one line naming the
file, and a bomb is refused without being inflated in memory (peak RSS measured in a child
process). An empty FeatureCollection is a valid truth: "no tumour", scored empty-vs-empty.
"""

from __future__ import annotations

import dataclasses
import json
import os
import struct
import subprocess
import sys
import tracemalloc
import zipfile
import zlib
from pathlib import Path

import pytest

from wsi_seg.cli import main
from wsi_seg.stages.card import card_path, sha256_file
from wsi_seg.stages.geojson import write_geojson
from wsi_seg.tools.synth import write_synthetic_slide

MiB = 1 << 20
REPO = Path(__file__).resolve().parents[1]
RUN_OPTS = ["--block", "256", "--chunk", "128", "--batch-size", "4", "--scheduler", "threads",
            "--quiet"]
SQUARE = [[100, 100], [300, 100], [300, 300], [100, 300], [100, 100]]


def _one_error_line(err: str) -> str:
    """The one stderr line of a refused command (no traceback, no warning before it)."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("wsi-seg: error: ") and "Traceback" not in err
    return lines[0]


@pytest.fixture(scope="module")
def slide(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic slide (its truth is ``slide.tumor.geojson`` beside it)."""
    path = tmp_path_factory.mktemp("slide") / "s.svs"
    write_synthetic_slide(path, (1000, 800), seed=3)
    return path


@pytest.fixture(scope="module")
def empty_pred(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_geojson([], tmp_path_factory.mktemp("pred") / "tumor.geojson")


def _score(pred: Path, truth: Path, slide: Path, *extra: str) -> int:
    return main(["score", str(pred), str(truth), "--slide", str(slide), *extra])


# ------------------------------------------------------------------------------ truth JSON

def _truth_with(coordinate: str) -> str:
    """A QuPath FeatureCollection whose square has one corner replaced by ``coordinate``."""
    ring = json.dumps(SQUARE).replace("[300, 100]", f"[{coordinate}, 100]", 1)
    return ('{"type": "FeatureCollection", "features": [{"type": "Feature", "geometry": '
            f'{{"type": "Polygon", "coordinates": [{ring}]}}, '
            '"properties": {"classification": {"name": "Tumor"}}}]}')


@pytest.mark.parametrize("coordinate", ["NaN", "Infinity", "-Infinity", "1e400"])
def test_non_finite_truth_coordinates_are_one_line(
        coordinate: str, slide: Path, empty_pred: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    truth = tmp_path / "nan.geojson"
    truth.write_text(_truth_with(coordinate))
    assert _score(empty_pred, truth, slide) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "nan.geojson" in line and "NaN or infinite coordinate" in line
    # The same file as a prediction: the same reader, the same line.
    assert _score(truth, slide.with_name("s.tumor.geojson"), slide) == 2
    assert "NaN or infinite coordinate" in _one_error_line(capsys.readouterr().err)


@pytest.mark.parametrize("text", ["[" * 100_000, '{"a":' * 100_000,
                                  '{"type": "FeatureCollection", "features": ' + "[" * 50_000])
def test_deeply_nested_json_is_one_line(text: str, slide: Path, empty_pred: Path,
                                        tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    truth = tmp_path / "deep.geojson"
    truth.write_text(text)
    assert _score(empty_pred, truth, slide) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "deep.geojson" in line and "nested too deeply" in line


def test_truth_larger_than_the_cap_is_refused_before_reading(
        slide: Path, empty_pred: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """300 MiB files (sparse: no disk used), JSON and XML, refused by their size alone."""
    for name, head in (("big.geojson", b'{"type": "FeatureCollection", "features": ['),
                       ("big.xml", b"<ASAP_Annotations>")):
        path = tmp_path / name
        with open(path, "wb") as fh:
            fh.write(head)
            fh.truncate(300 * MiB)
        tracemalloc.start()
        assert _score(empty_pred, path, slide) == 2
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert peak < 16 * MiB  # refused by its size, not read (256 MiB would show here)
        line = _one_error_line(capsys.readouterr().err)
        assert name in line and "300 MiB, more than the 256 MiB allowed" in line


# --------------------------------------------------------------------------- empty truth

@pytest.mark.parametrize("text", ['{"type": "FeatureCollection", "features": []}', "[]",
                                  "<ASAP_Annotations><Annotations/></ASAP_Annotations>",
                                  "<Annotations></Annotations>"])
def test_empty_truth_scores_empty_vs_empty(text: str, slide: Path, empty_pred: Path,
                                           tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    truth = tmp_path / ("empty.xml" if text.startswith("<") else "empty.geojson")
    truth.write_text(text)
    assert _score(empty_pred, truth, slide, "--json") == 0
    result = json.loads(capsys.readouterr().out)
    assert result["empty_both"] and result["iou"] is None and result["dice"] is None
    assert result["tp"] == result["fp"] == result["fn"] == 0
    # A prediction with tumour against "no tumour" scores 0, every predicted pixel false.
    assert _score(slide.with_name("s.tumor.geojson"), truth, slide, "--json") == 0
    result = json.loads(capsys.readouterr().out)
    assert result["iou"] == 0 and result["fp"] > 0 and not result["empty_both"]


def test_points_only_truth_is_still_refused(slide: Path, empty_pred: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """Annotations that are not areas are not "no tumour": the user drew something else."""
    truth = tmp_path / "points.geojson"
    truth.write_text(json.dumps({"type": "FeatureCollection", "features": [{
        "type": "Feature", "geometry": {"type": "Point", "coordinates": [5, 5]},
        "properties": {"classification": {"name": "Tumor"}}}]}))
    assert _score(empty_pred, truth, slide) == 2
    assert "no tumour area annotation" in _one_error_line(capsys.readouterr().err)


def test_run_scores_an_empty_truth_as_empty_vs_empty(slide: Path, tmp_path: Path) -> None:
    """`run --truth` with a model that finds nothing and a truth of no tumour: the slide is
    scored, counted empty-vs-empty and left out of the means."""
    from tests.model_fixtures import constant_unet

    model = constant_unet(tmp_path / "low.keras", value=0.1)
    truth = tmp_path / "truth.geojson"
    truth.write_text('{"type": "FeatureCollection", "features": []}')
    out = tmp_path / "out"
    assert main(["run", str(slide), "--out", str(out), "--model", str(model), "--truth",
                 str(truth), *RUN_OPTS]) == 0
    record = json.loads((out / "run.json").read_text())["slides"][0]
    assert record["status"] == "ok" and record["score"]["empty_both"]
    assert record["score"]["iou"] is None
    summary = (out / "summary.md").read_text()
    assert "Scored slides: 1 (1 empty-vs-empty" in summary


# ------------------------------------------------------------------------------- models

@pytest.fixture(scope="module")
def unet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.model_fixtures import small_unet

    return small_unet(tmp_path_factory.mktemp("model") / "unet.keras", roi=64)


def _recard(model: Path, **change: object) -> Path:
    """A copy of the model with its card changed (the sha256 still matches the archive)."""
    from wsi_seg.stages.card import ModelCard

    copy = model.with_name(f"changed-{'-'.join(change)}.keras")
    copy.write_bytes(model.read_bytes())
    card = ModelCard.from_json(card_path(model).read_text())
    card_path(copy).write_text(dataclasses.replace(card, **change).to_json())  # type: ignore[arg-type]
    return copy


def test_card_input_size_disagreeing_with_the_model_is_one_line(
        unet: Path, slide: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Caught before any worker starts (the architecture declares its input), so the run
    never reaches a worker that cannot load the model."""
    for change, said in (({"input_size_px": 32}, "(n, 64, 64, 3) does not match the card "
                                                 "(32x32x3)"),
                         ({"channels": 1}, "does not match the card (64x64x1)")):
        model = _recard(unet, **change)
        out = tmp_path / f"out-{change}"
        rc = main(["run", str(slide), "--out", str(out), "--model", str(model), *RUN_OPTS])
        assert rc == 2
        line = _one_error_line(capsys.readouterr().err)
        assert model.name in line and said in line


def test_deeply_nested_card_is_one_line(unet: Path, slide: Path, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    model = tmp_path / "m.keras"
    model.write_bytes(unet.read_bytes())
    card_path(model).write_text('{"kind": "unet", "extra": ' + "[" * 100_000)
    assert main(["run", str(slide), "--out", str(tmp_path / "out"), "--model", str(model),
                 *RUN_OPTS]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "m.json" in line and "nested too deeply" in line


# -------------------------------------------------------------------------------- bombs

def _filler_deflate(byte: bytes, mib: int) -> tuple[bytes, int]:
    """A raw deflate stream of ``mib`` MiB of ``byte`` (about 1 kB per MiB) and its CRC-32.

    One MiB is compressed once and its blocks repeated: a full flush ends them byte-aligned
    with no reference to earlier data, so copies chain into one valid stream. Compressing
    1 GiB for real would take about 20 s.
    """
    chunk = byte * MiB
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    blocks = comp.compress(chunk) + comp.flush(zlib.Z_FULL_FLUSH)
    final = zlib.compressobj(9, zlib.DEFLATED, -15).flush()  # an empty last block
    crc = 0
    for _ in range(mib):
        crc = zlib.crc32(chunk, crc)
    return blocks * mib + final, crc


def _write_gzip(path: Path, deflate: bytes, crc: int, size: int) -> Path:
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
    path.write_bytes(header + deflate + struct.pack("<II", crc, size & 0xFFFFFFFF))
    return path


def _write_zip(path: Path, members: list[tuple[str, bytes, int, int, int]]) -> Path:
    """A zip of ``(name, stored data, crc, declared size, method)`` members, written by hand
    so a member may hold a raw deflate stream and declare any size."""
    local, central = bytearray(), bytearray()
    for name, data, crc, size, method in members:
        raw_name = name.encode()
        central += struct.pack("<4s6H3I5H2I", b"PK\x01\x02", 20, 20, 0, method, 0, 33, crc,
                               len(data), size, len(raw_name), 0, 0, 0, 0, 0, len(local))
        central += raw_name
        local += struct.pack("<4s5H3I2H", b"PK\x03\x04", 20, 0, method, 0, 33, crc, len(data),
                             size, len(raw_name), 0)
        local += raw_name + data
    end = struct.pack("<4s4H2IH", b"PK\x05\x06", 0, 0, len(members), len(members),
                      len(central), len(local), 0)
    path.write_bytes(bytes(local + central + end))
    return path


@pytest.fixture(scope="module")
def gib_of_spaces() -> tuple[bytes, int]:
    return _filler_deflate(b" ", 1024)


def _keras_bomb(path: Path, member: str, deflate: bytes, crc: int, declared: int,
                unet: Path) -> Path:
    """A copy of ``unet`` whose ``member`` is ``deflate`` declaring ``declared`` bytes, with a
    card that matches its sha256 (the other members are the model's own, stored)."""
    with zipfile.ZipFile(unet) as zf:
        own = {name: zf.read(name) for name in zf.namelist()}
    members = [(name, deflate, crc, declared, zipfile.ZIP_DEFLATED) if name == member
               else (name, data, zlib.crc32(data), len(data), zipfile.ZIP_STORED)
               for name, data in own.items()]
    _write_zip(path, members)
    card = json.loads(card_path(unet).read_text())
    card["sha256"] = sha256_file(path)
    card_path(path).write_text(json.dumps(card))
    return path


# The child measures its own peak RSS around the command, after importing every command
# module, so the growth is what the refused input cost.
CHILD = """
import json, resource, sys
from wsi_seg.cli import build_parser, main
import dask.distributed, shapely, zarr
build_parser()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
rc = main(sys.argv[1:])
grew = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
print(json.dumps({"rc": rc, "grew_mib": grew / 1024}))
"""


def _run_child(*argv: str, timeout_s: float = 300) -> tuple[dict[str, float], str]:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run([sys.executable, "-c", CHILD, *argv], capture_output=True,
                          text=True, cwd=REPO, env=env, timeout=timeout_s)
    lines = proc.stdout.strip().splitlines()
    assert lines and lines[-1].startswith("{"), f"no result (exit {proc.returncode}): " \
        f"{proc.stderr[-2000:]}"
    return json.loads(lines[-1]), proc.stderr


@pytest.mark.parametrize(("member", "declared", "said"), [
    ("config.json", 1 << 30, "'config.json' inflates to 1 GiB, more than the 64 MiB allowed"),
    ("config.json", 1024, "member 'config.json' holds more than the 1 KiB it declares"),
    ("model.weights.h5", 1 << 30, "member 'model.weights.h5' inflates to 1 GiB from 1.01 MiB "
                                  "stored: refused as a decompression bomb"),
    ("model.weights.h5", 1024, "member 'model.weights.h5' holds more than the 1 KiB"),
], ids=["config-declared", "config-lies", "weights-declared", "weights-lies"])
def test_keras_bomb_is_refused_without_inflating(
        member: str, declared: int, said: str, gib_of_spaces: tuple[bytes, int], unet: Path,
        slide: Path, tmp_path: Path) -> None:
    """A 1 MB .keras with a member that inflates to 1 GiB, declaring it or lying (1 KiB):
    refused in one line before any worker starts, the peak memory barely moving (a config
    bomb once took 2.1 GB; a lying member costs Keras' reader 1 GiB or more)."""
    deflate, crc = gib_of_spaces
    bomb = _keras_bomb(tmp_path / "bomb.keras", member, deflate, crc, declared, unet)
    assert bomb.stat().st_size < 2 * MiB
    result, err = _run_child("run", str(slide), "--out", str(tmp_path / "out"), "--model",
                             str(bomb), *RUN_OPTS)
    assert result["rc"] == 2, err
    assert result["grew_mib"] < 100, result
    line = _one_error_line(err)
    assert "bomb.keras" in line and said in line


def test_gzip_truth_bomb_is_refused_without_inflating(
        slide: Path, empty_pred: Path, tmp_path: Path) -> None:
    """A 1 MB .geojson.gz of 1 GiB: refused having held one chunk, as truth and as a
    prediction (it once took 2.1 GB)."""
    deflate, crc = _filler_deflate(b"\0", 1024)
    bomb = _write_gzip(tmp_path / "bomb.geojson.gz", deflate, crc, 1 << 30)
    assert bomb.stat().st_size < 2 * MiB
    for pred, truth in ((empty_pred, bomb), (bomb, slide.with_name("s.tumor.geojson"))):
        result, err = _run_child("score", str(pred), str(truth), "--slide", str(slide))
        assert result["rc"] == 2, err
        assert result["grew_mib"] < 100, result
        line = _one_error_line(err)
        assert "bomb.geojson.gz" in line and "inflates to more than the 256 MiB" in line


def test_gzip_truth_within_the_cap_still_reads(slide: Path, empty_pred: Path,
                                               tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """Two gzip members (as `cat a.gz b.gz` makes) inflate to one document."""
    import gzip

    text = slide.with_name("s.tumor.geojson").read_bytes()
    truth = tmp_path / "t.geojson.gz"
    truth.write_bytes(gzip.compress(text[:10]) + gzip.compress(text[10:]))
    assert _score(empty_pred, truth, slide, "--json") == 0
    assert json.loads(capsys.readouterr().out)["fn"] > 0


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(
        ">I", zlib.crc32(kind + data))


def _png_bomb(path: Path, side: int) -> Path:
    """A greyscale PNG of ``side - 1`` x ``side`` black pixels, ~1 kB per MiB it decodes to
    (each row is a filter byte and ``side - 1`` zeros: ``side`` zeros, so MiB multiples)."""
    mib = side * side // MiB
    deflate, _ = _filler_deflate(b"\0", mib)
    adler = 1
    zeros = bytes(MiB)
    for _ in range(mib):
        adler = zlib.adler32(zeros, adler)
    ihdr = struct.pack(">IIBBBBB", side - 1, side, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr)
                     + _png_chunk(b"IDAT", b"\x78\xda" + deflate + struct.pack(">I", adler))
                     + _png_chunk(b"IEND", b""))
    return path


@pytest.mark.parametrize("kind", ["png", "zarr"])
def test_mask_truth_bomb_is_refused_without_decoding(
        kind: str, slide: Path, empty_pred: Path, tmp_path: Path) -> None:
    """A 300 kB PNG mask that decodes to 289 MiB, or a Zarr mask whose one chunk inflates to
    400 MB: refused from the header, before decoding anything."""
    if kind == "zarr":
        import zarr

        mask = tmp_path / "mask.zarr"
        zarr.create_array(str(mask), shape=(20000, 20000), chunks=(20000, 20000),
                          dtype="uint8", fill_value=1)  # no chunk stored: all read as 1
        said = "chunks (20000, 20000) inflate to 381 MiB each, more than the 256 MiB"
    else:
        mask = _png_bomb(tmp_path / "mask.png", 17408)
        assert mask.stat().st_size < MiB
        said = "mask image is 17407 x 17408 px, more than the 268 Mpx read whole"
    result, err = _run_child("score", str(empty_pred), str(mask), "--slide", str(slide),
                             "--mask-mpp", "1", timeout_s=120)
    assert result["rc"] == 2, err
    assert result["grew_mib"] < 100, result
    line = _one_error_line(err)
    assert "mask." in line and said in line


# ------------------------------------------------------------------- options out of range
@pytest.mark.parametrize(("flag", "value"), [
    ("--batch-size", "1000000"), ("--tile", "100000"), ("--block", "1000000"),
    ("--workers", "5000"), ("--vectorize-level", "99"), ("--simplify-um", "1e9"),
])
def test_options_have_upper_bounds(flag: str, value: str, slide: Path, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:  # argparse's exit, with its one line
        main(["run", str(slide), "--out", str(tmp_path / "out"), flag, value])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and flag in err and "must be" in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_a_batch_too_large_for_memory_is_refused_before_any_worker(
        unet: Path, slide: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Within the option's range, but its buffers would not fit: one line, up front (the
    predictor's thread once died allocating 180 GiB and the run waited for ever)."""
    rc = main(["run", str(slide), "--out", str(tmp_path / "out"), "--model", "bundled:unet",
               "--batch-size", "16384"])
    line = _one_error_line(capsys.readouterr().err)  # 256 px windows: 7 GiB
    assert rc == 2 and "GiB of buffers" in line and "--batch-size" in line
    assert not (tmp_path / "out").exists()
    from wsi_seg.stages.card import read_card
    from wsi_seg.stages.infer import check_batch_bytes

    check_batch_bytes(16384, read_card(unet))  # 64 px windows: 16384 fit


def test_a_predictor_whose_consumer_dies_fails_its_slides_in_one_line(
        unet: Path, slide: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Out of memory assembling a batch (outside the device call): every request waiting on
    the consumer fails with the cause, the run ends (it does not wait for ever)."""
    from wsi_seg.stages import infer

    def no_memory(self: object, slots: object) -> None:
        raise MemoryError("cannot allocate 180 GiB")

    monkeypatch.setattr(infer.Predictor, "_launch", no_memory)
    monkeypatch.setattr(infer, "_cache", {})
    rc = main(["run", str(slide), "--out", str(tmp_path / "out"), "--model", str(unet),
               *RUN_OPTS])
    err = capsys.readouterr().err
    assert rc == 1
    lines = [line for line in err.splitlines() if "predictor failed" in line]
    assert lines and all("MemoryError" in line and "180 GiB" in line for line in lines)
    assert "Traceback" not in err


# ------------------------------------------------------------- paths that are not files
@pytest.mark.parametrize("role", ["slide", "config", "truth"])
def test_a_fifo_is_refused_in_one_line_not_waited_on(role: str, slide: Path, empty_pred: Path,
                                                     tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]
                                                     ) -> None:
    """Opening a FIFO for reading blocks until a writer comes: it would hang the command."""
    fifo = tmp_path / {"slide": "x.svs", "config": "c.toml", "truth": "t.geojson"}[role]
    os.mkfifo(fifo)
    argv = {"slide": ["run", str(fifo), "--out", str(tmp_path / "out")],
            "config": ["run", str(slide), "--out", str(tmp_path / "out"), "--config", str(fifo)],
            "truth": ["score", str(empty_pred), str(fifo), "--slide", str(slide)]}[role]
    assert main(argv) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert fifo.name in line and "FIFO" in line


# ------------------------------------------------------- a scheduler address that is not one
class _Server:
    """A TCP server on 127.0.0.1 that, per connection, does ``behaviour``: ``silent``
    (accepts, says nothing), ``garbage`` (sends bytes that are not Dask's), ``http`` (answers
    the way an HTTP server answers a client that speaks first)."""

    def __init__(self, behaviour: str) -> None:
        import socket
        import threading

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.port = self.sock.getsockname()[1]
        self.behaviour = behaviour
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)
            if self.behaviour == "garbage":
                conn.sendall(b"\xff" * 64)
            elif self.behaviour == "http":
                conn.sendall(b"HTTP/1.0 400 Bad Request\r\nContent-Length: 0\r\n\r\n")

    def close(self) -> None:
        for c in self.conns:
            c.close()
        self.sock.close()


@pytest.mark.parametrize(("behaviour", "says"), [
    ("silent", "said nothing"), ("garbage", "not in Dask's protocol"),
    ("http", "not in Dask's protocol")])
def test_a_scheduler_address_that_is_not_a_scheduler_is_one_line(
        behaviour: str, says: str, slide: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from wsi_seg.orchestration import cluster

    monkeypatch.setattr(cluster, "PROBE_TIMEOUT_S", 2.0)  # the silent one: wait 2 s, not 10
    server = _Server(behaviour)
    try:
        rc = main(["run", str(slide), "--out", str(tmp_path / "out"), "--scheduler",
                   f"tcp://127.0.0.1:{server.port}", "--quiet"])
    finally:
        server.close()
    line = _one_error_line(capsys.readouterr().err)
    assert rc == 2 and says in line and f"127.0.0.1:{server.port}" in line


def test_blocks_no_worker_can_take_fail_in_one_line(slide: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """--gpu-resource on a real cluster whose worker declares no GPU: the blocks would wait
    for ever; the run waits a while for such a worker, then says so in one line."""
    from tests.dask_fixtures import DaskCluster
    from wsi_seg.orchestration import runner

    monkeypatch.setattr(runner, "RESOURCE_WAIT_S", 2.0)
    cluster = DaskCluster(tmp_path, n_workers=1)
    try:
        rc = main(["run", str(slide), "--out", str(tmp_path / "out"), "--scheduler",
                   cluster.address, "--gpu-resource", "--quiet"])
    finally:
        cluster.close()
    line = _one_error_line(capsys.readouterr().err)
    assert rc == 2 and "no worker of the cluster declares" in line and "GPU=" in line


def test_a_run_of_only_unreadable_slides_starts_no_cluster(tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]
                                                           ) -> None:
    """Every slide fails to open: each gets its line and the run ends, without starting
    workers or loading a model (that took ~20 s for nothing)."""
    d = tmp_path / "slides"
    d.mkdir()
    for name in ("a.svs", "b.svs"):
        (d / name).write_bytes(b"II*\x00" + b"\x00" * 64)
    out = tmp_path / "out"
    rc = main(["run", str(d), "--out", str(out)])
    captured = capsys.readouterr()
    assert rc == 1
    assert sum("a.svs" in line or "b.svs" in line for line in captured.err.splitlines()) == 2
    assert "dask:" not in captured.out and "start-up:" not in captured.out
    run = json.loads((out / "run.json").read_text())
    assert run["workers"] is None and run["startup_s"] is None and run["failed"] == 2
