"""Semantic checks: the rules the JSON Schema cannot express, and building the model.

After the schema, :func:`build` checks typed defaults and choices, parameter patterns and
bounds, unique step names, durations, output definitions, and every template: that it
parses, compiles, and only reads parameters that exist and steps that ran before it
(:class:`_Scope` says what each template may read). It returns the fields of a
:class:`~ledger.runbook.model.Runbook` together with every problem found.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from ledger.runbook import caps, model, problems, templating

ALL_ROOTS: Final = frozenset({"params", "steps", "step", "run", "env"})
STEP_ATTRS: Final = frozenset({"exit_code", "status", "outputs"})
CURRENT_ATTRS: Final = frozenset({"name", "attempt", "exit_code", "status", "outputs"})
RUN_ATTRS: Final = frozenset({"id", "incident", "trigger", "failed_step"})
_APPROVAL_STEP_FIELDS: Final = frozenset({"name", "description", "approval", "when"})

_TYPE_CHECK: Final[dict[str, Callable[[object], bool]]] = {
    "string": lambda v: isinstance(v, str),
    "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "bool": lambda v: isinstance(v, bool),
}


@dataclass
class _Scope:
    """What a template may read."""

    what: str
    roots: frozenset[str]
    params: frozenset[str]
    env_names: frozenset[str]
    earlier: Mapping[str, frozenset[str]] = field(default_factory=dict)  # step -> outputs
    later: Mapping[str, frozenset[str]] = field(default_factory=dict)
    current: str | None = None
    current_outputs: frozenset[str] = frozenset()


class _Checker:
    def __init__(self, where: problems.Locator) -> None:
        self.where = where
        self.problems: list[problems.Problem] = []

    def add(self, path: problems.FieldPath, message: str, *, key: bool = False) -> None:
        self.problems.append(self.where.problem(path, message, key=key))

    # ----- templates

    def template(self, source: str, path: problems.FieldPath, scope: _Scope, *, kind: str) -> None:
        """Check a template (kind command/text) or condition (kind condition)."""
        simple = templating.simple_references(source) if kind != "condition" else None
        if simple is not None:
            self._references(simple[0], simple[1], path, scope)
            return
        try:
            if kind == "condition" and not templating.is_template(source):
                tree: Any = templating.parse_expression(source)
                templating.check_expression_compiles(source)
            else:
                tree = templating.parse_template(source)
                templating.check_compiles(source, command=kind == "command")
        except templating.TemplateProblem as exc:
            self.problems.append(
                self.where.template_problem(path, f"template error: {exc.message}", exc.lineno)
            )
            return
        undeclared, refs = templating.references(tree)
        self._references(undeclared, refs, path, scope)

    def _references(
        self,
        undeclared: set[str],
        refs: list[templating.Reference],
        path: problems.FieldPath,
        scope: _Scope,
    ) -> None:
        """Every name and variable path a template reads exists in its scope."""
        for name in sorted(undeclared - templating.BUILTIN_NAMES):
            if name in scope.roots:
                continue
            if name in ALL_ROOTS:
                message = f"'{name}' is not available in {scope.what}"
            else:
                message = (
                    f"unknown variable {name!r}{problems.suggest(name, scope.roots)}; "
                    f"{scope.what} can use: {', '.join(sorted(scope.roots))}"
                )
            self.problems.append(self.where.template_problem(path, message, 1))
        for ref in refs:
            if ref.root not in scope.roots:
                continue
            found = _reference_problem(ref, scope)
            if found:
                self.problems.append(self.where.template_problem(path, found, ref.lineno))

    # ----- parameters

    def parameters(self, raw: Mapping[str, Any]) -> dict[str, model.Parameter]:
        params: dict[str, model.Parameter] = {}
        seen_env: dict[str, str] = {}
        for name, spec in raw.items():
            env_name = model.PARAM_ENV_PREFIX + name.upper()
            if env_name in seen_env:
                self.add(
                    ("parameters", name),
                    f"parameters {name!r} and {seen_env[env_name]!r} both map to the "
                    f"environment variable {env_name}; rename one",
                    key=True,
                )
            seen_env[env_name] = name
            params[name] = self.parameter(name, spec)
        return params

    def parameter(self, name: str, spec: Mapping[str, Any]) -> model.Parameter:
        """One parameter, once its default and constraints agree with its type."""
        base: problems.FieldPath = ("parameters", name)
        ptype: model.ParamType = spec.get("type", "string")
        default = spec.get("default")
        choices = spec.get("choices")
        secret = bool(spec.get("secret", False))
        self._typed_values(base, ptype, default, choices)
        if secret and default is not None:
            self.add(
                (*base, "default"),
                "a secret parameter cannot have a default: its value would be in the "
                "runbook file; read it with from_env or from_file, or pass -p",
            )
        required = spec.get("required")
        if required is True and default is not None:
            self.add(
                (*base, "required"),
                "a parameter with a default is never missing; remove 'required' or 'default'",
            )
        pattern = spec.get("pattern")
        if pattern is not None:
            self._pattern(base, ptype, pattern, default)
        self._bounds(base, ptype, spec, default)
        return model.Parameter(
            name=name,
            type=ptype,
            default=default,
            choices=list(choices) if choices is not None else None,
            description=spec.get("description"),
            secret=secret,
            from_env=spec.get("from_env"),
            from_file=spec.get("from_file"),
            required=required if required is not None else default is None,
            pattern=pattern,
            min=spec.get("min"),
            max=spec.get("max"),
            line=self.where.loc(base, key=True)[0],
        )

    def _typed_values(
        self,
        base: problems.FieldPath,
        ptype: model.ParamType,
        default: object,
        choices: list[object] | None,
    ) -> None:
        """The default and the choices are of the parameter's type; the default is a choice."""
        check = _TYPE_CHECK[ptype]
        if default is not None and not check(default):
            self.add(
                (*base, "default"),
                f"the default must be of type {ptype}, got {problems.describe(default)}"
                + (" (quote it to make it text)" if ptype == "string" else ""),
            )
        if choices is not None:
            for i, choice in enumerate(choices):
                if not check(choice):
                    self.add(
                        (*base, "choices", i),
                        f"a choice must be of type {ptype}, got {problems.describe(choice)}",
                    )
            if default is not None and default not in choices:
                self.add(
                    (*base, "default"),
                    f"the default {default!r} is not one of the choices "
                    f"({', '.join(str(c) for c in choices)})",
                )

    def _pattern(
        self, base: problems.FieldPath, ptype: model.ParamType, pattern: str, default: object
    ) -> None:
        """The pattern applies to a string, compiles, and matches the default."""
        if ptype != "string":
            self.add((*base, "pattern"), "'pattern' applies to string parameters only")
            return
        problem = caps.regex_problem(pattern)
        if problem is not None:
            self.add((*base, "pattern"), problem)
        elif isinstance(default, str):
            try:
                matches = caps.fullmatch(pattern, default)
            except caps.SlowPattern as exc:
                self.add((*base, "default"), str(exc))
                return
            if not matches:
                self.add(
                    (*base, "default"),
                    f"the default {default!r} does not match the pattern",
                )

    def _bounds(
        self,
        base: problems.FieldPath,
        ptype: model.ParamType,
        spec: Mapping[str, Any],
        default: object,
    ) -> None:
        """``min``/``max`` apply to an int, are in order, and hold the default."""
        minimum, maximum = spec.get("min"), spec.get("max")
        for bound in ("min", "max"):
            if bound in spec and ptype != "int":
                self.add((*base, bound), f"'{bound}' applies to int parameters only")
        if minimum is not None and maximum is not None and minimum > maximum:
            self.add((*base, "max"), f"max {maximum} is less than min {minimum}")
        if isinstance(default, int) and not isinstance(default, bool):
            if minimum is not None and default < minimum:
                self.add((*base, "default"), f"the default {default} is less than min")
            if maximum is not None and default > maximum:
                self.add((*base, "default"), f"the default {default} is more than max")

    # ----- steps

    def duration(
        self, value: object, path: problems.FieldPath, *, positive: bool = False
    ) -> float | None:
        try:
            seconds = model.parse_duration(value)
        except ValueError as exc:
            self.add(path, str(exc))
            return None
        if positive and seconds <= 0:
            self.add(path, "must be more than zero")
            return None
        return seconds

    def step(
        self, raw: Mapping[str, Any], index: int, phase: model.Phase, defaults: Mapping[str, Any]
    ) -> model.Step:
        base: problems.FieldPath = (_list_name(phase), index)
        name = str(raw["name"])
        approval = self._approval(raw, base) if "approval" in raw else None
        outputs = self._outputs(raw.get("outputs", {}), base)
        timeout_raw = raw.get("timeout", defaults.get("timeout"))
        timeout_path = (*base, "timeout") if "timeout" in raw else ("defaults", "timeout")
        retry_delay = raw.get("retry_delay")
        env = {k: _env_text(v) for k, v in raw.get("env", {}).items()}
        return model.Step(
            name=name,
            index=index,
            phase=phase,
            description=raw.get("description"),
            run=raw.get("run"),
            shell=str(raw.get("shell", defaults.get("shell", "bash"))),
            cwd=raw.get("cwd", defaults.get("cwd")),
            env=env,
            timeout_s=(
                self.duration(timeout_raw, timeout_path, positive=True)
                if timeout_raw is not None
                else None
            ),
            retries=int(raw.get("retries", 0)),
            retry_delay_s=(
                self.duration(retry_delay, (*base, "retry_delay")) or 0.0
                if retry_delay is not None
                else model.DEFAULT_RETRY_DELAY_S
            ),
            retry_backoff=float(raw.get("retry_backoff", 1.0)),
            until=raw.get("until"),
            when=raw.get("when"),
            continue_on_error=bool(raw.get("continue_on_error", False)),
            outputs=outputs,
            approval=approval,
            line=self.where.loc(base)[0],
        )

    def _approval(self, raw: Mapping[str, Any], base: problems.FieldPath) -> model.ApprovalSpec:
        """An approval step's spec; it takes no command-step fields."""
        for extra in sorted(set(raw) - _APPROVAL_STEP_FIELDS):
            self.add(
                (*base, extra),
                f"{extra!r} applies to command steps only; an approval step takes "
                f"{', '.join(sorted(_APPROVAL_STEP_FIELDS))}",
                key=True,
            )
        spec = raw["approval"]
        approvers = list(spec["approvers"])
        min_approvals = int(spec.get("min_approvals", 1))
        if min_approvals > len(approvers):
            self.add(
                (*base, "approval", "min_approvals"),
                f"{min_approvals} approvals are needed but only {len(approvers)} "
                "approver(s) are listed",
            )
        timeout = spec.get("timeout")
        return model.ApprovalSpec(
            approvers=approvers,
            min_approvals=min_approvals,
            message=spec.get("message"),
            timeout_s=(
                self.duration(timeout, (*base, "approval", "timeout"), positive=True)
                if timeout is not None
                else None
            ),
        )

    def _outputs(
        self, raw: Mapping[str, Any], base: problems.FieldPath
    ) -> dict[str, model.OutputSpec]:
        """The step's output definitions; json paths and regexes are checked."""
        outputs: dict[str, model.OutputSpec] = {}
        for out_name, out_spec in raw.items():
            out_path: problems.FieldPath = (*base, "outputs", out_name)
            if isinstance(out_spec, str):
                outputs[out_name] = model.OutputSpec(
                    out_name, "stdout" if out_spec == "stdout" else "stderr"
                )
            elif "json" in out_spec:
                expr = str(out_spec["json"])
                if any(part == "" for part in expr.split(".")):
                    self.add((*out_path, "json"), f"{expr!r} is not a dotted path like a.b.0")
                outputs[out_name] = model.OutputSpec(out_name, "json", expr)
            else:
                expr = str(out_spec["regex"])
                problem = caps.regex_problem(expr)
                if problem is not None:
                    self.add((*out_path, "regex"), problem)
                outputs[out_name] = model.OutputSpec(out_name, "regex", expr)
        return outputs


