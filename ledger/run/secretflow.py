"""Which parts of a rendered template depend on a secret: differential rendering.

A template that reads a secret can transform it in ways no list of encodings anticipates
(``| upper``, ``| reverse``, slicing, ``~``, a loop over its characters, a comparison that
picks one of two texts). Instead of following the secret through Jinja (a tainted string
loses its mark in every filter, method and implicit flow it was not written for), the
template is rendered again with every secret replaced by a *placeholder*, twice, with two
placeholders unlike the secret and unlike each other (other characters, other lengths, for
a number another number). Jinja produces a rendered text as a sequence of chunks: the
literal text of the template and one chunk per ``{{ ... }}``. Then:

* a chunk that is the same in all three renderings does not depend on the secret (as far as
  two unrelated values can show) and is kept;
* a chunk that differs is replaced as a whole by ``[REDACTED:name]`` (shell-quoted in a
  command), whatever the template did to the secret;
* when the renderings do not even have the same number of chunks (the secret decided a
  loop or a branch), or only the real one succeeds, the whole text is replaced;
* when the real rendering fails, its error message is shown only if the renderings with the
  placeholders fail with the very same message; otherwise it is withheld.

The name in the label is the secret whose placeholder alone changes the chunk (when several
do, or none alone, the label is ``[REDACTED]``). The caller redacts the result once more
with :func:`ledger.redact.redact` (the real values of step outputs may hold a secret).
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Mapping, Sequence
from typing import Final, TypeVar

from ledger import redact
from ledger.runbook import model

__all__ = ["WITHHELD", "Vary", "error_shown", "placeholder", "render_split", "result_shown"]

#: Which secrets a rendering replaces, and by which of the two placeholders (0 or 1).
Vary = Mapping[str, int]

#: What an error message that depends on a secret is replaced with.
WITHHELD: Final = "(the message depends on the value of a secret and is not shown)"

#: Characters placeholders are made of, tried in order; never one that occurs in the secret.
_ALPHABET: Final = "qzxjkvwyfgQZXJKVWYFG0123456789"
#: The name under which a text computed from several secrets (or none alone) is redacted.
_ANY: Final = "secret"
#: Shortest computed text redacted from output (shorter ones would match unrelated text).
MIN_DERIVED_LENGTH: Final = 4

T = TypeVar("T")


def placeholder(value: model.ParamValue, which: int) -> model.ParamValue:
    """A value of the secret's type unlike it: placeholder 0 or 1 (they differ too)."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return -value - 7919 * (which + 1) if value >= 0 else -value + 7919 * (which + 1)
    text = "" if value is None else str(value)
    folded = text.casefold() + text.upper() + text.lower()
    usable = [c for c in _ALPHABET if c not in folded and c.casefold() not in folded]
    char = usable[which % len(usable)] if usable else "\u2603\u2604"[which]
    return char * (len(text) + 3 + 2 * which)


def _attempt(
    fn: Callable[[Vary], T], vary: Vary, errors: tuple[type[Exception], ...]
) -> T | Exception:
    try:
        return fn(vary)
    except errors as exc:
        return exc


def _message(exc: Exception) -> str:
    return str(getattr(exc, "message", None) or exc)


def _label(names: Sequence[str], command: bool) -> str:
    label = (
        redact.FALLBACK_LABEL
        if len(names) != 1 or names[0] == _ANY
        else redact.redaction_label(names[0])
    )
    return shlex.quote(label) if command else label


def _error_detail(
    exc: Exception,
    fn: Callable[[Vary], object],
    secrets: Sequence[str],
    errors: tuple[type[Exception], ...],
) -> str:
    """The real error's message if the placeholders give the same one, else WITHHELD."""
    detail = _message(exc)
    for which in (0, 1):
        other = _attempt(fn, dict.fromkeys(secrets, which), errors)
        if not isinstance(other, Exception) or _message(other) != detail:
            return WITHHELD
    return detail


