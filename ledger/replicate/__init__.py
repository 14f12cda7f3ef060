"""Replication: remotes, parallel pushes that never force, fetches, divergence and rollback
checks, verified clones, protected remotes and their pre-receive check.

Remotes are ordinary git remotes in the ledger repository's config (``remote.NAME.url``).
Only ``refs/heads/main`` ever leaves the machine, always as ``refs/heads/main:refs/heads/main``
(or ``refs/heads/main:refs/ledgers/<ledger id>/main`` for a shared remote) without ``+``:
a push that is not a fast-forward is refused by libgit2 before anything is
sent, and a protected remote refuses it again (``receive.denyNonFastForwards``). libgit2
reports a refused ref not as an exception but through
``RemoteCallbacks.push_update_reference``; every such report becomes a ``rejected`` outcome
with the server's own words (from the sideband).

What each remote held when we last saw it, and which remotes this user added, are kept in
the user's own state directory (``<state dir>/remotes/<verified ledger id>.json``, see
:mod:`.state`), out of reach of whoever can write the ledger directory (and in
``refs/remotes/NAME/main``, as evidence). A remote in the config that this user did not add
is unknown: never contacted, never counted as a replica, reported. ``ledger status`` shows
the lag from it, and a remote whose head later goes backwards is reported as a rollback.
Remote URLs are shown with their password masked
(:func:`ledger.redact.mask_url`).

Modules (each imports only the ones listed before it):

- ``chain``: our main head, a commit's seq, genesis, ancestry, records between two heads.
- ``state``: what each remote held when last seen, and this user's remotes (the user's
  state directory).
- ``remotes``: remote configuration and URLs (add, remove, list, transports, warnings).
- ``transport``: credentials, SSH host keys, libgit2 callbacks and network settings; listing
  and fetching a remote's main.
- ``pushes``: ``push_one``, ``push``, their outcomes and the classification of git errors.
- ``check``: ``check_one``, ``check_remotes``, ``status``, ``verify_head``.
- ``pusher``: ``BackgroundPusher``, the pushes during a run.
- ``shared``: the pre-receive check of a shared remote (many ledgers, each at
  ``refs/ledgers/<ledger id>/main``, each checked as its own chain, incrementally).
- ``protect``: protected remotes (``init_remote``) and their pre-receive check (their
  configuration is ``ledger.store.protect``).
- ``cloning``: verified clones.

``pushes`` and ``cloning`` are not called ``push`` and ``clone`` because the face exports
functions of those names: a submodule of the same name would be shadowed by them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ledger import lazy

if TYPE_CHECKING:
    from ledger.replicate.check import (
        LedgerStatus,
        RemoteCondition,
        RemoteState,
        RemoteStatus,
        check_remotes,
        status,
    )
    from ledger.replicate.cloning import CloneResult, clone
    from ledger.replicate.protect import HookResult, init_remote, pre_receive
    from ledger.replicate.pusher import BackgroundPusher
    from ledger.replicate.pushes import PushOutcome, PushStatus, PushSummary, push
    from ledger.replicate.remotes import (
        RemoteInfo,
        add_remote,
        classify_url,
        direct_write_warning,
        list_remotes,
        remove_remote,
        trust_remote,
    )
    from ledger.replicate.state import read_remote_state
    from ledger.replicate.transport import Credentials

__getattr__, __dir__ = lazy.attach(
    __name__,
    {
        "ledger.replicate.check": (
            "LedgerStatus",
            "RemoteCondition",
            "RemoteState",
            "RemoteStatus",
            "check_remotes",
            "status",
        ),
        "ledger.replicate.cloning": ("CloneResult", "clone"),
        "ledger.replicate.protect": ("HookResult", "init_remote", "pre_receive"),
        "ledger.replicate.pusher": ("BackgroundPusher",),
        "ledger.replicate.pushes": ("PushOutcome", "PushStatus", "PushSummary", "push"),
        "ledger.replicate.remotes": (
            "RemoteInfo",
            "add_remote",
            "classify_url",
            "direct_write_warning",
            "list_remotes",
            "remove_remote",
            "trust_remote",
        ),
        "ledger.replicate.state": ("read_remote_state",),
        "ledger.replicate.transport": ("Credentials",),
    },
)

__all__ = [
    "BackgroundPusher",
    "CloneResult",
    "Credentials",
    "HookResult",
    "LedgerStatus",
    "PushOutcome",
    "PushStatus",
    "PushSummary",
    "RemoteCondition",
    "RemoteInfo",
    "RemoteState",
    "RemoteStatus",
    "add_remote",
    "check_remotes",
    "classify_url",
    "clone",
    "direct_write_warning",
    "init_remote",
    "list_remotes",
    "pre_receive",
    "push",
    "read_remote_state",
    "remove_remote",
    "status",
    "trust_remote",
]
