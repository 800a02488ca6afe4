"""Every slide its own output, and resume only ever from the same file (through the real CLI).

Two slides with one stem (``a/x.svs`` and ``b/x.svs``; ``case1.svs`` beside ``case1.tif``) get
distinct folders named predictably; a slide file replaced under the same name is redone, never
resumed from the other file's blocks; a folder holding another slide's results is never
overwritten without --overwrite.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.model_fixtures import small_unet
from wsi_seg.cli import main
from wsi_seg.core.naming import output_names, slide_stem
from wsi_seg.orchestration.pipeline import RunConfig, prepare_slide, run_block
from wsi_seg.stages.infer import InferConfig
from wsi_seg.stages.mosaic import open_mosaic
from wsi_seg.tools.synth import write_synthetic_slide

OPTS = ["--block", "256", "--chunk", "128", "--batch-size", "4", "--scheduler", "threads",
        "--quiet"]


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return small_unet(tmp_path_factory.mktemp("m") / "u.keras")


def _run(model: Path, out: Path, *slides: Path, extra: tuple[str, ...] = ()) -> int:
    return main(["run", *map(str, slides), "--out", str(out), "--model", str(model), *OPTS,
                 *extra])


def _mosaic(folder: Path) -> np.ndarray:
    return np.asarray(open_mosaic(folder / "mask.zarr").level(0)[:])


def test_names_rule() -> None:
    assert slide_stem(Path("TCGA-A1.01.svs")) == "TCGA-A1.01"
    assert slide_stem(Path("a.ome.tif")) == "a.ome"
    names = output_names([Path("/d/a/x.svs"), Path("/d/b/x.svs"), Path("/d/case1.svs"),
                          Path("/d/case1.tif"), Path("/d/y.svs"), Path("/d/Y.tif")])
    assert names == {Path("/d/a/x.svs"): "a__x.svs", Path("/d/b/x.svs"): "b__x.svs",
                     Path("/d/case1.svs"): "case1.svs", Path("/d/case1.tif"): "case1.tif",
                     Path("/d/y.svs"): "y.svs", Path("/d/Y.tif"): "Y.tif"}


def test_names_that_differ_only_in_case_get_their_own_folders(model: Path, tmp_path: Path
                                                              ) -> None:
    """``A.svs`` and ``a.svs`` in one folder (a case-sensitive disk): no folder tells them
    apart, so each name takes a hash of its exact spelling; both runs finish."""
    names = output_names([Path("/d/A.svs"), Path("/d/a.svs"), Path("/d/b.svs")])
    assert names[Path("/d/b.svs")] == "b"
    a, b = names[Path("/d/A.svs")], names[Path("/d/a.svs")]
    assert a.startswith("A.svs-") and b.startswith("a.svs-") and a.casefold() != b.casefold()
    d = tmp_path / "d"
    d.mkdir()
    write_synthetic_slide(d / "A.svs", (600, 500), seed=1)
    write_synthetic_slide(d / "a.svs", (600, 500), seed=2)
    rc = main(["run", str(d), "--out", str(tmp_path / "out"), "--model", str(model),
               "--scheduler", "threads", "--quiet"])
    assert rc == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir() if p.is_dir()) == sorted([a, b])


def test_slides_sharing_a_stem_get_their_own_outputs_and_truths(model: Path,
                                                               tmp_path: Path) -> None:
    d = tmp_path / "slides"
    write_synthetic_slide(d / "a" / "x.svs", (1200, 1000), seed=1)
    write_synthetic_slide(d / "b" / "x.svs", (1000, 1200), seed=2)
    truth = tmp_path / "truth"
    truth.mkdir()
    for name, size, seed in (("case1.svs", (1100, 900), 3), ("case1.tif", (900, 1100), 4)):
        staging = tmp_path / f"staging-{seed}"  # both would write case1.tumor.geojson
        write_synthetic_slide(staging / name, size, seed=seed)
        shutil.copy(staging / "case1.tumor.geojson", truth / f"{name}.geojson")
        os.replace(staging / name, d / name)
    # Truth by output name tells same-stem slides apart.
    shutil.copy(d / "a" / "x.tumor.geojson", truth / "a__x.svs.geojson")
    shutil.copy(d / "b" / "x.tumor.geojson", truth / "b__x.svs.geojson")
    out = tmp_path / "out"
    slides = [d / "a" / "x.svs", d / "b" / "x.svs", d / "case1.svs", d / "case1.tif"]
    assert _run(model, out, *slides, extra=("--truth", str(truth))) == 0
    expect = {"a__x.svs": (600, 500), "b__x.svs": (500, 600), "case1.svs": (550, 450),
              "case1.tif": (450, 550)}  # (w, h) at 1 µm/px: each its own slide's size
    for name, (w, h) in expect.items():
        rep = json.loads((out / name / "report.json").read_text())
        assert rep["output_name"] == name
        assert _mosaic(out / name).shape == (h, w)
    run = json.loads((out / "run.json").read_text())
    assert sorted(s["output"] for s in run["slides"]) == sorted(expect)
    reports = {n: json.loads((out / n / "report.json").read_text()) for n in expect}
    assert reports["a__x.svs"]["truth"].endswith("a__x.svs.geojson")
    assert reports["b__x.svs"]["truth"].endswith("b__x.svs.geojson")
    assert all(r["score"] is not None for r in reports.values())
    summary = (out / "summary.csv").read_text()
    assert all(name in summary for name in ("a__x.svs", "b__x.svs", "case1.svs", "case1.tif"))
    # The same command again finds every slide finished.
    assert _run(model, out, *slides) == 0
    assert {s["status"] for s in json.loads((out / "run.json").read_text())["slides"]} == {
        "skipped"}


def test_a_folder_holding_another_slides_results_is_not_overwritten(
        model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_synthetic_slide(tmp_path / "a" / "x.svs", (1000, 800), seed=1)
    write_synthetic_slide(tmp_path / "b" / "x.svs", (800, 1000), seed=2)
    out = tmp_path / "out"
    assert _run(model, out, tmp_path / "a" / "x.svs") == 0
    before = _mosaic(out / "x")
    capsys.readouterr()
    assert _run(model, out, tmp_path / "b" / "x.svs") == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "already holds the results of" in err[0]
    assert np.array_equal(_mosaic(out / "x"), before)
    assert _run(model, out, tmp_path / "b" / "x.svs", extra=("--overwrite",)) == 0
    assert _mosaic(out / "x").shape == (500, 400)


def test_resume_drops_chunk_temporaries_a_killed_run_left(model: Path, tmp_path: Path
                                                          ) -> None:
    """Zarr writes a chunk to ``<key>.<uuid>.partial`` and renames it: a kill in between leaves
    the temporary, which resuming removes (else it would be published inside mask.zarr); a
    block marker's temporary is removed too and never counts as a finished block."""
    slide = tmp_path / "s" / "x.svs"
    write_synthetic_slide(slide, (1200, 1200), seed=1)
    cfg = RunConfig(out_dir=tmp_path / "out", model_path=model, block_px=256, chunk_px=128,
                    infer=InferConfig(batch_size=4))
    job = prepare_slide(slide, cfg)
    run_block(job.context(), job.tasks[0], cfg.infer)
    chunk_dir = job.work_dir / "mask.zarr" / "0" / "c" / "0"
    stray = chunk_dir / "1.0123456789abcdef0123456789abcdef.partial"
    stray.write_bytes(b"half a chunk")
    kept = sorted(p.name for p in chunk_dir.iterdir() if p != stray)
    # A marker caught mid-write: the hidden temporary of core.files' atomic writes.
    marker_tmp = job.work_dir / "blocks" / f".{job.tasks[1].block.key}.1.2.tmp.json"
    marker_tmp.write_text("{")
    assert prepare_slide(slide, cfg).n_blocks_done == 1
    assert not stray.exists() and not marker_tmp.exists()
    assert sorted(p.name for p in chunk_dir.iterdir()) == kept  # real chunks untouched


