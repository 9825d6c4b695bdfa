"""Campaign outputs on object storage: ``campaign.root`` may be an fsspec URL (``s3://bucket/prefix``).

A plain path or a ``file://`` URL is a local root: every function here passes through to what the platform
does on disk today (:mod:`rlhf.core.artifacts`, :mod:`rlhf.record.layout`). Any other fsspec protocol with a
filesystem is a remote root; ``s3://`` is the one the platform runs on (MinIO, AWS S3, moto in the tests),
``memory://`` serves unit tests.

How a step's output lives remotely (docs/design.md#object-storage):

- A step writes its output locally, as today (an atomic directory with ``manifest.json`` written last), then
  :func:`upload_output` copies it to ``<campaign url>/iter-<n>/<step>/``: an old ``manifest.json`` there is
  deleted first, then every other file is uploaded, files of an older version that the new one lacks are
  removed, and ``manifest.json`` is uploaded last. The manifest is the commit marker: a reader never sees a
  manifest over files that are not its own, and an interrupted upload (files, no manifest) is unfinished
  (:func:`remote_manifest` is None).
- A step that reads an upstream output calls :func:`fetch_output` with the reference's URL and key: a local
  copy in a cache directory named after the key, downloaded once (into a temp dir, checked against the
  manifest's digests, then renamed into place) and reused while it still verifies.
- One run per campaign: :func:`campaign_lock` holds a lease object ``<campaign url>/.lock`` created with a
  conditional put (S3 ``If-None-Match: *``), renewed by a background thread with compare-and-swap
  (``If-Match: <etag>``), and taken over with compare-and-swap once its lease has run out (a killed holder
  never releases it).

The S3 endpoint comes from ``MLFLOW_S3_ENDPOINT_URL`` (what MLflow reads, so the two agree), else
``AWS_ENDPOINT_URL_S3``, else ``AWS_ENDPOINT_URL``; none of them set means AWS itself. Credentials are
boto's: ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, ``~/.aws``, or an instance role.
:func:`check_root` tries all of it before any step runs.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import os
import re
import shutil
import socket
import threading
import time
import urllib.parse
import uuid
from contextlib import contextmanager
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, Iterator

from rlhf.core.artifacts import MANIFEST, atomic_dir, read_manifest, verify_output, write_text
from rlhf.core.digests import default_cache_dir
from rlhf.core.errors import ConfigError, RLHFError
from rlhf.record import layout
from rlhf.record.layout import CampaignLocked

log = logging.getLogger("rlhf")

LOCAL_PROTOCOLS = (None, "file", "local")
S3_PROTOCOLS = ("s3", "s3a")
ENDPOINT_VARIABLES = ("MLFLOW_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
LOCK_NAME = ".lock"
DEFAULT_LEASE = 120.0  # seconds a lock holder that stops renewing (it died) keeps the campaign locked
INSTALL_HINT = "pip install '.[storage]'"
URL_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")


class StorageError(RLHFError):
    """A remote step output that cannot be used as it is: no manifest, another key, damaged files."""


# --- where: local paths and URLs -------------------------------------------------------------------------

def protocol(root: str | Path) -> str | None:
    """The URL's protocol (``"s3"``, ``"memory"``), or None for a plain path."""
    match = URL_SCHEME.match(str(root))
    return match.group(1).lower() if match else None


def is_url(root: str | Path) -> bool:
    """Whether ``root`` names remote storage (``s3://...``, ``memory://...``); a plain path and ``file://``
    are local."""
    return protocol(root) not in LOCAL_PROTOCOLS


def local_path(root: str | Path) -> Path:
    """The local path of a plain path or a ``file://`` URL (``file:///abs/dir`` -> ``/abs/dir``)."""
    if is_url(root):
        raise ValueError(f"{display(root)} is not a local path")
    text = str(root)
    if protocol(text) is not None:
        text = urllib.parse.unquote(text.split("://", 1)[1])
        if text.startswith("localhost/"):
            text = text[len("localhost"):]
    return Path(text)


