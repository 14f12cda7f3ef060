"""Size caps for the template sandbox: operators, filters and string methods that could
allocate without bound are checked *before* they compute.

Jinja folds constant expressions while it compiles a template (``{{ 'x'|center(3e8) }}`` is
computed by ``ledger validate``), so every check here runs at compile time as well as at
render time: the capped filters replace Jinja's own in the environment (the optimizer calls
those), ``%`` joins ``*`` and ``**`` among the sandbox's intercepted operators (which the
optimizer never folds), and :func:`static_problem` lets validation report a constant
expression over a cap as a template error. Every refusal is a :class:`TooLarge` (a Jinja
``SecurityError``), so a render fails with a clear message instead of eating memory.

The caps: strings and lists built by one operation at most :data:`MAX_REPEAT` characters or
items, exponents at most :data:`MAX_EXPONENT`, integers at most :data:`MAX_INT_BITS` bits,
nesting of brackets and blocks at most :data:`MAX_NESTING`.

Regular expressions of a runbook (parameter ``pattern``, ``regex`` outputs) get the same
treatment: :func:`regex_problem` refuses a variable quantifier nested in an unbounded one
(``(a+)+b``), whose backtracking takes exponential time, and values checked against a
pattern are at most :data:`MAX_PATTERN_VALUE` characters long. Other shapes backtrack
polynomially or worse too (``(x|xx)+y``, ``a*a*a*b``) and no static rule catches them all,
so every match runs with the ``regex`` package (compatible with ``re``) and a bound of
:data:`MAX_MATCH_SECONDS` of CPU time: :func:`fullmatch` and :func:`search` raise
:class:`SlowPattern` past it.
"""

from __future__ import annotations

import importlib
import re
import string
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final

import regex
from jinja2 import nodes
from jinja2.exceptions import SecurityError
from jinja2.filters import FILTERS

#: Largest string or list one operation may build (characters or items).
MAX_REPEAT: Final = 1 << 20
#: Largest exponent of ``**``.
MAX_EXPONENT: Final = 256
#: Largest integer an arithmetic operation may build (bits).
MAX_INT_BITS: Final = 1 << 16
#: Deepest nesting of brackets, and of block statements, in one template.
MAX_NESTING: Final = 64


class TooLarge(SecurityError):
    """A template operation would build a value over a cap."""


def _over(what: str, size: float) -> TooLarge:
    return TooLarge(f"{what} would build {int(size)} characters or items, more than {MAX_REPEAT}")


def check_width(value: object, what: str) -> None:
    """A width, count or size argument is at most :data:`MAX_REPEAT`."""
    if isinstance(value, int | float) and not isinstance(value, bool) and value > MAX_REPEAT:
        raise _over(what, value)


def _size(value: object) -> int | None:
    if isinstance(value, str | bytes | list | tuple):
        return len(value)
    return None


def _length(value: object) -> int:
    return len(value) if isinstance(value, str) else len(str(value))


# -- printf-style and str.format specs ---------------------------------------------------

_PERCENT_SPEC = re.compile(r"%(?:\([^)]*\))?[#0\- +]*(\*|\d+)?(?:\.(\*|\d+))?")
_DIGITS = re.compile(r"\d+")


def _int_args(args: object) -> Iterable[object]:
    if isinstance(args, tuple | list):
        return args
    if isinstance(args, Mapping):
        return args.values()
    return (args,)


def check_percent(fmt: str, args: object) -> None:
    """``fmt % args`` builds no field wider than :data:`MAX_REPEAT`."""
    star = False
    for match in _PERCENT_SPEC.finditer(fmt):
        for part in match.groups():
            if part == "*":
                star = True
            elif part is not None and (len(part) > 7 or int(part) > MAX_REPEAT):
                raise _over("the format '%' field", int(part[:12]))
    if star:
        for value in _int_args(args):
            check_width(value, "a '*' width of '%'")


def check_str_format(fmt: str, args: Iterable[object], kwargs: Mapping[str, object]) -> None:
    """``fmt.format(*args, **kwargs)`` builds no field wider than :data:`MAX_REPEAT`."""
    try:
        parsed = list(string.Formatter().parse(fmt))
    except ValueError:
        return  # format itself reports the error
    for _literal, _field, spec, _conv in parsed:
        if not spec:
            continue
        for digits in _DIGITS.findall(spec):
            if len(digits) > 7 or int(digits) > MAX_REPEAT:
                raise _over("the format field", int(digits[:12]))
        if "{" in spec:
            for value in (*args, *kwargs.values()):
                check_width(value, "a nested format width")


