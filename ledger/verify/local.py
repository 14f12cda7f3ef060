"""This copy's trust anchors and verified head, and every decision made from them.

``ledger.verify.chain`` checks a chain and knows nothing of what was verified before; this
module is the one owner of what this machine remembers about a ledger (FORMAT.md §8) and
of each policy that reads it. Callers pick a policy by name:

- :func:`verify_local` (``ledger verify``): pinned, optionally resumed, remembered;
- :func:`pin_after_init` (``ledger init``): the creator's copy trusts the genesis it wrote;
- :func:`verify_before_append` (``ledger run``): refuse an unpinned genesis, resume from the
  verified head, remember; :func:`require_pin` (``record``, ``approve``);
- :func:`extend_over_own_appends` (after a run): move the head over the run's own records;
- :func:`report_resume` / :func:`remember` (reports), :func:`clone_pin` /
  :func:`remember_clone` (``ledger clone``), :func:`add_remote_findings` (``verify
  --remotes``), :func:`verified_ledger_id` (the key of the remote state, which lives beside
  these anchors: :func:`ensure_private_dir`, :func:`check_private_dir`);
- :func:`hook_since` / :func:`hook_remember`: the pre-receive hook's own state on the server.

The anchors live in the user's state directory, never in the ledger directory (anyone
who can write the ledger could otherwise move them): ``$LEDGER_STATE_DIR``, else
``$XDG_STATE_HOME/runbook-ledger``, else ``~/.local/state/runbook-ledger`` (directories
0700, files 0600). ``pins`` holds one ``<ledger id> <genesis commit id>`` line per pinned
ledger (the format of an auditor's ``--pins`` file); ``heads/<sha256 of the git
directory's real path>.json`` holds the last verified head of one copy, so two copies of
one ledger share a pin but never a head.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import pygit2

from ledger import errors
from ledger.format import gitobj
from ledger.verify import chain, findings, home, objects, pinfile, rules, state

PINS_FILE = "pins"
HEADS_DIR = "heads"
#: The pre-receive hook's own state, in the protected remote's git directory (the server's).
HOOK_STATE = ("ledger-state", "verified.json")
ENV_TRUST_GENESIS = "LEDGER_TRUST_GENESIS"


# --- where the anchors live ----------------------------------------------------------------


def _gitdir(repo_path: Path | str | pygit2.Repository) -> Path:
    repo = repo_path if isinstance(repo_path, pygit2.Repository) else objects.open_repo(repo_path)
    return Path(repo.path).resolve()


def state_path(repo_path: Path | str | pygit2.Repository) -> Path:
    """Where the last verified head of this copy is kept (keyed by its real path)."""
    key = hashlib.sha256(str(_gitdir(repo_path)).encode()).hexdigest()
    return home.state_root() / HEADS_DIR / f"{key}.json"


def _private_dir(path: Path) -> None:
    """Create ``path`` (and parents) 0700; refuse one another user or group could write."""
    _check_private(path)
    try:
        if not path.is_dir():
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(path, 0o700)  # (mkdir's mode is masked by the umask)
    except OSError as exc:
        raise errors.StorageError(
            f"could not create the state directory {path}: {exc.strerror or exc}.",
            hint=f"Check its permissions, or set {home.ENV_STATE_DIR} to a directory of your own.",
        ) from None


def _check_private(path: Path) -> None:
    """Anchors are read from, and written to, only directories that are the user's alone."""
    try:
        st = path.stat()
    except OSError:
        return  # absent (or unreadable: reading the file says so)
    if st.st_uid != os.getuid() or st.st_mode & 0o022:
        raise errors.StorageError(
            f"the state directory {path} is not private (owner uid {st.st_uid}, mode "
            f"{st.st_mode & 0o777:o}): trust anchors kept there could be changed by others.",
            hint=f"chmod 700 {path} (it must be yours), or set {home.ENV_STATE_DIR}.",
        )


def ensure_private_dir(path: Path) -> None:
    """Create ``path``, a directory under the state directory, 0700 (and the state
    directory); refuse either when another user or group could write it."""
    _private_dir(home.state_root())
    _private_dir(path)


