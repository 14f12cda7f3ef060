"""Where the user's state directory is (FORMAT.md §8): ``$LEDGER_STATE_DIR``, else
``$XDG_STATE_HOME/runbook-ledger``, else ``~/.local/state/runbook-ledger``. Light to import,
so that a command can find it before the verifier is loaded (:mod:`ledger.fleet.warm`);
:mod:`ledger.verify.local` keeps the anchors there."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

APP_DIR = "runbook-ledger"
ENV_STATE_DIR = "LEDGER_STATE_DIR"


def state_root(environ: Mapping[str, str] | None = None) -> Path:
    """The user's state directory for runbook-ledger (not created here)."""
    env = os.environ if environ is None else environ
    if env.get(ENV_STATE_DIR):
        return Path(env[ENV_STATE_DIR])
    if env.get("XDG_STATE_HOME"):
        return Path(env["XDG_STATE_HOME"]) / APP_DIR
    return Path.home() / ".local" / "state" / APP_DIR
