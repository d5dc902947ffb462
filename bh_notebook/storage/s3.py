"""S3Bucket: a bucket on any S3-compatible endpoint (Cloudflare R2, AWS S3, MinIO, SeaweedFS), through boto3.

The only module that imports boto3. Botocore's errors are turned into our named exceptions with messages that
say what to fix. Retries with exponential backoff are botocore's "standard" mode (throttling, 5xx and connection
errors). Checksums are only sent when an operation requires them, which R2 needs.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import TYPE_CHECKING, Any, BinaryIO, TypeVar, cast

from ..config import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_DEADLINE,
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_READ_TIMEOUT,
    Secret,
)
from ..errors import (
    AccessDenied,
    BackendError,
    BhError,
    BucketNotFound,
    ConfigError,
    EndpointUnreachable,
    IntegrityError,
    ObjectNotFound,
    PreconditionFailed,
)
from .bucket import (
    COPY_PART_SIZE,
    MAX_COPY_OBJECT,
    MULTIPART_THRESHOLD,
    PART_SIZE,
    BucketClient,
    ObjectInfo,
    ProgressCallback,
    Readable,
    Sink,
    atomic_file,
    check_key,
)

if TYPE_CHECKING:
    from ..config import BucketConfig

T = TypeVar("T")

#: Parallel connections used for multipart uploads and ranged downloads of large objects.
MAX_CONCURRENCY = 8
#: A streamed body is read in pieces of this size; a broken stream keeps what arrived in whole pieces.
_READ_PIECE = 256 * 1024

_AUTH_CODES = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken",
               "AuthorizationHeaderMalformed", "InvalidSecurity", "MissingSecurityHeader", "Unauthorized"}


class S3Bucket(BucketClient):
    """A bucket reached over the S3 API."""

    backend = "s3"

    def __init__(
        self,
        bucket: str,
        *,
        endpoint_url: str | None = None,
        region: str = "auto",
        access_key_id: str | None = None,
        secret_access_key: Secret | str | None = None,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        read_timeout: float = DEFAULT_READ_TIMEOUT,
        deadline: float = DEFAULT_DEADLINE,
        multipart_threshold: int = MULTIPART_THRESHOLD,
        part_size: int = PART_SIZE,
        max_concurrency: int = MAX_CONCURRENCY,
        page_size: int = 1000,
    ) -> None:
        import boto3
        import botocore.session
        from botocore.config import Config

        self.name = bucket
        self.endpoint_url = endpoint_url
        self.region = region
        self.multipart_threshold = multipart_threshold
        self.part_size = part_size
        self.copy_part_size = COPY_PART_SIZE
        self.max_copy_object = MAX_COPY_OBJECT
        self.max_concurrency = max_concurrency
        self.page_size = page_size
        self.max_attempts = max_attempts
        self.deadline = deadline
        if (access_key_id is None) != (secret_access_key is None):
            raise ConfigError("give both access_key_id and secret_access_key, or neither (then the environment's "
                              "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or AWS profile are used)")
        options: dict[str, Any] = dict(
            region_name=None if region == "auto" and endpoint_url is None else region,
            retries={"max_attempts": max_attempts, "mode": "standard"},
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            max_pool_connections=max(10, max_concurrency * 2),
            s3={"addressing_style": "path"},
            signature_version="s3v4",
        )
        try:
            # boto3 >= 1.36 adds CRC32 checksums to every upload by default; R2 rejects some of them.
            config = Config(**options, request_checksum_calculation="when_required",
                            response_checksum_validation="when_required")
        except TypeError:  # older botocore: it never sent them.
            config = Config(**options)
        core = botocore.session.Session()
        if access_key_id is not None and secret_access_key is not None:
            # The secret reaches botocore inside an object that hides it, never as a plain argument: a verbose
            # traceback of a failure in here or in botocore prints no frame local holding it.
            _use_credentials(core, access_key_id, Secret(secret_access_key))
        del secret_access_key
        session = boto3.session.Session(botocore_session=core)
        self._client = session.client("s3", endpoint_url=endpoint_url, region_name=options["region_name"],
                                      config=config)
        events = self._client.meta.events
        events.register_first("before-call.s3", _mark_start)
        events.register_first("needs-retry.s3", self._past_deadline)
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()

    @classmethod
    def from_config(cls, config: BucketConfig, **kwargs: Any) -> S3Bucket:
        """Build from a BucketConfig (its credentials, timeouts and deadline)."""
        options: dict[str, Any] = dict(endpoint_url=config.endpoint_url, region=config.region,
                                       access_key_id=config.access_key_id, secret_access_key=config.secret_access_key,
                                       connect_timeout=config.connect_timeout, read_timeout=config.read_timeout,
                                       deadline=config.deadline, max_attempts=config.max_attempts)
        options.update(kwargs)
        return cls(config.bucket, **options)

    def _past_deadline(self, request_dict: dict[str, Any] | None = None, response: Any = None,
                       attempts: int = 1, **_: Any) -> bool | float | None:
        """botocore asks whether to retry: not once the operation's deadline has passed (False vetoes); a body
        the server refused as damaged on the way (BadDigest) is sent again (the delay in seconds)."""
        started = ((request_dict or {}).get("context") or {}).get("bh_started")
        if started is not None and time.monotonic() - started >= self.deadline:
            return False
        if response is not None and attempts < self.max_attempts:
            parsed = response[1] if isinstance(response, tuple) and len(response) > 1 else {}
            if isinstance(parsed, dict) and parsed.get("Error", {}).get("Code") == "BadDigest":
                return 0.1
        return None

    def __repr__(self) -> str:
        where = f", endpoint_url={self.endpoint_url!r}" if self.endpoint_url else ""
        return f"S3Bucket({self.name!r}{where})"

    @property
    def client(self) -> Any:
        """The underlying boto3 client, for what this class does not cover."""
        return self._client

    def _executor(self) -> ThreadPoolExecutor:
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.max_concurrency, thread_name_prefix="bh-s3")
            return self._pool

    def close(self) -> None:
        with self._pool_lock:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None
        self._client.close()

    # -- error translation --------------------------------------------------------------------

    def _call(self, what: str, key: str | None, fn: Callable[..., T], **kwargs: Any) -> T:
        """Call the boto3 client; botocore's errors become our named ones, anything else (a bug) passes through."""
        from botocore.exceptions import BotoCoreError, ClientError, ParamValidationError

        try:
            return fn(**kwargs)
        except ParamValidationError:
            raise  # we built a wrong request: a bug of ours, shown as one
        except (BotoCoreError, ClientError) as exc:
            raise self._translate(exc, what, key) from exc

    def _translate(self, exc: Exception, what: str, key: str | None) -> BhError:
        """A named error for a botocore error, chosen by its S3 error code and HTTP status (kept on it)."""
        from botocore.exceptions import (
            ClientError,
            ConnectionClosedError,
            ConnectTimeoutError,
            EndpointConnectionError,
            NoCredentialsError,
            PartialCredentialsError,
            ReadTimeoutError,
        )

        target = f"s3://{self.name}/{key}" if key else f"s3://{self.name}"
        endpoint = self.endpoint_url or "AWS S3"
        if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
            return AccessDenied(f"no credentials for {endpoint}: pass access_key_id/secret_access_key "
                                "or set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
        if isinstance(exc, (EndpointConnectionError, ConnectTimeoutError, ConnectionClosedError, ReadTimeoutError)):
            return EndpointUnreachable(f"could not reach {endpoint} to {what} {target} "
                                       f"({type(exc).__name__}, gave up after {self.deadline:g} s or "
                                       f"{self.max_attempts} tries); check endpoint_url and your network")
        if isinstance(exc, ClientError):
            err = exc.response.get("Error", {})
            code = str(err.get("Code", "")) or None
            raw_status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            status = int(raw_status) if raw_status is not None else None
            if code is not None and code.isdigit() and status is None:
                status = int(code)  # HEAD answers have no body: botocore puts the status in as the code
            if code == "PreconditionFailed" or status == 412:
                return PreconditionFailed(f"{target} changed since it was read; re-read it and try again", code=code, status=status)
            if code == "NoSuchBucket":
                return BucketNotFound(f"bucket {self.name!r} does not exist at {endpoint}; "
                                      "create it first or fix the bucket name", code=code, status=status)
            if code in ("NoSuchKey", "NotFound", "NoSuchUpload") or status == 404:
                return ObjectNotFound(f"no object {target}", code=code, status=status)
            if code in _AUTH_CODES:
                return AccessDenied(f"{endpoint} rejected the credentials ({code}) on {what} {target}: "
                                    "check the access key id and secret", code=code, status=status)
            if code == "AccessDenied" or status in (401, 403):
                return AccessDenied(f"access denied to {what} {target} at {endpoint}: the credentials are wrong "
                                    "or lack permission on this bucket", code=code, status=status)
            if code == "InvalidRange" or status == 416:
                return BackendError(f"invalid byte range for {target}", code=code, status=status)
            if status is not None and (status >= 500 or status == 429):
                return EndpointUnreachable(f"{endpoint} kept failing to {what} {target} ({code or status}, "
                                           f"gave up after {self.deadline:g} s or {self.max_attempts} tries); "
                                           "try again later", code=code, status=status)
            return BackendError(f"{what} {target} failed at {endpoint}: {code or status} "
                                f"{err.get('Message', '')}".rstrip(), code=code, status=status)
        return BackendError(f"{what} {target} failed at {endpoint}: {type(exc).__name__}")

    # -- primitives -------------------------------------------------------------------------

    def head(self, key: str) -> ObjectInfo | None:
        check_key(key)
        try:
            r = self._call("read", key, self._client.head_object, Bucket=self.name, Key=key)
        except ObjectNotFound:
            return None
        return ObjectInfo(key=key, size=int(r["ContentLength"]), etag=r["ETag"],
                          last_modified=r["LastModified"].timestamp(), server_time=_server_time(r))

    def clock(self) -> float:
        """The bucket's time, from the ``Date`` of a HEAD of the bucket (one request; whole seconds)."""
        r = self._call("reach", None, self._client.head_bucket, Bucket=self.name)
        found = _server_time(r)
        if found is None:  # a server that sends no Date: this machine's clock is all there is
            return time.time()
        return found

    def touch(self, key: str, *, content_type: str | None = None,
              metadata: Mapping[str, str] | None = None) -> bool:
        """A copy of the object onto itself with its description replaced; no bytes through us. One CopyObject up
        to the 5 GiB it allows (a copy onto itself is cheap on the servers we test: SeaweedFS answers for 1 GiB in
        0.15 s), in parts above."""
        check_key(key)
        about: dict[str, Any] = {"Metadata": dict(metadata or {})}
        if content_type:
            about["ContentType"] = content_type
        info = self.head(key)
        if info is None:
            return False
        try:
            if info.size <= self.max_copy_object:
                self._call("touch", key, self._client.copy_object, Bucket=self.name, Key=key,
                           CopySource={"Bucket": self.name, "Key": key}, MetadataDirective="REPLACE", **about)
            else:
                self._copy_in_parts(key, key, info, about)
        except ObjectNotFound:
            return False
        except PreconditionFailed:  # rewritten since the HEAD: written just now, which is what a touch is for
            return self.head(key) is not None
        return True

    def get_range(self, key: str, start: int, end: int | None = None) -> bytes:
        return self._get_range(key, start, end)

    def _get_range(self, key: str, start: int, end: int | None = None, *, if_match: str | None = None) -> bytes:
        check_key(key)
        cond = {} if if_match is None else {"IfMatch": if_match}
        if start < 0 or (end is not None and end < 0):
            info = self.head(key)
            if info is None:
                raise ObjectNotFound(f"no object s3://{self.name}/{key}")
            start, end, _ = slice(start, end).indices(info.size)
        if end is not None and end <= start:
            return b""
        chunks: list[bytes] = []
        pos = start
        for attempt in self._attempts(key, lambda: pos):
            with attempt:
                rng = f"bytes={pos}-" if end is None else f"bytes={pos}-{end - 1}"
                try:
                    r = self._call("read", key, self._client.get_object, Bucket=self.name, Key=key, Range=rng,
                                   **cond)
                except BackendError as exc:
                    if exc.status == 416:  # nothing at or past ``pos``
                        break
                    raise
                with r["Body"] as body:
                    while chunk := body.read(_READ_PIECE):  # kept as it arrives: a retry asks only for the rest
                        chunks.append(chunk)
                        pos += len(chunk)
        return b"".join(chunks)

    def _attempts(self, key: str, position: Callable[[], int]) -> Iterator[_Attempt]:
        """Retry a GET whose body broke off (a reset, a timeout mid-transfer): botocore retries only until the
        response headers arrive. Each attempt is a context manager that swallows a broken stream, and the next
        one asks only for the rest. Attempts that moved bytes do not count, and the deadline is counted from the
        last byte that arrived: a slow transfer that keeps moving is never given up on."""
        retry = _Retry(self.max_attempts, self.deadline, position)
        while not retry.done:
            yield _Attempt(retry, what=f"s3://{self.name}/{key}", endpoint=self.endpoint_url or "AWS S3")
            if not retry.done:
                time.sleep(retry.backoff())

    def open_read(self, key: str) -> BinaryIO:
        check_key(key)
        r = self._call("read", key, self._client.get_object, Bucket=self.name, Key=key)
        return cast(BinaryIO, _BodyReader(r["Body"]))

    def download(self, key: str, path: str | os.PathLike[str], *, progress: ProgressCallback | None = None,
                 if_match: str | None = None) -> Path:
        """Stream ``key`` to a file in ranged GETs, each retried from where it broke off; atomic (temp + rename).

        Every range asks for the etag the first HEAD saw (If-Match), so an object replaced meanwhile raises
        PreconditionFailed instead of giving a file made of two versions."""
        info = self.head(key)
        if info is None:
            raise ObjectNotFound(f"no object s3://{self.name}/{key}")
        if if_match is not None and info.etag != if_match:
            raise PreconditionFailed(f"s3://{self.name}/{key} changed since it was read; not downloaded")
        dest = Path(path)
        with atomic_file(dest) as out:
            for lo in range(0, info.size, self.part_size):
                data = self._get_range(key, lo, min(info.size, lo + self.part_size), if_match=info.etag)
                if len(data) != min(self.part_size, info.size - lo):
                    raise IntegrityError(f"s3://{self.name}/{key} changed or ended early while downloading")
                out.write(data)
                if progress is not None:
                    progress(len(data))
        return dest

    def get_bytes(self, key: str) -> bytes:
        info = self.head(key)
        if info is None:
            raise ObjectNotFound(f"no object s3://{self.name}/{key}")
        if info.size > self.multipart_threshold:
            buf = bytearray(info.size)
            self.get_into(key, buf)
            return bytes(buf)
        with self.open_read(key) as f:
            return f.read()

    def get_into(self, key: str, buffer: memoryview | bytearray, start: int = 0,
                 *, progress: ProgressCallback | None = None, sink: Sink | None = None) -> int:
        """Parallel ranged GETs straight into ``buffer``; ``sink`` sees finished ranges in order meanwhile."""
        view = memoryview(buffer).cast("B")
        total = view.nbytes
        if total <= self.part_size:
            return super().get_into(key, view, start, progress=progress, sink=sink)
        ranges = [(off, min(off + self.part_size, total)) for off in range(0, total, self.part_size)]
        cancelled = threading.Event()

        def fetch(lo: int, hi: int) -> None:
            pos = lo
            for attempt in self._attempts(key, lambda: pos):
                with attempt:
                    if cancelled.is_set():
                        return
                    r = self._call("read", key, self._client.get_object, Bucket=self.name, Key=key,
                                   Range=f"bytes={start + pos}-{start + hi - 1}")
                    with r["Body"] as body:
                        while pos < hi:
                            if cancelled.is_set():
                                return
                            chunk = body.read(min(_READ_PIECE, hi - pos))
                            if not chunk:
                                raise IntegrityError(f"s3://{self.name}/{key} ended at byte {start + pos}; "
                                                     "it is shorter than expected")
                            view[pos:pos + len(chunk)] = chunk
                            pos += len(chunk)
                            if progress is not None:
                                progress(len(chunk))

        pool = self._executor()
        futures: list[Future[None]] = [pool.submit(fetch, lo, hi) for lo, hi in ranges]
        try:
            for (lo, hi), fut in zip(ranges, futures):
                fut.result()  # in order: the sink hashes range i while later ranges download
                if sink is not None:
                    sink(view[lo:hi])
        except BaseException as exc:
            cancelled.set()
            for f in futures:
                f.cancel()
            if not isinstance(exc, KeyboardInterrupt):
                wait(futures)  # the running ones stop at their next chunk
            # On Ctrl-C nobody waits for a hung request: its thread stops by itself (it holds a view of the
            # buffer, so the memory stays valid meanwhile).
            raise
        return total

    def put_stream(
        self,
        fileobj: Readable,
        key: str,
        *,
        size: int | None = None,
        if_none_match: str | None = None,
        if_match: str | None = None,
        progress: ProgressCallback | None = None,
        content_type: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> str:
        check_key(key)
        if if_none_match not in (None, "*"):
            raise ValueError("if_none_match only accepts '*'")
        cond: dict[str, str] = {}
        if if_none_match:
            cond["IfNoneMatch"] = if_none_match
        if if_match:
            cond["IfMatch"] = if_match
        about: dict[str, Any] = {}
        if content_type:
            about["ContentType"] = content_type
        if metadata:
            about["Metadata"] = dict(metadata)
        if size is not None and size > self.multipart_threshold:
            return self._multipart(b"", fileobj, key, cond, progress, size, about)
        first = _read_full(fileobj, self.multipart_threshold + 1)
        if len(first) <= self.multipart_threshold:
            try:
                r = self._call("write", key, self._client.put_object, Bucket=self.name, Key=key, Body=first, **cond,
                               ContentMD5=_content_md5(first), **about)
            except ObjectNotFound:
                if if_match is None:
                    raise
                # AWS and moto answer If-Match on a missing key with 404; SeaweedFS and R2 with 412.
                raise PreconditionFailed(f"s3://{self.name}/{key} does not exist (if_match={if_match})") from None
            if progress is not None:
                progress(len(first))
            return str(r["ETag"])
        return self._multipart(first, fileobj, key, cond, progress, None, about)

    def _multipart(self, first: bytes, fileobj: Readable, key: str, cond: dict[str, str],
                   progress: ProgressCallback | None, size: int | None, about: dict[str, Any]) -> str:
        # At most 10,000 parts: grow the part size for very large objects of known size.
        part_size = max(self.part_size, -(-size // 9000)) if size else self.part_size
        # Check before uploading gigabytes; CompleteMultipartUpload re-checks the condition atomically
        # on servers that support it (R2, AWS, SeaweedFS).
        if cond:
            current = self.head(key)
            if "IfNoneMatch" in cond and current is not None:
                raise PreconditionFailed(f"s3://{self.name}/{key} already exists (if_none_match='*')")
            if "IfMatch" in cond and (current is None or current.etag != cond["IfMatch"]):
                raise PreconditionFailed(f"s3://{self.name}/{key} changed since it was read "
                                         f"(etag {cond['IfMatch']} expected)")
        upload_id = self._call("write", key, self._client.create_multipart_upload,
                               Bucket=self.name, Key=key, **about)["UploadId"]
        try:
            pending = io.BytesIO(first)
            parts: dict[int, str] = {}
            pool = self._executor()
            futures: list[Future[None]] = []
            sem = threading.Semaphore(self.max_concurrency)  # bound the part buffers held in memory
            cancelled = threading.Event()

            def send(number: int, body: bytes) -> None:
                try:
                    if cancelled.is_set():
                        return
                    r = self._call("write", key, self._client.upload_part, Bucket=self.name, Key=key,
                                   UploadId=upload_id, PartNumber=number, Body=body, ContentMD5=_content_md5(body))
                    parts[number] = r["ETag"]
                    if progress is not None:
                        progress(len(body))
                finally:
                    sem.release()

            number = 0
            while True:
                body = pending.read(part_size)
                if len(body) < part_size:
                    body += _read_full(fileobj, part_size - len(body))
                if not body:
                    break
                number += 1
                sem.acquire()
                failed = [f for f in futures if f.done() and f.exception() is not None]
                if failed:
                    sem.release()
                    raise failed[0].exception()  # type: ignore[misc]
                futures.append(pool.submit(send, number, body))
                del body
            wait(futures)
            for f in futures:
                if f.exception() is not None:
                    raise f.exception()  # type: ignore[misc]
            try:
                r = self._call(
                    "write", key, self._client.complete_multipart_upload, Bucket=self.name, Key=key,
                    UploadId=upload_id,
                    MultipartUpload={"Parts": [{"PartNumber": n, "ETag": parts[n]} for n in sorted(parts)]},
                    **cond,
                )
            except ObjectNotFound:
                if "IfMatch" not in cond:
                    raise
                raise PreconditionFailed(f"s3://{self.name}/{key} disappeared during the upload") from None
            return str(r["ETag"])
        except BaseException as exc:
            cancelled.set()
            self._abort_upload(key, upload_id, exc)
            raise

    def _abort_upload(self, key: str, upload_id: str, exc: BaseException) -> None:
        """Abort a multipart upload that failed with ``exc``, best effort (the original error is what matters). On
        Ctrl-C nothing is sent: the caller stops at once, without a request to a maybe hung endpoint, and
        cleanup_incomplete() aborts the upload later."""
        if isinstance(exc, KeyboardInterrupt):
            return
        try:
            self._client.abort_multipart_upload(Bucket=self.name, Key=key, UploadId=upload_id)
        except Exception:  # noqa: BLE001 - best effort
            pass

    def delete(self, key: str) -> None:
        check_key(key)
        try:
            self._call("delete", key, self._client.delete_object, Bucket=self.name, Key=key)
        except ObjectNotFound:
            pass

    def list_info(self, prefix: str = "") -> Iterator[ObjectInfo]:
        kwargs: dict[str, Any] = {"Bucket": self.name, "Prefix": prefix, "MaxKeys": self.page_size}
        while True:
            r = self._call("list", prefix or None, self._client.list_objects_v2, **kwargs)
            for item in r.get("Contents", []):
                yield ObjectInfo(key=item["Key"], size=int(item["Size"]), etag=item.get("ETag", ""),
                                 last_modified=item["LastModified"].timestamp())
            if not r.get("IsTruncated"):
                return
            kwargs["ContinuationToken"] = r["NextContinuationToken"]

    def copy(self, src_key: str, dst_key: str, *, if_match: str | None = None) -> None:
        check_key(src_key)
        check_key(dst_key)
        info = self.head(src_key)
        if info is None:
            raise ObjectNotFound(f"no object s3://{self.name}/{src_key} to copy")
        if if_match is not None and info.etag != if_match:
            raise PreconditionFailed(f"s3://{self.name}/{src_key} changed since it was read; not copied")
        if info.size <= max(self.multipart_threshold, self.copy_part_size):
            cond = {} if if_match is None else {"CopySourceIfMatch": if_match}
            self._call("copy", src_key, self._client.copy_object, Bucket=self.name, Key=dst_key,
                       CopySource={"Bucket": self.name, "Key": src_key}, **cond)
        else:
            self._copy_in_parts(src_key, dst_key, info)

    def _copy_in_parts(self, src_key: str, dst_key: str, info: ObjectInfo,
                       about: dict[str, Any] | None = None) -> None:
        """A server-side copy in parts (UploadPartCopy), several at once: one CopyObject of gigabytes sends no
        byte until it is done, longer than a read timeout, and stops at 5 GiB. Every part is copied only from the
        source as it was (its ETag), so a source rewritten meanwhile fails the copy instead of mixing. The copy
        gets the description ``about`` (content type and metadata), or the source's."""
        if about is None:
            r = self._call("copy", src_key, self._client.head_object, Bucket=self.name, Key=src_key,
                           IfMatch=info.etag)
            about = {"Metadata": dict(r.get("Metadata") or {})}
            if r.get("ContentType"):
                about["ContentType"] = r["ContentType"]
        part_size = max(self.copy_part_size, -(-info.size // 9000))  # equal parts but the last (R2), <= 10,000
        futures: list[Future[dict[str, Any]]] = []
        upload_id = self._call("copy", dst_key, self._client.create_multipart_upload,
                               Bucket=self.name, Key=dst_key, **about)["UploadId"]

        def part(number: int) -> dict[str, Any]:
            lo = (number - 1) * part_size
            hi = min(info.size, lo + part_size) - 1
            got = self._call("copy", src_key, self._client.upload_part_copy, Bucket=self.name, Key=dst_key,
                             UploadId=upload_id, PartNumber=number, CopySourceIfMatch=info.etag,
                             CopySource={"Bucket": self.name, "Key": src_key}, CopySourceRange=f"bytes={lo}-{hi}")
            return {"PartNumber": number, "ETag": got["CopyPartResult"]["ETag"]}

        try:
            futures += [self._executor().submit(part, n) for n in range(1, -(-info.size // part_size) + 1)]
            parts = [f.result() for f in futures]
            self._call("copy", dst_key, self._client.complete_multipart_upload, Bucket=self.name, Key=dst_key,
                       UploadId=upload_id, MultipartUpload={"Parts": parts})
        except BaseException as exc:
            for f in futures:
                f.cancel()
            self._abort_upload(dst_key, upload_id, exc)
            raise

    def cleanup_incomplete(self, older_than: float = 3600.0) -> int:
        """Abort multipart uploads started more than ``older_than`` seconds ago (a killed writer's), which
        otherwise keep costing storage."""
        removed = 0
        kwargs: dict[str, Any] = {"Bucket": self.name}
        while True:
            r = self._call("list", None, self._client.list_multipart_uploads, **kwargs)
            now = _server_time(r) or time.time()  # the bucket's clock, like the Initiated times
            for upload in r.get("Uploads", []):
                if upload["Initiated"].timestamp() <= now - older_than and not self._upload_active(
                        upload["Key"], upload["UploadId"], now - older_than):
                    try:
                        self._client.abort_multipart_upload(Bucket=self.name, Key=upload["Key"],
                                                            UploadId=upload["UploadId"])
                        removed += 1
                    except Exception:  # noqa: BLE001 - already gone, or finishing: fine either way
                        pass
            if not r.get("IsTruncated"):
                return removed
            kwargs.update(KeyMarker=r.get("NextKeyMarker"), UploadIdMarker=r.get("NextUploadIdMarker"))

    def _upload_active(self, key: str, upload_id: str, cutoff: float) -> bool:
        """Whether a multipart upload received a part after ``cutoff``: a big upload keeps its start time while it
        runs, so only its parts tell whether a writer is still at it. When that cannot be told, it counts as active
        (aborting a live upload fails a put; keeping a dead one costs storage until the next gc)."""
        kwargs: dict[str, Any] = {"Bucket": self.name, "Key": key, "UploadId": upload_id}
        while True:
            try:
                r = self._call("list", key, self._client.list_parts, **kwargs)
            except ObjectNotFound:
                return False  # gone or finished meanwhile: nothing to abort
            except BhError:
                return True
            if any(part["LastModified"].timestamp() > cutoff for part in r.get("Parts", [])):
                return True
            if not r.get("IsTruncated"):
                return False
            kwargs["PartNumberMarker"] = r.get("NextPartNumberMarker")

    def presigned_url(self, key: str, expires_in: int = 3600) -> str | None:
        check_key(key)
        return str(self._client.generate_presigned_url(
            "get_object", Params={"Bucket": self.name, "Key": key}, ExpiresIn=int(expires_in)))

    def check_bucket(self) -> None:
        """Raise a named error when the bucket is missing or the credentials do not work."""
        try:
            self._call("open", None, self._client.head_bucket, Bucket=self.name)
        except ObjectNotFound:  # HEAD has no body: a missing bucket is a bare 404.
            raise BucketNotFound(f"bucket {self.name!r} does not exist at {self.endpoint_url or 'AWS S3'}; "
                                 "create it first or fix the bucket name") from None

    def create_bucket(self) -> None:
        """Create the bucket (for tests and first-time set-up); an existing bucket of ours is fine."""
        try:
            self._call("create", None, self._client.create_bucket, Bucket=self.name)
        except BackendError as exc:
            if exc.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise


class _Retry:
    """Bookkeeping of a retried streamed read: attempts that moved no bytes, and when bytes last moved."""

    def __init__(self, max_attempts: int, deadline: float, position: Callable[[], int]) -> None:
        self.max_attempts = max_attempts
        self.deadline = deadline
        self.position = position
        self.done = False
        self.idle_attempts = 0
        self.last_pos = position()
        self.last_moved = time.monotonic()

    def failed(self) -> bool:
        """Record a broken attempt; True when it is time to give up."""
        pos = self.position()
        if pos != self.last_pos:
            self.last_pos, self.last_moved, self.idle_attempts = pos, time.monotonic(), 0
        self.idle_attempts += 1
        return self.idle_attempts >= self.max_attempts or time.monotonic() - self.last_moved >= self.deadline

    def backoff(self) -> float:
        return min(2.0, 0.1 * 2 ** self.idle_attempts)


class _Attempt:
    """One try of a streamed read: a broken stream is swallowed (and retried) unless it is time to give up."""

    def __init__(self, retry: _Retry, *, what: str, endpoint: str) -> None:
        self._retry = retry
        self._what = what
        self._endpoint = endpoint

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> bool:
        if exc_type is None:
            self._retry.done = True
            return False
        if not _is_stream_error(exc):
            self._retry.done = True
            return False
        if self._retry.failed():
            self._retry.done = True
            raise EndpointUnreachable(f"reading {self._what} from {self._endpoint} kept breaking off "
                                      f"({type(exc).__name__}); check the network and try again") from exc
        return True


def _mark_start(context: dict[str, Any] | None = None, **_: Any) -> None:
    """Note when an operation began (its retries share the context), for the deadline."""
    if context is not None:
        context.setdefault("bh_started", time.monotonic())


def _use_credentials(core: Any, access_key_id: str, secret: Secret) -> None:
    """Make a botocore session sign with these credentials, the secret staying wrapped until signing."""
    from botocore.credentials import CredentialProvider, CredentialResolver, Credentials, ReadOnlyCredentials

    class _Frozen(ReadOnlyCredentials):
        __slots__ = ()

        def __repr__(self) -> str:
            return f"ReadOnlyCredentials(access_key={self.access_key!r}, secret_key='***')"

    class _Hidden(Credentials):
        def __init__(self) -> None:  # no super().__init__: it would take the secret as a plain argument
            self.access_key = access_key_id
            self.token = None
            self.method = "explicit"

        @property
        def secret_key(self) -> str:
            return secret.reveal()

        def get_frozen_credentials(self) -> ReadOnlyCredentials:
            return _Frozen(self.access_key, secret.reveal(), None)

        def __repr__(self) -> str:
            return f"Credentials(access_key={self.access_key!r}, secret_key='***')"

    class _Provider(CredentialProvider):
        METHOD = "explicit"
        CANONICAL_NAME = "explicit"

        def load(self) -> Credentials:
            return _Hidden()

    core.register_component("credential_provider", CredentialResolver([_Provider()]))


def _is_stream_error(exc: BaseException | None) -> bool:
    from botocore.exceptions import ConnectionClosedError, IncompleteReadError, ReadTimeoutError

    try:
        from botocore.exceptions import ResponseStreamingError
    except ImportError:  # pragma: no cover - older botocore
        ResponseStreamingError = ConnectionClosedError  # noqa: N806
    from urllib3.exceptions import HTTPError as Urllib3Error

    return isinstance(exc, (ResponseStreamingError, IncompleteReadError, ReadTimeoutError, ConnectionClosedError,
                            Urllib3Error, ConnectionError, TimeoutError))


class _BodyReader(io.RawIOBase):
    """A botocore StreamingBody as a file object (closing releases the connection)."""

    def __init__(self, body: Any) -> None:
        super().__init__()
        self._body = body

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        return self._body.read() if n is None or n < 0 else self._body.read(n)

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self._body.read(len(b))
        b[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self._body.close()
        super().close()


def _content_md5(body: bytes) -> str:
    """The Content-MD5 header of an upload: the server refuses a body that changed or broke off on the way
    (BadDigest, which botocore retries) instead of storing it."""
    return base64.b64encode(hashlib.md5(body, usedforsecurity=False).digest()).decode("ascii")


def _read_full(f: Readable, n: int) -> bytes:
    """Read exactly ``n`` bytes unless the stream ends first (raw streams may return short reads)."""
    chunks = []
    got = 0
    while got < n:
        chunk = f.read(n - got)
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _server_time(response: Mapping[str, Any]) -> float | None:
    """The ``Date`` header of a boto3 response, in epoch seconds (None when absent or unreadable)."""
    from email.utils import parsedate_to_datetime

    date = response.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
    if not date:
        return None
    try:
        return parsedate_to_datetime(date).timestamp()
    except (TypeError, ValueError):
        return None
