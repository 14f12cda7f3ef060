"""The runbook model: :class:`Runbook`, :class:`Step`, :class:`Parameter`, the limits.

Values of these classes are built only by :mod:`ledger.runbook.check` from a document that
passed validation, so their fields can be trusted. :func:`parse_duration` reads the
durations the format allows (``30s``, ``1h30m``).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal

from ledger import errors

# --------------------------------------------------------------------------- limits

#: Largest runbook file accepted (bytes).
MAX_RUNBOOK_BYTES: Final = 1 << 20
#: Deepest nesting of YAML collections accepted.
MAX_DEPTH: Final = 32
#: Largest secret file read by ``from_file`` (bytes).
MAX_SECRET_FILE_BYTES: Final = 64 << 10
#: Shortest secret value accepted (shorter values would redact unrelated output).
MIN_SECRET_LENGTH: Final = 4
#: Largest captured output value (characters).
MAX_OUTPUT_CHARS: Final = 64 << 10
#: Longest duration accepted (seconds): 30 days.
MAX_DURATION_S: Final = 30 * 86400.0
#: Default delay before the first retry (seconds).
DEFAULT_RETRY_DELAY_S: Final = 1.0
#: Prefix of the environment variables that carry parameters into steps.
PARAM_ENV_PREFIX: Final = "PARAM_"

ParamType = Literal["string", "int", "bool"]
ParamValue = str | int | bool | None
Phase = Literal["main", "on_failure", "on_cancel", "always"]
#: The handler lists, in the order they are written and run.
HANDLER_PHASES: Final = ("on_failure", "on_cancel", "always")
OutputKind = Literal["stdout", "stderr", "json", "regex"]

# --------------------------------------------------------------------------- model


@dataclass(frozen=True)
class Parameter:
    """A declared parameter. ``default`` is ``None`` when there is none."""

    name: str
    type: ParamType = "string"
    default: ParamValue = None
    choices: list[ParamValue] | None = None
    description: str | None = None
    secret: bool = False
    from_env: str | None = None
    from_file: str | None = None
    required: bool = True
    pattern: str | None = None
    min: int | None = None
    max: int | None = None
    line: int = 0

    @property
    def env_name(self) -> str:
        """The environment variable that carries the value into steps: ``PARAM_<NAME>``."""
        return PARAM_ENV_PREFIX + self.name.upper()


@dataclass(frozen=True)
class OutputSpec:
    """How one output is captured: ``kind`` stdout/stderr (whole stream, stripped), json
    (``expr`` is a dotted path into stdout parsed as JSON) or regex (``expr`` is the pattern,
    searched in stdout: the group named ``value``, else group 1, else the whole match)."""

    name: str
    kind: OutputKind
    expr: str | None = None


@dataclass(frozen=True)
class ApprovalSpec:
    approvers: list[str]
    min_approvals: int = 1
    message: str | None = None
    timeout_s: float | None = None


@dataclass(frozen=True)
class Step:
    """One step: exactly one of ``run`` (a command template) or ``approval``.

    ``index`` is the position in its list (``phase`` says which: main steps, or the handler
    list ``on_failure``, ``on_cancel`` or ``always``); ``line`` is the 1-based line of the
    step in the file.
    """

    name: str
    index: int
    phase: Phase = "main"
    description: str | None = None
    run: str | None = None
    shell: str = "bash"
    cwd: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    timeout_s: float | None = None
    retries: int = 0
    retry_delay_s: float = DEFAULT_RETRY_DELAY_S
    retry_backoff: float = 1.0
    until: str | None = None
    when: str | None = None
    continue_on_error: bool = False
    outputs: dict[str, OutputSpec] = field(default_factory=dict)
    approval: ApprovalSpec | None = None
    line: int = 0

    @property
    def is_approval(self) -> bool:
        return self.approval is not None

    @property
    def max_attempts(self) -> int:
        """How many attempts at most: ``retries + 1``."""
        return self.retries + 1

    def retry_delay_for(self, attempt: int) -> float:
        """Seconds to wait before attempt number ``attempt`` (1-based; 0 for the first).

        The delay before attempt 2 is ``retry_delay_s``; each later one is multiplied by
        ``retry_backoff``.
        """
        if attempt <= 1:
            return 0.0
        delay: float = self.retry_delay_s * self.retry_backoff ** (attempt - 2)
        return min(delay, MAX_DURATION_S)


@dataclass(frozen=True)
class Runbook:
    """A validated runbook. ``text`` is the exact file content and ``sha256`` its digest."""

    name: str
    description: str | None
    parameters: dict[str, Parameter]
    env: dict[str, str]
    capture_env: list[str]
    lock: str | None
    steps: list[Step]
    on_failure: list[Step]
    text: bytes
    sha256: str
    path: Path | None
    source: str
    on_cancel: list[Step] = field(default_factory=list)
    always: list[Step] = field(default_factory=list)

    @property
    def all_steps(self) -> list[Step]:
        """Main steps then the handlers: on_failure, on_cancel, always."""
        return [*self.steps, *self.on_failure, *self.on_cancel, *self.always]

    def handlers(self, phase: str) -> list[Step]:
        """The handler list ``phase`` (``on_failure``, ``on_cancel`` or ``always``)."""
        lists = {"on_failure": self.on_failure, "on_cancel": self.on_cancel, "always": self.always}
        return lists[phase]

    def step(self, name: str) -> Step:
        """The step (main or handler) called ``name``; :class:`RunbookError` if none."""
        for step in self.all_steps:
            if step.name == name:
                return step
        known = ", ".join(s.name for s in self.all_steps)
        raise errors.RunbookError(
            f"the runbook {self.name!r} ({self.source}) has no step called {name!r} "
            f"(its steps: {known}).",
            hint="Check the step name.",
        )


# --------------------------------------------------------------------------- durations

_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?) *(ms|s|m|h|d)")
_DURATION_FULL = re.compile(r"(?:[0-9]+(?:\.[0-9]+)? *(?:ms|s|m|h|d) *)+")
_UNIT_SECONDS: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: object) -> float:
    """Seconds from ``30``, ``1.5``, ``"30s"``, ``"500ms"``, ``"5m"``, ``"1h30m"``, ``"1d"``.

    :class:`ValueError` with a readable message when the value is not a duration.
    """
    if isinstance(value, bool):
        raise ValueError("a duration cannot be true or false")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        if re.fullmatch(r"[0-9]+(?:\.[0-9]+)?", text):
            seconds = float(text)
        elif _DURATION_FULL.fullmatch(text):
            seconds = sum(float(n) * _UNIT_SECONDS[u] for n, u in _DURATION_PART.findall(text))
        else:
            raise ValueError(
                f"{value!r} is not a duration (use a number of seconds, or 500ms, 30s, 5m, "
                "1h, 1d, 1h30m)"
            )
    else:
        raise ValueError(f"{value!r} is not a duration")
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"{value!r} is not a duration (it must be finite and not negative)")
    if seconds > MAX_DURATION_S:
        raise ValueError(f"{value!r} is longer than the 30 days a duration may be")
    return seconds
