"""Where the catalog and blobs live: a bucket on an S3-compatible endpoint, or a local directory."""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

from .errors import ConfigError

DEFAULT_SNAPSHOT_KEY = "bucketsqlite/snap.db"
DEFAULT_FILES_PREFIX = "files/"

# Environment variables read by BucketConfig.from_env(), named as the library we grow from names them.
ENV_BUCKET = "BUCKETHEAD_BUCKET__NAME"
ENV_ACCESS_KEY_ID = "BUCKETHEAD_BUCKET__ACCESS_KEY_ID"
ENV_SECRET_ACCESS_KEY = "BUCKETHEAD_BUCKET__SECRET_ACCESS_KEY"
ENV_ENDPOINT_URL = "BUCKETHEAD_BUCKET__ENDPOINT_URL"
ENV_REGION = "BUCKETHEAD_BUCKET__REGION"
ENV_ACCOUNT_ID = "BUCKETHEAD_CLOUDFLARE__ACCOUNT_ID"
ENV_SNAPSHOT_KEY = "BUCKETHEAD_SNAPSHOT__KEY"
ENV_HOME = "BH_NOTEBOOK_HOME"
ALL_ENV = (ENV_BUCKET, ENV_ACCESS_KEY_ID, ENV_SECRET_ACCESS_KEY, ENV_ENDPOINT_URL, ENV_REGION, ENV_ACCOUNT_ID,
           ENV_SNAPSHOT_KEY)

_ACCOUNT_ID_RE = re.compile(r"^[0-9a-fA-F]{32}$")


def r2_endpoint(account_id: str) -> str:
    """The S3 endpoint of a Cloudflare account's R2 storage."""
    return f"https://{account_id}.r2.cloudflarestorage.com"


def default_home() -> Path:
    """The embedded local store's directory: ``$BH_NOTEBOOK_HOME`` or ``~/.bh_notebook``."""
    home = os.environ.get(ENV_HOME)
    return Path(home).expanduser() if home else Path.home() / ".bh_notebook"