def join(root: str | Path, *parts: str) -> str | Path:
    """``root`` and ``parts`` joined: a :class:`Path` for a local root (so today's code keeps its Paths), a
    URL joined with ``/`` for a remote one."""
    if not is_url(root):
        return local_path(root).joinpath(*parts)
    return "/".join([str(root).rstrip("/"), *(str(part).strip("/") for part in parts)])


def display(location: str | Path) -> str:
    """``location`` for a message: a URL without any user or password in it, or the path."""
    if not is_url(location):
        return str(local_path(location))
    parts = urllib.parse.urlsplit(str(location))
    return urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def endpoint() -> tuple[str | None, str | None]:
    """``(S3 endpoint URL, the variable it came from)``; ``(None, None)`` means AWS's own endpoints."""
    for name in ENDPOINT_VARIABLES:
        if os.environ.get(name):
            return os.environ[name], name
    return None, None


def filesystem(url: str) -> tuple[Any, str]:
    """``(fsspec filesystem, path inside it)`` for a remote URL. S3 goes to the endpoint of
    :func:`endpoint`, and listings are never cached (another process may have written since)."""
    import fsspec

    options: dict[str, Any] = {"use_listings_cache": False}
    if protocol(url) in S3_PROTOCOLS:
        url_, _ = endpoint()
        if url_:
            options["client_kwargs"] = {"endpoint_url": url_}
    fs, path = fsspec.core.url_to_fs(str(url), **options)
    return fs, path.rstrip("/")


# --- up-front check ---------------------------------------------------------------------------------------

def check_root(root: str | Path, key: str = "campaign.root") -> None:
    """Check that the campaign can be stored at ``root`` before any step runs, so a typo or a missing
    secret costs seconds, not a trained model: the filesystem's package is installed, and for S3 that the
    endpoint answers, the credentials are there, the bucket exists and they may write to it (an object
    ``.rlhf-write-check-*`` is written under the prefix and deleted). Raises :class:`ConfigError` naming
    ``key`` and what to do. A local root is today's behaviour: nothing to check."""
    if not is_url(root):
        return
    name = protocol(root)
    if name in S3_PROTOCOLS:
        for package in ("s3fs", "boto3"):
            try:
                importlib.import_module(package)
            except ImportError:
                raise ConfigError(key, f"{display(root)} is on S3, which needs the package {package}: "
                                       f"{INSTALL_HINT}") from None
        _check_s3(str(root), key)
        return
    import fsspec

    try:
        fsspec.get_filesystem_class(name)
    except ValueError:
        raise ConfigError(key, f"{display(root)}: unknown storage protocol {name!r}; use a local path or "
                               "s3://bucket/prefix") from None
    except ImportError as err:
        raise ConfigError(key, f"{display(root)}: {err}") from None


def _s3_client(timeouts: bool = False):
    """A boto3 S3 client on :func:`endpoint`, from a new session (boto's default session keeps the
    credentials it found first). ``timeouts``: fail within seconds (the up-front check), not after
    boto's retries."""
    import boto3
    from botocore.config import Config

    config = Config(connect_timeout=5, read_timeout=20,
                    retries={"max_attempts": 1 if timeouts else 4, "mode": "standard"})
    return boto3.session.Session().client("s3", endpoint_url=endpoint()[0], config=config)


def s3_bucket_key(url: str) -> tuple[str, str]:
    """``("bucket", "prefix/path")`` of an ``s3://`` URL."""
    netloc, _, key = str(url).split("://", 1)[1].partition("/")
    return netloc.rpartition("@")[2], key.strip("/")


