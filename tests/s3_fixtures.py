"""A real S3 API server for the tests: moto's `ThreadedMotoServer` on 127.0.0.1, random port.

One server per test session (`s3_server`); each test that needs storage takes `s3_bucket`, a fresh
empty bucket with a unique name. All three fixtures are registered from tests/conftest.py, so any
test module can ask for them; mark such tests `@pytest.mark.s3`.

`s3_env` (function scope; `s3_bucket` takes it) points the standard AWS environment at the server
for the duration of the test and restores the previous values (or their absence) afterwards, so
every client built the ordinary way (boto3, pyarrow.fs.S3FileSystem, s3fs, `dvc`, MLflow's artifact
store, subprocesses that inherit os.environ) talks to the local server with no extra arguments:

    AWS_ENDPOINT_URL, MLFLOW_S3_ENDPOINT_URL  -> http://127.0.0.1:<port>
    AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY -> "testing" (moto accepts any credentials)
    AWS_DEFAULT_REGION                         -> us-east-1

Variables that could send a client elsewhere (AWS_PROFILE, AWS_SESSION_TOKEN, AWS_REGION) are
hidden during the test. Tools that ignore AWS_ENDPOINT_URL take `server.endpoint_url` explicitly
(e.g. `dvc remote modify --local store endpointurl ...`). `server.env` is the same mapping, for
fixtures with a wider scope that start subprocesses (pass it in their environment) - the session
server itself leaves os.environ alone.
"""

from __future__ import annotations

import contextlib
import uuid
from dataclasses import dataclass, field

import pytest

REGION = "us-east-1"


@dataclass(frozen=True)
class S3Server:
    endpoint_url: str
    host: str
    port: int
    env: dict[str, str] = field(default_factory=dict)

    @contextlib.contextmanager
    def enforce_auth(self):
        """While inside: the server checks credentials (moto's IAM auth), so the test keys are refused."""
        import urllib.request

        def post(value: str) -> None:
            req = urllib.request.Request(f"{self.endpoint_url}/moto-api/reset-auth", data=value.encode(), method="POST",
                                         headers={"Content-Type": "text/plain"})
            urllib.request.urlopen(req, timeout=10).read()

        post("0")
        try:
            yield
        finally:
            post("inf")

    def client(self):
        """A boto3 S3 client bound to this server (explicit endpoint, independent of os.environ)."""
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint_url, region_name=REGION,
                            aws_access_key_id="testing", aws_secret_access_key="testing")


@dataclass(frozen=True)
class S3Bucket:
    name: str
    server: S3Server

    @property
    def url(self) -> str:
        return f"s3://{self.name}"

    def keys(self, prefix: str = "", markers: bool = False) -> list[str]:
        """Every object key under `prefix`, sorted (paginated, so any number of objects).

        Zero-byte "folder" markers (keys ending in "/", which pyarrow's S3 filesystem leaves when it
        empties a prefix) are left out unless `markers`.
        """
        pages = self.server.client().get_paginator("list_objects_v2").paginate(Bucket=self.name, Prefix=prefix)
        keys = sorted(obj["Key"] for page in pages for obj in page.get("Contents", []))
        return keys if markers else [k for k in keys if not k.endswith("/")]

    def get(self, key: str) -> bytes:
        return self.server.client().get_object(Bucket=self.name, Key=key)["Body"].read()


def _server_env(endpoint: str) -> dict[str, str]:
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "MLFLOW_S3_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": REGION,
    }


# Variables that would send clients elsewhere than the env above; hidden while the server runs.
_HIDDEN = ("AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_REGION")


@pytest.fixture(scope="session", name="s3_server")
def s3_server_fixture():
    """moto's S3 API server on 127.0.0.1 (random free port), stopped when the session ends."""
    try:
        from moto.server import ThreadedMotoServer
    except ImportError as exc:  # moto[server] is a dev dependency; without it there is no server
        pytest.skip(f"moto[server] is not installed: {exc}")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        yield S3Server(endpoint_url=endpoint, host=host, port=port, env=_server_env(endpoint))
    finally:
        server.stop()


@pytest.fixture(name="s3_env")
def s3_env_fixture(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    """The session's S3 server, with the standard AWS environment pointing at it for this test."""
    for key in _HIDDEN:
        monkeypatch.delenv(key, raising=False)
    for key, value in s3_server.env.items():
        monkeypatch.setenv(key, value)
    return s3_server


@pytest.fixture(name="s3_bucket")
def s3_bucket_fixture(s3_env: S3Server) -> S3Bucket:
    """A fresh, empty bucket with a unique name on the session's S3 server (env set as by s3_env)."""
    name = f"gdm-test-{uuid.uuid4().hex[:12]}"
    s3_env.client().create_bucket(Bucket=name)
    return S3Bucket(name=name, server=s3_env)
