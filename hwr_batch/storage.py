"""Paths that may be local or fsspec URLs: list inputs, read them, write outputs atomically.

A batch on one machine uses plain paths; a batch on a cluster may name its inputs and output
folder as URLs (``file:///shared/scans``, ``s3://bucket/scans``, ``gs://...``) so that workers
on other machines resolve them themselves. Plain paths never import fsspec (it comes with the
``[dask]`` extra); a URL does, and ``s3://``/``gs://`` need their backend (s3fs, gcsfs).

Atomic writes: a local file is written to a temporary name in its own folder and renamed over
the target (``os.replace``), so a reader never sees half a file. Object stores have no rename,
but a single PUT is atomic by itself: the object appears whole when the upload completes or not
at all, so URLs on those backends are written in one ``pipe_file`` call. Other fsspec
filesystems with a real rename (sftp, local-like mounts) get the temporary-name-then-move dance.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path, PurePosixPath
from typing import IO, Any

from hwr_batch.errors import BadArguments, UnreadableInput

#: ``scheme://`` at the start of a string; a Windows drive ("C:\\") is one letter and no "//".
_URL_RE = re.compile(r"^(?P<scheme>[a-zA-Z][a-zA-Z0-9+.\-]+)://")
#: Protocols whose single PUT is atomic and which have no cheap rename.
_OBJECT_STORES = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl", "oss"})


def is_url(path: str | os.PathLike[str]) -> bool:
    """True for ``scheme://...`` strings (fsspec URLs), False for plain local paths."""
    return isinstance(path, str) and _URL_RE.match(path) is not None


def protocol(path: str | os.PathLike[str]) -> str:
    """The URL scheme ("s3", "file", ...), or "file" for a plain path."""
    if isinstance(path, str):
        m = _URL_RE.match(path)
        if m:
            return m.group("scheme").lower()
    return "file"


def to_local(path: str | os.PathLike[str]) -> Path | None:
    """The local path behind a plain path or a ``file://`` URL; None for remote URLs."""
    if not is_url(path):
        return Path(path)
    if protocol(path) in ("file", "local"):
        s = str(path).split("://", 1)[1]
        return Path(s)
    return None


def _fs(url: str) -> tuple[Any, str]:
    """(fsspec filesystem, path within it) for a URL, with a one-line error when unavailable."""
    try:
        import fsspec
    except ImportError as exc:
        raise BadArguments(
            f"{url}: URLs need fsspec; install the extra: pip install 'hwr-batch[dask]'"
        ) from exc
    try:
        fs, fs_path = fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as exc:
        # fsspec raises ImportError naming the missing backend (s3fs, gcsfs).
        raise BadArguments(f"{url}: {exc}".splitlines()[0]) from exc
    return fs, fs_path


def join(base: str | os.PathLike[str], *parts: str) -> str:
    """Join path parts with "/" for URLs and the OS separator for plain paths."""
    if is_url(base):
        out = str(base).rstrip("/")
        for p in parts:
            out = f"{out}/{p.strip('/')}"
        return out
    return str(Path(base, *parts))


def relative_to(path: str, root: str) -> PurePosixPath:
    """``path`` relative to ``root`` (both plain paths or both URLs), with "/" separators.

    For a root that is itself a file, the relative path is the file's name.
    """
    if is_url(path) or is_url(root):
        p = str(path).split("://", 1)[-1]
        r = str(root).split("://", 1)[-1].rstrip("/")
        if p == r:
            return PurePosixPath(PurePosixPath(p).name)
        if not p.startswith(r + "/"):
            raise ValueError(f"{path} is not under {root}")
        return PurePosixPath(p[len(r) + 1 :])
    pp, rp = Path(path), Path(root)
    if pp == rp:
        return PurePosixPath(pp.name)
    return PurePosixPath(pp.relative_to(rp).as_posix())