def _check_s3(url: str, key: str) -> None:
    from botocore.exceptions import (
        BotoCoreError,
        ClientError,
        ConnectTimeoutError,
        EndpointConnectionError,
        NoCredentialsError,
        PartialCredentialsError,
    )

    bucket, prefix = s3_bucket_key(url)
    if not bucket:
        raise ConfigError(key, f"{display(url)} names no bucket: write s3://<bucket>/<prefix>")
    where, variable = endpoint()
    at = f"the S3 endpoint {where} ({variable})" if where else "AWS S3 (no MLFLOW_S3_ENDPOINT_URL or " \
                                                              "AWS_ENDPOINT_URL set)"
    try:
        client = _s3_client(timeouts=True)
    except ValueError as err:  # a malformed endpoint URL
        raise ConfigError(key, f"{display(url)}: {variable}={where!r} is not a usable endpoint URL ({err}); set "
                               "it to the S3 server's URL, like http://127.0.0.1:9000") from None
    probe = f"{prefix}/.rlhf-write-check-{uuid.uuid4().hex[:12]}".lstrip("/")
    step = "reading"
    try:
        client.head_bucket(Bucket=bucket)
        step = "writing"
        client.put_object(Bucket=bucket, Key=probe, Body=b"")
        client.delete_object(Bucket=bucket, Key=probe)
    except (NoCredentialsError, PartialCredentialsError):
        raise ConfigError(key, f"{display(url)}: no S3 credentials found: set AWS_ACCESS_KEY_ID and "
                               "AWS_SECRET_ACCESS_KEY (or put them in ~/.aws/credentials, or AWS_PROFILE)") from None
    except (EndpointConnectionError, ConnectTimeoutError) as err:
        raise ConfigError(key, f"{display(url)}: cannot reach {at} ({err}); start the server or set "
                               "MLFLOW_S3_ENDPOINT_URL (or AWS_ENDPOINT_URL) to its URL") from None
    except ClientError as err:
        code = str(err.response.get("Error", {}).get("Code", ""))
        status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code in ("404", "NoSuchBucket") and step == "reading":
            raise ConfigError(key, f"{display(url)}: the bucket {bucket!r} does not exist at {at}; create it "
                                   f"(aws s3 mb s3://{bucket}, or mc mb <alias>/{bucket} on MinIO) or fix the "
                                   "URL") from None
        if status == 403 or code in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
            who = os.environ.get("AWS_ACCESS_KEY_ID") or "the configured credentials"
            raise ConfigError(key, f"{display(url)}: access denied {step} bucket {bucket!r} at {at} as {who} "
                                   f"({code or status}); check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY and that "
                                   "they may list, read, write and delete objects under the prefix") from None
        raise ConfigError(key, f"{display(url)}: {at} refused {step} bucket {bucket!r}: {err}") from None
    except BotoCoreError as err:
        raise ConfigError(key, f"{display(url)}: cannot use {at}: {err}") from None


# --- small files ------------------------------------------------------------------------------------------

def exists(location: str | Path) -> bool:
    """Whether a file or directory (for S3: any object under the prefix) is there."""
    if not is_url(location):
        return local_path(location).exists()
    fs, path = filesystem(str(location))
    return fs.exists(path)


def read_remote_text(location: str | Path) -> str:
    """A file's text (UTF-8); ``FileNotFoundError`` when there is none."""
    if not is_url(location):
        return local_path(location).read_text(encoding="utf-8")
    fs, path = filesystem(str(location))
    return fs.cat_file(path).decode("utf-8")


def write_remote_text(location: str | Path, text: str) -> None:
    """Write a file whole: locally through a temp file and a rename, remotely in one put (an S3 object is
    replaced atomically), so a reader sees the old text or the new, never half."""
    if not is_url(location):
        write_text(local_path(location), text)
        return
    fs, path = filesystem(str(location))
    fs.pipe_file(path, text.encode("utf-8"))


def write_remote_json(location: str | Path, obj: Any, sort_keys: bool = True) -> None:
    """Write JSON (indented, like :func:`rlhf.core.artifacts.write_json`) whole: ``summary.json``."""
    write_remote_text(location, json.dumps(obj, indent=2, sort_keys=sort_keys, default=str) + "\n")


# --- step outputs -----------------------------------------------------------------------------------------

def _remote_files(fs, path: str) -> set[str]:
    """The files under ``path``, relative to it."""
    try:
        found = fs.find(path)
    except FileNotFoundError:
        return set()
    return {name[len(path) + 1:] for name in found if name.startswith(path + "/")}


