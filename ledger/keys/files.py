"""Key files on disk: reading one (bounded, regular files only), creating new ones with a
fixed mode and never overwriting, the mode warning, whether a key file is encrypted, and the
comment of the ``.pub`` file next to a private key.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Final

from ledger import errors
from ledger.keys import blobs, keyformat

_MAX_KEY_FILE: Final = 1 << 20
_MAX_PUB_FILE: Final = 1 << 16


def read_key_file(path: Path) -> bytes:
    try:
        mode = path.stat().st_mode
        if not stat.S_ISREG(mode) and not stat.S_ISDIR(mode):
            raise errors.KeyProblem(f"key file {path} is not a regular file.", hint=blobs.KEY_HINT)
        with path.open("rb") as handle:
            data = handle.read(_MAX_KEY_FILE + 1)
    except FileNotFoundError:
        raise errors.KeyProblem(f"key file {path} does not exist.", hint=blobs.KEY_HINT) from None
    except IsADirectoryError:
        raise errors.KeyProblem(
            f"key file {path} is a directory, not a key file.", hint=blobs.KEY_HINT
        ) from None
    except PermissionError:
        raise errors.KeyProblem(
            f"key file {path} cannot be read: permission denied.",
            hint="Run as the key's owner, or fix the file's permissions (chmod 600).",
        ) from None
    except OSError as exc:
        raise errors.KeyProblem(
            f"key file {path} cannot be read: {exc.strerror or exc}.", hint=blobs.KEY_HINT
        ) from None
    if len(data) > _MAX_KEY_FILE:
        raise errors.KeyProblem(
            f"{path} is too large to be a private key file.", hint=blobs.KEY_HINT
        )
    return data


def write_new_file(path: Path, content: bytes, mode: int) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags, mode)
    except FileExistsError:
        raise errors.FileExists(
            f"{path} already exists; a key file is never overwritten.",
            hint="Choose another path, or move the old key away first.",
        ) from None
    except FileNotFoundError:
        raise errors.KeyProblem(
            f"cannot create key file {path}: its directory does not exist.",
            hint="Create the directory first, or choose another path.",
        ) from None
    except OSError as exc:
        raise errors.KeyProblem(
            f"cannot create key file {path}: {exc.strerror or exc}.",
            hint="Choose a path in a directory you can write to.",
        ) from None
    try:
        try:
            os.fchmod(fd, mode)
            view = memoryview(content)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        path.unlink(missing_ok=True)
        raise errors.KeyProblem(
            f"cannot write key file {path}: {exc.strerror or exc}.",
            hint="Check free space and permissions, then try again.",
        ) from None


def fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems cannot fsync a directory; the files themselves are synced
    finally:
        os.close(fd)


def key_is_encrypted(path: Path | str) -> bool:
    """Whether the private key file at ``path`` needs a passphrase. KeyProblem as load."""
    path = Path(path).expanduser()
    return keyformat.is_encrypted(read_key_file(path), str(path))


def pub_file_comment(path: Path, public_line: str) -> str:
    """The comment of ``PATH.pub`` if that file holds the key ``public_line``
    (``<type> <base64>``); else the empty string. Never raises.

    An encrypted private key file's own comment is in its encrypted part, which the library
    that decrypts it does not give back; OpenSSH keeps the same comment in the ``.pub`` file.
    """
    pub_path = path.with_name(path.name + ".pub")
    try:
        if not pub_path.is_file():  # also refuses a FIFO, which would block
            return ""
        with pub_path.open("rb") as handle:
            first = handle.read(_MAX_PUB_FILE).decode("utf-8", "replace").split("\n", 1)[0]
    except OSError:
        return ""
    fields = first.strip().split(None, 2)
    if len(fields) < 3 or " ".join(fields[:2]) != public_line:
        return ""
    return fields[2].strip()


def key_file_mode_problem(path: Path | str) -> str | None:
    """A warning if the private key file can be read or written by group or others.

    None when the mode is fine or the file cannot be inspected (loading reports that).
    """
    path = Path(path).expanduser()
    try:
        st = path.stat()
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        return (
            f"private key file {path} is accessible by group or others (mode {mode:04o}); "
            f"anyone who can read it can sign as you. Run `chmod 600 {path}`."
        )
    return None
