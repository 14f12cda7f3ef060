"""The run-time template state: :class:`TemplateContext` and the renderers.

The engine resolves parameters (:func:`ledger.runbook.resolve_parameters`), keeps the state
of the run in a :class:`TemplateContext`, and renders with :func:`render_command`,
:func:`step_environment`, :func:`render_cwd`, :func:`render_lock`,
:func:`render_approval_message` and :func:`evaluate_condition`. Every renderer returns the
real text (for execution) and a redacted one (for the ledger), where each secret parameter
is ``[REDACTED:name]``. A step's declared outputs are read by :mod:`ledger.run.outputs`.

Moved here from the load-time parser: a runbook is read once, and this is the state that
changes at every step of a run.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final

from jinja2 import TemplateError

from ledger import errors
from ledger import redact as ledger_redact
from ledger import runbook as ledger_runbook
from ledger.run import secretflow
from ledger.run import trigger as run_trigger
from ledger.runbook import templating


@dataclass
class StepState:
    """What templates see of a step: ``steps.NAME.*`` (finished) or ``step.*`` (current)."""

    name: str = ""
    status: str = "pending"
    exit_code: int | None = None
    outputs: dict[str, str] = field(default_factory=dict)
    attempt: int = 0


@dataclass(frozen=True)
class RenderedText:
    """A rendered template: ``text`` for execution, ``redacted`` for the ledger."""

    text: str
    redacted: str


@dataclass(frozen=True)
class RenderedCommand:
    """A rendered ``run`` command: ``text`` to execute, ``redacted`` to record."""

    text: str
    redacted: str


@dataclass(frozen=True)
class RenderedEnv:
    """Environment variables a step adds: ``values`` for execution, ``redacted`` to record."""

    values: dict[str, str]
    redacted: dict[str, str]


class TemplateContext:
    """The state templates read during one run.

    The engine creates one per run, sets :attr:`current` to the step being run (or lets the
    renderers do it), and records each finished step with :meth:`finish`. ``environ`` is
    read for the runbook's ``capture_env`` names and for the tool's own credentials (see
    :func:`ledger.run.trigger.tool_secrets`), which are secrets too and never captured.
    With ``dry_run=True`` every declared output of every step reads as a placeholder
    ``<steps.NAME.outputs.KEY>``, so a plan can render every command before anything ran.
    """

    def __init__(
        self,
        runbook: ledger_runbook.Runbook,
        params: ledger_runbook.ResolvedParams,
        *,
        run_id: str = "",
        incident: str | None = None,
        trigger: str | None = None,
        environ: Mapping[str, str] | None = None,
        dry_run: bool = False,
    ) -> None:
        env = os.environ if environ is None else environ
        self.runbook = runbook
        self.params = params
        self.run_id = run_id
        self.incident = incident
        self.trigger = trigger
        self.failed_step: str | None = None
        self.captured_env: dict[str, str] = {
            name: env[name]
            for name in runbook.capture_env
            if name in env and name not in run_trigger.PRIVATE_ENV
        }
        self._secrets = {**run_trigger.tool_secrets(env), **params.secrets()}
        self._param_secrets = tuple(params.secrets())
        self._derived: dict[tuple[str, str], None] = {}
        self._redactor: tuple[int, ledger_redact.Redactor] | None = None
        self.steps: dict[str, StepState] = {}
        for step in runbook.all_steps:
            outputs = (
                {key: f"<steps.{step.name}.outputs.{key}>" for key in step.outputs}
                if dry_run
                else {}
            )
            self.steps[step.name] = StepState(name=step.name, outputs=outputs)
        self.current: StepState | None = None
        self._runbook_env: dict[_Key, dict[str, str]] = {}
        self._runbook_env_shown: dict[str, RenderedText] | None = None
        # ``steps`` as templates see it, per variant (real, placeholders): each step's
        # namespace is built when its state changes, not at every render (a long runbook
        # would otherwise rebuild every earlier step's at every step).
        self._steps_data: dict[_Key, dict[str, object]] = {}
        self._steps_ns: dict[_Key, templating.Namespace] = {}

    # ----- state updates

    def begin(self, step: ledger_runbook.Step, attempt: int = 1) -> StepState:
        """Make ``step`` the current step (``step.*`` in templates), at ``attempt``."""
        self.current = StepState(name=step.name, status="running", attempt=attempt)
        return self.current

    def finish(
        self,
        step: ledger_runbook.Step | str,
        status: str,
        exit_code: int | None = None,
        outputs: Mapping[str, str] | None = None,
    ) -> None:
        """Record a finished (or skipped) step so later templates read ``steps.NAME.*``."""
        name = step if isinstance(step, str) else step.name
        self.steps[name] = StepState(
            name=name, status=status, exit_code=exit_code, outputs=dict(outputs or {})
        )
        for key, data in self._steps_data.items():
            data[name] = self._one_step_ns(self.steps[name], dict(key))
        if self.current is not None and self.current.name == name:
            self.current = None

    def secrets(self) -> dict[str, str]:
        """Every secret of the run, name to value: secret parameters and the tool's own
        credentials found in the environment."""
        return dict(self._secrets)

    def add_derived(self, derived: Iterable[tuple[str, str]]) -> None:
        """Remember texts a template computed from a secret (name, text): redacted from
        then on, in records and in the output of commands (:meth:`redactor`)."""
        for pair in derived:
            self._derived.setdefault(pair, None)

    def derived(self) -> tuple[tuple[str, str], ...]:
        """Every text computed from a secret so far (see :meth:`add_derived`)."""
        return tuple(self._derived)

    def redactor(self) -> ledger_redact.Redactor:
        """A redactor for the run's secrets and every text computed from them so far."""
        if self._redactor is None or self._redactor[0] != len(self._derived):
            self._redactor = (
                len(self._derived),
                ledger_redact.Redactor(self._secrets, self._derived),
            )
        return self._redactor[1]

    def secret_params(self) -> tuple[str, ...]:
        """The secret parameters that have a value: what templates can read."""
        return self._param_secrets

    # ----- variables

    def _current_for(self, step: ledger_runbook.Step | None) -> StepState:
        if step is None:
            return self.current or StepState()
        if self.current is not None and self.current.name == step.name:
            return self.current
        return StepState(name=step.name)

    def runbook_env(self, vary: secretflow.Vary | None = None) -> dict[str, str]:
        """The runbook's top-level ``env``, rendered (with the secrets in ``vary`` replaced by
        placeholders; see :mod:`ledger.run.secretflow`)."""
        key = _key(vary)
        if not key:
            return {k: v.text for k, v in self.runbook_env_shown().items()}
        if key not in self._runbook_env:
            variables = {"params": self._params_ns(dict(key)), "run": self._run_ns()}
            self._runbook_env[key] = {
                name: templating.render(value, variables, command=False)
                for name, value in self.runbook.env.items()
            }
        return self._runbook_env[key]

    def runbook_env_shown(self) -> dict[str, RenderedText]:
        """The runbook's top-level ``env``, rendered, real and redacted."""
        if self._runbook_env_shown is None:
            shown: dict[str, RenderedText] = {}
            for name, value in self.runbook.env.items():

                def chunks(vary: secretflow.Vary, value: str = value) -> list[str]:
                    variables = {"params": self._params_ns(vary), "run": self._run_ns()}
                    return templating.render_chunks(value, variables, command=False)

                shown[name] = _split(
                    self, chunks, command=False, where=f"{self.runbook.source}: env.{name}"
                )
            self._runbook_env_shown = shown
        return self._runbook_env_shown

    def _one_step_ns(self, state: StepState, vary: secretflow.Vary) -> templating.Namespace:
        """``steps.NAME`` for one step's state (outputs redacted for the varied secrets)."""
        hidden = {name: self._secrets[name] for name in vary}
        outputs = {k: ledger_redact.redact(v, hidden) for k, v in state.outputs.items()}
        return templating.Namespace(
            {
                "exit_code": state.exit_code,
                "status": state.status,
                "outputs": templating.Namespace(outputs, f"steps.{state.name}.outputs"),
            },
            f"steps.{state.name}",
        )

    def _steps_view(self, vary: secretflow.Vary) -> templating.Namespace:
        key = _key(vary)
        if key not in self._steps_ns:
            data: dict[str, object] = {
                name: self._one_step_ns(state, vary) for name, state in self.steps.items()
            }
            self._steps_data[key] = data
            self._steps_ns[key] = templating.Namespace.view(data, "steps")
        return self._steps_ns[key]

    def _params_ns(self, vary: secretflow.Vary) -> templating.Namespace:
        values = dict(self.params.values)
        for name, which in vary.items():
            values[name] = secretflow.placeholder(values[name], which)
        return templating.Namespace(values, "params")

    def _run_ns(self) -> templating.Namespace:
        return templating.Namespace(
            {
                "id": self.run_id,
                "incident": self.incident,
                "trigger": self.trigger,
                "failed_step": self.failed_step,
            },
            "run",
        )

    def variables(
        self, step: ledger_runbook.Step | None = None, vary: secretflow.Vary | None = None
    ) -> dict[str, object]:
        """The template variables: params, steps, step, run, env (with the secrets in
        ``vary`` replaced by placeholders, step outputs redacted for them)."""
        vary = vary or {}
        hidden = {name: self._secrets[name] for name in vary}
        current = self._current_for(step)
        step_ns = templating.Namespace(
            {
                "name": current.name,
                "attempt": current.attempt,
                "exit_code": current.exit_code,
                "status": current.status,
                "outputs": templating.Namespace(
                    {k: ledger_redact.redact(v, hidden) for k, v in current.outputs.items()},
                    "step.outputs",
                ),
            },
            "step",
        )
        captured: dict[str, object] = {
            name: self.captured_env.get(name) for name in self.runbook.capture_env
        }
        env = {**captured, **self.runbook_env(vary)}
        return {
            "params": self._params_ns(vary),
            "steps": self._steps_view(vary),
            "step": step_ns,
            "run": self._run_ns(),
            "env": templating.Namespace(env, "env"),
        }


