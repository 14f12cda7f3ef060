"""The work budget of one template rendering: loop iterations, CPU time and value sizes.

The caps of :mod:`ledger.runbook.caps` bound what one operation may build; this module
bounds what a whole rendering may do, because nested loops (``{% for %}`` in
``{% for %}``), loops with expensive bodies and values doubled step by step (``ns.s ~
ns.s``) are each harmless once and unbounded together:

* all the loops of one rendering together run at most :data:`MAX_LOOP_ITERATIONS`
  iterations (recursive loops and items a loop's ``if`` skips included);
* one rendering uses at most :data:`MAX_RENDER_SECONDS` of CPU time, checked as loop
  iterations, calls, filters and operators add up (each weighs one, plus one for every
  Ki characters or items of its values; the clock is read every :data:`_CLOCK_EVERY` of
  that weight: reading it costs microseconds);
* every value a call, filter, operator, ``~``, list or dict literal, macro or block builds
  is at most :data:`caps.MAX_REPEAT` characters or items, counted through nested lists and
  dicts (so that a list holding itself twice, forty times over, is refused before anything
  prints or compares it).

Each refusal is an :class:`OverBudget` (a Jinja ``SecurityError``): the render fails with a
clear message, which validation, the plan and a run report like the other caps. The budget
is active while :func:`metered` is (``templating.render``, ``render_chunks`` and
``evaluate`` use it); the compiled templates reach it through the sandbox's methods, which
:class:`MeteredCodeGenerator` makes them call.

:func:`loop_problem` finds, without rendering, loops over constant ranges whose product is
over the budget (``ledger validate`` reports them as template errors).
"""

from __future__ import annotations

import contextlib
import contextvars
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Final

from jinja2 import nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.exceptions import SecurityError
from jinja2.runtime import LoopContext

from ledger.runbook import caps

#: Loop iterations one rendering may run, all loops together.
MAX_LOOP_ITERATIONS: Final = 1_000_000
#: Deepest nesting of ``{% for %}`` loops (each is a Python block: Python allows 20).
MAX_LOOP_NESTING: Final = 16
#: CPU time one rendering may use (seconds, of the rendering thread).
MAX_RENDER_SECONDS: Final = 2.0
#: The weight of work (iterations, calls, filters, operators, Ki of their values) between
#: two reads of the clock.
_CLOCK_EVERY: Final = 64


class OverBudget(SecurityError):
    """A rendering did more work than a template may."""


class Budget:
    """The work one rendering has done so far."""

    __slots__ = ("deadline", "iterations", "next_clock", "weight")

    def __init__(self) -> None:
        self.iterations = 0
        self.weight = 0
        self.next_clock = _CLOCK_EVERY
        self.deadline = time.thread_time() + MAX_RENDER_SECONDS

    def step(self, weight: int = 1) -> None:
        self.weight += weight
        if self.weight < self.next_clock:
            return
        self.next_clock = self.weight + _CLOCK_EVERY
        if time.thread_time() > self.deadline:
            raise OverBudget(
                f"the template used more than {MAX_RENDER_SECONDS:g} s of CPU time; a runbook "
                "template may use at most that much. Do less work in the template (loop over "
                "less, or move the work into the step's command)"
            )

    def iterate(self, iterable: Iterable[Any]) -> Iterator[Any]:
        for item in iterable:
            self.iterations += 1
            if self.iterations > MAX_LOOP_ITERATIONS:
                raise OverBudget(
                    f"the template ran more than {MAX_LOOP_ITERATIONS} loop iterations (all "
                    "its loops together); a runbook template may run at most that many. Loop "
                    "over less, or move the work into the step's command"
                )
            self.step()
            yield item


_CURRENT: contextvars.ContextVar[Budget | None] = contextvars.ContextVar(
    "ledger_template_budget", default=None
)


@contextlib.contextmanager
def metered() -> Iterator[Budget]:
    """A fresh budget for the rendering inside the ``with`` (an enclosing one is kept)."""
    outer = _CURRENT.get()
    if outer is not None:
        yield outer
        return
    budget = Budget()
    token = _CURRENT.set(budget)
    try:
        yield budget
    finally:
        _CURRENT.reset(token)


def step(*values: object) -> None:
    """Count one call, filter or operator on ``values`` (nothing outside :func:`metered`)."""
    budget = _CURRENT.get()
    if budget is not None:
        weight = 1
        for value in values:
            if isinstance(value, str | bytes | list | tuple | dict | set | frozenset | range):
                weight += len(value) >> 10
        budget.step(weight)


def counted(iterable: Any) -> Any:
    """What a ``for`` loop iterates: ``iterable``, counted against the budget."""
    budget = _CURRENT.get()
    if budget is None:
        return iterable
    return budget.iterate(iterable)


def count_recursion(obj: Any, args: tuple[Any, ...]) -> tuple[Any, ...]:
    """The arguments of a call, with a recursive loop's (``loop(children)``) iterable
    counted like any loop's."""
    if isinstance(obj, LoopContext) and args:
        return (counted(args[0]), *args[1:])
    return args


# -- value sizes -------------------------------------------------------------------------


def _size(value: object, limit: int) -> int:
    """The size of ``value`` counted through nested containers, up to just over ``limit``
    (it stops there, so the work is at most ``limit`` steps)."""
    total = 0
    todo = [value]
    while todo:
        item = todo.pop()
        if isinstance(item, str | bytes):
            total += len(item)
        elif isinstance(item, list | tuple | set | frozenset):
            total += len(item) + 1
            if total <= limit:
                todo.extend(item)
        elif isinstance(item, dict):
            total += 2 * len(item) + 1
            if total <= limit:
                todo.extend(item.keys())
                todo.extend(item.values())
        else:
            total += 1
        if total > limit:
            break
    return total


