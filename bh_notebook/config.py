"""Where the catalog and blobs live: a bucket on an S3-compatible endpoint, or a local directory."""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any
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
ENV_CONNECT_TIMEOUT = "BH_NOTEBOOK_CONNECT_TIMEOUT"
ENV_READ_TIMEOUT = "BH_NOTEBOOK_READ_TIMEOUT"
ENV_DEADLINE = "BH_NOTEBOOK_DEADLINE"
ALL_ENV = (ENV_BUCKET, ENV_ACCESS_KEY_ID, ENV_SECRET_ACCESS_KEY, ENV_ENDPOINT_URL, ENV_REGION, ENV_ACCOUNT_ID,
           ENV_SNAPSHOT_KEY)

_ACCOUNT_ID_RE = re.compile(r"^[0-9a-fA-F]{32}$")

#: Seconds to open a TCP connection to the endpoint.
DEFAULT_CONNECT_TIMEOUT = 5.0
#: Seconds one socket read or write may wait without a single byte moving.
DEFAULT_READ_TIMEOUT = 10.0
#: Seconds after which a failed request is not tried again (counted from the operation's first attempt;
#: a transfer that keeps moving bytes is never cut off by it: see ``BucketConfig``).
DEFAULT_DEADLINE = 20.0
#: Tries of one request (the first one included) while the deadline allows.
DEFAULT_MAX_ATTEMPTS = 5


