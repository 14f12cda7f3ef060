"""Parameter values for one run: :func:`resolve_parameters` and :class:`ResolvedParams`.

Each value comes from ``-p NAME=VALUE``, the variable ``from_env`` names, the file
``from_file`` names, or the default, and is checked against the parameter's type,
``choices``, ``pattern`` and ``min``/``max``. Secret values never appear in messages, and
:meth:`ResolvedParams.redacted` shows them as ``[REDACTED:name]``.

The module reads secret files and the environment; it does nothing else with the outside
world.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from ledger import errors, redact
from ledger.runbook import caps, model, problems, templating


@dataclass(frozen=True)
class ResolvedParams:
    """Parameter values for one run.

    ``values`` holds the real values (for execution only). ``sources`` says where each came
    from: ``given``, ``env:VAR``, ``file:PATH``, ``default`` or ``unset``.
    """

    values: dict[str, model.ParamValue] = field(repr=False)
    secret_names: frozenset[str] = frozenset()
    sources: dict[str, str] = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"ResolvedParams({self.redacted()!r})"

    def redacted(self) -> dict[str, model.ParamValue]:
        """The values with every secret replaced by ``[REDACTED:name]`` (for records)."""
        return {
            name: (
                redact.redaction_label(name)
                if name in self.secret_names and value is not None
                else value
            )
            for name, value in self.values.items()
        }

    def secrets(self) -> dict[str, str]:
        """Secret name -> value as text, for redactors."""
        return {
            name: templating.to_text(value)
            for name, value in self.values.items()
            if name in self.secret_names and value is not None
        }

    def environment(self) -> dict[str, str]:
        """``PARAM_<NAME>`` -> value as text (empty for unset), secrets included."""
        return {
            model.PARAM_ENV_PREFIX + name.upper(): templating.to_text(value)
            for name, value in self.values.items()
        }

    def redacted_environment(self) -> dict[str, str]:
        """Like :meth:`environment`, with secrets as ``[REDACTED:name]``."""
        return {
            model.PARAM_ENV_PREFIX + name.upper(): templating.to_text(value)
            for name, value in self.redacted().items()
        }


_TRUE: Final = frozenset({"true", "yes", "on", "1"})
_FALSE: Final = frozenset({"false", "no", "off", "0"})


def _coerce(param: model.Parameter, raw: object, source: str) -> model.ParamValue:
    """A value of the parameter's type from text (or an already typed value)."""
    shown = "the secret value" if param.secret else repr(raw)
    what = f"parameter {param.name!r} ({source})"
    if isinstance(raw, str) and "\0" in raw:
        raise errors.InputError(
            f"{what}: the value contains a NUL byte.", hint="Give a value without it."
        )
    value: model.ParamValue
    if param.type == "int":
        if isinstance(raw, int) and not isinstance(raw, bool):
            value = raw
        elif isinstance(raw, str) and re.fullmatch(r"\s*[-+]?[0-9]+\s*", raw):
            value = int(raw)
        else:
            raise errors.InputError(
                f"{what} must be an integer, got {shown}.", hint="Give a whole number like 10."
            )
        if param.min is not None and value < param.min:
            raise errors.InputError(
                f"{what} must be at least {param.min}, got {shown}.", hint="Give a larger value."
            )
        if param.max is not None and value > param.max:
            raise errors.InputError(
                f"{what} must be at most {param.max}, got {shown}.", hint="Give a smaller value."
            )
    elif param.type == "bool":
        if isinstance(raw, bool):
            value = raw
        elif isinstance(raw, str) and raw.strip().lower() in _TRUE | _FALSE:
            value = raw.strip().lower() in _TRUE
        else:
            raise errors.InputError(
                f"{what} must be true or false, got {shown}.",
                hint="Give one of true, false, yes, no, 1, 0.",
            )
    else:
        if not isinstance(raw, str):
            raw = templating.to_text(raw)
        value = raw
        if param.pattern is not None and len(value) > caps.MAX_PATTERN_VALUE:
            raise errors.InputError(
                f"{what}: the value is {len(value)} characters long; a parameter with a "
                f"pattern takes at most {caps.MAX_PATTERN_VALUE}.",
                hint="Give a shorter value.",
            )
        try:
            matches = param.pattern is None or caps.fullmatch(param.pattern, value)
        except caps.SlowPattern as exc:
            raise errors.InputError(
                f"{what}: {exc}.", hint="Give a shorter value, or fix the runbook's pattern."
            ) from None
        if not matches:
            raise errors.InputError(
                f"{what}: {shown} does not match the pattern {param.pattern!r}.",
                hint="Give a value that matches it in full.",
            )
    if param.choices is not None and value not in param.choices:
        options = ", ".join(templating.to_text(c) for c in param.choices)
        raise errors.InputError(
            f"{what} must be one of: {options}; got {shown}.", hint="Choose one of those values."
        )
    if param.secret:
        text = templating.to_text(value)
        if len(text) < model.MIN_SECRET_LENGTH:
            raise errors.InputError(
                f"the secret parameter {param.name!r} ({source}) is shorter than "
                f"{model.MIN_SECRET_LENGTH} characters; a value that short cannot be redacted from "
                "output reliably.",
                hint="Use a longer secret.",
            )
    return value


