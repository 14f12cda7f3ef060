"""Where a run comes from: CI detection, the ``trigger`` of run.started, and the base
environment every step inherits."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

__all__ = ["PRIVATE_ENV", "detect_ci", "run_environment", "tool_secrets", "trigger_data"]

#: The credentials the tool itself reads from its environment: the signing key's passphrase
#: and the remotes' HTTP token, HTTP password and SSH key passphrase. They never reach a
#: step (nor ``capture_env``), and their values are redacted like secret parameters.
PRIVATE_ENV: Final = frozenset(
    {
        "LEDGER_KEY_PASSPHRASE",
        "LEDGER_HTTP_TOKEN",
        "LEDGER_HTTP_PASSWORD",
        "LEDGER_SSH_PASSPHRASE",
    }
)


def _env(environ: Mapping[str, str], *names: str) -> str | None:
    for name in names:
        value = environ.get(name)
        if value:
            return value
    return None


def detect_ci(environ: Mapping[str, str]) -> dict[str, str | None] | None:
    """The CI system the run comes from, by its well-known variables, or ``None``.

    Returns ``{"system", "run", "url"}`` (``run``/``url`` ``None`` when unknown).
    """
    if environ.get("GITHUB_ACTIONS") or environ.get("GITHUB_RUN_ID"):
        run = _env(environ, "GITHUB_RUN_ID")
        server = _env(environ, "GITHUB_SERVER_URL") or "https://github.com"
        repo = _env(environ, "GITHUB_REPOSITORY")
        url = f"{server}/{repo}/actions/runs/{run}" if run and repo else None
        return {"system": "github-actions", "run": run, "url": url}
    if environ.get("GITLAB_CI"):
        return {
            "system": "gitlab-ci",
            "run": _env(environ, "CI_PIPELINE_ID", "CI_JOB_ID"),
            "url": _env(environ, "CI_JOB_URL", "CI_PIPELINE_URL"),
        }
    if environ.get("BUILDKITE"):
        return {
            "system": "buildkite",
            "run": _env(environ, "BUILDKITE_BUILD_NUMBER", "BUILDKITE_BUILD_ID"),
            "url": _env(environ, "BUILDKITE_BUILD_URL"),
        }
    if environ.get("CIRCLECI"):
        return {
            "system": "circleci",
            "run": _env(environ, "CIRCLE_BUILD_NUM", "CIRCLE_WORKFLOW_ID"),
            "url": _env(environ, "CIRCLE_BUILD_URL"),
        }
    if environ.get("JENKINS_URL") or environ.get("BUILD_URL"):
        return {
            "system": "jenkins" if environ.get("JENKINS_URL") else "ci",
            "run": _env(environ, "BUILD_NUMBER", "BUILD_ID"),
            "url": _env(environ, "BUILD_URL"),
        }
    if environ.get("CI", "").lower() in ("true", "1", "yes"):
        return {"system": "ci", "run": _env(environ, "BUILD_ID", "CI_BUILD_ID"), "url": None}
    return None


def trigger_data(
    incident: str | None, text: str | None, environ: Mapping[str, str]
) -> dict[str, str | None]:
    """The ``trigger`` object of run.started: what started the run.

    ``source`` is ``ci`` when a CI system is detected, else ``manual``; ``incident`` and
    ``text`` come from ``--incident`` and ``--trigger``; ``ci``, ``ci_run`` and ``ci_url``
    name the CI system, its run and its web page (``None`` when not in CI).
    """
    ci = detect_ci(environ)
    return {
        "source": "ci" if ci else "manual",
        "incident": incident,
        "text": text,
        "ci": ci["system"] if ci else None,
        "ci_run": ci["run"] if ci else None,
        "ci_url": ci["url"] if ci else None,
    }


# --------------------------------------------------------------------------- environment


def run_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The base environment of every step: the runner's own, minus the tool's credentials
    (:data:`PRIVATE_ENV`)."""
    return {k: v for k, v in environ.items() if k not in PRIVATE_ENV}


def tool_secrets(environ: Mapping[str, str]) -> dict[str, str]:
    """The tool's credentials set in ``environ``, name to value, to redact as secrets (a
    step that obtains one otherwise still cannot record it). Every non-empty value counts,
    however short: a short one may then redact unrelated text, never leak."""
    return {name: environ[name] for name in sorted(PRIVATE_ENV) if environ.get(name)}