class Secret:
    """A credential that does not show itself: ``repr()`` and ``str()`` print ``'***'``.

    Only the code that hands it to the request signer calls ``reveal()``. Two secrets are equal when their
    values are; a secret also equals its plain string, so ``config.secret_access_key == "..."`` reads naturally.
    """

    __slots__ = ("_value",)

    def __init__(self, value: str | Secret) -> None:
        if isinstance(value, Secret):
            value = value.reveal()
        if not isinstance(value, str):
            raise ConfigError(f"a secret must be a str, not {type(value).__name__}")
        self._value = value

    def reveal(self) -> str:
        """The plain value: for the request signer only."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return repr(self)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Secret):
            return self._value == other._value
        if isinstance(other, str):
            return self._value == other
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._value)

    def __bool__(self) -> bool:
        return bool(self._value)

    def __reduce__(self) -> tuple[type[Secret], tuple[str]]:
        # Pickling is handing the value over on purpose (e.g. a config to a worker process): it travels whole.
        return (Secret, (self._value,))


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
    over S3 at ``endpoint_url`` (None means AWS itself). The secret access key is held as a :class:`Secret`
    (a plain str passed in is wrapped), which only the request signer unwraps.

    Timeouts (S3 only): ``connect_timeout`` seconds to open a connection; ``read_timeout`` seconds a socket may
    wait without one byte moving (in either direction), so a slow transfer that keeps moving is never cut off;
    ``deadline`` seconds after an operation's first attempt, a failed request is no longer retried (at most
    ``max_attempts`` tries in all). A dead endpoint (one that accepts connections and never answers) therefore
    fails after about ``deadline + read_timeout`` seconds at most, 30 s with the defaults.
    """

    bucket: str = ""
    key: str = DEFAULT_SNAPSHOT_KEY
    endpoint_url: str | None = None
    region: str = "auto"
    access_key_id: str | None = dataclasses.field(default=None, repr=False)
    secret_access_key: Secret | None = dataclasses.field(default=None, repr=False)
    files_prefix: str = DEFAULT_FILES_PREFIX
    local_path: Path | None = None
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    read_timeout: float = DEFAULT_READ_TIMEOUT
    deadline: float = DEFAULT_DEADLINE
    max_attempts: int = DEFAULT_MAX_ATTEMPTS

    def __post_init__(self) -> None:
        if self.local_path is not None and not isinstance(self.local_path, Path):
            object.__setattr__(self, "local_path", Path(self.local_path))
        if self.secret_access_key is not None and not isinstance(self.secret_access_key, Secret):
            object.__setattr__(self, "secret_access_key", Secret(self.secret_access_key))
        for name in ("connect_timeout", "read_timeout", "deadline"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ConfigError(f"{name} must be a number of seconds above 0, not {value!r}")
            object.__setattr__(self, name, float(value))
        if isinstance(self.max_attempts, bool) or not isinstance(self.max_attempts, int) or self.max_attempts < 1:
            raise ConfigError(f"max_attempts must be a whole number of at least 1, not {self.max_attempts!r}")
        if not isinstance(self.region, str) or not re.fullmatch(r"[a-z0-9-]{1,40}", self.region):
            raise ConfigError("region must be a region name like 'us-east-1', or 'auto' (R2, MinIO, SeaweedFS)")
        if self.endpoint_url is not None:
            endpoint = urlparse(self.endpoint_url)
            if "@" in self.endpoint_url:
                raise ConfigError("endpoint_url holds credentials (user:secret@host); give the endpoint as "
                                  "https://host and pass access_key_id= and secret_access_key= instead")
            if (endpoint.scheme not in ("http", "https") or not endpoint.netloc
                    or endpoint.path not in ("", "/") or endpoint.query or endpoint.fragment):
                raise ConfigError("endpoint_url must look like https://host[:port]")
        if self.local_path is None and any(c in self.bucket for c in "@:/?#") :
            raise ConfigError("the bucket name holds '@', ':', '/', '?' or '#', which S3 bucket names never do; "
                              "give credentials as access_key_id= and secret_access_key=, not in the name")
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
        secret_access_key: str | Secret | None = None,
        **kwargs: Any,
    ) -> BucketConfig:
        """A Cloudflare R2 bucket: endpoint from the account id, region ``auto``."""
        if not account_id:
            raise ConfigError("for_r2 needs the Cloudflare account id (32 hex characters, shown in the R2 dashboard)")
        if not _ACCOUNT_ID_RE.match(account_id):
            shown = repr(account_id) if re.fullmatch(r"[0-9A-Za-z_.-]{1,64}", account_id) else "the account id given"
            raise ConfigError(
                f"{shown} does not look like a Cloudflare account id (32 hex characters, in the R2 dashboard)"
            )
        return cls(bucket=bucket, endpoint_url=r2_endpoint(account_id), region="auto",
                   access_key_id=access_key_id, secret_access_key=_secret(secret_access_key), **kwargs)

    @classmethod
    def for_s3(
        cls,
        bucket: str,
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        access_key_id: str | None = None,
        secret_access_key: str | Secret | None = None,
        **kwargs: Any,
    ) -> BucketConfig:
        """Any S3 endpoint (AWS when ``endpoint_url`` is None; MinIO, SeaweedFS, ... otherwise)."""
        if region is None:
            region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        if region is None:
            region = "us-east-1" if endpoint_url is None else "auto"
        return cls(bucket=bucket, endpoint_url=endpoint_url, region=region, access_key_id=access_key_id,
                   secret_access_key=_secret(secret_access_key), **kwargs)

    @classmethod
    def for_local(cls, path: str | os.PathLike[str], **kwargs: Any) -> BucketConfig:
        """The embedded backend: objects are files under ``path`` (created on first use)."""
        p = Path(path).expanduser().absolute()
        return cls(bucket=p.name or "local", local_path=p, **kwargs)

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        access_key_id: str | None = None,
        secret_access_key: str | Secret | None = None,
    ) -> BucketConfig:
        """Parse ``file:///path``, ``s3://bucket?endpoint_url=...&region=...`` or ``r2://<account_id>/<bucket>``.

        Credentials come from the arguments, else from the URL's user part (``s3://KEY_ID:SECRET@bucket``,
        percent-encoded where needed), else from ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``. The query may
        also set ``key`` (snapshot key), ``files_prefix``, ``connect_timeout``, ``read_timeout``, ``deadline`` and
        ``max_attempts``. Error messages show the URL without its user part and query values.
        """
        if not isinstance(url, str) or not url.strip():
            raise ConfigError("expected a URL like file:///path, s3://bucket?endpoint_url=... or r2://account/bucket")
        url = url.strip()
        shown = _redact_url(url)
        try:
            parsed = urlparse(url)
            query_lists = parse_qs(parsed.query, keep_blank_values=False)
        except ValueError:
            raise ConfigError(f"{shown} is not a valid URL") from None
        scheme = parsed.scheme.lower()
        query = {k: v[-1] for k, v in query_lists.items()}
        extra: dict[str, Any] = {}
        for name in ("key", "files_prefix"):
            if name in query:
                extra[name] = query.pop(name)
        for name in ("connect_timeout", "read_timeout", "deadline", "max_attempts"):
            if name in query:
                raw = query.pop(name)
                try:
                    extra[name] = int(raw) if name == "max_attempts" else float(raw)
                except ValueError:
                    raise ConfigError(f"{name} in {shown} must be a number") from None
        userinfo, _, host = parsed.netloc.rpartition("@")
        if scheme in ("", "file"):
            if userinfo:
                raise ConfigError(f"{shown}: a file URL takes no user or password; use file:///absolute/path")
            if scheme == "file" and parsed.netloc not in ("", "localhost"):
                raise ConfigError(f"file URL {shown} names a host; use file:///absolute/path")
            path = unquote(parsed.path) if scheme == "file" else url
            if not path:
                raise ConfigError("file URL has no path; use file:///absolute/path")
            _no_leftovers(shown, query)
            return cls.for_local(path, **extra)
        if scheme not in ("s3", "r2"):
            raise ConfigError(f"unsupported URL scheme {parsed.scheme!r} in {shown}; use file://, s3:// or r2://")
        url_key_id: str | None = None
        url_secret: Secret | None = None
        if userinfo:
            user, has_secret, password = userinfo.partition(":")
            if not user or not has_secret or not password:
                raise ConfigError(f"{shown}: credentials in a URL are written KEY_ID:SECRET@ (both parts, "
                                  "percent-encoded); or pass access_key_id= and secret_access_key=")
            url_key_id, url_secret = unquote(user), Secret(unquote(password))
        key_id = access_key_id or url_key_id or os.environ.get("AWS_ACCESS_KEY_ID")
        secret = _secret(secret_access_key) or url_secret or _secret(os.environ.get("AWS_SECRET_ACCESS_KEY"))
        if scheme == "s3":
            bucket = host
            if not bucket:
                raise ConfigError(f"{shown} has no bucket; use s3://bucket?endpoint_url=https://host")
            if parsed.path not in ("", "/"):
                raise ConfigError(
                    f"{shown} has a path after the bucket; to choose where the catalog lives use ?key=path/snap.db"
                )
            endpoint = query.pop("endpoint_url", None)
            region = query.pop("region", None)
            _no_leftovers(shown, query)
            return cls.for_s3(bucket, endpoint_url=endpoint, region=region, access_key_id=key_id,
                              secret_access_key=secret, **extra)
        account = host
        bucket = parsed.path.strip("/")
        if not account or not bucket or "/" in bucket:
            raise ConfigError(f"{shown} is not of the form r2://<account_id>/<bucket>")
        _no_leftovers(shown, query)
        return cls.for_r2(account, bucket, key_id, secret, **extra)

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
        extra: dict[str, Any] = {}
        if env.get(ENV_SNAPSHOT_KEY):
            extra["key"] = env[ENV_SNAPSHOT_KEY]
        for name, var in (("connect_timeout", ENV_CONNECT_TIMEOUT), ("read_timeout", ENV_READ_TIMEOUT),
                          ("deadline", ENV_DEADLINE)):
            if env.get(var):
                try:
                    extra[name] = float(env[var])
                except ValueError:
                    raise ConfigError(f"{var} must be a number of seconds, not {env[var]!r}") from None
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