def render_split(
    render: Callable[[Vary], list[str]],
    secrets: Sequence[str],
    *,
    command: bool,
    errors: tuple[type[Exception], ...],
    on_error: Callable[[str], Exception],
) -> tuple[str, str, list[tuple[str, str]]]:
    """``(text, shown, derived)``: the real rendering, the same with every chunk that depends
    on a secret replaced by its label, and those chunks' real texts (with the secret's name,
    for redactors: a command may print them). ``render(vary)`` gives the chunks of the
    template with the secrets in ``vary`` replaced by their placeholders. A failing real
    rendering raises ``on_error(detail)``, where ``detail`` is the message or
    :data:`WITHHELD`."""
    try:
        real = render({})
    except errors as exc:
        detail = _error_detail(exc, render, secrets, errors) if secrets else _message(exc)
        raise on_error(detail) from None
    text = "".join(real)
    if not secrets:
        return text, text, []
    others = [_attempt(render, dict.fromkeys(secrets, which), errors) for which in (0, 1)]
    if any(isinstance(o, Exception) or len(o) != len(real) for o in others):
        deciding = [n for n in secrets if _attempt(render, {n: 0}, errors) != real]
        name = _name(deciding if len(secrets) > 1 else secrets)
        seen = {chunk for o in others if not isinstance(o, Exception) for chunk in o}
        derived = [(name, chunk) for chunk in real if chunk not in seen]
        return text, _label([name], command), [*_derived(derived, command), (name, text)]
    changed = [i for i, chunk in enumerate(real) if any(o[i] != chunk for o in others)]  # type: ignore[index]
    if not changed:
        return text, text, []
    names: dict[int, list[str]] = {i: [] for i in changed}
    if len(secrets) == 1:
        names = {i: [secrets[0]] for i in changed}
    else:
        for name in secrets:
            alone = _attempt(render, {name: 0}, errors)
            for i in changed:
                if isinstance(alone, Exception) or len(alone) != len(real) or alone[i] != real[i]:
                    names[i].append(name)
    shown = list(real)
    for i in changed:
        shown[i] = _label(names[i], command)
    derived = _derived([(_name(names[i]), real[i]) for i in changed], command)
    return text, "".join(shown), derived


def _name(names: Sequence[str]) -> str:
    return names[0] if len(names) == 1 else _ANY


def _derived(found: list[tuple[str, str]], command: bool) -> list[tuple[str, str]]:
    """Texts to redact from what runs with them: each chunk (and, in a command, the value a
    shell-quoted chunk stands for), when at least :data:`MIN_DERIVED_LENGTH` long."""
    out: list[tuple[str, str]] = []
    for name, chunk in found:
        out.append((name, chunk))
        if command:
            try:
                words = shlex.split(chunk)
            except ValueError:
                words = []
            if len(words) == 1:
                out.append((name, words[0]))
    return [(name, text) for name, text in out if len(text.strip()) >= MIN_DERIVED_LENGTH]


def result_shown(
    evaluate: Callable[[Vary], object],
    secrets: Sequence[str],
    real: object,
    *,
    as_text: Callable[[object], str],
    errors: tuple[type[Exception], ...],
) -> str:
    """How a real result may be shown in a message: as text when the placeholders give the
    same text, else :data:`WITHHELD`."""
    text = as_text(real)
    for which in (0, 1) if secrets else ():
        other = _attempt(evaluate, dict.fromkeys(secrets, which), errors)
        if isinstance(other, Exception) or as_text(other) != text:
            return WITHHELD
    return text


def error_shown(
    exc: Exception,
    evaluate: Callable[[Vary], object],
    secrets: Sequence[str],
    errors: tuple[type[Exception], ...],
) -> str:
    """The message of a failed evaluation, or :data:`WITHHELD` when it depends on a secret."""
    return _error_detail(exc, evaluate, secrets, errors) if secrets else _message(exc)
