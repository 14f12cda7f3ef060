"""Verified clones: copy a remote ledger into a new bare repository, verify its whole chain
on arrival, check it against the pin (or trust it on first use, and say so), and only then
adopt it; or remove everything again."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pygit2

from ledger import errors, redact, store
from ledger.replicate import chain, check, pushes, remotes, state, transport
from ledger.verify import local, parallel


@dataclass
class CloneResult:
    path: Path
    genesis: str
    head: str
    seq: int | None
    warnings: list[str]
    pin_source: str | None = None  # "--trust-genesis", "pin file", "this machine"; None: TOFU
    ledger_id: str | None = None


def default_clone_path(url: str) -> Path:
    """Like git: the last path component of the URL without ``.git``."""
    tail = url.rstrip("/").replace(":", "/").rsplit("/", 1)[-1]
    if tail.endswith(".git"):
        tail = tail[:-4]
    return Path(tail or "ledger")


def clone(
    url: str,
    path: Path | None = None,
    *,
    trust_genesis: str | None = None,
    pins_file: Path | None = None,
    require_pin: bool = False,
    credentials: transport.Credentials | None = None,
) -> CloneResult:
    """Copy a remote ledger into a new bare repository and verify it on arrival.

    The whole fetched chain is verified before anything is adopted (its ``ledger.*`` config,
    this machine's pin and verified head, its origin as this user's remote). Its genesis
    must be the explicit anchor (``trust_genesis``, else ``$LEDGER_TRUST_GENESIS``), else
    the pin of ``pins_file`` or of this machine for the verified ledger id; with none, the
    genesis is trusted on first use (``pin_source`` None, and a warning says so) unless
    ``require_pin`` (:class:`GenesisNotPinned`, exit 14). On any failure (unreachable, no
    ledger there, another genesis than the pin, verification findings, no pin under
    ``require_pin``) everything created is removed again.
    """
    kind = remotes.classify_url(url)
    url = remotes.normalize_url(url)
    target = path or default_clone_path(url)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise errors.LedgerExists(
            f"{target} already exists and is not empty.", hint="Choose another path for the copy."
        )
    anchors = local.Anchors.given(trust_genesis, pins_file)
    if anchors.trust_genesis is not None and not re.fullmatch(
        r"[0-9a-f]{40}", anchors.trust_genesis
    ):
        raise errors.InputError(
            f"{anchors.trust_genesis!r} is not a full commit id (40 lowercase hex digits).",
            hint="Pass the genesis commit id the ledger's owner published.",
        )
    creds = credentials or transport.Credentials.from_env()
    transport.configure(creds)
    warnings = []
    warning = remotes.direct_write_warning("origin", url)
    if warning and kind in ("path", "file"):
        warnings.append(warning)
    with store.created(target):  # (any failure: everything created is removed again)
        repo = pygit2.init_repository(str(target), bare=True, initial_head="main")
        repo.remotes.create("origin", url, f"+{chain.MAIN_REF}:refs/remotes/origin/main")
        fetched, root, result = _fetch_verified(repo, url, creds, anchors.trust_genesis)
        pin = _pin_for(result, anchors, root, url, require_pin)
        seq = _keep(repo, target, url, fetched, result, pin)
    if pin.source is None:
        warnings.append(
            f"NOT PINNED: genesis {root} (ledger {result.ledger_id}) was trusted on first use "
            "and is pinned now: compare it with the genesis id the ledger's owner published, "
            "and pass --trust-genesis (or --pins FILE) next time."
        )
    return CloneResult(target, root, fetched, seq, warnings, pin.source, result.ledger_id)


def _pin_for(
    result: Any, anchors: local.Anchors, root: str, url: str, require_pin: bool
) -> local.Pin:
    """The pin of the verified ledger id (explicit, the pin file's, this machine's); a pin
    of another genesis fails the clone, and so does none under ``require_pin``."""
    pin = local.clone_pin(anchors, result.ledger_id)
    if pin.genesis is not None and pin.genesis != root:
        raise errors.VerificationFailed(
            f"the ledger at {redact.mask_url(url)} is ledger {result.ledger_id}, which is pinned "
            f"({pin.source}) to genesis {pin.genesis}, but it starts at genesis {root}: it is "
            "an impostor or a rewritten copy [rule: genesis-mismatch]. Nothing was kept.",
            hint="Check the genesis id with the ledger's owner.",
        )
    if pin.genesis is None and require_pin:
        raise errors.GenesisNotPinned(
            f"the ledger at {redact.mask_url(url)} (ledger {result.ledger_id}, genesis {root}) "
            "verifies, but no genesis is pinned for it (--require-pin). Nothing was kept.",
            hint="Compare the genesis with the ledger's owner, then clone with "
            f"--trust-genesis GENESIS, ${local.ENV_TRUST_GENESIS} or --pins FILE.",
        )
    return pin


def _fetch_verified(
    repo: pygit2.Repository, url: str, creds: transport.Credentials, trust_genesis: str | None
) -> tuple[str, str, Any]:
    """Fetch origin's main and verify its whole chain: its head, its genesis and the
    verifier's result. Raises when it cannot be fetched, holds no ledger, or does not
    verify."""
    cb = transport.Callbacks(url, creds, repo.config)
    shown = redact.mask_url(url)
    try:
        fetched = transport.fetch_main(repo, "origin", cb)
    except transport.AuthFailed as exc:
        raise errors.RemoteError(
            f"could not clone {shown}: {exc}.",
            hint="Provide credentials (--ssh-key, LEDGER_HTTP_TOKEN).",
        ) from None
    except pygit2.GitError as exc:
        status_, message = pushes.classify_git_error(exc, cb)
        if errors.no_room(message):  # (a fetch: this machine's disk)
            raise errors.StorageError(
                f"could not clone {shown}: this machine could not store it ({message}).",
                hint="Free disk space where the clone goes (or raise the quota or file size "
                "limit), then clone again. Nothing was kept.",
            ) from None
        raise errors.RemoteError(
            f"could not clone {shown}: {status_.value}: {message}.", hint=_hint_for(status_)
        ) from None
    if fetched is None:
        raise errors.RemoteError(
            f"{shown} holds no ledger: it has no {chain.MAIN_REF}.", hint="Check the URL."
        )
    root = chain.root_commit(repo, fetched)
    if trust_genesis is not None and root != trust_genesis:
        raise errors.VerificationFailed(
            f"the ledger at {shown} starts at genesis {root}, not at the trusted genesis "
            f"{trust_genesis}: it is another ledger or a rewritten one. Nothing was kept.",
            hint="Check the genesis id with the ledger's owner.",
        )
    # (the new repository holds every object it fetched: the verifier's workers, one per
    # core, may open it)
    problems, result = check.verify_head(
        repo, fetched, trust_genesis=trust_genesis or root, jobs=parallel.jobs_for(None)
    )
    if problems or not result.ok or result.state is None or not result.ledger_id:
        problems = problems or [f"the chain ending at {fetched} does not verify"]
        raise errors.VerificationFailed(
            f"the ledger at {shown} does not verify ({len(problems)} finding(s)): "
            + "; ".join(problems[:10])
            + ". Nothing was kept.",
            findings=list(problems),
            hint="Do not trust this copy; compare with the ledger's other remotes.",
        )
    return fetched, root, result


def _keep(
    repo: pygit2.Repository, target: Path, url: str, fetched: str, result: Any, pin: local.Pin
) -> int | None:
    """Make the verified copy a ledger: its main, its protection, its ``ledger.*`` config
    (from the verified state), this machine's verified head and pin, origin as this user's
    remote and what it held. Returns the head's seq."""
    repo.references.create(chain.MAIN_REF, fetched, force=False)
    store.protect(repo.config, ledger=True)
    store.Ledger.adopt(target, result.state)
    local.remember_clone(repo, result, pin)
    seq = chain.commit_seq(repo, fetched)
    lid = result.state.ledger_id
    state.trust(repo, "origin", lid)
    with state.lock(repo, lid) as st:
        st["origin"] = {
            "url": redact.mask_url(url),
            "head": fetched,
            "seq": seq,
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "status": pushes.PushStatus.UP_TO_DATE.value,
        }
    return seq


def _hint_for(status_: pushes.PushStatus) -> str:
    if status_ is pushes.PushStatus.UNREACHABLE:
        return "Check the URL, that the server is running, and the network."
    return pushes.connection_hint(status_, "See the message above.")
