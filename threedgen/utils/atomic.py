"""Files replaced all at once: written to a staged name beside the target, renamed into place.

A write that fails half-way (a full or read-only disk, a quota, a crash in the encoder) removes
its staged file, so the previous file under the final name survives intact and no partial file is
ever visible there. Disk failures become a ``DiskError`` whose one-line message names the file, the
filesystem it is on and that filesystem's free space: torch's zip writer reports a full disk as
"unexpected pos 704 vs 598", which tells nobody what to do.
"""

from __future__ import annotations

import errno
import os
import shutil
import secrets
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG}
NEARLY_FULL = 1 << 20  # free bytes below which any failed write is reported as a full disk


class DiskError(OSError):
    """A write failed because of the disk; ``str()`` is one line a person can act on."""

    def __str__(self) -> str:
        return self.strerror or super().__str__()


def mount_point(path: Path) -> Path:
    p = Path(path).resolve()
    while not p.exists():
        p = p.parent
    while not os.path.ismount(p):
        p = p.parent
    return p


def describe_disk(path: Path) -> str:
    """'the filesystem mounted at /data (12.0 MB free of 1.0 GB)'."""
    mount = mount_point(path)
    usage = shutil.disk_usage(mount)
    return f"the filesystem mounted at {mount} ({_size(usage.free)} free of {_size(usage.total)})"


def _size(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"  # pragma: no cover


def disk_cause(exc: BaseException, folder: Path) -> int | None:
    """The errno of the disk failure behind ``exc`` (searched along its cause/context chain), or
    ENOSPC when the filesystem is all but full, or None when the disk is not to blame."""
    seen = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in DISK_ERRNOS:
            return e.errno
        e = e.__cause__ or e.__context__
    try:
        if shutil.disk_usage(mount_point(folder)).free < NEARLY_FULL:
            return errno.ENOSPC
    except OSError:  # pragma: no cover - the folder vanished
        pass
    return None


def disk_error(exc: BaseException, final: Path) -> DiskError | None:
    code = disk_cause(exc, final.parent)
    if code is None:
        return None
    what = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded",
            errno.EROFS: "the disk is read-only", errno.EFBIG: "the file is too large for the disk"}[code]
    return DiskError(code, f"could not write {final}: {what} ({describe_disk(final.parent)}); the previous "
                           f"{final.name} is unchanged; free space there or write elsewhere (output_dir=...)")


def new_staged_file(final: Path) -> tuple[int, Path]:
    """(open descriptor, path) of a new empty file beside ``final``, to be renamed onto it when written.

    It gets the permissions a plain ``open(final, "w")`` would (0o666 less the umask, so 0o644
    usually). ``tempfile.mkstemp`` makes 0o600 files, and after the rename the run's exports,
    ``metrics.csv`` and ``progress.json`` could not be read by another user or a web server."""
    final = Path(final)
    for _ in range(100):
        tmp = final.parent / f".{final.name}.{secrets.token_hex(4)}.tmp"
        try:
            return os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666), tmp
        except FileExistsError:  # pragma: no cover - 32 random bits taken 100 times
            continue
    raise FileExistsError(f"could not create a staged file beside {final}")  # pragma: no cover


@contextmanager
def staged_path(final: Path) -> Iterator[Path]:
    """Yield a staged path beside ``final`` to write; on success it is synced and renamed to ``final``,
    on any failure it is removed (and a disk failure re-raised as ``DiskError``)."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = new_staged_file(final)
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, final)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        err = disk_error(e, final) if isinstance(e, Exception) else None
        if err is not None:
            raise err from e
        raise


def write_bytes(final: Path, data: bytes) -> Path:
    with staged_path(final) as tmp:
        tmp.write_bytes(data)
    return Path(final)


def save_torch(obj, final: Path) -> Path:
    """``torch.save`` with the all-or-nothing rename."""
    import torch

    with staged_path(final) as tmp:
        torch.save(obj, tmp)
    return Path(final)