@dataclass(frozen=True)
class _Steps(Mapping[str, frozenset[str]]):
    """The steps at positions ``start`` to ``stop`` (excluded), name -> outputs: a view over
    tables shared by every template of the runbook, so that building one scope per step
    costs nothing (a copy per step made validation quadratic)."""

    outputs: Mapping[str, frozenset[str]]
    order: Mapping[str, int]
    start: int
    stop: int

    def __getitem__(self, name: str) -> frozenset[str]:
        if self.start <= self.order.get(name, -1) < self.stop:
            return self.outputs[name]
        raise KeyError(name)

    def __iter__(self) -> Iterator[str]:
        return (n for n, i in self.order.items() if self.start <= i < self.stop)

    def __len__(self) -> int:
        return sum(1 for _ in self)


def _reference_problem(ref: templating.Reference, scope: _Scope) -> str | None:
    """What is wrong with one variable path a template reads, or ``None``."""
    p = ref.path
    if not p:
        return None
    shown = ".".join((ref.root, *p))
    if ref.root == "params":
        if p[0] not in scope.params:
            return (
                f"{shown}: no parameter {p[0]!r}{problems.suggest(p[0], scope.params)} "
                f"(declared: {', '.join(sorted(scope.params)) or 'none'})"
            )
    elif ref.root == "env":
        if p[0] not in scope.env_names:
            return (
                f"{shown}: {p[0]!r} is not in the runbook's env or capture_env"
                f"{problems.suggest(p[0], scope.env_names)}; only those are readable as env.NAME"
            )
    elif ref.root == "run":
        if p[0] not in RUN_ATTRS:
            return f"{shown}: run has {', '.join(sorted(RUN_ATTRS))}"
    elif ref.root == "step":
        if p[0] not in CURRENT_ATTRS:
            return f"{shown}: step has {', '.join(sorted(CURRENT_ATTRS))}"
        if p[0] == "outputs" and len(p) > 1 and p[1] not in scope.current_outputs:
            return f"{shown}: this step declares no output {p[1]!r}"
    elif ref.root == "steps":
        name = p[0]
        if name not in scope.earlier:
            if name == scope.current:
                return f"{shown}: a step cannot read its own results through steps (use step)"
            if name in scope.later:
                return (
                    f"{shown}: step {name!r} runs after this one; a template can only read "
                    "steps that ran before it"
                )
            return f"{shown}: no step {name!r}{problems.suggest(name, scope.earlier)}"
        if len(p) > 1:
            if p[1] not in STEP_ATTRS:
                return f"{shown}: a step has {', '.join(sorted(STEP_ATTRS))}"
            outputs = scope.earlier[name]
            if p[1] == "outputs" and len(p) > 2 and p[2] not in outputs:
                declared = ", ".join(sorted(outputs)) or "none"
                return f"{shown}: step {name!r} declares no output {p[2]!r} (declared: {declared})"
    return None