def _read_secret_file(param: model.Parameter, base_dir: Path) -> str | None:
    path = Path(param.from_file or "").expanduser()
    if not path.is_absolute():
        path = base_dir / path
    try:
        with path.open("rb") as handle:
            data = handle.read(model.MAX_SECRET_FILE_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise errors.InputError(
            f"cannot read {path} for parameter {param.name!r}: {exc.strerror or exc}.",
            hint="Check the file's permissions.",
        ) from None
    if len(data) > model.MAX_SECRET_FILE_BYTES:
        raise errors.InputError(
            f"{path} (from_file of parameter {param.name!r}) is larger than "
            f"{model.MAX_SECRET_FILE_BYTES} bytes.",
            hint="Point from_file at a file holding just the value.",
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise errors.InputError(
            f"{path} (from_file of parameter {param.name!r}) is not UTF-8 text "
            f"(invalid byte at offset {exc.start}).",
            hint="Store the value as UTF-8 text.",
        ) from None
    return text.rstrip("\r\n")


def resolve_parameters(
    runbook: model.Runbook,
    given: Mapping[str, object],
    environ: Mapping[str, str] | None = None,
    *,
    base_dir: Path | None = None,
) -> ResolvedParams:
    """Typed values for every declared parameter.

    Each value comes from, in order: ``given`` (``-p NAME=VALUE``: text, or typed values when
    resuming), the variable ``from_env`` names in ``environ`` (default :data:`os.environ`),
    the file ``from_file`` names (relative paths are relative to ``base_dir``, default the
    runbook's directory), the default. A required parameter with none of these is an
    :class:`InputError` that says how to give it; so are unknown names, values of the wrong
    type, values outside ``choices``, ``pattern``, ``min``/``max``, and secrets shorter than
    :data:`MIN_SECRET_LENGTH`. Messages never contain a secret's value.
    """
    env = os.environ if environ is None else environ
    if base_dir is None:
        base_dir = runbook.path.parent if runbook.path is not None else Path.cwd()
    unknown = sorted(set(given) - set(runbook.parameters))
    if unknown:
        declared = ", ".join(sorted(runbook.parameters)) or "none"
        name = unknown[0]
        raise errors.InputError(
            f"the runbook {runbook.name!r} has no parameter {name!r}"
            f"{problems.suggest(name, runbook.parameters)} (its parameters: {declared}).",
            hint="Check the -p NAME=VALUE arguments.",
        )
    values: dict[str, model.ParamValue] = {}
    sources: dict[str, str] = {}
    for name, param in runbook.parameters.items():
        raw: object = None
        source = ""
        if name in given:
            raw, source = given[name], "given"
        elif param.from_env is not None and param.from_env in env:
            raw, source = env[param.from_env], f"env:{param.from_env}"
        if raw is None and param.from_file is not None:
            from_file = _read_secret_file(param, base_dir)
            if from_file is not None:
                raw, source = from_file, f"file:{param.from_file}"
        if raw is None:
            if param.default is not None:
                values[name], sources[name] = param.default, "default"
                continue
            if param.required:
                ways = [f"-p {name}=VALUE"]
                if param.from_env:
                    ways.append(f"set the environment variable {param.from_env}")
                if param.from_file:
                    ways.append(f"create the file {param.from_file}")
                kind = "secret parameter" if param.secret else "parameter"
                raise errors.InputError(
                    f"the runbook {runbook.name!r} needs a value for the {kind} {name!r}"
                    + (f" ({param.description})" if param.description else "")
                    + " and none was given.",
                    hint="Give it: " + ", or ".join(ways) + ".",
                )
            values[name], sources[name] = None, "unset"
            continue
        values[name] = _coerce(param, raw, source)
        sources[name] = source
    secret_names = frozenset(n for n, p in runbook.parameters.items() if p.secret)
    return ResolvedParams(values=values, secret_names=secret_names, sources=sources)


def parse_assignments(items: Iterable[str]) -> dict[str, str]:
    """``["a=1", "b=x=y"]`` -> ``{"a": "1", "b": "x=y"}``; :class:`UsageError` if malformed."""
    out: dict[str, str] = {}
    for item in items:
        try:
            item.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise errors.InputError(
                f"-p {item[: exc.start]!r}...: the argument is not valid UTF-8 text "
                f"(character {exc.start} is a byte that is not UTF-8).",
                hint="Give parameter values in UTF-8.",
            ) from None
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or not name:
            raise errors.UsageError(
                f"{item!r} is not NAME=VALUE.", hint="Write parameters as -p NAME=VALUE."
            )
        if name in out:
            raise errors.UsageError(
                f"the parameter {name!r} is given more than once.", hint="Give it once."
            )
        out[name] = value
    return out
