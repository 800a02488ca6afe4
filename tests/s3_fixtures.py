"""A real S3 server for the tests: moto's server mode as a subprocess on 127.0.0.1.

The server checks signatures (``INITIAL_NO_AUTH_ACTION_COUNT``: the first few requests, which
create an IAM user and its key, go unsigned; every later one must be signed by that key), so
a wrong key is refused as a real store refuses it. Slides are uploaded with boto3; wsi-seg
reads them through s3fs with the key and endpoint in the standard AWS variables.

If the server cannot start, the tests skip, with the reason; ``WSI_SEG_REQUIRE_SERVICES=1``
(set by .ci/run, so CI runs them) turns the skip into a failure, as
``WSI_SEG_REQUIRE_DATA`` does for the real data.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REQUIRE_ENV = "WSI_SEG_REQUIRE_SERVICES"
#: Unsigned requests the server allows before it checks every signature (user, policy, key).
SETUP_ACTIONS = 3
START_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class S3Server:
    """A running server: its endpoint and the one key it accepts."""

    endpoint: str
    key_id: str
    secret: str

    def env(self) -> dict[str, str]:
        """The standard variables a client finds the server and key in."""
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": self.key_id,
                "AWS_SECRET_ACCESS_KEY": self.secret, "AWS_DEFAULT_REGION": "us-east-1"}

    def client(self) -> Any:
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id=self.key_id, aws_secret_access_key=self.secret)

    def upload(self, bucket: str, prefix: str, files: list[Path]) -> None:
        s3 = self.client()
        with contextlib.suppress(s3.exceptions.BucketAlreadyOwnedByYou):
            s3.create_bucket(Bucket=bucket)
        for f in files:
            s3.upload_file(str(f), bucket, f"{prefix}{f.name}")


def unavailable(reason: str) -> None:
    """Skip, or fail where the services are required (CI)."""
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{reason}; {REQUIRE_ENV}=1 makes this a failure")
    pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_up(endpoint: str, proc: subprocess.Popen[bytes]) -> str | None:
    """None once the server answers, else why it did not."""
    deadline = time.time() + START_TIMEOUT_S
    while time.time() < deadline:
        if proc.poll() is not None:
            return f"moto server exited with status {proc.returncode}"
        try:
            # moto's own API path: not an AWS action, so it uses none of SETUP_ACTIONS.
            with urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=2):
                return None
        except OSError:
            time.sleep(0.2)
    return f"moto server did not answer within {START_TIMEOUT_S:.0f} s"


def _make_key(endpoint: str) -> tuple[str, str]:
    """An IAM user allowed everything, and its access key (the unsigned setup requests)."""
    import boto3

    iam = boto3.client("iam", endpoint_url=endpoint, region_name="us-east-1",
                       aws_access_key_id="setup", aws_secret_access_key="setup")
    iam.create_user(UserName="wsi-seg")
    iam.put_user_policy(UserName="wsi-seg", PolicyName="all", PolicyDocument=json.dumps(
        {"Version": "2012-10-17",
         "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
    key = iam.create_access_key(UserName="wsi-seg")["AccessKey"]
    return str(key["AccessKeyId"]), str(key["SecretAccessKey"])


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """moto's S3 server on a free port of 127.0.0.1, for the whole session."""
    try:
        import boto3  # noqa: F401
        import moto.server  # noqa: F401
    except ImportError as exc:
        unavailable(f"moto[server] is not installed ({exc}); pip install -e '.[dev]'")
    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("moto") / "server.log"
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": str(SETUP_ACTIONS)}
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1",
                                 "-p", str(port)], stdout=out, stderr=subprocess.STDOUT,
                                env=env, start_new_session=True)
    try:
        why = _wait_up(endpoint, proc)
        if why is not None:
            unavailable(f"{why} (log: {log})")
        key_id, secret = _make_key(endpoint)
        yield S3Server(endpoint, key_id, secret)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def s3_env(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> Iterator[S3Server]:
    """This test's process (and the workers it starts) find the server and its key where any
    AWS client looks: the standard environment variables. s3fs keeps one filesystem per
    process; it is dropped so the key of this test is the one used."""
    import s3fs

    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    s3fs.S3FileSystem.clear_instance_cache()
    yield s3_server
    s3fs.S3FileSystem.clear_instance_cache()



#: The store tests' run options: small blocks and chunks (many objects from small slides).
STORE_RUN_OPTS = ["--block", "128", "--chunk", "128", "--batch-size", "4", "--quiet"]


def write_store_slides(folder: Path, seeds: tuple[int, int]) -> Path:
    """The store tests' two slides in ``folder``: ``s1.svs`` (2400 x 2000 px) and ``s2.tif``
    (a generic tiled TIFF, 1600 x 1600 px)."""
    from wsi_seg.tools.synth import write_synthetic_slide

    write_synthetic_slide(folder / "s1.svs", (2400, 2000), seed=seeds[0])
    write_synthetic_slide(folder / "s2.tif", (1600, 1600), seed=seeds[1])
    return folder


@pytest.fixture(scope="module")
def local_slides(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
                 ) -> Path:
    """The module's two slides on local disk, from its ``SLIDE_SEEDS`` (each test file its
    own, so their outputs never meet)."""
    return write_store_slides(tmp_path_factory.mktemp("slides"), request.module.SLIDE_SEEDS)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small UNet the store tests run."""
    from tests.model_fixtures import small_unet

    return small_unet(tmp_path_factory.mktemp("model") / "unet.keras")


@pytest.fixture(scope="module")
def local_reference(local_slides: Path, model: Path, tmp_path_factory: pytest.TempPathFactory
                    ) -> Path:
    """The slides run from local disk into a local ``--out`` (in-process scheduler): the
    bytes every store run of them must give."""
    from wsi_seg.cli import main

    out = tmp_path_factory.mktemp("local-ref")
    assert main(["run", str(local_slides), "--out", str(out), "--model", str(model),
                 "--scheduler", "threads", *STORE_RUN_OPTS]) == 0
    return out
