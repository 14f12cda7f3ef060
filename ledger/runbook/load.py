"""Loading a runbook: :func:`load_runbook` (a file) and :func:`parse_runbook` (its bytes).

A runbook is a YAML file (see ``docs/RUNBOOKS.md``). :func:`load_runbook` reads one and
returns a validated :class:`~ledger.runbook.model.Runbook`; every problem found is reported
at once, each as ``file:line:column: field.path: message``, in a
:class:`~ledger.runbook.problems.RunbookInvalid` error.

Loading runs three passes: the defensive YAML composer (:mod:`ledger.runbook.yamlsrc`), the
JSON Schema shipped in ``ledger/schema/runbook.schema.json`` (:mod:`ledger.runbook.schema`),
and the rules the schema cannot express (:mod:`ledger.runbook.check`: unique step names,
typed defaults, templates that parse and only read parameters that exist and steps that ran
before).

The module reads the runbook file; it does nothing else with the outside world.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path

from ledger import errors
from ledger.runbook import check, model, schema, yamlsrc
from ledger.runbook import problems as runbook_problems


def parse_runbook(text: bytes, source: str, *, path: Path | None = None) -> model.Runbook:
    """Parse and validate a runbook from its exact bytes.

    ``source`` names the runbook in messages (usually its path). Raises
    :class:`RunbookInvalid` (a :class:`RunbookError`) listing every problem found.
    """
    decoded = yamlsrc.decode(text, source)
    with _collector_paused():
        data, locs = yamlsrc.compose(decoded, source)
        where = runbook_problems.Locator(source, locs)
        bad_paths: list[runbook_problems.FieldPath] = []
        problems = schema.schema_problems(data, where, bad_paths)
        if not isinstance(data, dict) or () in bad_paths:
            raise runbook_problems.RunbookInvalid(source, problems)
        fields, more = check.build(data, where, bad_paths)
    problems += more
    if problems:
        raise runbook_problems.RunbookInvalid(source, problems)
    return model.Runbook(
        **fields,
        text=bytes(text),
        sha256=hashlib.sha256(text).hexdigest(),
        path=path,
        source=source,
    )


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """No cyclic garbage collection while a runbook is read: what is built holds no cycles
    (reference counting frees it), and the collector's passes over the hundreds of
    thousands of values of a large runbook cost a third of reading it. The input is at most
    1 MiB, so what is allocated meanwhile is bounded."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def load_runbook(path: Path) -> model.Runbook:
    """Read and validate the runbook file at ``path`` (see :func:`parse_runbook`).

    Only a regular file is read: a FIFO, device or socket is refused before anything waits
    on it."""
    return parse_runbook(_read_regular(path), str(path), path=path)


def _read_regular(path: Path) -> bytes:
    source = str(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise errors.RunbookError(
            f"the runbook {source} does not exist.", hint="Check the path and try again."
        ) from None
    except OSError as exc:
        raise errors.RunbookError(
            f"cannot read the runbook {source}: {exc.strerror or exc}.",
            hint="Check the file's permissions.",
        ) from None
    try:
        _check_regular(fd, source)
    except BaseException:
        os.close(fd)
        raise
    with os.fdopen(fd, "rb") as handle:
        try:
            os.set_blocking(fd, True)
            return handle.read(model.MAX_RUNBOOK_BYTES + 1)
        except OSError as exc:
            raise errors.RunbookError(
                f"cannot read the runbook {source}: {exc.strerror or exc}.",
                hint="Check the file's permissions.",
            ) from None


def _check_regular(fd: int, source: str) -> None:
    """The open file is a regular file of at most :data:`MAX_RUNBOOK_BYTES`."""
    st = os.fstat(fd)
    mode = st.st_mode
    if stat.S_ISDIR(mode):
        raise errors.RunbookError(
            f"{source} is a directory, not a runbook file.",
            hint="Give the path of a YAML file.",
        )
    if not stat.S_ISREG(mode):
        raise errors.RunbookError(
            f"{source} is not a regular file (a pipe, device or socket); runbooks are "
            "read from regular files only.",
            hint="Save the runbook to a file and give its path.",
        )
    size = st.st_size
    if size > model.MAX_RUNBOOK_BYTES:
        raise runbook_problems.RunbookInvalid(
            source,
            [
                runbook_problems.Problem(
                    source,
                    1,
                    1,
                    "",
                    f"the file is {size} bytes long; runbooks may be at most "
                    f"{model.MAX_RUNBOOK_BYTES} bytes (1 MiB)",
                )
            ],
            hint="Split the runbook, or move long scripts into files the steps run.",
        )