def _sync_files(local_dir: Path, fs, path: str, leave: set[str]) -> None:
    """Upload every file of ``local_dir`` but ``leave`` to ``path`` (file by file: a directory put nests the
    directory on its second run), then remove the files under ``path`` that ``local_dir`` does not have
    (an older version's), ``leave`` excepted."""
    files = {file.relative_to(local_dir).as_posix(): file for file in sorted(local_dir.rglob("*")) if file.is_file()}
    files = {name: file for name, file in files.items() if name not in leave}
    if files:
        fs.put([str(file) for file in files.values()], [f"{path}/{name}" for name in files])
    stale = sorted(_remote_files(fs, path) - files.keys() - leave)
    if stale:
        fs.rm([f"{path}/{name}" for name in stale])


def upload_output(local_dir: str | Path, url: str | Path) -> dict:
    """Copy a finished local step output (its files as its manifest recorded them) to ``url`` and return its
    manifest. Order, so that a reader never takes a half-copied output for a finished one: an existing
    ``manifest.json`` at ``url`` is deleted first, then every other file is uploaded, files an older version
    left there are removed, and ``manifest.json`` is uploaded last. An interrupted upload leaves no manifest:
    run it again. A local ``url`` gets a copy through an atomic rename (nothing when it is ``local_dir``)."""
    local_dir = Path(local_dir)
    manifest, problem = verify_output(local_dir)
    if problem:
        raise StorageError(f"{local_dir} is not a finished step output ({problem}): nothing to upload")
    if not is_url(url):
        dest = local_path(url)
        if dest.resolve() != local_dir.resolve():
            with atomic_dir(dest) as tmp:
                shutil.copytree(local_dir, tmp, dirs_exist_ok=True)
        return manifest
    fs, path = filesystem(str(url))
    marker = f"{path}/{MANIFEST}"
    if fs.exists(marker):
        fs.rm_file(marker)
    _sync_files(local_dir, fs, path, leave={MANIFEST})
    fs.put_file(str(local_dir / MANIFEST), marker)
    log.debug("uploaded %s to %s", local_dir, display(url))
    return manifest


def upload_dir(local_dir: str | Path, url: str | Path) -> None:
    """Make ``url`` hold the files of ``local_dir`` (a report folder): upload them all, remove the others.
    No commit marker: for a step output use :func:`upload_output`."""
    local_dir = Path(local_dir)
    if not is_url(url):
        dest = local_path(url)
        if dest.resolve() != local_dir.resolve():
            with atomic_dir(dest) as tmp:
                shutil.copytree(local_dir, tmp, dirs_exist_ok=True)
        return
    fs, path = filesystem(str(url))
    _sync_files(local_dir, fs, path, leave=set())


def _parse_manifest(raw: bytes, where: str) -> dict | None:
    try:
        manifest = json.loads(raw)
    except ValueError as err:
        log.warning("%s is unreadable (%s): the output counts as unfinished", where, err)
        return None
    return manifest if isinstance(manifest, dict) and "key" in manifest else None


def remote_manifest(url: str | Path) -> dict | None:
    """The manifest of the step output at ``url``; None when it has none (not run, or its upload was
    interrupted: files without a manifest) or an unreadable one. Local: :func:`read_manifest`."""
    if not is_url(url):
        return read_manifest(local_path(url))
    fs, path = filesystem(str(url))
    try:
        raw = fs.cat_file(f"{path}/{MANIFEST}")
    except FileNotFoundError:
        return None
    return _parse_manifest(raw, f"{display(url)}/{MANIFEST}")


def finished(location: str | Path) -> bool:
    """Whether a step output is there, committed by its manifest (:func:`rlhf.record.layout.finished` for a
    local one)."""
    return remote_manifest(location) is not None


def cache_path(key: str, cache_root: str | Path | None = None) -> Path:
    """Where :func:`fetch_output` keeps its local copy of the output whose manifest key is ``key``:
    ``<cache_root>/<key>`` (``cache_root`` defaults to ``<RLHF_CACHE_DIR or ~/.cache/rlhf>/outputs``). The
    wiring may also move an output it has just uploaded there, so this machine never downloads it."""
    root = Path(cache_root) if cache_root is not None else default_cache_dir() / "outputs"
    name = key if re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}", key) else hashlib.sha256(key.encode()).hexdigest()
    return root / name