def test_a_replaced_slide_is_redone_not_resumed(model: Path, tmp_path: Path) -> None:
    slide = tmp_path / "s" / "x.svs"
    write_synthetic_slide(slide, (1200, 1200), seed=1)
    out = tmp_path / "out"
    # Interrupted run: the work folder holds some finished blocks of the first file.
    cfg = RunConfig(out_dir=out, model_path=model, block_px=256, chunk_px=128,
                    infer=InferConfig(batch_size=4))
    job = prepare_slide(slide, cfg)
    run_block(job.context(), job.tasks[0], cfg.infer)
    assert prepare_slide(slide, cfg).n_blocks_done == 1
    # Another scan, same name and size.
    other = tmp_path / "other"
    write_synthetic_slide(other / "x.svs", (1200, 1200), seed=9)
    os.replace(other / "x.svs", slide)
    assert prepare_slide(slide, cfg).n_blocks_done == 0
    assert _run(model, out, slide) == 0
    fresh = tmp_path / "fresh"
    assert _run(model, fresh, slide) == 0
    assert np.array_equal(_mosaic(out / "x"), _mosaic(fresh / "x"))
    # A finished slide replaced later is redone too, not skipped.
    write_synthetic_slide(other / "x.svs", (1200, 1200), seed=5)
    os.replace(other / "x.svs", slide)
    assert _run(model, out, slide) == 0
    run = json.loads((out / "run.json").read_text())
    assert run["slides"][0]["status"] == "ok"


