"""Jinja2 templating for runbooks: sandboxed, strict, and shell-quoting by default.

Runbook templates are written by runbook authors, but the values that flow into them come
from operators (parameters) and from earlier commands (outputs). Three environments share
one set of rules:

* every environment is an :class:`ImmutableSandboxedEnvironment` with ``StrictUndefined``
  (a missing variable is an error, never an empty string), autoescape off, no loader
  (``include``/``import``/``extends`` are refused), and caps on ``*``, ``**`` and ``%`` so a
  template cannot allocate gigabytes;
* the *command* environment shell-quotes every ``{{ ... }}`` value with :func:`shlex.quote`
  through Jinja's ``finalize`` hook, unless the value went through the ``raw`` filter;
* the *text* environment renders values as plain text (environment values, working
  directories, lock names, approval messages, conditions).

This module knows nothing about runbooks; the rest of :mod:`ledger.runbook` builds on it.
"""

from __future__ import annotations

import functools
import operator
import re
import shlex
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final

from jinja2 import StrictUndefined, nodes
from jinja2.exceptions import SecurityError
from jinja2.parser import Parser
from jinja2.sandbox import ImmutableSandboxedEnvironment

from ledger.runbook import budget, caps

#: Largest string or list a template may build with ``*`` (characters or items).
MAX_REPEAT: Final = caps.MAX_REPEAT
#: Largest exponent of ``**``.
MAX_EXPONENT: Final = caps.MAX_EXPONENT
#: Largest rendered text (characters).
MAX_RENDERED: Final = 1 << 20
#: Deepest syntax tree of a template (Python's compiler nests at most 200 brackets).
MAX_TREE_DEPTH: Final = 128

#: Names every template may use besides the context: Jinja's own globals.
BUILTIN_NAMES: Final = frozenset({"range", "dict", "cycler", "joiner", "namespace", "loop"})


class Raw(str):
    """A value the author marked, with the ``raw`` filter, to go into a command unquoted."""

    __slots__ = ()