def fetch_output(url: str | Path, key: str, cache_root: str | Path | None = None) -> Path:
    """A verified local copy of the step output at ``url`` whose manifest key is ``key``, in
    :func:`cache_path`. Downloaded once: a copy already there that still matches its manifest is returned
    without touching the network. A download goes into a temp dir, is checked (its manifest's key, every
    file's size and SHA-256) and only then renamed into place, so the cache never holds a bad copy.

    Raises :class:`StorageError` naming the URL when there is no finished output, it has another key, or
    its files do not match its manifest; network and permission failures come as the filesystem raises them
    (s3fs: ``OSError`` and its subclasses, which the flow retries). A local ``url`` is used where it is
    (checked, not copied)."""
    if not is_url(url):
        path = local_path(url)
        _, problem = verify_output(path, key)
        if problem:
            raise StorageError(f"{path} cannot be used as this step's input: {problem}; rerun the campaign")
        return path
    dest = cache_path(key, cache_root)
    if dest.is_dir():
        if verify_output(dest, key)[0] is not None:
            return dest
        log.warning("the cached copy %s of %s no longer matches its manifest: downloading it again", dest,
                    display(url))
    fs, path = filesystem(str(url))
    try:
        raw = fs.cat_file(f"{path}/{MANIFEST}")
    except FileNotFoundError:
        raise StorageError(f"{display(url)} holds no finished step output (no {MANIFEST}: the step did not run "
                           "there, or its upload was interrupted); rerun the campaign to compute it") from None
    manifest = _parse_manifest(raw, f"{display(url)}/{MANIFEST}")
    if manifest is None:
        raise StorageError(f"{display(url)}/{MANIFEST} is unreadable: delete {display(url)} and rerun the campaign "
                           "to compute the step again")
    if manifest["key"] != key:
        raise StorageError(f"{display(url)} holds another version of this output than the one asked for (its "
                           f"manifest key is {manifest['key'][:16]}..., expected {key[:16]}...): it was recomputed "
                           "with another config, other inputs or other code since; rerun the campaign")
    names = sorted(_remote_files(fs, path) - {MANIFEST})
    downloaded = False
    try:
        with atomic_dir(dest, replace=dest.exists()) as tmp:
            if names:
                targets = [tmp / name for name in names]
                for target in targets:
                    target.parent.mkdir(parents=True, exist_ok=True)
                fs.get([f"{path}/{name}" for name in names], [str(target) for target in targets])
            (tmp / MANIFEST).write_bytes(raw)  # the very bytes: an output's digest is its manifest's
            _, problem = verify_output(tmp, key)
            if problem:
                raise StorageError(f"{display(url)} is damaged: {problem} (or it was being replaced while it "
                                   f"was downloaded); if it stays so, delete {display(url)} and rerun the campaign "
                                   "to compute the step again")
            downloaded = True
    except OSError:
        # replace=False: another process put a copy in place first; use it if it verifies
        if not (downloaded and verify_output(dest, key)[0] is not None):
            raise
    log.debug("fetched %s into %s", display(url), dest)
    return dest


def _moved(value: str, old: str | Path, new: str | Path) -> str:
    """``value`` with its leading ``old`` (a directory, as given or resolved) replaced by ``new``."""
    value, new = str(value), str(new).rstrip("/")
    olds = {str(old).rstrip("/")} | ({str(Path(old).resolve())} if not is_url(old) else set())
    for prefix in sorted(olds, key=len, reverse=True):
        if value == prefix or value.startswith(prefix + "/"):
            return new + value[len(prefix):]
    return value


def fetch_ref(ref: dict, cache_root: str | Path | None = None) -> dict:
    """A step reference (``{"step", "path", "key", "metrics", "files"}``) whose output is remote, made
    local for the step that reads it: the output fetched (:func:`fetch_output`), ``path`` and ``files``
    pointing into the local copy. A local reference is returned as it is."""
    if not is_url(ref["path"]):
        return ref
    local = fetch_output(ref["path"], ref["key"], cache_root)
    return {**ref, "path": str(local),
            "files": {name: _moved(value, ref["path"], local) for name, value in ref.get("files", {}).items()}}