def test_progress_and_timing_lines_off_a_terminal(model: Path, tmp_path: Path) -> None:
    """stderr to a file: plain progress lines, no carriage-return frames; the slide's time
    is its whole time (finishing included) with the blocks phase beside it."""
    import subprocess
    import sys

    write_synthetic_slide(tmp_path / "s" / "p.svs", (1200, 1000), seed=3)
    done = subprocess.run(
        [str(Path(sys.executable).parent / "wsi-seg"), "run", str(tmp_path / "s"), "--out",
         str(tmp_path / "out"), "--model", str(model), *OPTS[:-1]],
        capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "\r" not in done.stderr and "\r" not in done.stdout
    rep = json.loads((tmp_path / "out" / "p" / "report.json").read_text())
    lines = [ln for ln in done.stderr.splitlines() if ln.startswith("progress (all slides)")]
    assert lines and lines[-1].startswith(f"progress (all slides): {rep['tiles']:,} / "
                                          f"{rep['tiles']:,} tiles (100.0 %)")
    assert rep["wall_s"] == pytest.approx(rep["blocks_wall_s"] + rep["finish_s"], abs=2e-3)
    assert rep["finish_s"] >= rep["stage_s"]["vectorize"]
    line = next(ln for ln in done.stdout.splitlines() if ln.startswith("✓ p.svs"))
    assert f"in {rep['wall_s']:.1f} s" in line and "blocks phase" in line


def test_error_lines_are_not_lost_while_the_model_loads_in_this_process(
        model: Path, tmp_path: Path) -> None:
    """--scheduler threads loads the framework in a thread of the client's process while the
    client reports a broken slide: the line must reach file descriptor 2 (it was once muted
    for the length of TensorFlow's import)."""
    import subprocess
    import sys

    d = tmp_path / "slides"
    write_synthetic_slide(d / "good.svs", (800, 600), seed=1)
    write_synthetic_slide(d / "broken.svs", (800, 600), seed=2)
    data = (d / "broken.svs").read_bytes()
    (d / "broken.svs").write_bytes(data[: len(data) // 3])
    done = subprocess.run(
        [str(Path(sys.executable).parent / "wsi-seg"), "run", str(d), "--out",
         str(tmp_path / "out"), "--model", str(model), *OPTS], capture_output=True, text=True,
        timeout=600)
    rc, err = done.returncode, done.stderr
    assert rc == 1
    assert sum("broken.svs" in line for line in err.splitlines()) == 1, err


def test_each_finished_report_is_read_once_per_run(model: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A rerun asks each slide's report once (finished? taken? scored?), not once per
    question; a finished slide that could not be scored is still redone."""
    from wsi_seg.orchestration import runner

    write_synthetic_slide(tmp_path / "a.svs", (800, 600), seed=1)
    write_synthetic_slide(tmp_path / "b.svs", (600, 800), seed=2)
    out = tmp_path / "out"
    truth = tmp_path / "truth"
    truth.mkdir()
    (truth / "a.tumor.geojson").write_text('{"type": "FeatureCollection", "features": []}')
    slides = (tmp_path / "a.svs", tmp_path / "b.svs")
    assert _run(model, out, *slides, extra=("--truth", str(truth))) == 1  # b: no truth
    reads: list[Path] = []
    real = runner.finished_report

    def counting(out_dir: Path, slide_path: Path, name: str | None = None) -> object:
        reads.append(slide_path)
        return real(out_dir, slide_path, name)

    monkeypatch.setattr(runner, "finished_report", counting)
    (truth / "b.tumor.geojson").write_text('{"type": "FeatureCollection", "features": []}')
    assert _run(model, out, *slides, extra=("--truth", str(truth))) == 0
    assert sorted(reads) == sorted(slides)
    run = json.loads((out / "run.json").read_text())
    assert [s["status"] for s in run["slides"]] == ["skipped", "ok"]
