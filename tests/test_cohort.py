"""A cohort in one run: slides are prepared and submitted as the run goes, a few at a time, so
the graph (and the client's bookkeeping of it) is bounded whatever the number of slides; the
outputs are those of a run that had every slide in flight; each finished slide's line says
where the cohort stands; run.json's rewrites are held to a share of the client's time."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.model_fixtures import small_unet
from tests.test_runner import assert_same_stores
from wsi_seg.cli import main
from wsi_seg.orchestration import runner as runner_module
from wsi_seg.tools.synth import write_synthetic_slide

OPTS = ["--block", "128", "--chunk", "128", "--batch-size", "4", "--scheduler", "threads"]
STEMS = tuple(f"c{i}" for i in range(5))


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("cohort")
    for i, stem in enumerate(STEMS):
        write_synthetic_slide(d / f"{stem}.svs", (700 + 100 * i, 600), seed=40 + i)
    return d, small_unet(tmp_path_factory.mktemp("model") / "unet.keras")


def test_slides_are_submitted_a_few_at_a_time_with_the_same_outputs(
        cohort: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    slides, model = cohort
    everything = tmp_path / "all"
    monkeypatch.setattr(runner_module, "MAX_SLIDES_IN_FLIGHT", 100)
    assert main(["run", str(slides), "--out", str(everything), "--model", str(model),
                 "--quiet", *OPTS]) == 0

    events: list[tuple[str, str]] = []
    in_flight: list[int] = []
    prepare = runner_module.prepare_slide
    submit = runner_module.Runner._submit
    finished = runner_module.Runner._finished

    def prepare_spy(path: Any, *args: Any, **kwargs: Any) -> Any:
        events.append(("prepare", Path(str(path)).stem))
        return prepare(path, *args, **kwargs)

    def submit_spy(self: Any, flight: Any, *args: Any) -> None:
        submit(self, flight, *args)
        in_flight.append(len({id(s) for s in flight.owner.values()}))

    def finished_spy(self: Any, state: Any, report: Any) -> None:
        events.append(("finish", state.name))
        finished(self, state, report)

    monkeypatch.setattr(runner_module, "MAX_SLIDES_IN_FLIGHT", 2)
    monkeypatch.setattr(runner_module, "prepare_slide", prepare_spy)
    monkeypatch.setattr(runner_module.Runner, "_submit", submit_spy)
    monkeypatch.setattr(runner_module.Runner, "_finished", finished_spy)
    capsys.readouterr()
    streamed = tmp_path / "streamed"
    assert main(["run", str(slides), "--out", str(streamed), "--model", str(model),
                 *OPTS]) == 0
    # Never more than two slides in flight, and later slides prepared only after earlier
    # ones finished: the run went progressively, in the given order.
    assert in_flight and max(in_flight) <= 2, in_flight
    assert [name for kind, name in events if kind == "prepare"] == list(STEMS)
    first_finish = events.index(next(e for e in events if e[0] == "finish"))
    assert ("prepare", STEMS[-1]) in events[first_finish:], events
    assert_same_stores(everything, streamed, STEMS)
    # One line per finished slide, each saying where the cohort stands.
    done = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("✓ ")]
    assert len(done) == len(STEMS)
    assert re.search(r" -> \S+ \[1/5 slides, about \d+ (s|min \d\d s) left\]$", done[0]), done[0]
    assert done[-1].endswith(f"[{len(STEMS)}/{len(STEMS)} slides]")
    assert all(f"[{i + 1}/{len(STEMS)} slides" in ln for i, ln in enumerate(done))
    record = json.loads((streamed / "run.json").read_text())
    assert record["finished"] and [s["status"] for s in record["slides"]] == ["ok"] * 5


def test_run_json_rewrites_are_held_to_a_share_of_the_clients_time(
        cohort: tuple[Path, Path], tmp_path: Path) -> None:
    """A throttled rewrite waits until the time since the last one is 1/share of what that
    one took; an unthrottled one (start, end) always writes."""
    from wsi_seg.orchestration.cluster import ClusterConfig
    from wsi_seg.orchestration.job import RunConfig

    slides, model = cohort
    out = tmp_path / "out"
    out.mkdir()
    run = runner_module.Runner(sorted(slides.glob("*.svs")),
                               RunConfig(out_dir=out, model_path=model), ClusterConfig())
    run.write_run_json()
    path = out / "run.json"
    first = path.stat().st_mtime_ns
    run._run_json_s = 3600.0  # as if the last write had taken an hour
    path.unlink()
    run.write_run_json(throttled=True)
    assert not path.exists()  # held back
    run.write_run_json(finished=True)
    assert json.loads(path.read_text())["finished"] and path.stat().st_mtime_ns >= first
    run._run_json_s = 0.0
    path.unlink()
    run.write_run_json(throttled=True)
    assert path.exists()


def test_a_slide_list_runs_the_slides_it_names_and_a_missing_one_fails_alone(
        cohort: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    slides, model = cohort
    listing = tmp_path / "lists" / "cohort.txt"
    listing.parent.mkdir()
    rel = Path("..") / ".." / slides.name  # relative to the list's folder, not the cwd
    listing.write_text(f"# two slides of the cohort, one twice, one missing\n\n"
                       f"{slides / 'c0.svs'}\n{rel / 'c1.svs'}\n{slides / 'c0.svs'}\n"
                       f"{slides / 'gone.svs'}\n")
    assert (listing.parent / rel / "c1.svs").resolve() == (slides / "c1.svs").resolve()
    out = tmp_path / "out"
    rc = main(["run", "--slides", str(listing), "--out", str(out), "--model", str(model),
               "--quiet", *OPTS])
    err = capsys.readouterr().err
    assert rc == 1
    record = json.loads((out / "run.json").read_text())
    assert [(Path(s["slide"]).name, s["status"]) for s in record["slides"]] == [
        ("c0.svs", "ok"), ("c1.svs", "ok"), ("gone.svs", "failed")]
    [line] = [ln for ln in err.splitlines() if "gone.svs" in ln]
    assert line.startswith(f"wsi-seg: error: {slides / 'gone.svs'}: no such "), line

    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing yet\n")
    assert main(["run", "--slides", str(empty), "--out", str(tmp_path / "o2"),
                 "--model", str(model)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"wsi-seg: error: {empty}: slide list names no slide (one path or s3:// URL per line)")
    assert main(["run", "--out", str(tmp_path / "o3"), "--model", str(model)]) == 2
    assert "no slides given" in capsys.readouterr().err
    assert not (tmp_path / "o2").exists() and not (tmp_path / "o3").exists()


def test_finished_slides_are_kept_as_records_not_reports(
        cohort: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A finished slide's run.json entry and summary figures are kept as text out of the
    client's memory, its report let go: no report is alive once the run returns, yet run.json
    (one JSON document's layout), its run score and the summaries say what the published
    report.json files say, the API reads each report back equal to the one the finishing task
    returned, and a rerun's skipped slides show the same figures."""
    import gc
    from dataclasses import asdict

    from wsi_seg.core.files import json_text
    from wsi_seg.evaluation.metrics import summarize_scores
    from wsi_seg.evaluation.overlay import SummaryRow, summary_markdown
    from wsi_seg.orchestration.cluster import ClusterConfig
    from wsi_seg.orchestration.job import RunConfig
    from wsi_seg.orchestration.report import SlideReport, score_from_json

    slides, model = cohort
    returned: dict[str, SlideReport] = {}
    finished = runner_module.Runner._finished

    def finished_spy(self: Any, state: Any, report: SlideReport) -> None:
        returned[state.name] = report
        finished(self, state, report)

    monkeypatch.setattr(runner_module.Runner, "_finished", finished_spy)
    out = tmp_path / "out"
    config = RunConfig(out_dir=out, model_path=model, truth=slides, block_px=128,
                       chunk_px=128)
    result = runner_module.Runner(sorted(slides.glob("*.svs")), config,
                                  ClusterConfig(scheduler="threads"), quiet=True).run()
    assert result.ok and result.count("ok") == len(STEMS)
    gc.collect()
    alive = [o for o in gc.get_objects() if isinstance(o, SlideReport)]
    assert len(alive) == len(returned)  # the spy's own, and no other
    returned_copy = dict(returned)
    returned.clear()
    for s in result.slides:
        assert s.report == returned_copy[s.name] and s.score == returned_copy[s.name].score
    assert list(result.reports()) == [returned_copy[n] for n in STEMS]
    del returned_copy, alive
    gc.collect()
    assert not [o for o in gc.get_objects() if isinstance(o, SlideReport)]

    raw = (out / "run.json").read_text()
    record = json.loads(raw)
    assert raw == json_text(record)  # spliced entries, laid out as one document
    reports = [json.loads((out / n / "report.json").read_text()) for n in STEMS]
    for entry, rep in zip(record["slides"], reports, strict=True):
        assert entry["report"] == str(out / rep["output_name"] / "report.json")
        assert {k: entry[k] for k in ("tiles_per_s", "wall_s", "blocks_wall_s", "stage_s",
                                      "tumour_mm2", "tissue_mm2", "score", "notes")} == {
            k: rep[k] for k in ("tiles_per_s", "wall_s", "blocks_wall_s", "stage_s",
                                "tumour_mm2", "tissue_mm2", "score", "notes")}
    scores = [score_from_json(r["score"]) for r in reports]
    assert all(scores) and record["score"] == asdict(summarize_scores(scores))

    def rows(status: str) -> list[SummaryRow]:
        return [SummaryRow(f"{n}.svs", r["tissue_mm2"], r["tumour_mm2"], r["score"]["iou"],
                           r["score"]["dice"], r["tiles_per_s"], status)
                for n, r in zip(STEMS, reports, strict=True)]

    footer = runner_module.run_score_lines(scores)
    assert footer and (out / "summary.md").read_text() == summary_markdown(rows("ok"), footer)
    again = runner_module.Runner(sorted(slides.glob("*.svs")), config,
                                 ClusterConfig(scheduler="threads"), quiet=True).run()
    assert again.count("skipped") == len(STEMS) and not list(again.reports())
    assert (out / "summary.md").read_text() == summary_markdown(rows("skipped"))