_Key = tuple[tuple[str, int], ...]


def _key(vary: secretflow.Vary | None) -> _Key:
    return tuple(sorted((vary or {}).items()))


_RENDER_ERRORS: Final = (TemplateError, ArithmeticError, TypeError, ValueError, LookupError)


def _split(
    context: TemplateContext,
    chunks: Callable[[secretflow.Vary], list[str]],
    *,
    command: bool,
    where: str,
) -> RenderedText:
    """Render real and redacted (see :mod:`ledger.run.secretflow`)."""

    def failed(detail: str) -> errors.RunbookError:
        return errors.RunbookError(
            f"{where}: the template cannot be rendered: {context.redactor().redact_text(detail)}.",
            hint="Fix the template in the runbook (check names with 'ledger validate'); a "
            "step's outputs exist only once it has run.",
        )

    text, shown, derived = secretflow.render_split(
        chunks,
        context.secret_params(),
        command=command,
        errors=_RENDER_ERRORS,
        on_error=failed,
    )
    context.add_derived(derived)
    if "\0" in text:
        raise errors.RunbookError(
            f"{where}: the rendered text contains a NUL byte.",
            hint="Check the values that flow into this template.",
        )
    return RenderedText(text=text, redacted=context.redactor().redact_text(shown))


def where_in_runbook(
    runbook: ledger_runbook.Runbook, step: ledger_runbook.Step, field_name: str
) -> str:
    """``FILE:LINE: step NAME (LIST[INDEX].FIELD)`` for messages about a step's field."""
    return _where(runbook, step, field_name)


