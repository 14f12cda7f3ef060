"""Waiting for an event in tests: woken by the event itself, never by a fixed sleep."""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import time
from collections.abc import Callable, Iterable
from pathlib import Path

_IN_EVENTS = 0x2 | 0x4 | 0x8 | 0x40 | 0x80 | 0x100 | 0x200 | 0x400
"""inotify: modify, attrib, close-write, moved-from, moved-to, create, delete, delete-self."""


def wait_for(
    condition: Callable[[], bool],
    what: str,
    *,
    files: Iterable[os.PathLike[str] | str] = (),
    pids: Iterable[int] = (),
    timeout: float = 30.0,
) -> None:
    """Wait until ``condition()`` holds, woken by the events that can change it: a change in
    the directory of each of ``files`` (inotify; a ledger's ``refs/heads`` changes at every
    append) or the exit of one of ``pids`` (pidfd). No fixed sleeps; ``timeout`` only bounds
    a wait that would otherwise hang the suite."""
    libc = ctypes.CDLL(None, use_errno=True)
    watched = [Path(f) for f in files]
    if not watched and not list(pids):
        raise ValueError("wait_for needs something to watch")
    fds: list[int] = []
    inotify = -1
    try:
        if watched:
            inotify = libc.inotify_init1(os.O_CLOEXEC | os.O_NONBLOCK)
            if inotify < 0:
                raise OSError(ctypes.get_errno(), "inotify_init1")
            fds.append(inotify)
            for path in watched:
                directory = path if path.is_dir() else path.parent
                if libc.inotify_add_watch(inotify, os.fsencode(directory), _IN_EVENTS) < 0:
                    raise OSError(ctypes.get_errno(), f"inotify_add_watch {directory}")
        for pid in pids:
            try:
                fds.append(os.pidfd_open(pid))
            except ProcessLookupError:
                continue  # already gone: the condition says whether that is what we wait for
        deadline = time.monotonic() + timeout
        while not condition():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"timed out after {timeout} s waiting for {what}")
            ready, _, _ = select.select(fds, [], [], remaining)
            if inotify in ready:
                with contextlib.suppress(BlockingIOError):
                    while os.read(inotify, 65536):
                        pass
            exited = [fd for fd in ready if fd != inotify]
            if exited and not condition():
                # A watched process exited and the condition still fails: stop watching it.
                for fd in exited:
                    fds.remove(fd)
                    os.close(fd)
                if not fds:
                    raise AssertionError(f"{what}: every watched process exited first")
    finally:
        for fd in fds:
            os.close(fd)