def checked(value: Any) -> Any:
    """``value``, if its size is within :data:`caps.MAX_REPEAT`; :class:`OverBudget` if not."""
    if isinstance(value, list | tuple | dict | set | frozenset) or (
        isinstance(value, str) and len(value) > caps.MAX_REPEAT
    ):
        size = _size(value, caps.MAX_REPEAT)
        budget = _CURRENT.get()
        if budget is not None:
            budget.step(size >> 10)
        if size > caps.MAX_REPEAT:
            raise OverBudget(
                f"the template built a value of more than {caps.MAX_REPEAT} characters or "
                "items (counted through nested lists); a runbook template may build at most "
                "that much"
            )
    return value


def joined(parts: Iterable[Any]) -> str:
    """``"".join`` of a macro's, block's or ``~``'s parts, within :data:`caps.MAX_REPEAT`."""
    texts = [p if isinstance(p, str) else str(checked(p)) for p in parts]
    if sum(len(t) for t in texts) > caps.MAX_REPEAT:
        raise OverBudget(
            f"the template joined text of more than {caps.MAX_REPEAT} characters; a runbook "
            "template may build at most that much"
        )
    step(*texts)
    return "".join(texts)


def metered_filter(function: Callable[..., Any]) -> Callable[..., Any]:
    """A filter that counts as a step and whose result is size-checked."""

    def metered(*args: Any, **kwargs: Any) -> Any:
        step(*args, *kwargs.values())
        return checked(function(*args, **kwargs))

    for attr in ("jinja_pass_arg", "jinja_async_variant"):
        if hasattr(function, attr):
            setattr(metered, attr, getattr(function, attr))
    metered.__name__ = getattr(function, "__name__", "filter")
    return metered


# -- compiled templates ------------------------------------------------------------------


class MeteredCodeGenerator(CodeGenerator):
    """Jinja's code generator, with every loop's iterable counted, every list, tuple and dict
    literal size-checked, and ``~`` joins going through :func:`joined` (the sandbox's
    ``metered_*`` methods)."""

    def visit_Template(self, node: nodes.Template, frame: Frame | None = None) -> None:
        super().visit_Template(node, frame)
        # '~' joins with str_join, imported from jinja2.runtime at the top of the module and
        # looked up when the functions run, after this line. (Macros and blocks join with
        # environment.concat, which the sandbox sets.)
        self.writeline("str_join = environment.metered_join")

    def visit_For(self, node: nodes.For, frame: Frame) -> None:
        # Jinja allows no new node types: the iterable becomes a call of the sandbox's
        # metered_iter, for the time the loop is compiled.
        original = node.iter
        counter = nodes.EnvironmentAttribute("metered_iter", lineno=original.lineno)
        node.iter = nodes.Call(counter, [original], [], None, None, lineno=original.lineno)
        try:
            super().visit_For(node, frame)
        finally:
            node.iter = original

    def _checked(self, visit: Callable[[Any, Frame], None], node: Any, frame: Frame) -> None:
        if getattr(node, "ctx", "load") != "load":
            visit(node, frame)
            return
        self.write("environment.metered_value(")
        visit(node, frame)
        self.write(")")

    def visit_List(self, node: nodes.List, frame: Frame) -> None:
        self._checked(super().visit_List, node, frame)

    def visit_Tuple(self, node: nodes.Tuple, frame: Frame) -> None:
        self._checked(super().visit_Tuple, node, frame)

    def visit_Dict(self, node: nodes.Dict, frame: Frame) -> None:
        self._checked(super().visit_Dict, node, frame)


# -- static check ------------------------------------------------------------------------


def _constant_range(node: nodes.Node) -> int | None:
    """How many items ``range(<constants>)`` has, or None for any other iterable."""
    if not (
        isinstance(node, nodes.Call)
        and isinstance(node.node, nodes.Name)
        and node.node.name == "range"
        and not node.kwargs
        and node.dyn_args is None
        and node.dyn_kwargs is None
        and all(isinstance(a, nodes.Const) and isinstance(a.value, int) for a in node.args)
    ):
        return None
    values: list[int] = [a.value for a in node.args]  # type: ignore[attr-defined]
    try:
        return len(range(*values))
    except (TypeError, ValueError, OverflowError):
        return None


def loop_problem(tree: nodes.Node) -> tuple[str, int] | None:
    """Loops nested more than :data:`MAX_LOOP_NESTING` deep, or over constant ranges nested
    so that they would run more than :data:`MAX_LOOP_ITERATIONS` iterations: (message,
    line)."""
    todo: list[tuple[nodes.Node, int, int]] = [(tree, 1, 0)]
    while todo:
        node, factor, depth = todo.pop()
        if not isinstance(node, nodes.For):
            todo.extend((child, factor, depth) for child in node.iter_child_nodes())
            continue
        if depth >= MAX_LOOP_NESTING:
            return f"loops are nested more than {MAX_LOOP_NESTING} deep", node.lineno or 1
        inner = factor * (_constant_range(node.iter) or 1)
        if inner > MAX_LOOP_ITERATIONS:
            return (
                f"these loops would run {inner} loop iterations; a runbook template may run "
                f"at most {MAX_LOOP_ITERATIONS} (all its loops together)",
                node.lineno or 1,
            )
        todo.extend((body, inner, depth + 1) for body in node.body)
        todo.extend((other, factor, depth) for other in (node.iter, *node.else_))
    return None