def is_dir(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` (plain or URL) is a folder / prefix."""
    local = to_local(path)
    if local is not None:
        return local.is_dir()
    fs, fs_path = _fs(str(path))
    return bool(fs.isdir(fs_path))


def exists(path: str | os.PathLike[str]) -> bool:
    """True when a file (plain or URL) exists."""
    local = to_local(path)
    if local is not None:
        return local.exists()
    fs, fs_path = _fs(str(path))
    return bool(fs.exists(fs_path))


def list_files(root: str | os.PathLike[str], extensions: Iterable[str] | None = None) -> list[str]:
    """Files under ``root`` (recursive), sorted; ``root`` itself if it is a file.

    ``extensions`` (lower-case, with the dot: ".png") filters by suffix, case-insensitively.
    Hidden files and folders (name starting with ".") are skipped: they are editor and
    sync-tool debris, and our own temporary files start with "." too. Returns strings of the
    same kind as ``root``: plain paths for a plain root, URLs for a URL root.
    """
    exts = None if extensions is None else {e.lower() for e in extensions}

    def wanted(name: str) -> bool:
        return exts is None or PurePosixPath(name).suffix.lower() in exts

    local = to_local(root)
    if local is not None and not is_url(root):
        if local.is_file():
            return [str(local)]
        found = [
            str(p)
            for p in local.rglob("*")
            if p.is_file()
            and not any(part.startswith(".") for part in p.relative_to(local).parts)
            and wanted(p.name)
        ]
        return sorted(found)
    url = str(root)
    fs, fs_path = _fs(url)
    if fs.isfile(fs_path):
        return [url]
    base = fs_path.rstrip("/")
    out = []
    for f in fs.find(base):
        rel = f[len(base) :].lstrip("/")
        if any(part.startswith(".") for part in rel.split("/")) or not wanted(f):
            continue
        out.append(f"{url.rstrip('/')}/{rel}")
    return sorted(out)


@contextlib.contextmanager
def open_read(path: str | os.PathLike[str]) -> Iterator[IO[bytes]]:
    """Open a plain path or URL for binary reading; a missing file raises UnreadableInput."""
    local = to_local(path)
    try:
        if local is not None:
            fh: IO[bytes] = local.open("rb")
        else:
            fs, fs_path = _fs(str(path))
            fh = fs.open(fs_path, "rb")
    except FileNotFoundError as exc:
        raise UnreadableInput(f"{path}: file not found") from exc
    with fh:
        yield fh


def read_bytes(path: str | os.PathLike[str]) -> bytes:
    """The whole content of a plain path or URL."""
    with open_read(path) as fh:
        return fh.read()


@contextlib.contextmanager
def local_copy(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A local file with the content of ``path``, for readers that need a real file name.

    Plain paths and ``file://`` URLs are yielded as they are (no copy). Remote URLs are
    downloaded into a temporary file that keeps the original suffix (the loader picks the
    decoder by it) and is removed afterwards.
    """
    local = to_local(path)
    if local is not None:
        yield local
        return
    suffix = PurePosixPath(str(path)).suffix
    fd, tmp = tempfile.mkstemp(prefix="hwr-", suffix=suffix)
    try:
        with os.fdopen(fd, "wb") as out, open_read(path) as src:
            while chunk := src.read(1 << 20):
                out.write(chunk)
        yield Path(tmp)
    finally:
        with contextlib.suppress(FileNotFoundError):
            Path(tmp).unlink()


def makedirs(path: str | os.PathLike[str]) -> None:
    """Create a folder (and parents) if it is missing; a no-op on object stores."""
    local = to_local(path)
    if local is not None:
        local.mkdir(parents=True, exist_ok=True)
        return
    fs, fs_path = _fs(str(path))
    fs.makedirs(fs_path, exist_ok=True)


def write_atomic(path: str | os.PathLike[str], data: bytes | str) -> None:
    """Write ``data`` to ``path`` so that readers see the old file, or the whole new one.

    ``str`` is written as UTF-8. Parent folders are created.
    """
    payload = data.encode("utf-8") if isinstance(data, str) else data
    local = to_local(path)
    if local is not None:
        local.parent.mkdir(parents=True, exist_ok=True)
        # The temporary file lives in the target's folder so the rename never crosses devices;
        # its leading dot keeps it out of list_files if a run dies before the rename.
        fd, tmp = tempfile.mkstemp(prefix=f".{local.name}.", suffix=".tmp", dir=local.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(payload)
                fh.flush()
                os.fsync(fh.fileno())
            Path(tmp).replace(local)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                Path(tmp).unlink()
            raise
        return
    url = str(path)
    fs, fs_path = _fs(url)
    if protocol(url) in _OBJECT_STORES:
        fs.pipe_file(fs_path, payload)
        return
    parent, _, name = fs_path.rpartition("/")
    fs.makedirs(parent, exist_ok=True)
    tmp_path = f"{parent}/.{name}.{os.getpid()}.tmp"
    try:
        fs.pipe_file(tmp_path, payload)
        fs.mv(tmp_path, fs_path)
    except BaseException:
        with contextlib.suppress(Exception):
            fs.rm(tmp_path)
        raise
