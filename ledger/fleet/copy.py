"""The auditor's fleet copy (FLEET-CONTRACT §2): a bare repository, not a ledger, holding
each shared remote's ledgers at ``refs/fleet/<remote>/<ledger id>/main``.

(Stub of the FLEETCOPY helper's module: only what ``fleet verify`` needs, under the
contract's names. The merger keeps theirs.)
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import pygit2

from ledger import errors
from ledger.replicate import transport

_FLEET_REF = re.compile(r"refs/fleet/([A-Za-z0-9][A-Za-z0-9._-]*)/([0-9a-f]{32})/main")


def open_copy(path: Path | str) -> pygit2.Repository:
    """The fleet copy at ``path``; :class:`LedgerNotFound` when it is not one."""
    try:
        repo = pygit2.Repository(str(path))
        is_fleet = repo.is_bare and repo.config.get_bool("ledger.fleet")
    except (pygit2.GitError, KeyError, ValueError):
        is_fleet = False
    if not is_fleet:
        raise errors.LedgerNotFound(
            f"{path} is not a fleet copy (a bare repository with ledger.fleet = true).",
            hint="Make one with 'ledger fleet clone URL DIR', or point --fleet at it.",
        )
    return repo


def heads(repo: pygit2.Repository) -> dict[str, dict[str, str]]:
    """Ledger id -> remote name -> head commit, from ``refs/fleet/*/<id>/main``."""
    out: dict[str, dict[str, str]] = {}
    for name in repo.references:
        m = _FLEET_REF.fullmatch(name)
        if m is None:
            continue
        try:
            target = str(repo.references[name].target)
        except (KeyError, pygit2.GitError):
            continue
        out.setdefault(m.group(2), {})[m.group(1)] = target
    return out


@dataclass
class FetchResult:
    fetched: list[str] = field(default_factory=list)

    @property
    def failed(self) -> list[str]:
        return []  # (this stub raises instead)

    def raise_for_failures(self) -> None:
        return None


def fetch(
    path: Path | str, creds: transport.Credentials, names: list[str] | None = None
) -> FetchResult:
    """Fetch ``+refs/ledgers/*:refs/fleet/<NAME>/*`` from every remote (or ``names``)."""
    repo = open_copy(path)
    transport.configure(creds)
    done = FetchResult()
    for entry in repo.config:
        m = re.fullmatch(r"fleet\.remote\.(.+)\.url", entry.name)
        if m is None or (names is not None and m.group(1) not in names):
            continue
        url = str(entry.value)
        cb = transport.Callbacks(url, creds, repo.config)
        try:
            repo.remotes.create_anonymous(url).fetch(
                [f"+refs/ledgers/*:refs/fleet/{m.group(1)}/*"], callbacks=cb
            )
        except (pygit2.GitError, OSError) as exc:
            raise errors.RemoteError(
                f"could not fetch fleet remote {m.group(1)}: {exc}.",
                hint="Check the URL, the network and the credentials, or pass --no-fetch.",
            ) from None
        done.fetched.append(m.group(1))
    return done
