"""A step's declared outputs, read from its command's streams (see
:class:`ledger.runbook.OutputSpec`)."""

from __future__ import annotations

import json
import re

from ledger import errors
from ledger import runbook as ledger_runbook
from ledger.runbook import caps


def _output_error(
    step: ledger_runbook.Step, spec: ledger_runbook.OutputSpec, message: str
) -> errors.RunbookError:
    return errors.RunbookError(
        f"step {step.name!r}: output {spec.name!r} cannot be captured: {message}.",
        hint="Check what the command prints, or the output's definition in the runbook.",
    )


def extract_output(
    step: ledger_runbook.Step, spec: ledger_runbook.OutputSpec, stdout: bytes, stderr: bytes = b""
) -> str:
    """One output value from a command's streams (see :class:`OutputSpec`), decoded as UTF-8
    (invalid bytes replaced); a JSON value that is not a string as compact JSON text.
    :class:`RunbookError` when the stream is not JSON, the key or a match is missing, the
    pattern is too slow (:func:`caps.search`), or the value is over :data:`MAX_OUTPUT_CHARS`.
    """
    text = (stderr if spec.kind == "stderr" else stdout).decode("utf-8", errors="replace")
    if spec.kind in ("stdout", "stderr"):
        value = text.strip()
    elif spec.kind == "json":
        try:
            node: object = json.loads(text)
        except ValueError as exc:
            raise _output_error(step, spec, f"stdout is not JSON ({exc})") from None
        for part in (spec.expr or "").split("."):
            if isinstance(node, dict) and part in node:
                node = node[part]
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            else:
                raise _output_error(step, spec, f"the JSON has no {spec.expr!r} (at {part!r})")
        if isinstance(node, str):
            value = node
        else:
            value = json.dumps(node, separators=(",", ":"), sort_keys=True, ensure_ascii=False)
    else:
        try:
            match = caps.search(spec.expr or "", text, re.MULTILINE)
        except caps.SlowPattern as exc:
            raise _output_error(step, spec, f"the regular expression failed: {exc}") from None
        if match is None:
            raise _output_error(step, spec, f"the pattern {spec.expr!r} does not match stdout")
        if "value" in match.re.groupindex:
            value = match.group("value") or ""
        elif match.re.groups >= 1:
            value = match.group(1) or ""
        else:
            value = match.group(0)
    if len(value) > ledger_runbook.MAX_OUTPUT_CHARS:
        raise _output_error(
            step,
            spec,
            f"the value is {len(value)} characters long "
            f"(at most {ledger_runbook.MAX_OUTPUT_CHARS})",
        )
    return value


def extract_outputs(
    step: ledger_runbook.Step, stdout: bytes, stderr: bytes = b""
) -> dict[str, str]:
    """Every output the step declares, from its streams (see :func:`extract_output`)."""
    return {name: extract_output(step, spec, stdout, stderr) for name, spec in step.outputs.items()}


__all__ = ["extract_output", "extract_outputs"]