def ref_at(ref: dict, url: str | Path) -> dict:
    """The reference of a step output after :func:`upload_output` put it at ``url``: ``path`` and ``files``
    under ``url`` (what summary.json, the report and the registry should name)."""
    return {**ref, "path": str(url),
            "files": {name: _moved(value, ref["path"], url) for name, value in ref.get("files", {}).items()}}


# --- the campaign's lock ----------------------------------------------------------------------------------

@contextmanager
def campaign_lock(directory: str | Path, lease: float = DEFAULT_LEASE) -> Iterator[Any]:
    """Hold the campaign's lock for the duration; a second holder fails at once with
    :class:`CampaignLocked` naming who holds it (pid, host, since). Local: ``layout.campaign_lock``.
    ``s3://``: a lease object ``<campaign url>/.lock`` (:class:`S3Lease`, yielded), renewed every
    ``lease``/3 seconds and taken over by the next run once ``lease`` seconds pass without renewal.
    ``memory://`` lives in this process only, so an in-process lock is exact for it. Other protocols have
    no conditional write fsspec exposes: refused."""
    if not is_url(directory):
        with layout.campaign_lock(local_path(directory)):
            yield None
        return
    name = protocol(directory)
    if name == "memory":
        with _memory_lock(str(directory)):
            yield None
        return
    if name not in S3_PROTOCOLS:
        raise StorageError(f"{display(directory)}: no campaign lock on {name}:// storage; use s3:// (or a local "
                           "path)")
    held = S3Lease(str(directory), lease)
    held.acquire()
    try:
        yield held
    finally:
        held.release()


_memory_held: dict[str, str] = {}
_memory_guard = threading.Lock()


@contextmanager
def _memory_lock(url: str) -> Iterator[None]:
    """memory:// is a dict in this process: a lock in this process is all it needs (unit tests)."""
    url = url.rstrip("/")
    with _memory_guard:
        if url in _memory_held:
            raise CampaignLocked(_locked_message(url, _memory_held[url]))
        _memory_held[url] = _holder()
    try:
        yield
    finally:
        with _memory_guard:
            _memory_held.pop(url, None)


def _holder() -> str:
    return f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}"


def _locked_message(url: str, holder: str, until: str = "") -> str:
    return (f"campaign {url.rstrip('/').rpartition('/')[2]} ({display(url)}) is being run by {holder}{until}; wait "
            "for it to finish (or stop it), then rerun: finished steps will be cached")


def _conflict(err) -> bool:
    """A conditional write lost: 412 (the condition failed) or 409 (S3: a concurrent conditional write)."""
    code = str(err.response.get("Error", {}).get("Code", ""))
    return code in ("PreconditionFailed", "ConditionalRequestConflict", "412", "409")


def _missing(err) -> bool:
    return str(err.response.get("Error", {}).get("Code", "")) in ("NoSuchKey", "404")


