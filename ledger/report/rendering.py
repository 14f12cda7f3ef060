"""Rendering the report model with Jinja2: the sandboxed environment, the filters, and
:func:`render`.

Templates are the default ``incident.md.j2`` shipped in the package or a user's template file,
always rendered in Jinja2's sandbox with ``StrictUndefined``. Every ``{{ value }}`` that did
not go through one of the Markdown filters (:mod:`ledger.report.mdsafe`) is escaped as inline
text, so a template cannot forget.
"""

from __future__ import annotations

import json
import re
import types
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from ledger import errors
from ledger.report import fields, mdsafe, model

TEMPLATES_DIR = Path(__file__).resolve().parent.parent / "templates"
DEFAULT_TEMPLATE = "incident.md.j2"


# --- filters ------------------------------------------------------------------------------


def f_duration(ms: Any) -> mdsafe.Md:
    """Milliseconds as ``850 ms``, ``12.345 s``, ``3 min 04 s``, ``2 h 05 min``; ``—`` if None."""
    value = fields.as_int(ms)
    if value is None:
        return mdsafe.Md("—")
    if value < 1000:
        return mdsafe.Md(f"{value} ms")
    if value < 60_000:
        return mdsafe.Md(f"{value / 1000:.3f} s")
    seconds = value // 1000
    if seconds < 3600:
        return mdsafe.Md(f"{seconds // 60} min {seconds % 60:02d} s")
    return mdsafe.Md(f"{seconds // 3600} h {seconds % 3600 // 60:02d} min")


_TIME_RE = re.compile(r"^(\d{4}-\d{2}-\d{2})T(\d{2}:\d{2}:\d{2})(\.\d+)?Z$")


def f_time(value: Any, style: str = "full") -> mdsafe.Md:
    """A record time: ``full`` ``2026-11-22 10:00:01.234Z``, ``clock`` ``10:00:01.234``,
    ``date`` ``2026-11-22``. ``—`` if None; anything that is not a record time is escaped."""
    if value is None or value == "":
        return mdsafe.Md("—")
    m = _TIME_RE.match(str(value))
    if not m:
        return mdsafe.inline(value)
    frac = (m.group(3) or ".000")[:4].ljust(4, "0")
    if style == "clock":
        return mdsafe.Md(f"{m.group(2)}{frac}")
    if style == "date":
        return mdsafe.Md(m.group(1))
    return mdsafe.Md(f"{m.group(1)} {m.group(2)}{frac}Z")


def f_short(value: Any, length: int = 12) -> mdsafe.Md:
    """The first ``length`` characters of a commit id or digest, as inline code."""
    return mdsafe.code(mdsafe.display_text(value)[:length])


def f_json(value: Any) -> str:
    """A value as canonical JSON text (strings stay as they are). Not yet escaped."""
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)


def f_or(value: Any, default: str = "—") -> Any:
    """``value``, or ``default`` when it is None or empty."""
    return default if value is None or value in ("", []) else value


def f_pairs(value: Any) -> str:
    """``[(name, value), ...]`` (or a mapping) as ``name=value, ...``, values as JSON
    unless they are strings. Not yet escaped."""
    items = sorted(value.items()) if isinstance(value, Mapping) else list(value or [])
    return ", ".join(f"{k}={f_json(v)}" for k, v in items)


FILTERS: dict[str, Callable[..., Any]] = {
    "inline": mdsafe.inline,
    "cell": mdsafe.cell,
    "heading": mdsafe.heading,
    "code": mdsafe.code,
    "fence": mdsafe.fence,
    "duration": f_duration,
    "time": f_time,
    "short": f_short,
    "json": f_json,
    "or_dash": f_or,
    "pairs": f_pairs,
}


def iter_filters() -> Iterable[tuple[str, str]]:
    """Each filter's name and first line of documentation (for docs and --help)."""
    for name in sorted(FILTERS):
        doc = (FILTERS[name].__doc__ or "").strip().split("\n")[0]
        yield name, doc


# --- rendering ----------------------------------------------------------------------------


def environment(search_path: Path) -> ImmutableSandboxedEnvironment:
    """The sandboxed Jinja2 environment every report template renders in."""
    env = ImmutableSandboxedEnvironment(
        loader=jinja2.FileSystemLoader(str(search_path)),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        finalize=mdsafe.finalize,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        auto_reload=False,
    )
    env.filters.update(FILTERS)
    return env


def _template_line(tb: types.TracebackType | None, filename: str) -> int | None:
    line = None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == filename:
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


_RENDER_ERRORS = (
    jinja2.TemplateError,
    ArithmeticError,
    AttributeError,
    LookupError,
    TypeError,
    ValueError,
    RecursionError,
)


def render(
    report: model.Report | object, template: Path | None = None, default: str = DEFAULT_TEMPLATE
) -> str:
    """Render ``report`` with ``template`` (a file) or the shipped template ``default`` (a
    name in ``templates/``; the fleet report's is ``fleet.md.j2``).

    ``report`` is what the template sees as ``report``: a :class:`~ledger.report.model.Report`
    for ``ledger report``'s templates (the fleet report passes its own model and template).

    Raises :class:`TemplateError` naming the template file and line when the template
    cannot be read, parsed or rendered.
    """
    if template is None:
        path = TEMPLATES_DIR / default
    else:
        path = template.expanduser().resolve()
        if not path.is_file():
            raise errors.TemplateError(
                f"the template {template} does not exist or is not a file.",
                hint="Give --template the path of a Jinja2 template file "
                f"(see docs/REPORTS.md; the default is templates/{default}).",
            )
    env = environment(path.parent)
    filename = str(path)
    try:
        tmpl = env.get_template(path.name)
        filename = tmpl.filename or filename
        text = tmpl.render(report=report)
    except jinja2.TemplateSyntaxError as exc:
        raise errors.TemplateError(
            f"{exc.filename or filename}:{exc.lineno}: the template has a syntax error: "
            f"{exc.message}.",
            hint="Fix the template; docs/REPORTS.md lists the variables and filters.",
        ) from None
    except UnicodeDecodeError as exc:
        raise errors.TemplateError(
            f"{filename}: the template is not valid UTF-8 ({exc.reason} at byte {exc.start}).",
            hint="Save the template as UTF-8.",
        ) from None
    except _RENDER_ERRORS as exc:
        line = _template_line(exc.__traceback__, filename)
        where = f"{filename}:{line}" if line is not None else filename
        detail = getattr(exc, "message", None) or str(exc) or type(exc).__name__
        raise errors.TemplateError(
            f"{where}: the template failed to render: {detail}.",
            hint="Check the names against docs/REPORTS.md (undefined names are errors, and "
            "templates run in a sandbox without access to Python internals).",
        ) from None
    except OSError as exc:
        raise errors.TemplateError(
            f"{filename}: the template cannot be read ({exc.strerror or exc}).",
            hint="Check the path and its permissions.",
        ) from None
    if not text.endswith("\n"):
        text += "\n"
    return text