def _where(runbook: ledger_runbook.Runbook, step: ledger_runbook.Step, field_name: str) -> str:
    list_name = "steps" if step.phase == "main" else step.phase
    return (
        f"{runbook.source}:{step.line}: step {step.name!r} ({list_name}[{step.index}].{field_name})"
    )


def render_template(
    source: str,
    context: TemplateContext,
    *,
    step: ledger_runbook.Step | None = None,
    command: bool = False,
    where: str = "template",
    names: tuple[str, ...] | None = None,
) -> RenderedText:
    """Render any runbook template: the real text, and the text to record and show, where
    every part computed from a secret is ``[REDACTED:name]`` (:mod:`ledger.run.secretflow`).
    ``names`` restricts the variables the template sees."""

    def chunks(vary: secretflow.Vary) -> list[str]:
        variables = context.variables(step, vary)
        if names is not None:
            variables = {k: v for k, v in variables.items() if k in names}
        return templating.render_chunks(source, variables, command=command)

    return _split(context, chunks, command=command, where=where)


def render_command(step: ledger_runbook.Step, context: TemplateContext) -> RenderedCommand:
    """The step's ``run`` with every ``{{ value }}`` shell-quoted (unless ``| raw``)."""
    if step.run is None:
        raise errors.RunbookError(
            f"{_where(context.runbook, step, 'run')}: an approval step has no command.",
            hint="Render commands of run steps only.",
        )
    rendered = render_template(
        step.run, context, step=step, command=True, where=_where(context.runbook, step, "run")
    )
    return RenderedCommand(text=rendered.text, redacted=rendered.redacted)


def render_cwd(step: ledger_runbook.Step, context: TemplateContext) -> RenderedText | None:
    """The step's working directory (``cwd`` or ``defaults.cwd``), or ``None``."""
    if step.cwd is None:
        return None
    return render_template(step.cwd, context, step=step, where=_where(context.runbook, step, "cwd"))


def step_environment(step: ledger_runbook.Step, context: TemplateContext) -> RenderedEnv:
    """Variables the step adds to the operator's environment, in increasing precedence:
    ``PARAM_<NAME>`` for every parameter, the runbook's ``env``, the step's ``env``."""
    book_env = context.runbook_env_shown()
    values = {**context.params.environment(), **{k: v.text for k, v in book_env.items()}}
    shown = {
        **context.params.redacted_environment(),
        **{k: v.redacted for k, v in book_env.items()},
    }
    for key, value in step.env.items():
        rendered = render_template(
            value, context, step=step, where=_where(context.runbook, step, f"env.{key}")
        )
        values[key] = rendered.text
        shown[key] = rendered.redacted
    redactor = context.redactor()
    return RenderedEnv(
        values=values, redacted={k: redactor.redact_text(v) for k, v in shown.items()}
    )