@dataclasses.dataclass(frozen=True)
class BucketConfig:
    """Connection settings for one bucket. Secrets are kept out of ``repr()`` and ``str()``.

    ``local_path`` set means the embedded local-directory backend; otherwise the bucket is reached
    over S3 at ``endpoint_url`` (None means AWS itself).
    """

    bucket: str = ""
    key: str = DEFAULT_SNAPSHOT_KEY
    endpoint_url: str | None = None
    region: str = "auto"
    access_key_id: str | None = dataclasses.field(default=None, repr=False)
    secret_access_key: str | None = dataclasses.field(default=None, repr=False)
    files_prefix: str = DEFAULT_FILES_PREFIX
    local_path: Path | None = None

    def __post_init__(self) -> None:
        if self.local_path is not None and not isinstance(self.local_path, Path):
            object.__setattr__(self, "local_path", Path(self.local_path))
        if not self.key or self.key.endswith("/"):
            raise ConfigError(f"snapshot key {self.key!r} must be a non-empty object key, like 'bucketsqlite/snap.db'")
        if not self.files_prefix:
            raise ConfigError("files_prefix must not be empty; the default is 'files/'")
        if not self.files_prefix.endswith("/"):
            object.__setattr__(self, "files_prefix", self.files_prefix + "/")
        if self.local_path is None and not self.bucket:
            raise ConfigError(
                "no bucket name: pass bucket=..., use BucketConfig.for_local(path) for a directory, "
                f"or set {ENV_BUCKET}"
            )

    # -- constructors -------------------------------------------------------------------------

    @classmethod
    def for_r2(
        cls,
        account_id: str,
        bucket: str,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        **kwargs: object,
    ) -> BucketConfig:
        """A Cloudflare R2 bucket: endpoint from the account id, region ``auto``."""
        if not account_id:
            raise ConfigError("for_r2 needs the Cloudflare account id (32 hex characters, shown in the R2 dashboard)")
        if not _ACCOUNT_ID_RE.match(account_id):
            raise ConfigError(
                f"{account_id!r} does not look like a Cloudflare account id (32 hex characters, in the R2 dashboard)"
            )
        return cls(bucket=bucket, endpoint_url=r2_endpoint(account_id), region="auto",
                   access_key_id=access_key_id, secret_access_key=secret_access_key, **kwargs)  # type: ignore[arg-type]

    @classmethod
    def for_s3(
        cls,
        bucket: str,
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        **kwargs: object,
    ) -> BucketConfig:
        """Any S3 endpoint (AWS when ``endpoint_url`` is None; MinIO, SeaweedFS, ... otherwise)."""
        if region is None:
            region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        if region is None:
            region = "us-east-1" if endpoint_url is None else "auto"
        return cls(bucket=bucket, endpoint_url=endpoint_url, region=region, access_key_id=access_key_id,
                   secret_access_key=secret_access_key, **kwargs)  # type: ignore[arg-type]

    @classmethod
    def for_local(cls, path: str | os.PathLike[str], **kwargs: object) -> BucketConfig:
        """The embedded backend: objects are files under ``path`` (created on first use)."""
        p = Path(path).expanduser().absolute()
        return cls(bucket=p.name or "local", local_path=p, **kwargs)  # type: ignore[arg-type]

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
    ) -> BucketConfig:
        """Parse ``file:///path``, ``s3://bucket?endpoint_url=...&region=...`` or ``r2://<account_id>/<bucket>``.

        Credentials come from the arguments, else from ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``.
        The query may also set ``key`` (snapshot key) and ``files_prefix``.
        """
        if not isinstance(url, str) or not url.strip():
            raise ConfigError("expected a URL like file:///path, s3://bucket?endpoint_url=... or r2://account/bucket")
        url = url.strip()
        parsed = urlparse(url)
        scheme = parsed.scheme.lower()
        query = {k: v[-1] for k, v in parse_qs(parsed.query, keep_blank_values=False).items()}
        extra: dict[str, object] = {}
        for name in ("key", "files_prefix"):
            if name in query:
                extra[name] = query.pop(name)
        if scheme in ("", "file"):
            if scheme == "file" and parsed.netloc not in ("", "localhost"):
                raise ConfigError(f"file URL {url!r} names a host; use file:///absolute/path")
            path = unquote(parsed.path) if scheme == "file" else url
            if not path:
                raise ConfigError("file URL has no path; use file:///absolute/path")
            _no_leftovers(url, query)
            return cls.for_local(path, **extra)
        key_id = access_key_id or os.environ.get("AWS_ACCESS_KEY_ID")
        secret = secret_access_key or os.environ.get("AWS_SECRET_ACCESS_KEY")
        if scheme == "s3":
            bucket = parsed.netloc
            if not bucket:
                raise ConfigError(f"{url!r} has no bucket; use s3://bucket?endpoint_url=https://host")
            if parsed.path not in ("", "/"):
                raise ConfigError(
                    f"{url!r} has a path after the bucket; to choose where the catalog lives use ?key=path/snap.db"
                )
            endpoint = query.pop("endpoint_url", None)
            region = query.pop("region", None)
            _no_leftovers(url, query)
            return cls.for_s3(bucket, endpoint_url=endpoint, region=region, access_key_id=key_id,
                              secret_access_key=secret, **extra)
        if scheme == "r2":
            account = parsed.netloc
            bucket = parsed.path.strip("/")
            if not account or not bucket or "/" in bucket:
                raise ConfigError(f"{url!r} is not of the form r2://<account_id>/<bucket>")
            _no_leftovers(url, query)
            return cls.for_r2(account, bucket, key_id, secret, **extra)
        raise ConfigError(f"unsupported URL scheme {parsed.scheme!r} in {url!r}; use file://, s3:// or r2://")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> BucketConfig:
        """Read the ``BUCKETHEAD_*`` variables; with none set, the local store under ``$BH_NOTEBOOK_HOME``.

        Credentials fall back to ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``; an account id without an
        endpoint means Cloudflare R2.
        """
        env = os.environ if environ is None else environ
        if not any(env.get(name) for name in ALL_ENV):
            home = env.get(ENV_HOME)
            return cls.for_local(Path(home).expanduser() if home else Path.home() / ".bh_notebook")
        bucket = env.get(ENV_BUCKET)
        if not bucket:
            set_names = ", ".join(n for n in ALL_ENV if env.get(n))
            raise ConfigError(f"{set_names} set but {ENV_BUCKET} is not: set it to the bucket's name")
        endpoint = env.get(ENV_ENDPOINT_URL) or None
        account = env.get(ENV_ACCOUNT_ID) or None
        if endpoint is None and account is not None:
            endpoint = r2_endpoint(account)
        extra: dict[str, object] = {}
        if env.get(ENV_SNAPSHOT_KEY):
            extra["key"] = env[ENV_SNAPSHOT_KEY]
        region = env.get(ENV_REGION) or None
        return cls.for_s3(
            bucket,
            endpoint_url=endpoint,
            region=region if region else ("auto" if endpoint else None),
            access_key_id=env.get(ENV_ACCESS_KEY_ID) or env.get("AWS_ACCESS_KEY_ID"),
            secret_access_key=env.get(ENV_SECRET_ACCESS_KEY) or env.get("AWS_SECRET_ACCESS_KEY"),
            **extra,
        )

    # -- views -----------------------------------------------------------------------------

    @property
    def backend(self) -> str:
        """``"local"`` or ``"s3"``."""
        return "local" if self.local_path is not None else "s3"

    @property
    def location(self) -> str:
        """Where the data lives, without secrets: a path or ``s3://bucket`` with its endpoint."""
        if self.local_path is not None:
            return str(self.local_path)
        where = f"s3://{self.bucket}"
        return f"{where} at {self.endpoint_url}" if self.endpoint_url else where

    def __repr__(self) -> str:
        fields = [f"bucket={self.bucket!r}", f"key={self.key!r}"]
        if self.local_path is not None:
            fields.append(f"local_path={str(self.local_path)!r}")
        else:
            fields += [f"endpoint_url={self.endpoint_url!r}", f"region={self.region!r}",
                       f"credentials={'set' if self.access_key_id or self.secret_access_key else 'default chain'}"]
        if self.files_prefix != DEFAULT_FILES_PREFIX:
            fields.append(f"files_prefix={self.files_prefix!r}")
        return f"BucketConfig({', '.join(fields)})"

    __str__ = __repr__


def _no_leftovers(url: str, query: dict[str, str]) -> None:
    if query:
        raise ConfigError(
            f"unknown option(s) {', '.join(sorted(query))} in {url!r}; "
            "known: endpoint_url, region (s3://), key, files_prefix"
        )