def _list_name(phase: str) -> str:
    """The runbook's field that holds steps of ``phase``."""
    return "steps" if phase == "main" else phase


def _check_approvers(
    checker: _Checker,
    all_steps: list[model.Step],
    param_names: frozenset[str],
    env_names: frozenset[str],
    secret_params: frozenset[str],
) -> None:
    """Approvers may be templates reading parameters only (they are rendered before the run
    and shown in its plan), never a secret one (the approver is recorded)."""
    for step in all_steps:
        if step.approval is None:
            continue
        base: problems.FieldPath = (_list_name(step.phase), step.index, "approval", "approvers")
        for i, approver in enumerate(step.approval.approvers):
            if not templating.is_template(approver):
                continue
            scope = _Scope("an approver", frozenset({"params"}), param_names, env_names)
            before = len(checker.problems)
            checker.template(approver, (*base, i), scope, kind="text")
            if len(checker.problems) > before:
                continue
            tree = templating.parse_template(approver)
            _undeclared, refs = templating.references(tree)
            for ref in refs:
                if ref.root == "params" and ref.path and ref.path[0] in secret_params:
                    checker.add(
                        (*base, i),
                        f"params.{ref.path[0]} is a secret; an approver is recorded and shown, "
                        "so it cannot be made from a secret",
                    )