class S3Lease:
    """The campaign's lock on S3: the object ``<campaign url>/.lock`` holding JSON ``{"holder", "pid",
    "host", "since", "lease", "token", "writes", "written"}``.

    Taken with ``put_object(IfNoneMatch="*")`` (only one creator wins). Renewed by a daemon thread every
    ``lease``/3 seconds with ``put_object(IfMatch=<our etag>)``, so a renewal never overwrites a lock that
    another run took over. A lock not renewed for its ``lease`` seconds belonged to a holder that died (a
    killed process never releases anything) and is taken over with ``IfMatch=<its etag>``: of two runs
    taking over the same stale lock, one wins the compare-and-swap, the other sees the winner's live lock.
    Its age is measured on the server's clock (the ``Date`` of our read minus the object's
    ``Last-Modified``, both whole seconds), so machines' clocks need not agree; a lease must be a few
    seconds at least. Released by deleting it only if it is still ours (``IfMatch``).
    """

    def __init__(self, url: str, lease: float = DEFAULT_LEASE) -> None:
        if lease <= 0:
            raise ValueError(f"lease must be positive (seconds), not {lease}")
        self.url = str(url).rstrip("/")
        self.bucket, prefix = s3_bucket_key(self.url)
        self.key = f"{prefix}/{LOCK_NAME}".lstrip("/")
        self.lease = float(lease)
        self.token = uuid.uuid4().hex
        self.holder = _holder()
        self.etag: str | None = None
        self._writes = 0
        self.lost = threading.Event()  # set when a renewal found the lock taken over
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._client = _s3_client()

    def _body(self) -> bytes:
        """The lock object's content; ``writes`` makes every write's ETag new, so a compare-and-swap on an
        ETag read before a renewal fails after it."""
        self._writes += 1
        return json.dumps({"holder": self.holder, "pid": os.getpid(), "host": socket.gethostname(),
                           "since": self.holder.rpartition(" since ")[2], "lease": self.lease,
                           "token": self.token, "writes": self._writes,
                           "written": time.strftime("%Y-%m-%d %H:%M:%S")}).encode()

    def _put(self, **condition: str) -> str:
        return self._client.put_object(Bucket=self.bucket, Key=self.key, Body=self._body(),
                                       ContentType="application/json", **condition)["ETag"]

    def read(self) -> tuple[dict, str, float] | None:
        """``(body, etag, age in seconds on the server's clock)`` of the lock object; None when there is none.
        An unreadable body counts as a holder with this lease."""
        from botocore.exceptions import ClientError

        try:
            response = self._client.get_object(Bucket=self.bucket, Key=self.key)
        except ClientError as err:
            if _missing(err):
                return None
            raise
        raw = response["Body"].read()
        try:
            body = json.loads(raw)
            if not isinstance(body, dict):
                raise ValueError("not an object")
        except ValueError:
            body = {"holder": f"an unknown holder (unreadable lock object: {raw[:80]!r})"}
        date = response["ResponseMetadata"].get("HTTPHeaders", {}).get("date")
        now = parsedate_to_datetime(date).timestamp() if date else time.time()
        return body, response["ETag"], now - response["LastModified"].timestamp()

    def acquire(self) -> None:
        """Take the lock, or raise :class:`CampaignLocked` naming its live holder."""
        from botocore.exceptions import ClientError

        for _ in range(5):
            try:
                self.etag = self._put(IfNoneMatch="*")
                break
            except ClientError as err:
                if not _conflict(err):
                    raise
            current = self.read()
            if current is None:  # released in between: try again
                continue
            body, etag, age = current
            if body.get("token") == self.token:  # our create went through, its answer was lost
                self.etag = etag
                break
            lease = float(body.get("lease", self.lease))
            if age <= lease:
                raise CampaignLocked(_locked_message(
                    self.url, str(body.get("holder", "another run")),
                    f" (its lease, renewed {age:.0f} s ago, runs for {lease:.0f} s)"))
            log.warning("%s: the lock of %s was not renewed for %.0f s (lease %.0f s): that run died; taking it "
                        "over", display(self.url), body.get("holder", "an unknown holder"), age, lease)
            try:
                self.etag = self._put(IfMatch=etag)
                break
            except ClientError as err:
                if not (_conflict(err) or _missing(err)):
                    raise
                # another run took it over (or released it) first: look again
        else:
            raise CampaignLocked(_locked_message(self.url, "other runs starting at the same time"))
        self._thread = threading.Thread(target=self._renew_loop, name=f"lease {self.key}", daemon=True)
        self._thread.start()

    def _renew_loop(self) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        while not self._stop.wait(self.lease / 3):
            try:
                self.etag = self._put(IfMatch=self.etag)
            except ClientError as err:
                if _conflict(err) or _missing(err):
                    try:
                        current = self.read()
                    except (BotoCoreError, ClientError):
                        current = None
                    by = current[0].get("holder", "another run") if current else "nobody (it is gone)"
                    log.error("%s: the campaign's lock was taken over by %s while this run held it (it could not "
                              "renew it for %.0f s): two runs may now write the same campaign", display(self.url),
                              by, self.lease)
                    self.lost.set()
                    return
                log.warning("%s: renewing the campaign's lock failed (%s); trying again", display(self.url), err)
            except BotoCoreError as err:
                log.warning("%s: renewing the campaign's lock failed (%s); trying again", display(self.url), err)

    def release(self) -> None:
        """Stop renewing and delete the lock object, if it is still ours."""
        from botocore.exceptions import ClientError

        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.lost.is_set() or self.etag is None:
            return
        try:
            self._client.delete_object(Bucket=self.bucket, Key=self.key, IfMatch=self.etag)
        except ClientError as err:
            if _conflict(err) or _missing(err):
                log.warning("%s: the campaign's lock was no longer this run's; left in place", display(self.url))
                return
            # a store without conditional deletes: delete it after checking it is ours (a small race)
            current = self.read()
            if current is not None and current[0].get("token") == self.token:
                self._client.delete_object(Bucket=self.bucket, Key=self.key)