def to_text(value: object) -> str:
    """How a value is written into a template's output: ``None`` is empty, booleans lower-case."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Namespace):
        return repr(value)
    return str(value)


class Namespace:
    """A read-only mapping reached by attribute (``params.service``) or item (``steps['a-b']``).

    Unlike a dict, it has no methods that could hide an entry: a parameter called ``items`` or
    ``get`` is reached as ``params.items`` like any other.
    """

    __slots__ = ("_data", "_label")
    _data: dict[str, object]
    _label: str

    def __init__(self, data: Mapping[str, object], label: str) -> None:
        object.__setattr__(self, "_data", dict(data))
        object.__setattr__(self, "_label", label)

    @classmethod
    def view(cls, data: dict[str, object], label: str) -> Namespace:
        """A namespace over ``data`` itself, not a copy: its owner may keep updating it
        (templates still cannot)."""
        ns = cls.__new__(cls)
        object.__setattr__(ns, "_data", data)
        object.__setattr__(ns, "_label", label)
        return ns

    def __getattr__(self, name: str) -> object:
        data: dict[str, object] = object.__getattribute__(self, "_data")
        try:
            return data[name]
        except KeyError:
            raise AttributeError(name) from None

    def __getitem__(self, name: str) -> object:
        data: dict[str, object] = object.__getattribute__(self, "_data")
        return data[name]

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"{self._label} is read-only")

    def __contains__(self, name: object) -> bool:
        return name in self._data

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        return "{" + ", ".join(f"{k}: {to_text(v)}" for k, v in self._data.items()) + "}"


def namespace_label(ns: Namespace) -> str:
    """The template path of a namespace (``params``, ``steps.check.outputs``)."""
    return str(object.__getattribute__(ns, "_label"))


class StrictUndefinedType(StrictUndefined):
    """StrictUndefined that names the missing variable by its template path."""

    __slots__ = ()

    @property
    def _undefined_message(self) -> str:
        obj = self._undefined_obj
        name = self._undefined_name
        if self._undefined_hint is None and isinstance(obj, Namespace) and name is not None:
            known = ", ".join(sorted(obj)) or "none"
            return f"'{namespace_label(obj)}.{name}' is undefined (known here: {known})"
        message: str = super()._undefined_message
        return message


def _finalize_quoted(value: object) -> str:
    if isinstance(value, Raw):
        return str.__str__(value)
    return shlex.quote(to_text(value))


def _finalize_plain(value: object) -> str:
    return to_text(value)


def _filter_raw(value: object) -> Raw:
    return Raw(to_text(value))


def _filter_shell_quote(value: object) -> Raw:
    return Raw(shlex.quote(to_text(value)))


class _Sandbox(ImmutableSandboxedEnvironment):
    """The sandbox, with caps (:mod:`ledger.runbook.caps`) on the operators, filters and
    string methods that can allocate without bound."""

    intercepted_binops = frozenset({"*", "**", "%", "+"})
    code_generator_class = budget.MeteredCodeGenerator

    def call_binop(self, context: Any, operator_: str, left: Any, right: Any) -> Any:
        if operator_ in self.intercepted_binops:
            caps.check_binop(operator_, left, right)
            budget.step(left, right)
            return budget.checked(_BINOPS[operator_](left, right))
        return super().call_binop(context, operator_, left, right)

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        caps.check_call(__obj, args, kwargs)
        budget.step(getattr(__obj, "__self__", None), *args, *kwargs.values())
        args = budget.count_recursion(__obj, args)
        return budget.checked(super().call(__context, __obj, *args, **kwargs))

    # Called by the code :class:`budget.MeteredCodeGenerator` generates.
    metered_iter = staticmethod(budget.counted)
    metered_value = staticmethod(budget.checked)
    metered_join = staticmethod(budget.joined)
    concat = staticmethod(budget.joined)  # macros, {% set %} and {% filter %} blocks

    def wrap_str_format(self, value: Any) -> Any:
        fmt = super().wrap_str_format(value)
        if fmt is None:
            return None
        owner, name = value.__self__, value.__name__

        def checked(*args: Any, **kwargs: Any) -> Any:
            if name == "format":
                caps.check_str_format(owner, args, kwargs)
            elif args and isinstance(args[0], Mapping):
                caps.check_str_format(owner, (), args[0])
            return fmt(*args, **kwargs)

        return checked


_BINOPS: Final = {"*": operator.mul, "**": operator.pow, "%": operator.mod, "+": operator.add}


def _make_env(finalize: Any) -> _Sandbox:
    env = _Sandbox(
        undefined=StrictUndefinedType,
        autoescape=False,
        finalize=finalize,
        keep_trailing_newline=True,
        trim_blocks=True,
        loader=None,
        auto_reload=False,
        cache_size=0,
    )
    env.filters.update(caps.capped_filters())
    env.filters["raw"] = _filter_raw
    env.filters["shell_quote"] = _filter_shell_quote
    for name, function in list(env.filters.items()):
        env.filters[name] = budget.metered_filter(function)
    env.globals.pop("lipsum", None)
    return env


COMMAND_ENV: Final = _make_env(_finalize_quoted)
TEXT_ENV: Final = _make_env(_finalize_plain)

#: Jinja statements runbook templates may not use.
_FORBIDDEN_NODES: Final = {
    nodes.Include: "{% include %}",
    nodes.Import: "{% import %}",
    nodes.FromImport: "{% from ... import %}",
    nodes.Extends: "{% extends %}",
}


class TemplateProblem(Exception):
    """A template cannot be parsed or compiled (internal: callers attach the location)."""

    def __init__(self, message: str, lineno: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.lineno = lineno


def is_template(text: str) -> bool:
    """Whether a string contains Jinja markup (``{{``, ``{%`` or ``{#``)."""
    return "{{" in text or "{%" in text or "{#" in text


def _check_forbidden(tree: nodes.Node) -> None:
    for node_type, label in _FORBIDDEN_NODES.items():
        for node in tree.find_all(node_type):
            raise TemplateProblem(
                f"{label} is not available in runbook templates", node.lineno or 1
            )
    for found in tree.find_all((nodes.Getattr, nodes.Getitem, nodes.Filter)):
        item: Any = found
        name: object = None
        if isinstance(item, nodes.Getattr):
            name = item.attr
        elif isinstance(item, nodes.Filter):
            if item.name == "attr" and item.args and isinstance(item.args[0], nodes.Const):
                name = item.args[0].value
        elif isinstance(item.arg, nodes.Const):
            name = item.arg.value
        if isinstance(name, str) and name.startswith("_"):
            raise TemplateProblem(
                f"the attribute {name!r} starts with '_'; internal attributes are not "
                "available in runbook templates (the sandbox refuses them)",
                item.lineno or 1,
            )


@functools.lru_cache(maxsize=4096)
def parse_template(source: str) -> nodes.Template:
    """Parse a template; :class:`TemplateProblem` on a syntax error or forbidden statement."""
    from jinja2 import TemplateSyntaxError

    _check_nesting(source)
    try:
        tree = TEXT_ENV.parse(source)
    except TemplateSyntaxError as exc:
        raise TemplateProblem(exc.message or "syntax error", exc.lineno or 1) from None
    except RecursionError:
        raise TemplateProblem("the template is nested too deeply") from None
    _check_depth(tree)
    _check_forbidden(tree)
    _check_caps(tree)
    return tree


def _check_nesting(source: str, *, expression: bool = False) -> None:
    """Refuse brackets or blocks nested deeper than :data:`caps.MAX_NESTING` before the
    (recursive) parser sees them."""
    from jinja2 import TemplateSyntaxError

    text = "{{ " + source + " }}" if expression else source
    try:
        found = caps.nesting_problem(TEXT_ENV.lex(text))
    except TemplateSyntaxError:
        return  # the parser reports it
    if found:
        raise TemplateProblem(*found)


def _check_depth(tree: nodes.Node) -> None:
    """Refuse a syntax tree deeper than :data:`MAX_TREE_DEPTH` (a chain of hundreds of
    ``and`` or filters nests without brackets): Jinja's compiler recurses through it."""
    todo = [(tree, 1)]
    while todo:
        node, depth = todo.pop()
        if depth > MAX_TREE_DEPTH:
            raise TemplateProblem(
                f"the template is nested too deeply (more than {MAX_TREE_DEPTH} levels of "
                "operators, filters and blocks); split it, for example with {% set %}",
                node.lineno or 1,
            )
        todo.extend((child, depth + 1) for child in node.iter_child_nodes())


def _check_caps(tree: nodes.Node) -> None:
    found = (
        caps.recursion_problem(tree)
        or caps.static_problem(tree, TEXT_ENV)
        or budget.loop_problem(tree)
    )
    if found:
        raise TemplateProblem(*found)


@functools.lru_cache(maxsize=4096)
def parse_expression(source: str) -> nodes.Expr:
    """Parse a bare Jinja expression such as ``params.service == 'api'``."""
    from jinja2 import TemplateSyntaxError

    _check_nesting(source, expression=True)
    try:
        parser = Parser(TEXT_ENV, source, state="variable")
        expr = parser.parse_expression()
        if not parser.stream.eos:
            token = parser.stream.current
            raise TemplateSyntaxError(
                f"unexpected {token.value!r} after the expression", token.lineno
            )
    except TemplateSyntaxError as exc:
        raise TemplateProblem(exc.message or "syntax error", exc.lineno or 1) from None
    except RecursionError:
        raise TemplateProblem("the expression is nested too deeply") from None
    _check_depth(expr)
    _check_forbidden(expr)
    _check_caps(expr)
    return expr


def check_compiles(source: str, *, command: bool) -> None:
    """Check a template as the compiler would: it parses, and every filter and test it
    names exists; :class:`TemplateProblem` if not. (Compiling to Python is left to the first
    render: at validation it cost a millisecond per template, most of the time of a large
    runbook.)"""
    _check_names(parse_template(source))


def check_expression_compiles(source: str) -> None:
    """Check a bare expression as the compiler would; :class:`TemplateProblem` if not."""
    _check_names(parse_expression(source))


def _check_names(tree: nodes.Node) -> None:
    env = TEXT_ENV
    for node in tree.find_all((nodes.Filter, nodes.Test)):
        item: Any = node
        if isinstance(item, nodes.Filter) and item.name not in env.filters:
            raise TemplateProblem(f"No filter named {item.name!r}.", item.lineno or 1)
        if isinstance(item, nodes.Test) and item.name not in env.tests:
            raise TemplateProblem(f"No test named {item.name!r}.", item.lineno or 1)


@dataclass(frozen=True)
class Reference:
    """A variable path a template reads: ``steps.check.outputs.version`` is
    ``Reference("steps", ("check", "outputs", "version"), lineno)``. ``dynamic`` is true when
    the path continues with a computed key that cannot be checked statically."""

    root: str
    path: tuple[str, ...]
    lineno: int
    dynamic: bool = False


def _chain(node: nodes.Node) -> tuple[str, list[str], bool] | None:
    """The (root name, attribute path, dynamic) of a Getattr/Getitem chain, or None."""
    path: list[str] = []
    dynamic = False
    current: nodes.Node = node
    while True:
        if isinstance(current, nodes.Getattr):
            path.append(current.attr)
            current = current.node
        elif isinstance(current, nodes.Getitem):
            arg = current.arg
            if isinstance(arg, nodes.Const) and isinstance(arg.value, str | int):
                path.append(str(arg.value))
            else:
                path.clear()
                dynamic = True
            current = current.node
        elif isinstance(current, nodes.Name):
            path.reverse()
            return current.name, path, dynamic
        else:
            return None


def references(tree: nodes.Node) -> tuple[set[str], list[Reference]]:
    """Names a template reads from its context, and every attribute path it reads.

    The first set holds the top-level names read before any local assignment (Jinja's
    ``find_undeclared_variables``); the list holds maximal attribute chains rooted at those
    names, for checking that ``params.X`` and ``steps.Y`` exist.
    """
    undeclared = _undeclared(tree)
    inner: set[int] = set()
    for chained in tree.find_all((nodes.Getattr, nodes.Getitem)):
        inner.add(id(getattr(chained, "node", None)))
    refs: list[Reference] = []
    for node in tree.find_all((nodes.Getattr, nodes.Getitem, nodes.Name)):
        if id(node) in inner:
            continue
        if isinstance(node, nodes.Name) and node.ctx != "load":
            continue
        found = _chain(node)
        if found is None:
            continue
        root, path, dynamic = found
        if root not in undeclared:
            continue
        refs.append(Reference(root, tuple(path), node.lineno or 1, dynamic))
    return undeclared, refs


_SIMPLE_EXPR: Final = re.compile(
    r"\{\{ *([A-Za-z][A-Za-z0-9_]*(?:\.[A-Za-z][A-Za-z0-9_]*)*)((?: *\| *[a-z_]+)*) *\}\}"
)
_CONSTANT_NAMES: Final = frozenset({"true", "false", "none", "True", "False", "None"})


def simple_references(source: str) -> tuple[set[str], list[Reference]] | None:
    """:func:`references` of a template made only of text and ``{{ a.b.c | filter }}``
    (what most runbook templates are), found without parsing it; ``None`` for any other
    template. Parsing costs a millisecond per template: a runbook of thousands of steps
    validates in linear time either way, but this keeps the constant small."""
    if "{%" in source or "{#" in source:
        return None
    undeclared: set[str] = set()
    refs: list[Reference] = []
    last = 0
    for match in _SIMPLE_EXPR.finditer(source):
        between = source[last : match.start()]
        if "{{" in between or "}}" in between:
            return None
        dotted, filters = match.group(1), match.group(2)
        root, *path = dotted.split(".")
        if root in _CONSTANT_NAMES:
            return None
        for name in filters.replace("|", " ").split():
            if name not in TEXT_ENV.filters:
                return None
        undeclared.add(root)
        lineno = source.count("\n", 0, match.start()) + 1
        refs.append(Reference(root, tuple(path), lineno))
        last = match.end()
    tail = source[last:]
    if "{{" in tail or "}}" in tail:
        return None
    return undeclared, refs


def _undeclared(tree: nodes.Node) -> set[str]:
    from jinja2 import meta

    if isinstance(tree, nodes.Template):
        return set(meta.find_undeclared_variables(tree))
    wrapper = nodes.Template([nodes.Output([tree])], lineno=1)
    wrapper.set_environment(TEXT_ENV)
    return set(meta.find_undeclared_variables(wrapper))


def _compile(make: Any) -> Any:
    """Compile with ``make()``; what Python's own compiler refuses is a template error."""
    try:
        return make()
    except (SyntaxError, RecursionError, MemoryError) as exc:
        raise SecurityError(f"the template cannot be compiled: {exc}") from None


@functools.lru_cache(maxsize=4096)
def _compiled(source: str, command: bool) -> Any:
    env = COMMAND_ENV if command else TEXT_ENV
    return _compile(lambda: env.from_string(source))


@functools.lru_cache(maxsize=4096)
def _compiled_expression(source: str) -> Any:
    return _compile(lambda: TEXT_ENV.compile_expression(source, undefined_to_none=False))


def render(source: str, variables: Mapping[str, object], *, command: bool) -> str:
    """Render a template; Jinja and Python errors propagate for the caller to wrap.

    With ``command=True`` every ``{{ ... }}`` value is shell-quoted unless marked ``raw``.
    """
    return "".join(render_chunks(source, variables, command=command))


def render_chunks(source: str, variables: Mapping[str, object], *, command: bool) -> list[str]:
    """Like :func:`render`, as the chunks Jinja produces: each run of literal template text
    and each ``{{ ... }}`` value (finalized) is one chunk (see :mod:`ledger.run.secretflow`)."""
    template = _compiled(source, command)
    chunks: list[str] = []
    size = 0
    try:
        with budget.metered():
            for chunk in template.root_render_func(template.new_context(dict(variables))):
                size += len(chunk)
                if size > MAX_RENDERED:
                    raise SecurityError(
                        f"the rendered text is longer than {MAX_RENDERED} characters"
                    )
                chunks.append(chunk)
    except RecursionError:
        raise SecurityError("the template recurses too deeply") from None
    except MemoryError:
        raise SecurityError("the template needs more memory than there is") from None
    return chunks


def evaluate(source: str, variables: Mapping[str, object]) -> object:
    """Evaluate a bare expression; Jinja and Python errors propagate."""
    expression = _compiled_expression(source)
    try:
        with budget.metered():
            result: object = expression(**dict(variables))
    except RecursionError:
        raise SecurityError("the expression recurses too deeply") from None
    except MemoryError:
        raise SecurityError("the expression needs more memory than there is") from None
    return result


__all__ = [
    "BUILTIN_NAMES",
    "COMMAND_ENV",
    "MAX_RENDERED",
    "TEXT_ENV",
    "Namespace",
    "Raw",
    "Reference",
    "StrictUndefinedType",
    "TemplateProblem",
    "check_compiles",
    "check_expression_compiles",
    "evaluate",
    "is_template",
    "parse_expression",
    "parse_template",
    "references",
    "render",
    "render_chunks",
    "to_text",
]
