"""Ending the process without the interpreter's teardown.

At exit the interpreter deallocates every object it still holds and the libraries it
loaded clean up after themselves: about a tenth of a second after a verification, paid by
every ``ledger`` command and every hook run, and changing nothing on disk. :func:`end` runs
what exit runs that matters (the exit handlers, multiprocessing's clean-up among them; the
flush of the standard streams, where a failure other than a reader that stopped reading
ends a successful command with the storage error's status, 6, where the interpreter would
end it with 120), then ends the process. Every file the commands write is closed, and every
record fsynced, before they return. While a thread that exit would wait for is still
running (a ledger's pack upkeep), it leaves the exit to the interpreter, which waits for it.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import sys
import threading
from typing import NoReturn

from ledger import errors


def exit_code(code: object) -> int:
    """The process's exit status for ``SystemExit(code)``, as the interpreter makes it
    (None is 0; a text is printed on standard error and is 1)."""
    if isinstance(code, int):
        return code
    if code is not None:
        print(code, file=sys.stderr)
    return 0 if code is None else 1


def end(code: int) -> NoReturn:
    """End the process with ``code`` (see the module's docstring)."""
    others = [t for t in threading.enumerate() if t is not threading.main_thread()]
    if any(t.is_alive() and not t.daemon for t in others):
        sys.exit(code)
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (BrokenPipeError, ValueError):
            pass  # a reader that stopped reading, or a closed stream: nothing is left to say
        except OSError as exc:  # (a full disk): not a success (the interpreter ends with 120)
            if stream is sys.stdout and code == 0:
                code = errors.StorageError.exit_code
                with contextlib.suppress(OSError, ValueError):
                    sys.stderr.write(
                        f"ledger: storage error: the output could not be written "
                        f"({exc.strerror or exc}). Check free disk space, then run the "
                        "command again.\n"
                    )
                    sys.stderr.flush()
    os._exit(code)