# -- operators ---------------------------------------------------------------------------


def check_binop(operator_: str, left: object, right: object) -> None:
    """Refuse ``*``, ``**`` and ``%`` whose result would be over a cap."""
    if operator_ == "*":
        for seq, count in ((left, right), (right, left)):
            size = _size(seq)
            if size is not None and isinstance(count, int) and size * count > MAX_REPEAT:
                raise TooLarge(
                    f"repeating a value {count} times would build more than {MAX_REPEAT} items"
                )
        if (
            isinstance(left, int)
            and isinstance(right, int)
            and left.bit_length() + right.bit_length() > MAX_INT_BITS
        ):
            raise TooLarge(f"the product would have more than {MAX_INT_BITS} bits")
    elif operator_ == "**":
        if isinstance(right, int | float) and abs(right) > MAX_EXPONENT:
            raise TooLarge(f"exponent {right} is larger than {MAX_EXPONENT}")
        if (
            isinstance(left, int)
            and isinstance(right, int)
            and right > 0
            and left.bit_length() * right > MAX_INT_BITS
        ):
            raise TooLarge(f"the power would have more than {MAX_INT_BITS} bits")
    elif operator_ == "%" and isinstance(left, str):
        check_percent(left, right)


# -- filters -----------------------------------------------------------------------------


def _capped(name: str, check: Callable[..., None]) -> Callable[..., Any]:
    """Jinja's filter ``name``, calling ``check`` with the same arguments first."""
    original = FILTERS[name]

    def capped(*args: Any, **kwargs: Any) -> Any:
        check(*args, **kwargs)
        return original(*args, **kwargs)

    # Keep how Jinja passes the context/environment (pass_eval_context and the like).
    for attr in ("jinja_pass_arg", "jinja_async_variant"):
        if hasattr(original, attr):
            setattr(capped, attr, getattr(original, attr))
    capped.__name__ = f"capped_{name}"
    return capped


def _center(value: object, width: object = 80) -> None:
    check_width(width, "center")


def _indent(s: object, width: object = 4, *_: object, **__: object) -> None:
    per_line = len(width) if isinstance(width, str) else width
    if isinstance(per_line, int | float):
        lines = _length(s).bit_length() and str(s).count("\n") + 1
        if per_line * max(lines, 1) + _length(s) > MAX_REPEAT:
            raise _over("indent", per_line * max(lines, 1))


def _wordwrap(environment: object, s: object, width: object = 79, *args: object, **kw: Any) -> None:
    wrapstring = kw.get("wrapstring", args[1] if len(args) > 1 else None)
    sep = len(wrapstring) if isinstance(wrapstring, str) else 1
    text = _length(s)
    if text + (text + 1) * sep > MAX_REPEAT:
        raise _over("wordwrap", text + (text + 1) * sep)


def _format(value: object, *args: object, **kwargs: object) -> None:
    if isinstance(value, str):
        if args:
            check_percent(value, args)
        else:
            check_percent(value, kwargs)


def _replace(eval_ctx: object, s: object, old: object, new: object, count: object = None) -> None:
    text = str(s)
    hits = text.count(str(old)) if str(old) else len(text) + 1
    if isinstance(count, int) and count >= 0:
        hits = min(hits, count)
    if len(text) + hits * len(str(new)) > MAX_REPEAT:
        raise _over("replace", len(text) + hits * len(str(new)))


def _join(eval_ctx: object, value: object, d: object = "", attribute: object = None) -> None:
    if isinstance(value, list | tuple | str | range):
        items = value
    else:
        return  # generators are joined as they come; the rendered text is capped
    total = len(items) * len(str(d)) + sum(_length(v) for v in (items if attribute is None else ()))
    if total > MAX_REPEAT:
        raise _over("join", total)


def _slices(value: object, count: object, *_: object) -> None:
    check_width(count, "the number of slices or the batch size")


def _tojson(eval_ctx: object, value: object, indent: object = None) -> None:
    check_width(indent, "the JSON indent")


def _truncate(env: object, s: object, length: object = 255, *args: object, **kw: object) -> None:
    end = kw.get("end", args[1] if len(args) > 1 else "...")
    check_width(len(str(end)), "truncate's end")


