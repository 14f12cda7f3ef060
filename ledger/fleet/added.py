"""Which remotes of a fleet copy count: only those the auditor added (``ledger fleet clone``,
``fleet remote add``), as its state (:mod:`.state`) records them, never as the copy's config
says (someone who can write the copy can change that). A remote's URL is followed only as
it was added; a remote added but gone from the copy's config is an error, not a remote
less; refs under ``refs/fleet/`` of any name not added are named, never believed. The words
for each are here; :mod:`.copy`, :mod:`.audit` and :mod:`.status` apply them.
"""

from __future__ import annotations

from ledger import redact
from ledger.fleet import state


def stray_warning(stray: list[str]) -> str | None:
    """One line naming the refs of remotes the auditor did not add, and what to do."""
    if not stray:
        return None
    shown = ", ".join(stray[:5]) + (f" and {len(stray) - 5} more" if len(stray) > 5 else "")
    return (
        f"the fleet copy holds {len(stray)} ref(s) under a remote name this machine never "
        f"added, ignored (never verified, pinned or remembered): {shown}. Someone who "
        "can write the copy may have put them there: look at them, then delete them (git "
        "--git-dir COPY update-ref -d REF), or, if that remote is wanted, add it with "
        "'ledger fleet remote add NAME URL' and fetch."
    )


def missing_remote(name: str, added: str) -> tuple[str, str]:
    """Why remote ``name``, added on this machine with URL ``added`` (password masked), is
    not fetched: the copy's config no longer has it. The error and the hint."""
    return (
        (
            f"remote {name} was added on this machine with URL {added}, but the copy's config "
            f"no longer has it (fleet.remote.{name}.url); someone who can write the copy may "
            "have removed it. It was not fetched, so what the copy holds from it is stale"
        ),
        f"Restore it with 'ledger fleet remote add {name} URL', giving the URL it was "
        "added with, or make the copy again with 'ledger fleet clone' (and 'ledger fleet "
        "remote add' for each other remote).",
    )


def url_problem(name: str, url: str, fleet: state.FleetState) -> str | None:
    """Why remote ``name`` is not fetched: it was not added on this machine, or its URL is
    not the one it was added with (someone who can write the copy may have changed it)."""
    added = fleet.remotes.get(name)
    shown = redact.mask_url(url)
    if added is None:
        return (
            f"remote {name} ({shown}) is in the copy's config but was not added on this "
            "machine: someone who can write the copy may have put it there. It was not "
            f"contacted. If you trust that URL, run 'ledger fleet remote add {name} URL' "
            "with it"
        )
    if added == shown:
        return None
    return (
        f"the copy's config points remote {name} at {shown}, not at {added}, the URL it was "
        "added with; someone who can write the copy may have changed it. It was not "
        f"contacted. Restore it (git config --file CONFIG fleet.remote.{name}.url URL), or "
        "add the new URL under another name with 'ledger fleet remote add'"
    )
