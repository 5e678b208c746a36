"""All-or-nothing file output: every file is staged beside its target, then renamed into place.

A failure while encoding or writing removes the staged files, so an earlier export in the same
folder survives intact and no partial file is ever visible under its final name; a full or
read-only disk is reported as ``threedgen/utils/atomic.py``'s one-line ``DiskError``.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..utils.atomic import disk_error, new_staged_file


def check_writable(folder: Path) -> None:
    """Raise ValueError (creating nothing) unless ``folder`` exists writable or could be created."""
    p = Path(folder).resolve()
    while not p.exists():
        p = p.parent
    if not p.is_dir() or not os.access(p, os.W_OK):
        raise ValueError(
            f"export folder {str(folder)!r} is not writable ({p} is not a writable folder); "
            "pass a run folder you own or fix its permissions"
        )


def write_files(folder: Path, files: dict[str, bytes]) -> list[Path]:
    """Write ``{name: bytes}`` into ``folder``: stage all, then rename all; returns the final paths."""
    folder = Path(folder)
    check_writable(folder)
    folder.mkdir(parents=True, exist_ok=True)
    staged: list[tuple[str, Path]] = []
    try:
        for name, data in files.items():
            fd, tmp = new_staged_file(folder / name)
            staged.append((tmp, folder / name))
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        for tmp, final in staged:
            os.replace(tmp, final)
    except BaseException as e:
        for tmp, _ in staged:
            if os.path.exists(tmp):
                os.remove(tmp)
        err = disk_error(e, staged[-1][1]) if staged and isinstance(e, Exception) else None
        if err is not None:
            raise err from e
        raise
    return [final for _, final in staged]
