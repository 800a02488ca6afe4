"""The run TOML's ``[storage]`` section, against the real S3 server (tests/s3_fixtures.py).

With the endpoint given by the TOML alone (no ``AWS_ENDPOINT_URL`` anywhere: the key is in
the environment, as credentials must be), a run reads slides from s3:// and writes results
to s3:// with the bytes of a local run, in this process and on a cluster of worker processes
whose environment has no endpoint either; ``info`` and ``score --slide`` reach the store
through ``--config``. A credential in the TOML, a wrong endpoint and an ``s3://`` without a
bucket are each one line before any work; nothing of ``[storage]`` reaches ``run.json``.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.dask_fixtures import DaskCluster
from tests.s3_fixtures import (
    STORE_RUN_OPTS,
    S3Server,
    local_reference,
    local_slides,
    model,
    s3_env,
    s3_server,
)
from wsi_seg.cli import main
from wsi_seg.core.params import ConfigError
from wsi_seg.core.storage import StorageOptions
from wsi_seg.orchestration import options
from wsi_seg.tools.synth import write_synthetic_slide

__all__ = ["local_reference", "local_slides", "model", "s3_env", "s3_server"]  # fixtures

RUN_OPTS = STORE_RUN_OPTS
SLIDE_SEEDS = (31, 32)  # this file's slides (tests.s3_fixtures.local_slides)
BUCKET = "toml-store"
STEMS = ("s1", "s2")


@pytest.fixture
def no_env_endpoint(s3_env: S3Server, local_slides: Path,
                    monkeypatch: pytest.MonkeyPatch) -> Iterator[S3Server]:
    """The slides in the store, and then no endpoint in the environment: only the key (the
    standard variables), so the TOML is the one place the endpoint can come from."""
    s3_env.upload(BUCKET, "slides/", sorted(local_slides.glob("s*.*")))
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    for name in [n for n in os.environ if n.startswith("FSSPEC_S3")]:
        monkeypatch.delenv(name)
    yield s3_env


def toml(tmp_path: Path, text: str, name: str = "store.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def store_bytes(server: S3Server, prefix: str) -> dict[str, bytes]:
    s3 = server.client()
    out: dict[str, bytes] = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        for obj in page.get("Contents", []):
            out[obj["Key"][len(prefix):]] = s3.get_object(Bucket=BUCKET, Key=obj["Key"])[
                "Body"].read()
    return out


def assert_same_as_local(objects: dict[str, bytes], reference: Path) -> None:
    for stem in STEMS:
        root = reference / stem
        local = {f"{stem}/{p.relative_to(root)}": p.read_bytes()
                 for p in sorted((root / "mask.zarr").rglob("*")) if p.is_file()}
        local[f"{stem}/tumor.geojson"] = (root / "tumor.geojson").read_bytes()
        assert len(local) > 3
        for name, data in local.items():
            assert objects.get(name) == data, f"{name} differs"


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


# -- the endpoint from the TOML alone ----------------------------------------------------------
def test_toml_endpoint_reads_slides_and_writes_results_in_the_store(
        no_env_endpoint: S3Server, local_reference: Path, model: Path,
        tmp_path: Path) -> None:
    server = no_env_endpoint
    cfg = toml(tmp_path, f'[storage]\nendpoint_url = "{server.endpoint}"\n'
                         'region = "us-east-1"\n')
    out = f"s3://{BUCKET}/results/"
    assert main(["run", f"s3://{BUCKET}/slides/", "--out", out, "--model", str(model),
                 "--config", str(cfg), "--scheduler", "threads", *RUN_OPTS]) == 0
    objects = store_bytes(server, "results/")
    assert_same_as_local(objects, local_reference)
    run_json = objects["run.json"].decode()
    record = json.loads(run_json)
    assert [s["status"] for s in record["slides"]] == ["ok", "ok"]
    # Nothing of [storage] in the record: not the endpoint, not the section; nor the key.
    assert "storage" not in record["config"]
    assert server.endpoint not in run_json and str(server.endpoint.rsplit(":", 1)[1]) \
        not in json.dumps(record["config"])
    assert server.secret not in run_json and server.key_id not in run_json
    # The run put the process back as it found it: no endpoint left in fsspec's settings.
    import fsspec.config

    assert "endpoint_url" not in fsspec.config.conf.get("s3", {})


def test_toml_endpoint_reaches_info_and_score(
        no_env_endpoint: S3Server, local_slides: Path, local_reference: Path,
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = toml(tmp_path, f'[storage]\nendpoint_url = "{no_env_endpoint.endpoint}"\n')
    slide = f"s3://{BUCKET}/slides/s1.svs"
    assert main(["info", slide, "--json", "--config", str(cfg)]) == 0
    described = json.loads(capsys.readouterr().out.splitlines()[0])
    assert described["path"] == slide and described["vendor"] == "aperio"
    pred = local_reference / "s1" / "mask.zarr"
    truth = local_slides / "s1.tumor.geojson"
    assert main(["score", str(pred), str(truth), "--slide", slide, "--config", str(cfg),
                 "--json"]) == 0
    remote = json.loads(capsys.readouterr().out)
    assert main(["score", str(pred), str(truth), "--slide", str(local_slides / "s1.svs"),
                 "--json"]) == 0
    local = json.loads(capsys.readouterr().out)
    assert remote["slide"] == slide
    assert {k: v for k, v in remote.items() if k != "slide"} == \
        {k: v for k, v in local.items() if k != "slide"}


def test_toml_endpoint_reaches_cluster_workers(
        no_env_endpoint: S3Server, local_reference: Path, model: Path,
        tmp_path: Path) -> None:
    """Workers started without any endpoint in their environment (and each in a folder of
    its own) read the slides and write the results through the store the TOML names: the
    run hands them its [storage] options."""
    folders = [tmp_path / f"worker{i}" for i in range(2)]
    cluster = DaskCluster(tmp_path, cwds=folders)  # env: the key, no AWS_ENDPOINT_URL
    cfg = toml(tmp_path, f'[storage]\nendpoint_url = "{no_env_endpoint.endpoint}"\n')
    try:
        assert main(["run", f"s3://{BUCKET}/slides/", "--out", f"s3://{BUCKET}/cluster/",
                     "--model", str(model), "--config", str(cfg),
                     "--scheduler", cluster.address, *RUN_OPTS]) == 0
    finally:
        cluster.close()
    assert_same_as_local(store_bytes(no_env_endpoint, "cluster/"), local_reference)
    for folder in folders:
        assert sorted(p.name for p in folder.rglob("*")) == [], folder


def test_wrong_toml_endpoint_fails_in_one_line_before_work(
        no_env_endpoint: S3Server, local_slides: Path, model: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    cfg = toml(tmp_path, f'[storage]\nendpoint_url = "{closed}"\n')
    out = tmp_path / "never"
    rc = main(["run", f"s3://{BUCKET}/slides/", "--out", str(out), "--model", str(model),
               "--config", str(cfg), "--scheduler", "threads", *RUN_OPTS])
    line = one_error_line(capsys)
    assert rc != 0 and f"s3://{BUCKET}/slides" in line and closed in line, line
    assert no_env_endpoint.secret not in line
    assert not out.exists()  # refused before any work
    # The same for results: local slides, a store that is not there.
    rc = main(["run", str(local_slides), "--out", f"s3://{BUCKET}/r/", "--model", str(model),
               "--config", str(cfg), "--scheduler", "threads", *RUN_OPTS])
    line = one_error_line(capsys)
    assert rc != 0 and f"s3://{BUCKET}/r" in line and closed in line, line


# -- refused in one line, no server needed ------------------------------------------------------
@pytest.mark.parametrize("text, where", [
    ('[storage]\nsecret = "s3cr3t-value"\n', "[storage] secret"),
    ('[storage]\naws_secret_access_key = "s3cr3t-value"\n', "[storage] aws_secret_access_key"),
    ('[storage]\nkey = "s3cr3t-value"\n', "[storage] key"),
    ('[storage.client_kwargs]\naws_session_token = "s3cr3t-value"\n',
     "[storage.client_kwargs] aws_session_token"),
    ('password = "s3cr3t-value"\n', "password"),
])
def test_credentials_in_the_toml_are_refused_in_one_line(
        text: str, where: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = toml(tmp_path, text)
    out = tmp_path / "never"
    for argv in (["run", "whatever/", "--out", str(out), "--config", str(cfg)],
                 ["info", "whatever.svs", "--config", str(cfg)]):
        rc = main(argv)
        line = one_error_line(capsys)
        assert rc == 2 and f"{where}: credentials are not read from a TOML file" in line, line
        assert "AWS_SECRET_ACCESS_KEY" in line and "s3cr3t-value" not in line
        assert str(cfg) in line
    assert not out.exists()


def test_bad_storage_values_are_one_line_without_a_password(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for text, expected in (
            ('endpoint_url = "http://me:pa55word@127.0.0.1:9000"', "must not hold a user"),
            ('endpoint_url = "ftp://127.0.0.1"', "must be an http:// or https:// URL"),
            ('endpoint_url = 9000', "expected a string"),
            ('region = "eu west"', "must be a name without spaces"),
            ('anon = "yes"', "expected true or false"),
            ('client_kwargs = 1', "unknown option 'client_kwargs' in section [storage]")):
        cfg = toml(tmp_path, f"[storage]\n{text}\n")
        rc = main(["run", "whatever/", "--out", str(tmp_path / "never"), "--config", str(cfg)])
        line = one_error_line(capsys)
        assert rc == 2 and expected in line, line
        assert "pa55word" not in line
    # The library's own type says the same.
    with pytest.raises(ConfigError, match=r"endpoint_url = .*must not hold a user") as info:
        StorageOptions(endpoint_url="https://me:pa55word@example.org")
    assert "pa55word" not in str(info.value)
    with pytest.raises(ConfigError, match="anon"):
        StorageOptions(anon="yes")  # type: ignore[arg-type]


def test_storage_options_have_no_flags_and_reach_s3fs(
        capsys: pytest.CaptureFixture[str]) -> None:
    storage = [o for o in options.OPTIONS if o.section == "storage"]
    assert {o.key for o in storage} == {"endpoint_url", "region", "profile", "anon"}
    with pytest.raises(SystemExit):
        main(["run", "x/", "--out", "o", "--storage-endpoint-url", "http://h:1"])
    assert "unrecognized arguments" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "object storage (s3://) ([storage] in --config)" in text
    assert all(f"{o.key} = " + ("true:" if o.kind == "bool" else '"...":') in text
               for o in storage)
    got = StorageOptions(endpoint_url="http://127.0.0.1:9000", region="eu-west-1",
                         profile="lab", anon=True).s3fs_kwargs()
    assert got == {"endpoint_url": "http://127.0.0.1:9000",
                   "client_kwargs": {"region_name": "eu-west-1"}, "profile": "lab",
                   "anon": True}
    assert StorageOptions().s3fs_kwargs() == {} and not StorageOptions().given


@pytest.mark.parametrize("url", ["s3://", "s3:///x", "s3:///"])
def test_a_url_without_a_bucket_is_one_line(
        url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Never a local folder named ``s3:``: ``--out`` and a slide alike."""
    monkeypatch.chdir(tmp_path)
    write_synthetic_slide(tmp_path / "a.svs", (300, 300), seed=1)
    for argv, flag in ((["run", "a.svs", "--out", url], f"--out {url}: "),
                       (["run", url, "--out", "o"], f"{url}: "),
                       (["info", url], f"{url}: ")):
        rc = main(argv)
        line = one_error_line(capsys)
        assert rc == 2 and line == f"wsi-seg: error: {flag}the URL names no bucket " \
            "(s3://BUCKET/KEY)", line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.svs", "a.tumor.geojson"]


