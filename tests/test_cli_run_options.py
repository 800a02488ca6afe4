"""``wsi-seg run`` options: one typed table for flags, TOML, defaults and checks.

Every bad value, on the command line or in a --config file, is one stderr line naming the
option, exit status 2, before any slide is opened or any output folder made. Messages escape
control characters, so a crafted file name cannot forge output lines.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import MISSING, fields
from pathlib import Path

import pytest

from tests.model_fixtures import red_channel_unet
from wsi_seg.cli import main
from wsi_seg.core.errors import WsiSegError, printable
from wsi_seg.core.storage import StorageOptions
from wsi_seg.orchestration import options
from wsi_seg.orchestration.cluster import ClusterConfig
from wsi_seg.orchestration.pipeline import RunConfig
from wsi_seg.stages.infer import InferConfig
from wsi_seg.stages.tissue import TissueConfig
from wsi_seg.tools.synth import truth_path_for, write_synthetic_slide

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def slide(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("slides") / "s.svs"
    write_synthetic_slide(path, (400, 300), seed=1)
    return path


def cli(argv: Sequence[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    """Exit status and stderr lines of ``wsi-seg ARGV`` run in this process."""
    try:
        rc = main(list(argv))
    except SystemExit as exc:  # argparse's own exit
        rc = int(exc.code or 0)
    return rc, capsys.readouterr().err.splitlines()


BAD_FLAGS = [
    ["--block", "-1024"],
    ["--block", "1000"],  # not a multiple of the default --chunk 1024
    ["--block", "abc"],
    ["--chunk", "0"],
    ["--stride", "0"],
    ["--stride", "1000"],  # wider than the bundled UNet's 256 px window: gaps
    ["--tile", "100"],
    ["--overlap", "1"],
    ["--overlap", "-0.1"],
    ["--overlap", "nan"],
    ["--sigma-scale", "0"],
    ["--precision", "fp8"],
    ["--workers", "0"],
    ["--threads-per-worker", "0"],
    ["--tf-threads", "-3"],
    ["--batch-size", "0"],
    ["--threshold", "2"],
    ["--threshold", "0"],
    ["--vectorize-level", "-1"],
    ["--min-area-um2", "-1"],
    ["--simplify-um", "-1"],
    ["--mpp", "100"],
    ["--mpp", "0"],
    ["--tissue-min-area-um2", "-1"],
    ["--tissue-view-mpp", "0"],
    ["--tissue-max-view-px", "0"],
    ["--tissue-od-floor", "-1"],
    ["--tissue-close-um", "inf"],
    ["--truth-pattern", "truth.geojson"],
    ["--truth-pattern", "sub/{stem}.geojson"],
    ["--truth-pattern", "{stem}.{ext}"],
    ["--model", "bundled:nope"],
    ["--backend", "nope"],
]


@pytest.mark.parametrize("bad", BAD_FLAGS, ids=" ".join)
def test_bad_flag_is_one_line_before_any_work(bad: list[str], slide: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    rc, err = cli(["run", str(slide), "--out", str(out), "--scheduler", "threads", *bad],
                  capsys)
    assert rc == 2
    assert len(err) == 1, err
    assert bad[0] in err[0]
    assert not out.exists()  # refused before the output folder was made


def test_device_gpu_without_a_gpu(slide: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr("wsi_seg.cli.run.local_gpu_count", lambda: 0)
    out = tmp_path / "out"
    rc, err = cli(["run", str(slide), "--out", str(out), "--device", "gpu"], capsys)
    assert rc == 2
    assert len(err) == 1 and "--device gpu" in err[0] and "no GPU" in err[0]
    assert not out.exists()


BAD_TOML = [
    ('[model]\noverlap = "0.3"\n', ['[model] overlap = "0.3"', "expected a number", "a string"]),
    ("[model]\nblock = 2048\n", ["'block'", "section [model]", "section [blocks]"]),
    ("block = 2048\n", ["'block'", "top level", "section [blocks]"]),
    ("[polygons]\nview_mpp = 4.0\n", ["'view_mpp'", "[polygons]", "section [tissue]"]),
    ("[blocks]\nmin_area_um2 = 5.0\n", ["'min_area_um2'", "[tissue]", "[polygons]"]),
    ("[scheduling]\ntf_threads = 2\n", ["'tf_threads'", "[scheduling]", "section [device]"]),
    ("[model]\noverlapp = 0.3\n", ["unknown option 'overlapp'", "[model]"]),
    ("[modle]\noverlap = 0.3\n", ["unknown section [modle]"]),
    ("[device]\nbatch_size = true\n", ["batch_size = true", "expected an integer", "boolean"]),
    ("[device]\nbatch_size = 2.5\n", ["batch_size = 2.5", "expected an integer"]),
    ("[device]\ntf_threads = -3\n", ["tf_threads = -3", "1 <= x <= 1024"]),
    ("[blocks]\nblock = -1024\n", ["[blocks] block = -1024", "16 <= x <= 65536"]),
    ("[blocks]\nblock = 1000\n", ["block = 1000", "--chunk 1024"]),
    ("[model]\noverlap = nan\n", ["overlap = nan", "0 <= x < 1"]),
    ('[scores]\ntruth_pattern = "truth.geojson"\n', ["truth_pattern", "{stem}"]),
    ('[scores]\ntruth_class = ["tumor", 3]\n', ["truth_class", "list of strings"]),
    ("[tissue]\nmin_area_um2 = -1.0\n", ["[tissue] min_area_um2 = -1.0", "0 <= x <= 1e+12"]),
    ("out = 3\n", ["out = 3", "expected a path"]),
    ("[model]\noverlap = \n", ["not a valid TOML file"]),
]


@pytest.mark.parametrize(("text", "expect"), BAD_TOML, ids=[t for t, _ in BAD_TOML])
def test_bad_toml_is_one_line_naming_file_and_key(text: str, expect: list[str], slide: Path,
                                                  tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text(text)
    out = tmp_path / "out"
    rc, err = cli(["run", str(slide), "--out", str(out), "--config", str(cfg)], capsys)
    assert rc == 2
    assert len(err) == 1, err
    assert "bad.toml" in err[0]
    for part in expect:
        assert part in err[0], (part, err[0])
    assert not out.exists()


def test_toml_then_flags_over_defaults(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('out = "o"\n[blocks]\nblock = 2048\nchunk = 512\n[tissue]\n'
                   'min-area-um2 = 500\n[scores]\ntruth_pattern = "{stem}.truth.geojson"\n')
    got = options.resolve({"chunk": 256}, cfg)
    assert got["block"] == 2048 and got["chunk"] == 256 and got["overlap"] == 0.25
    assert got["tissue_min_area_um2"] == 500 and got["truth_pattern"] == "{stem}.truth.geojson"
    assert got.origins["block"] == str(cfg) and got.origins["chunk"] == "flag"
    assert got.origins["overlap"] == "default"


def test_dataclass_defaults_agree_with_the_table() -> None:
    """The library's dataclass defaults and the CLI's are one set of values, and every
    configuration field is either an option or deliberately internal."""
    classes = {"run": RunConfig, "infer": InferConfig, "cluster": ClusterConfig,
               "tissue": TissueConfig, "storage": StorageOptions}
    targeted: set[str] = set()
    for option in options.OPTIONS:
        if option.target is None:
            continue
        targeted.add(option.target)
        part, name = option.target.split(".")
        field = {f.name: f for f in fields(classes[part])}[name]
        if field.default is not MISSING:
            default = field.default
        elif field.default_factory is not MISSING:
            default = field.default_factory()
        else:
            assert option.name == "out"  # the one required value
            continue
        assert option.config_value(option.default) == default, option.name
    untargeted = {f"{part}.{f.name}" for part, cls in classes.items() for f in fields(cls)
                  } - targeted
    assert untargeted == {"run.infer", "run.tissue", "run.storage", "infer.simulate_batch_s",
                          "cluster.dashboard"}


def test_help_and_defaults_come_from_the_table(capsys: pytest.CaptureFixture[str]) -> None:
    from wsi_seg.cli import run as run_cli

    assert run_cli.DEFAULTS == options.DEFAULTS
    with pytest.raises(SystemExit) as exit_:
        main(["run", "--help"])
    assert exit_.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for option in options.OPTIONS:
        # [storage] has no flags (the command line is recorded in run.json): its keys are
        # listed under the group's title.
        assert (f"{option.key} = " if option.toml_only else option.flag) in text
        if option.default is not None and option.kind != "bool":
            assert option.help_text().endswith(f"[{option.default}]"), option.name
    assert ("--block PX block edge in working pixels, a multiple of --chunk "
            "(16 <= x <= 65536) [4096]") in text
    assert "blocks and mosaic ([blocks] in --config)" in text


def test_pipeline_files_are_valid() -> None:
    from wsi_seg.cli.run import build_configs

    for toml in sorted((REPO / "pipelines").glob("*.toml")):
        got = options.resolve({"out": "o"}, toml)
        build_configs(got)
        assert got.origins["block"] in ("default", str(toml))


def test_tissue_options_and_truth_pattern_reach_the_run(tmp_path: Path) -> None:
    """Tissue settings from TOML and flags, and a truth file found by --truth-pattern."""
    slides = tmp_path / "slides"
    slides.mkdir()
    slide = slides / "case.01.svs"
    write_synthetic_slide(slide, (600, 400), seed=5)
    truth_dir = tmp_path / "truth"
    truth_dir.mkdir()
    truth_path_for(slide).rename(truth_dir / "case.01.truth.geojson")
    model = red_channel_unet(tmp_path / "red.keras")
    cfg = tmp_path / "c.toml"
    cfg.write_text("[tissue]\nmin_area_um2 = 123.0\nclose_um = 40\n")
    out = tmp_path / "out"
    rc = main(["run", str(slide), "--out", str(out), "--model", str(model), "--config",
               str(cfg), "--tissue-view-mpp", "4", "--truth", str(truth_dir),
               "--truth-pattern", "{stem}.truth.geojson", "--scheduler", "threads",
               "--block", "128", "--chunk", "128", "--batch-size", "4", "--quiet"])
    assert rc == 0
    config = json.loads((out / "run.json").read_text())["config"]
    assert config["tissue"]["min_area_um2"] == 123.0 and config["tissue"]["close_um"] == 40
    assert config["tissue"]["view_mpp"] == 4.0
    assert config["truth_patterns"] == ["{stem}.truth.geojson"]
    report = json.loads((out / "case.01" / "report.json").read_text())
    assert report["truth"].endswith("case.01.truth.geojson") and report["score"] is not None


def test_printable_escapes_control_characters() -> None:
    assert printable("a\nb\tc\r\x1b[31m") == "a\\nb\\tc\\r\\x1b[31m"
    assert printable("x\u2028y\udcff") == "x\\u2028y\\udcff"
    assert printable("é 漢 a\\nb") == "é 漢 a\\nb"  # printable text and backslashes kept
    assert printable(printable("a\nb")) == "a\\nb"
    err = WsiSegError("bad\nthing", Path("dir/x\ny\x1b.svs"))
    assert str(err) == "dir/x\\ny\\x1b.svs: bad thing"
    assert err.path == Path("dir/x\ny\x1b.svs")  # the real path is kept


def test_missing_slide_with_control_characters_is_one_escaped_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    name = str(tmp_path / "no\nsuch\x1b[2J.svs")
    rc, err = cli(["run", name, "--out", str(tmp_path / "out")], capsys)
    assert rc == 2
    assert len(err) == 1 and "no\\nsuch\\x1b[2J.svs" in err[0] and "\x1b" not in err[0]


def test_slide_named_with_a_newline_fails_in_one_line(tmp_path: Path) -> None:
    """A crafted name cannot forge output lines: the failure is one escaped stderr line."""
    folder = tmp_path / "slides"
    folder.mkdir()
    bad = folder / "x\nwsi-seg: done.svs"
    write_synthetic_slide(bad, (400, 300), seed=1)
    bad.write_bytes(bad.read_bytes()[:2000])  # truncated: OpenSlide cannot open it
    model = red_channel_unet(tmp_path / "red.keras")
    # Worker processes (not --scheduler threads): the client's stderr is the one under test.
    proc = subprocess.run(
        [str(BIN / "wsi-seg"), "run", str(folder), "--out", str(tmp_path / "out"), "--model",
         str(model), "--workers", "1", "--threads-per-worker", "1", "--quiet"],
        capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 1
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert "x\\nwsi-seg: done.svs" in lines[0]


def test_python_dash_m(slide: Path, tmp_path: Path) -> None:
    version = subprocess.run([sys.executable, "-m", "wsi_seg", "--version"],
                             capture_output=True, text=True, timeout=120, check=False)
    assert version.returncode == 0 and version.stdout.startswith("wsi-seg ")
    bad = subprocess.run([sys.executable, "-m", "wsi_seg", "run", str(slide), "--out",
                          str(tmp_path / "out"), "--block", "-1024"],
                         capture_output=True, text=True, timeout=120, check=False)
    assert bad.returncode == 2 and len(bad.stderr.splitlines()) == 1
    assert "--block" in bad.stderr and not (tmp_path / "out").exists()