def check_private_dir(path: Path) -> None:
    """Refuse to read anchors from ``path`` (or the state directory) if others could write it."""
    _check_private(home.state_root())
    _check_private(path)


def write_private(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically, mode 0600 (temp file, fsync, rename, fsync)."""
    _private_dir(home.state_root())
    _private_dir(path.parent)
    try:
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)  # (mode 0600)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError as exc:
        raise errors.StorageError(
            f"could not save {path}: {exc.strerror or exc}.",
            hint="Check the state directory's permissions and free disk space.",
        ) from None
    return path


def read_private_text(path: Path, *, private: bool = True) -> str | None:
    if private:
        _check_private(home.state_root())
        _check_private(path.parent)
    try:
        return path.read_text(encoding="utf-8")
    except (FileNotFoundError, NotADirectoryError):
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise errors.StorageError(
            f"could not read {path}: {exc}.",
            hint="Check its permissions, or delete it and verify the whole ledger again.",
        ) from None


# --- the verified head ------------------------------------------------------------------


def save_state(repo_path: Path | str | pygit2.Repository, saved: state.VerifiedState) -> Path:
    """Remember ``saved`` as this copy's verified head (and pin its genesis if unpinned)."""
    doc = saved.to_json()
    doc["path"] = str(_gitdir(repo_path))
    path = write_private(
        state_path(repo_path), (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()
    )
    if own_pin(saved.ledger_id) is None:
        save_pin(saved.ledger_id, saved.genesis)
    return path


def load_state(repo_path: Path | str | pygit2.Repository) -> state.VerifiedState | None:
    """This copy's verified head, or ``None`` if this machine never verified it."""
    path = state_path(repo_path)
    text = read_private_text(path)
    if text is None:
        return None
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise errors.InputError(
            f"the saved verification state {path} is not JSON ({exc}).",
            hint="Delete it and verify the whole ledger again.",
        ) from None
    if isinstance(doc, dict) and doc.pop("path", None) not in (None, str(_gitdir(repo_path))):
        return None  # another copy's (cannot happen short of a SHA-256 collision)
    return state.VerifiedState.from_json(doc)


# --- pins -----------------------------------------------------------------------------------


def read_pins(path: Path) -> dict[str, str]:
    """The pins of ``path``: this machine's own ``pins`` (a missing one is empty), else an
    auditor's pin file, wherever they keep it and theirs (``pinfile.read``)."""
    if path == home.state_root() / PINS_FILE:
        return pinfile.parse(read_private_text(path) or "", str(path))
    return pinfile.read(path)


def own_pin(ledger_id: str | None) -> str | None:
    """The genesis this machine pinned for ``ledger_id``, if any."""
    if not ledger_id:
        return None
    return read_pins(home.state_root() / PINS_FILE).get(ledger_id)


def save_pin(ledger_id: str, genesis: str) -> None:
    save_pins({ledger_id: genesis})


def own_pins() -> dict[str, str]:
    """Every genesis this machine pinned, by ledger id (one read for many ledgers)."""
    return read_pins(home.state_root() / PINS_FILE)


def save_pins(new: Mapping[str, str]) -> None:
    """Pin several ledgers in one write of ``pins`` (an auditor's first fleet verification)."""
    if not new:
        return
    path = home.state_root() / PINS_FILE
    pins = read_pins(path)
    pins.update(new)
    text = "".join(f"{lid} {g}\n" for lid, g in sorted(pins.items()))
    write_private(path, ("# <ledger id> <genesis commit id>\n" + text).encode())


@dataclass(frozen=True)
class Anchors:
    """Explicit trust anchors: ``--trust-genesis`` (else ``$LEDGER_TRUST_GENESIS``) and an
    auditor's pin file (``--pins``)."""

    trust_genesis: str | None = None
    pins_file: Path | None = None

    @classmethod
    def given(cls, trust_genesis: str | None = None, pins_file: Path | None = None) -> Anchors:
        return cls(trust_genesis or os.environ.get(ENV_TRUST_GENESIS) or None, pins_file)


@dataclass(frozen=True)
class Pin:
    genesis: str | None
    source: str | None  # "--trust-genesis", "pin file", "this machine"; None: unpinned


def _config_ledger_id(path: Path | str | pygit2.Repository) -> str | None:
    """The ledger id the config claims: only a key to look a pin up by, never believed."""
    try:
        repo = path if isinstance(path, pygit2.Repository) else objects.open_repo(path)
        return str(repo.config["ledger.id"]).strip().lower()
    except (KeyError, pygit2.GitError, ValueError):
        return None


def find_pin(anchors: Anchors, saved: state.VerifiedState | None, *ids: str | None) -> Pin:
    """The genesis to pin: explicit, else the pin file's, else this machine's, else the
    verified head's, each looked up by the ledger ids given (the head's, the config's)."""
    if anchors.trust_genesis:
        return Pin(anchors.trust_genesis.strip().lower(), "--trust-genesis")
    keys = [i for i in (saved.ledger_id if saved else None, *ids) if i]
    if anchors.pins_file is not None:
        pins = read_pins(anchors.pins_file)
        for lid in keys:
            if lid in pins:
                return Pin(pins[lid], "pin file")
    for lid in keys:
        mine = own_pin(lid)
        if mine is not None:
            return Pin(mine, "this machine")
    if saved is not None:
        return Pin(saved.genesis, "this machine")
    return Pin(None, None)


def require_pin(path: Path | str, anchors: Anchors | None = None) -> Pin:
    """The pin of the ledger at ``path``; :class:`GenesisNotPinned` when there is none
    (``ledger record`` and ``approve`` never trust an unpinned genesis silently)."""
    anchors = anchors or Anchors.given()
    pin = find_pin(anchors, load_state(path), _config_ledger_id(path))
    if pin.genesis is None:
        raise errors.GenesisNotPinned(
            f"the ledger at {path} has no pinned genesis on this machine, so nothing is "
            "appended to it: its history could be anyone's.",
            hint="Pin it: run 'ledger verify' once (and compare the genesis it prints with the "
            "ledger's owner), or pass --trust-genesis GENESIS / set "
            f"{ENV_TRUST_GENESIS}.",
        )
    return pin


# --- policies ---------------------------------------------------------------------------------


@dataclass
class LocalVerification:
    """A verification of a local copy, and what it did with the remembered state."""

    result: findings.VerifyResult
    pinned_now: bool
    previous: state.VerifiedState | None
    pin_source: str | None = None
    remembered: bool = False


def verify_local(
    path: Path,
    *,
    anchors: Anchors | None = None,
    since_last: bool = False,
    progress: findings.ProgressFn | None = None,
    remember: bool = True,
    require_user_presence: bool = False,
    jobs: int | None = None,
) -> LocalVerification:
    """``ledger verify``: verify the ledger at ``path`` against what this machine verified.

    The pin is explicit, else the pin file's, else this machine's; with none, the chain is
    verified unpinned and, if sound, its genesis is pinned from now on (trust on first use;
    ``pinned_now``). With ``since_last``, only records after the remembered head are
    verified; either way a remembered head the chain no longer holds is a ``rewrite`` or
    ``rollback`` (FORMAT.md §10 step 3). On success the head is remembered unless
    ``remember`` is false or the state directory cannot be written (a read-only run).
    ``require_user_presence`` applies to the records checked now (FORMAT.md §6). ``jobs``:
    worker processes for a long chain (:func:`ledger.verify.chain.verify_chain`).
    """
    anchors = anchors or Anchors.given()
    previous = load_state(path)
    pin = find_pin(anchors, previous, _config_ledger_id(path))
    if previous is not None and pin.genesis is not None and previous.genesis != pin.genesis:
        previous = None  # the remembered head is another genesis's: a full, pinned check
    if since_last and previous is not None:
        result = chain.verify_ledger(
            path,
            trust_genesis=pin.genesis,
            since=previous,
            progress=progress,
            require_user_presence=require_user_presence,
            jobs=jobs,
        )
    else:
        result = chain.verify_ledger(
            path,
            trust_genesis=pin.genesis,
            progress=progress,
            remembered=previous,
            require_user_presence=require_user_presence,
            jobs=jobs,
        )
    _check_pin_of_result(result, anchors, pin)
    saved = False
    if remember and result.ok and result.state is not None:
        saved = _try_save(path, result.state)
        if saved and pin.source in ("--trust-genesis", "pin file"):
            save_pin(result.state.ledger_id, result.state.genesis)  # an explicit anchor wins
    pinned_now = pin.genesis is None and saved
    return LocalVerification(result, pinned_now, previous, pin.source, saved)


def _check_pin_of_result(result: findings.VerifyResult, anchors: Anchors, used: Pin) -> None:
    """The chain's verified ledger id may have a pin that the config's did not find."""
    if used.genesis is not None or not result.ledger_id or result.genesis is None:
        return
    other = find_pin(Anchors(None, anchors.pins_file), None, result.ledger_id)
    if other.genesis is not None and other.genesis != result.genesis:
        result.add(
            findings.Finding(
                "genesis-mismatch",
                0,
                result.genesis,
                f"ledger {result.ledger_id} is pinned ({other.source}) to genesis "
                f"{other.genesis}, the chain starts at {result.genesis}",
            )
        )


def _try_save(path: Path | str, verified: state.VerifiedState) -> bool:
    try:
        save_state(path, verified)
    except errors.StorageError:
        return False
    return True


def pin_after_init(path: Path | str, genesis: str) -> None:
    """``ledger init``: the creator's own copy trusts the genesis it just wrote."""
    result = chain.verify_ledger(path, trust_genesis=genesis)
    if result.state is not None:
        save_state(path, result.state)


def verify_before_append(
    path: Path | str, anchors: Anchors | None = None, what: str = "no run is appended to it"
) -> int:
    """``ledger run``, ``record``, ``approve``, ``fleet witness``: refuse an unpinned genesis,
    then verify against the pin (an explicit one included: a chain of another genesis is a
    finding) incrementally from this copy's verified head, and remember the new one. Returns
    how many records were checked; :class:`VerificationFailed` names the findings ("..., so
    ``what``")."""
    anchors = anchors or Anchors.given()
    pin = require_pin(path, anchors)
    previous = load_state(path)
    since = previous if previous is not None and previous.genesis == pin.genesis else None
    result = chain.verify_ledger(path, trust_genesis=pin.genesis, since=since)
    if not result.ok:
        lines = "; ".join(f"{f.rule} at seq {f.seq}: {f.message}" for f in result.findings[:5])
        more = len(result.findings) - 5
        if more > 0:
            lines += f"; and {more} more"
        raise errors.VerificationFailed(
            f"the ledger at {path} does not verify, so {what}: {lines}.",
            findings=list(result.findings),
            hint="Run 'ledger verify' for the full findings and investigate. To append anyway "
            "(each record appended then says in its signed Ledger-Unverified trailer that its "
            "chain did not verify), pass --allow-unverified; a genesis other than the one "
            "pinned is never appended to.",
        )
    if result.state is not None:
        save_state(path, result.state)
    return result.records_checked


class OwnAppend(Protocol):
    """What a writer knows of a record it appended (``ledger.store.Appended``)."""

    @property
    def commit_id(self) -> str: ...
    @property
    def seq(self) -> int: ...
    @property
    def record(self) -> Mapping[str, object]: ...
    @property
    def parent(self) -> str | None: ...


def extend_over_own_appends(
    repo: pygit2.Repository, path: Path | str, appended: Sequence[OwnAppend]
) -> bool:
    """After a run: move this copy's verified head over the records the run appended itself.

    Only when they form an unbroken chain from the verified head (the first one's parent is
    that head, each next one's parent the one before, so nothing else was appended or
    swapped in between) and none of them changes trust: this process computed and signed
    each, so the next run's incremental verification need not read them again; a record
    anyone else wrote is always verified. Returns whether the head moved.
    """
    if not appended or any(a.record.get("kind") in rules.KEY_KINDS for a in appended):
        return False
    try:
        saved = load_state(path)
        if saved is None:
            return False
        expected = saved.head
        for done in appended:
            if done.parent != expected:
                return False
            expected = done.commit_id
        last = appended[-1]
        raw = repo.odb.read(last.commit_id)[1]
        digest = gitobj.object_sha256(gitobj.OBJ_COMMIT, raw)
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        save_state(
            path,
            replace(saved, head=last.commit_id, seq=last.seq, prev_sha256=digest, verified_at=now),
        )
    except (errors.LedgerError, pygit2.GitError, KeyError, ValueError):
        return False  # the next run verifies these records instead
    return True


def report_resume(path: Path | str) -> tuple[state.VerifiedState | None, Pin]:
    """A report: where to resume (this copy's verified head, if its genesis is the pin)
    and the pin (this machine's; unpinned otherwise, and the report says so)."""
    try:
        saved = load_state(path)
    except errors.InputError:
        saved = None  # malformed: verify everything instead
    pin = find_pin(Anchors.given(), saved, _config_ledger_id(path))
    if saved is not None and saved.genesis != pin.genesis:
        saved = None
    return saved, pin


def remember(
    path: Path | str, result: findings.VerifyResult, previous: state.VerifiedState | None
) -> bool:
    """Remember a pinned, verified head that moved forward; quietly not on a read-only
    machine. (A report never pins: only ``ledger verify`` trusts on first use, and says so.)"""
    if not result.ok or result.state is None or not result.genesis_pinned:
        return False
    if previous is not None and result.state.seq <= previous.seq:
        return False
    return _try_save(path, result.state)


def verified_ledger_id(repo: pygit2.Repository) -> str | None:
    """The remote state's key (``ledger.replicate.state``): the ledger id of this copy's
    verified head, if this machine verified it; never an id the ledger directory claims."""
    saved = load_state(repo)
    return saved.ledger_id if saved is not None else None


def clone_pin(anchors: Anchors, ledger_id: str | None) -> Pin:
    """``ledger clone``: the pin of the verified ledger id (explicit, the pin file's, this
    machine's); ``Pin(None, None)`` when there is none (trust on first use)."""
    return find_pin(anchors, None, ledger_id)


def remember_clone(
    repo: pygit2.Repository, result: findings.VerifyResult, pin: Pin | None = None
) -> None:
    """``ledger clone``: the new copy's verified head and pin are those clone verified (an
    explicit anchor replaces another pin this machine had, as with ``ledger verify``)."""
    if result.ok and result.state is not None:
        save_state(repo, result.state)
        if pin is not None and pin.source in ("--trust-genesis", "pin file"):
            save_pin(result.state.ledger_id, result.state.genesis)


def add_remote_findings(result: findings.VerifyResult, remote_states: Iterable[Any]) -> None:
    """``verify --remotes``: each remote's problem is a finding of this verification."""
    for st in remote_states:
        if st.problem:
            result.add(
                findings.Finding(
                    st.rule or "diverged",
                    st.remote_seq,
                    st.remote_head,
                    f"remote {st.name} ({st.url}): {st.line()}",
                )
            )


# --- the pre-receive hook's state (the server's own) ---------------------------------------


def _hook_state_path(repo: pygit2.Repository) -> Path:
    return Path(repo.path).joinpath(*HOOK_STATE)


def hook_since(repo: pygit2.Repository, old: str, genesis: str) -> state.VerifiedState | None:
    """The protected remote's saved state if it is exactly the head being extended."""
    if not rules.HEX40.fullmatch(old) or old == "0" * 40:
        return None
    try:
        text = _hook_state_path(repo).read_text(encoding="utf-8")
        saved = state.VerifiedState.from_json(json.loads(text))
    except (OSError, ValueError, errors.LedgerError):
        return None
    if saved.head != old or saved.genesis != genesis:
        return None
    return saved


def hook_remember(repo: pygit2.Repository, verified: state.VerifiedState) -> None:
    """Lets the remote's next push verify only its new records (best effort)."""
    path = _hook_state_path(repo)
    data = (json.dumps(verified.to_json(), indent=2, sort_keys=True) + "\n").encode()
    try:
        path.parent.mkdir(exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".verified-", dir=path.parent)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except OSError:
        return