def test_readme_storage_example_is_a_valid_config(tmp_path: Path) -> None:
    """The README's [storage] example loads as it is written, and builds the options."""
    from wsi_seg.cli.run import storage_of

    text = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    block = text.split("```toml\n[storage]\n", 1)[1].split("```", 1)[0]
    got = storage_of(toml(tmp_path, "[storage]\n" + block))
    assert got == StorageOptions(endpoint_url="http://minio.lab:9000", region="eu-west-1",
                                 profile="lab")


def test_toml_profile_and_anon_reach_the_client(
        no_env_endpoint: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """``profile`` takes the key from an AWS credentials file (none in the environment); a
    profile that is not there is one line naming it; ``anon`` sends unsigned requests
    instead of looking for credentials (this server refuses them: one line too)."""
    server = no_env_endpoint
    creds = tmp_path / "credentials"
    creds.write_text(f"[lab]\naws_access_key_id = {server.key_id}\n"
                     f"aws_secret_access_key = {server.secret}\n")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(creds))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    slide = f"s3://{BUCKET}/slides/s2.tif"
    base = f'[storage]\nendpoint_url = "{server.endpoint}"\n'
    assert main(["info", slide, "--json", "--config",
                 str(toml(tmp_path, base + 'profile = "lab"\n', "lab.toml"))]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[0])["path"] == slide
    rc = main(["info", slide, "--config",
               str(toml(tmp_path, base + 'profile = "nobody"\n', "nobody.toml"))])
    line = one_error_line(capsys)
    assert rc != 0 and slide in line and "nobody" in line, line
    # No profile, no key: botocore finds no credentials; with anon it looks for none and
    # sends the request unsigned, which this server (checking signatures) refuses.
    rc = main(["info", slide, "--config", str(toml(tmp_path, base, "plain.toml"))])
    line = one_error_line(capsys)
    assert rc != 0 and slide in line and "credentials" in line.lower(), line
    rc = main(["info", slide, "--config", str(toml(tmp_path, base + "anon = true\n",
                                                    "anon.toml"))])
    line = one_error_line(capsys)
    assert rc != 0 and slide in line and "credentials" not in line.lower(), line


def test_wrong_toml_endpoint_fails_before_work_for_a_slide_list(
        no_env_endpoint: S3Server, local_slides: Path, model: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Slides named by ``--slides LIST`` are not listed, but their store is: once, before any
    slide is opened, so a wrong endpoint is one line, not one failure per slide."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    cfg = toml(tmp_path, f'[storage]\nendpoint_url = "{closed}"\n')
    listing = tmp_path / "cohort.txt"
    listing.write_text(f"{local_slides / 's1.svs'}\ns3://{BUCKET}/slides/s1.svs\n"
                       f"s3://{BUCKET}/slides/s2.tif\n")
    out = tmp_path / "never"
    rc = main(["run", "--slides", str(listing), "--out", str(out), "--model", str(model),
               "--config", str(cfg), "--scheduler", "threads", *RUN_OPTS])
    line = one_error_line(capsys)
    assert rc == 2 and f"s3://{BUCKET}/slides" in line and closed in line, line
    assert not out.exists()