_CHECKS: Final[dict[str, Callable[..., None]]] = {
    "center": _center,
    "indent": _indent,
    "wordwrap": _wordwrap,
    "format": _format,
    "replace": _replace,
    "join": _join,
    "slice": _slices,
    "batch": _slices,
    "tojson": _tojson,
    "truncate": _truncate,
}


def capped_filters() -> dict[str, Callable[..., Any]]:
    """The filters that can allocate without bound, each checking its arguments first."""
    return {name: _capped(name, check) for name, check in _CHECKS.items()}


# -- string methods ----------------------------------------------------------------------

_STR_METHODS: Final = frozenset(
    {"center", "ljust", "rjust", "zfill", "expandtabs", "join", "replace", "format", "format_map"}
)


def check_call(obj: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> None:
    """Refuse a call of a string method whose result would be over a cap."""
    owner = getattr(obj, "__self__", None)
    name = getattr(obj, "__name__", "")
    if not isinstance(owner, str) or name not in _STR_METHODS:
        return
    if name in ("center", "ljust", "rjust", "zfill") and args:
        check_width(args[0], name)
    elif name == "expandtabs":
        size = args[0] if args else kwargs.get("tabsize", 8)
        if isinstance(size, int) and size * (owner.count("\t") + 1) > MAX_REPEAT:
            raise _over("expandtabs", size * (owner.count("\t") + 1))
    elif name == "join" and args:
        _join(None, args[0], owner)
    elif name == "replace" and len(args) >= 2:
        _replace(None, owner, args[0], args[1], args[2] if len(args) > 2 else None)
    elif name == "format":
        check_str_format(owner, args, kwargs)
    elif name == "format_map" and args and isinstance(args[0], Mapping):
        check_str_format(owner, (), args[0])


# -- static checks -----------------------------------------------------------------------

_OPENERS: Final = frozenset("([{")
_CLOSERS: Final = frozenset(")]}")
_BLOCKS: Final = frozenset({"if", "for", "macro", "call", "filter", "with", "block", "autoescape"})


def nesting_problem(tokens: Iterable[tuple[int, str, str]]) -> tuple[str, int] | None:
    """Too deep a nesting of brackets or blocks in a lexed template: (message, line)."""
    brackets = blocks = 0
    after_block_begin = False
    for lineno, kind, value in tokens:
        if kind == "whitespace":
            continue
        if kind == "operator":
            if value in _OPENERS:
                brackets += 1
                if brackets > MAX_NESTING:
                    return f"brackets are nested more than {MAX_NESTING} deep", lineno
            elif value in _CLOSERS:
                brackets -= 1
        elif kind == "block_begin":
            after_block_begin = True
            continue
        elif kind == "name" and after_block_begin:
            if value in _BLOCKS:
                blocks += 1
                if blocks > MAX_NESTING:
                    return f"blocks are nested more than {MAX_NESTING} deep", lineno
            elif value.startswith("end"):
                blocks -= 1
        after_block_begin = False
    return None


def recursion_problem(tree: nodes.Node) -> tuple[str, int] | None:
    """A macro of the template that calls itself, directly or through other macros."""
    macros = {m.name: m for m in tree.find_all(nodes.Macro)}
    calls: dict[str, set[str]] = {}
    for name, macro in macros.items():
        called: set[str] = set()
        for call in macro.find_all(nodes.Call):
            target: Any = call.node
            if isinstance(target, nodes.Name) and target.name in macros:
                called.add(target.name)
        calls[name] = called
    for name, macro in macros.items():
        seen: set[str] = set()
        todo = list(calls[name])
        while todo:
            current = todo.pop()
            if current == name:
                return (
                    f"the macro {name!r} calls itself (directly or through other macros); "
                    "recursion is not available in runbook templates",
                    macro.lineno or 1,
                )
            if current not in seen:
                seen.add(current)
                todo.extend(calls.get(current, ()))
    return None


def _check_const_filter(item: Any, env: Any) -> None:
    """Run a capped filter's check when the filter's value and arguments are constants."""
    check = _CHECKS.get(item.name)
    if check is None or not isinstance(item.node, nodes.Const):
        return
    values: list[Any] = list(item.args)
    named: list[Any] = list(item.kwargs)
    if not all(isinstance(v, nodes.Const) for v in values):
        return
    if not all(isinstance(k.value, nodes.Const) for k in named):
        return
    args = [v.value for v in values]
    kwargs = {str(k.key): k.value.value for k in named}
    lead = [env] if item.name in ("replace", "join", "wordwrap", "tojson", "truncate") else []
    check(*lead, item.node.value, *args, **kwargs)


def static_problem(tree: nodes.Node, env: Any) -> tuple[str, int] | None:
    """A constant filter or operator of the template over a cap (what the optimizer would
    fold, checked here so that validation names it)."""
    for node in tree.find_all((nodes.Filter, nodes.BinExpr)):
        item: Any = node
        try:
            if isinstance(node, nodes.Filter):
                _check_const_filter(item, env)
            elif isinstance(item.left, nodes.Const) and isinstance(item.right, nodes.Const):
                check_binop(item.operator, item.left.value, item.right.value)
        except TooLarge as exc:
            return str(exc.message or exc), item.lineno or 1
        except (TypeError, ValueError):
            continue
    return None


# -- regular expressions -----------------------------------------------------------------

# The parser behind ``re`` (the standard library's own, typed as Any: it has no stubs).
sre_parse: Any = importlib.import_module("re._parser")

#: Longest value checked against a parameter's ``pattern`` (characters).
MAX_PATTERN_VALUE: Final = 4096

_REPEATS: Final = (sre_parse.MAX_REPEAT, sre_parse.MIN_REPEAT, sre_parse.POSSESSIVE_REPEAT)


def _children(op: Any, av: Any) -> list[Any]:
    """The subpatterns directly under one parsed item."""
    if op in _REPEATS:
        return [av[2]]
    if op == sre_parse.SUBPATTERN:
        return [av[3]]
    if op == sre_parse.BRANCH:
        return list(av[1])
    if op in (sre_parse.ASSERT, sre_parse.ASSERT_NOT):
        return [av[1]]
    return []


def _variable_repeat(items: Any) -> bool:
    """Whether a parsed (sub)pattern holds a quantifier that matches a variable count."""
    for op, av in items:
        if op in _REPEATS and av[0] != av[1]:
            return True
        if any(_variable_repeat(sub) for sub in _children(op, av)):
            return True
    return False


def _nested(items: Any) -> bool:
    """Whether a variable quantifier is nested in an unbounded one."""
    for op, av in items:
        if op in _REPEATS and av[1] == sre_parse.MAXREPEAT and _variable_repeat(av[2]):
            return True
        if any(_nested(sub) for sub in _children(op, av)):
            return True
    return False


#: CPU time one match of a runbook's regular expression may take (seconds).
MAX_MATCH_SECONDS: Final = 1.0


class SlowPattern(Exception):
    """Matching a runbook's regular expression took more than :data:`MAX_MATCH_SECONDS`."""

    def __init__(self, pattern: str, length: int) -> None:
        super().__init__(
            f"matching the pattern {pattern!r} against a value of {length} characters took "
            f"more than {MAX_MATCH_SECONDS:g} s (the pattern backtracks too much: alternatives "
            "or quantifiers that can match the same text, like '(x|xx)+' or 'a*a*'). "
            "Write the pattern so that each part of the text can match one way only"
        )


def fullmatch(pattern: str, value: str) -> bool:
    """Whether ``value`` matches ``pattern`` in full; :class:`SlowPattern` past the bound."""
    try:
        return regex.fullmatch(pattern, value, timeout=MAX_MATCH_SECONDS) is not None
    except TimeoutError:
        raise SlowPattern(pattern, len(value)) from None


def search(pattern: str, text: str, flags: int = 0) -> Any:
    """The first match of ``pattern`` in ``text`` (a match object, with ``groupindex`` and
    ``groups`` on its ``re``), or None; :class:`SlowPattern` past the bound."""
    try:
        return regex.search(pattern, text, flags, timeout=MAX_MATCH_SECONDS)
    except TimeoutError:
        raise SlowPattern(pattern, len(text)) from None


def regex_problem(pattern: str) -> str | None:
    """Why a runbook's regular expression is refused (it does not compile, or it nests
    quantifiers), or ``None``."""
    try:
        re.compile(pattern)
        regex.compile(pattern)
        parsed = sre_parse.parse(pattern)
    except (re.error, regex.error, RecursionError, OverflowError) as exc:
        return f"not a valid regular expression: {exc}"
    try:
        nested = _nested(parsed.data)
    except RecursionError:
        nested = True
    if nested:
        return (
            "a quantifier is nested inside an unbounded one (like '(a+)+'); matching such a "
            "pattern can take exponential time. Write it without the nesting (for example "
            "'a+' instead of '(a+)+')"
        )
    return None