# --- a campaign's places: where its steps write, and what this machine keeps of them ---------------------

def campaign_location(cfg) -> str | Path:
    """Where the campaign lives: ``<campaign.root>/<campaign.name>`` as a URL on object storage, else its
    folder (:func:`rlhf.record.layout.campaign_dir`)."""
    if is_url(cfg.campaign.root):
        return join(cfg.campaign.root, cfg.campaign.name)
    return layout.campaign_dir(cfg)


def iteration_location(cfg, iteration: int) -> str | Path:
    """Where iteration ``iteration``'s steps write their outputs (a step's ``here``)."""
    if is_url(cfg.campaign.root):
        return join(campaign_location(cfg), f"{layout.ITERATION_PREFIX}{iteration}")
    return layout.iteration_dir(cfg, iteration)


def staging(location: str | Path) -> Path:
    """Where what belongs at ``location`` is written on this machine before it is uploaded: the working copy
    (:func:`rlhf.record.layout.working_copy`) of a URL, the folder itself otherwise."""
    return layout.working_copy(str(location)) if is_url(location) else local_path(location)


def _link(source: str, target: str) -> None:
    try:
        os.link(source, target)  # the same bytes twice at no cost; outputs are never edited in place
    except OSError:
        shutil.copy2(source, target)


def link_tree(source: Path, target: Path) -> None:
    """``target`` becomes a copy of the finished output ``source`` (hard links where the file system allows),
    through an atomic rename."""
    with atomic_dir(target, replace=True) as tmp:
        shutil.copytree(source, tmp, dirs_exist_ok=True, copy_function=_link)


def publish_output(out_dir: Path, url: str) -> None:
    """Upload a step output staged in the working copy (manifest last), and keep it in this machine's fetch
    cache too (:func:`cache_path`), so the steps after it here never download it."""
    manifest = upload_output(out_dir, url)
    cached = cache_path(manifest["key"])
    if verify_output(cached, manifest["key"])[0] is None:
        try:
            link_tree(out_dir, cached)
        except OSError as err:  # a cache we cannot write only costs a download later
            log.warning("could not keep %s in the cache %s (%s); it will be downloaded when read", out_dir,
                        cached, err)


def stage_finished(url: str) -> None:
    """Put the output finished at ``url`` into its place in the working copy when that holds another
    version or none, so the step finds it cached instead of computing it again (another machine ran it, or
    this one lost its copy)."""
    manifest = remote_manifest(url)
    target = staging(url)
    if manifest is None or read_manifest(target) == manifest:
        return
    link_tree(fetch_output(url, manifest["key"]), target)


def publish_files(local_dir: Path, location: str | Path, names: list[str]) -> None:
    """The campaign's own files (``config.yaml``, ``summary.json``) from its working copy to object storage;
    nothing for a local campaign. Each is one put: a reader sees the old file or the new one."""
    if not is_url(location):
        return
    for name in names:
        if (local_dir / name).is_file():
            write_remote_text(join(location, name), (local_dir / name).read_text())


def pull_files(location: str | Path, local_dir: Path, names: list[str]) -> None:
    """The campaign's own files from object storage into a working copy that has none (a new machine, a
    worker): ``rlhf resume`` and the next-iteration flow read them there."""
    if not is_url(location):
        return
    for name in names:
        if not (local_dir / name).exists() and exists(join(location, name)):
            local_dir.mkdir(parents=True, exist_ok=True)
            (local_dir / name).write_text(read_remote_text(join(location, name)))