def _env_text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def build(
    data: Mapping[str, Any], where: problems.Locator, bad_paths: list[problems.FieldPath]
) -> tuple[dict[str, Any], list[problems.Problem]]:
    """Semantic checks; returns the model's fields and the problems.

    Parts the schema found invalid (``bad_paths``) are not checked again: a parameter with a
    schema violation is skipped; any other violation skips the checks of steps and templates.
    """
    checker = _Checker(where)
    raw_params: Mapping[str, Any] = data.get("parameters", {})
    bad_params = {p[1] for p in bad_paths if len(p) >= 2 and p[0] == "parameters"}
    params = checker.parameters({k: v for k, v in raw_params.items() if k not in bad_params})
    if any(not (len(p) >= 2 and p[0] == "parameters") for p in bad_paths):
        return {}, checker.problems
    defaults = data.get("defaults", {})
    if "timeout" in defaults:
        checker.duration(defaults["timeout"], ("defaults", "timeout"), positive=True)
    steps = [checker.step(raw, i, "main", defaults) for i, raw in enumerate(data["steps"])]
    lists: dict[str, list[model.Step]] = {
        phase: [checker.step(raw, i, phase, defaults) for i, raw in enumerate(data.get(phase, []))]
        for phase in model.HANDLER_PHASES
    }
    handlers = [s for phase in model.HANDLER_PHASES for s in lists[phase]]
    _check_unique_names(checker, [*steps, *handlers])

    # templates
    env = {k: _env_text(v) for k, v in data.get("env", {}).items()}
    capture_env = list(data.get("capture_env", []))
    env_names = frozenset(env) | frozenset(capture_env)
    param_names = frozenset(raw_params)
    top_roots = frozenset({"params", "run"})
    for key, value in env.items():
        if templating.is_template(value):
            scope = _Scope("the runbook's env", top_roots, param_names, env_names)
            checker.template(value, ("env", key), scope, kind="text")
    lock = data.get("lock")
    if lock is not None:
        scope = _Scope("lock", frozenset({"params", "env"}), param_names, env_names)
        checker.template(lock, ("lock",), scope, kind="text")
    _check_step_templates(checker, data, [*steps, *handlers], param_names, env_names)
    secret_params = frozenset(n for n, p in params.items() if p.secret)
    _check_approvers(checker, [*steps, *handlers], param_names, env_names, secret_params)
    cwd_default = defaults.get("cwd")
    if cwd_default is not None:
        scope = _Scope("defaults.cwd", frozenset({"params", "run", "env"}), param_names, env_names)
        checker.template(cwd_default, ("defaults", "cwd"), scope, kind="text")

    fields = {
        "name": data["name"],
        "description": data.get("description"),
        "parameters": params,
        "env": env,
        "capture_env": capture_env,
        "lock": lock,
        "steps": steps,
        "on_failure": lists["on_failure"],
        "on_cancel": lists["on_cancel"],
        "always": lists["always"],
    }
    return fields, checker.problems