def render_lock(context: TemplateContext) -> RenderedText | None:
    """The run's lock name (``lock`` rendered: real, and redacted for records and plans), or
    ``None`` when the runbook has none."""
    runbook = context.runbook
    if runbook.lock is None:
        return None
    return render_template(
        runbook.lock, context, where=f"{runbook.source}: lock", names=("params", "env")
    )


def render_approval_message(
    step: ledger_runbook.Step, context: TemplateContext
) -> RenderedText | None:
    """The approval step's ``message``, rendered, or ``None`` when it has none."""
    if step.approval is None or step.approval.message is None:
        return None
    return render_template(
        step.approval.message,
        context,
        step=step,
        where=_where(context.runbook, step, "approval.message"),
    )


_COND_TRUE: Final = frozenset({"true", "yes", "1"})
_COND_FALSE: Final = frozenset({"false", "no", "0"})


def evaluate_condition(
    expr: str,
    context: TemplateContext,
    *,
    step: ledger_runbook.Step | None = None,
    field_name: str = "when",
) -> bool:
    """Evaluate a ``when`` / ``until`` condition.

    A string with Jinja markup (``{{ params.x == 'a' }}``) is rendered and must give
    ``true``/``false`` (also ``yes``/``no``/``1``/``0``, any case, surrounding space
    ignored). Otherwise it is a bare expression (``params.x == 'a'``) that must give a
    boolean (or one of those strings, or the integers 0 and 1). Anything else is a
    :class:`RunbookError`. Messages show nothing computed from a secret.
    """
    where = (
        _where(context.runbook, step, field_name)
        if step is not None
        else f"{context.runbook.source}: {field_name}"
    )
    names = context.secret_params()

    def evaluate(vary: secretflow.Vary) -> object:
        value = templating.evaluate(expr, context.variables(step, vary))
        if isinstance(value, templating.StrictUndefinedType):
            str(value)  # raises UndefinedError with the name
        return value

    result: object
    if templating.is_template(expr):
        rendered = render_template(expr, context, step=step, where=where)
        result, shown = rendered.text, rendered.redacted
    else:
        try:
            result = evaluate({})
        except _RENDER_ERRORS as exc:
            detail = context.redactor().redact_text(
                secretflow.error_shown(exc, evaluate, names, _RENDER_ERRORS)
            )
            raise errors.RunbookError(
                f"{where}: the condition {expr!r} cannot be evaluated: {detail}.",
                hint="Fix the condition in the runbook (check it with 'ledger validate').",
            ) from None
        shown = ""
    if isinstance(result, bool):
        return result
    if isinstance(result, int) and result in (0, 1):
        return bool(result)
    if isinstance(result, str | templating.Raw):
        word = result.strip().lower()
        if word in _COND_TRUE:
            return True
        if word in _COND_FALSE:
            return False
    if not templating.is_template(expr):
        shown = secretflow.result_shown(
            evaluate, names, result, as_text=templating.to_text, errors=_RENDER_ERRORS
        )
    shown = context.redactor().redact_text(shown)
    gave = (
        "a value computed from a secret (not shown)"
        if shown == secretflow.WITHHELD
        else repr(shown)
    )
    raise errors.RunbookError(
        f"{where}: the condition {expr!r} gave {gave}, which is neither true nor false.",
        hint="Write a comparison such as params.service == 'api' or steps.check.exit_code == 0.",
    )


def should_run(step: ledger_runbook.Step, context: TemplateContext) -> bool:
    """Whether the step's ``when`` allows it to run (true when it has none)."""
    if step.when is None:
        return True
    return evaluate_condition(step.when, context, step=step, field_name="when")


def attempt_succeeded(step: ledger_runbook.Step, context: TemplateContext) -> bool:
    """Whether the current attempt succeeded: its ``until`` if set, else exit code 0.

    Set ``context.current`` (see :meth:`TemplateContext.begin`) with the attempt's
    ``exit_code`` and ``outputs`` first.
    """
    current = context._current_for(step)
    if step.until is None:
        return current.exit_code == 0
    return evaluate_condition(step.until, context, step=step, field_name="until")


__all__ = [
    "RenderedCommand",
    "RenderedEnv",
    "RenderedText",
    "StepState",
    "TemplateContext",
    "attempt_succeeded",
    "evaluate_condition",
    "render_approval_message",
    "render_command",
    "render_cwd",
    "render_lock",
    "render_template",
    "should_run",
    "step_environment",
]