def config_for(url: str | None = None) -> BucketConfig:
    """The bucket a URL names (``BucketConfig.from_url``), else the environment's (``BUCKETHEAD_*``), else the local
    store under ``$BH_NOTEBOOK_HOME``: the one rule the magics (``%bh_connect``, ``BHMagics.default_url``) and the
    command line (``--url``) share."""
    return BucketConfig.from_url(url) if url else BucketConfig.from_env()


def _secret(value: str | Secret | None) -> Secret | None:
    return None if value is None or value == "" else Secret(value)


def _redact_url(url: str) -> str:
    """``url`` for messages: without its user part (credentials) and with every query value hidden."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    rest, qmark, query = rest.partition("?")
    authority, slash, path = rest.partition("/")
    if "@" in authority:
        authority = "***@" + authority.rpartition("@")[2]
    names = [part.partition("=")[0] for part in query.split("&") if part]
    shown_query = "&".join(f"{_safe_name(n)}=..." for n in names)
    return repr(f"{scheme}{sep}{authority}{slash}{path}{qmark}{shown_query}")


def _safe_name(name: str) -> str:
    """An option name as typed, unless it looks like it is not one (then it is not echoed)."""
    return name if re.fullmatch(r"[A-Za-z0-9_.-]{1,40}", name) else "<option>"


def _no_leftovers(shown: str, query: dict[str, str]) -> None:
    if query:
        raise ConfigError(
            f"unknown option(s) {', '.join(_safe_name(n) for n in sorted(query))} in {shown}; "
            "known: endpoint_url, region (s3://), key, files_prefix, connect_timeout, read_timeout, deadline, "
            "max_attempts; give credentials as access_key_id= and secret_access_key= (or KEY_ID:SECRET@ in the URL)"
        )