def _check_unique_names(checker: _Checker, all_steps: list[model.Step]) -> None:
    """No two steps (main steps and handlers together) share a name."""
    seen: dict[str, problems.FieldPath] = {}
    for step in all_steps:
        path: problems.FieldPath = (_list_name(step.phase), step.index, "name")
        if step.name in seen:
            first = problems.format_field(seen[step.name])
            checker.add(path, f"duplicate step name {step.name!r} (first used at {first})")
        else:
            seen[step.name] = path


def _check_step_templates(
    checker: _Checker,
    data: Mapping[str, Any],
    all_steps: list[model.Step],
    param_names: frozenset[str],
    env_names: frozenset[str],
) -> None:
    """Every template of every step, each reading only the steps that ran before it.

    Main steps read the main steps before them (views over shared tables: one scope per
    step costs nothing, so validation stays linear). Handlers read every main step and the
    handlers before them in their own list; only one of ``on_failure`` and ``on_cancel``
    runs, so neither reads the other; ``always`` handlers may read both (a handler that did
    not run reads as ``pending``)."""
    order: dict[str, int] = {}
    outputs: dict[str, frozenset[str]] = {}
    for position, step in enumerate(all_steps):
        order.setdefault(step.name, position)
        outputs.setdefault(step.name, frozenset(step.outputs))
    all_names = frozenset(order)
    step_roots = frozenset({"params", "steps", "step", "run", "env"})
    main = {s.name: frozenset(s.outputs) for s in all_steps if s.phase == "main"}
    handlers: dict[str, frozenset[str]] = {}  # the handlers before this one, in reach
    ending: dict[str, frozenset[str]] = {}  # on_failure and on_cancel, for always
    phase: str = "main"
    for position, step in enumerate(all_steps):
        earlier: Mapping[str, frozenset[str]]
        later: Mapping[str, frozenset[str]]
        if step.phase == "main":
            earlier = _Steps(outputs, order, 0, position)
            later = _Steps(outputs, order, position + 1, len(all_steps))
        else:
            if step.phase != phase:
                if phase in ("on_failure", "on_cancel"):
                    ending.update(handlers)
                phase = step.phase
                handlers = dict(ending) if phase == "always" else {}
            earlier = {**main, **handlers}
            later = {n: outputs[n] for n in all_names - frozenset(earlier) - {step.name}}
        list_name = _list_name(step.phase)
        base: problems.FieldPath = (list_name, step.index)
        scope = _Scope(
            f"step {step.name!r}",
            step_roots,
            param_names,
            env_names,
            earlier=earlier,
            later=later,
            current=step.name,
            current_outputs=frozenset(step.outputs),
        )
        if step.run is not None:
            checker.template(step.run, (*base, "run"), scope, kind="command")
        if step.cwd is not None and "cwd" in data[list_name][step.index]:
            checker.template(step.cwd, (*base, "cwd"), scope, kind="text")
        for key, value in step.env.items():
            checker.template(value, (*base, "env", key), scope, kind="text")
        if step.when is not None:
            checker.template(step.when, (*base, "when"), scope, kind="condition")
        if step.until is not None:
            checker.template(step.until, (*base, "until"), scope, kind="condition")
        if step.approval is not None and step.approval.message is not None:
            checker.template(
                step.approval.message, (*base, "approval", "message"), scope, kind="text"
            )
        if step.phase != "main":
            handlers[step.name] = frozenset(step.outputs)
