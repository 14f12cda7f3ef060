"""Files the user names with ``-o``: written whole or not at all.

A report or an allowed-signers file cut short by a full disk would look like a shorter
one. So the text goes to a new file beside the destination, is flushed to disk, and only
then takes the destination's name. A failure leaves the destination as it was (absent, or
its previous content) and no temporary file. A device or a pipe (``-o /dev/stdout``) is
written as it is.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from ledger import errors


def write(path: Path, text: str, what: str) -> Path:
    """Write ``text`` (UTF-8) to ``path``, atomically for a regular file (through a
    symbolic link to its target). ``what`` names the content in errors ("the report").

    :class:`StorageError` when there is no room (a full disk, a quota, a file size limit),
    :class:`InputError` for a path that cannot be written (a missing directory, no
    permission, a read-only file system): the destination is the user's own argument, to
    be fixed as any other input (README's exit codes say so)."""
    data = text.encode("utf-8")
    try:
        if path.exists() and not path.is_file():
            with path.open("wb") as fh:  # a device or a pipe: as it is
                fh.write(data)
            return path
        replace(path.resolve() if path.is_symlink() else path, data, 0o666)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        if errors.no_room(exc):
            raise errors.StorageError(
                f"cannot write {what} to {path}: {reason}; {path} was left as it was.",
                hint="Free disk space (or raise the quota or file size limit), then run the "
                "command again.",
            ) from None
        raise errors.InputError(
            f"cannot write {what} to {path}: {reason}.",
            hint="Check that the directory exists and is writable.",
        ) from None
    return path


def replace(path: Path, data: bytes, mode: int) -> None:
    """Give ``path`` the content ``data`` atomically and durably: a new file beside it
    (created with ``mode``, less the umask), written, flushed to disk, then renamed over
    ``path``; on failure the new file is removed and ``path`` is as it was. ``OSError``
    as raised (the caller says what failed). Files in a ledger's repository have their own
    (:func:`ledger.store.gitdir.replace_file`), and so has the verifier's private state
    (:func:`ledger.verify.local.write_private`: the verifier imports nothing of this side)."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
