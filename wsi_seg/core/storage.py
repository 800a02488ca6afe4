"""How to reach the object store (``s3://``): the run TOML's ``[storage]`` section.

:class:`StorageOptions` holds the few settings that are not secrets: the endpoint, the
region, the AWS profile to take credentials from, and anonymous access. Credentials
themselves are never taken from a TOML file, which is checked in, copied beside results and
shared: they come from where every AWS tool looks (``AWS_ACCESS_KEY_ID`` /
``AWS_SECRET_ACCESS_KEY`` / ``AWS_SESSION_TOKEN``, ``~/.aws/credentials`` through
``profile``). :func:`credential_key` is the rule that tells a credential's key from a setting
(``options.load_toml`` refuses such keys with :data:`CREDENTIALS_REFUSED`).

The options are applied to every s3:// filesystem of a process through fsspec's
configuration (:func:`wsi_seg.stages.object_store.use_storage`): slides, results, zarr's
store and wsidicom's reads all build their filesystem through fsspec, so none can miss them;
a run hands them to its dask workers with a worker plugin. They are never written to
``run.json`` (nor is the command line given them: they have no flags).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from typing import Any
from urllib.parse import urlsplit

from wsi_seg.core.params import Rule, check_params, param

#: What a credential in a TOML file is answered with (after the key's name).
CREDENTIALS_REFUSED = ("credentials are not read from a TOML file (it is checked in and "
                       "copied); set AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / "
                       "AWS_SESSION_TOKEN in the environment, or name an AWS profile "
                       "(~/.aws/credentials) with [storage] profile")

# Key names that hold a credential, whatever the section or spelling (aws_secret_access_key,
# secret, key, token, password, sas_token, account_key, ...).
_CREDENTIAL = re.compile(r"(^|_)(key|key_id|secret|token|password|passwd|credentials?)$"
                         r"|secret|password|passphrase|token")


def credential_key(key: str) -> bool:
    """Whether a TOML key names a credential (never read from a TOML file).

    >>> [credential_key(k) for k in ("secret", "aws_secret_access_key", "key", "Token",
    ...                              "endpoint_url", "region", "profile", "anon")]
    [True, True, True, True, False, False, False, False]
    """
    return bool(_CREDENTIAL.search(key.lower().replace("-", "_")))


def _endpoint_problem(value: str) -> str | None:
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 (a bad port raises)
    except ValueError:
        return "must be an http:// or https:// URL, e.g. http://127.0.0.1:9000"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "must be an http:// or https:// URL with a host, e.g. http://127.0.0.1:9000"
    if "@" in parts.netloc:
        return f"must not hold a user or password: {CREDENTIALS_REFUSED}"
    if parts.query or parts.fragment:
        return "must not have a query or fragment"
    return None


def _name_problem(value: str) -> str | None:
    if not value.strip() or value != value.strip() or any(c.isspace() for c in value):
        return "must be a name without spaces"
    return None


@dataclass(frozen=True)
class StorageOptions:
    """The object store's endpoint, region, profile and anonymous access (none secret).

    Attributes:
        endpoint_url: the S3 API's URL (``http://127.0.0.1:9000`` for MinIO or moto, a
            provider's own URL); None: ``AWS_ENDPOINT_URL``, ``~/.aws/config``, else AWS.
        region: the bucket's region (``us-east-1``); None: ``AWS_DEFAULT_REGION`` or the
            profile's.
        profile: the AWS profile credentials and settings come from (``~/.aws/credentials``,
            ``~/.aws/config``); None: ``AWS_PROFILE``, else the default chain.
        anon: unsigned requests (public buckets); no credentials are looked for.
    """

    endpoint_url: str | None = param(None, Rule("str", check=_endpoint_problem))
    region: str | None = param(None, Rule("str", check=_name_problem))
    profile: str | None = param(None, Rule("str", check=_name_problem))
    anon: bool = param(False, Rule("bool"))

    def __post_init__(self) -> None:
        check_params(self)

    @property
    def given(self) -> bool:
        """Whether any option is set (else fsspec's and AWS's own configuration alone)."""
        return any(getattr(self, f.name) != f.default for f in fields(self))

    def s3fs_kwargs(self) -> dict[str, Any]:
        """The options as s3fs's ``S3FileSystem`` keyword arguments (only those set)."""
        out: dict[str, Any] = {}
        if self.endpoint_url is not None:
            out["endpoint_url"] = self.endpoint_url
        if self.region is not None:
            out["client_kwargs"] = {"region_name": self.region}
        if self.profile is not None:
            out["profile"] = self.profile
        if self.anon:
            out["anon"] = True
        return out
