"""Writing a file so that a reader (or a resumed run after a kill) never sees half of it.

The one way the project writes its result, state and config files: the bytes go to a temporary
file beside the target (same folder, hence same file system), are flushed and fsynced, and the
temporary file is renamed over the target with ``os.replace`` (atomic on POSIX); then the
folder is fsynced so that the rename itself survives a crash. A failure removes the temporary
file and leaves the previous target untouched. Temporary names are unique per call
(``.<name>.<random>.tmp``), so concurrent writers of one target never share one; the file gets
the permissions an ordinary ``open(path, "w")`` would (0666 less the umask).

Standard library only: any layer may use it.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def atomic_write_bytes(path: str | Path, data: bytes, *, fsync: bool = True) -> Path:
    """Replace ``path`` with ``data`` in one step (parent folders created); returns the path.

    ``fsync=False`` skips the two fsyncs (file and folder): still atomic for readers, but a
    power loss may leave the old contents or an empty file; for scratch output only."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            break
        except FileExistsError:  # another writer drew the same name: draw again
            continue
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            if fsync:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if fsync:
        fsync_dir(path.parent)
    return path


def atomic_write_text(
    path: str | Path, text: str, *, encoding: str = "utf-8", fsync: bool = True
) -> Path:
    """`atomic_write_bytes` of ``text`` encoded (UTF-8 unless ``encoding`` says otherwise)."""
    return atomic_write_bytes(path, text.encode(encoding), fsync=fsync)


def atomic_write(path: str | Path, data: str | bytes, *, fsync: bool = True) -> Path:
    """`atomic_write_text` for a ``str``, `atomic_write_bytes` for ``bytes``."""
    if isinstance(data, str):
        return atomic_write_text(path, data, fsync=fsync)
    return atomic_write_bytes(path, data, fsync=fsync)


def fsync_dir(path: str | Path) -> None:
    """Flush a folder's entries (a rename into it) to disk; a no-op where folders cannot be
    opened for that (some file systems, other platforms)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
