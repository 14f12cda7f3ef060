"""The one error hierarchy of the library.

Every error the library raises on purpose is a :class:`LedgerError`. Each carries a
one-paragraph message saying what is wrong, an optional ``hint`` saying what to do, and the
exit code the command-line tool uses for it. Library code raises; only the CLI prints and
exits (see ``ledger.cli``). Exit codes are documented in the README.
"""

from __future__ import annotations

import errno
import os
from typing import ClassVar

#: The causes that say there is no room to store something: a full disk, a file size
#: limit, a quota; and the system's own words for them, which is all an error of libgit2's
#: keeps of its cause.
_NO_ROOM = frozenset({errno.ENOSPC, errno.EFBIG, errno.EDQUOT})
_NO_ROOM_WORDS = tuple(os.strerror(n).lower() for n in sorted(_NO_ROOM))


def no_room(cause: OSError | str) -> bool:
    """Whether ``cause`` says this machine had no room to store something (a full disk, a
    file size limit, a quota): an ``OSError`` by its errno, an error's text by the system's
    words for those. Text a server sent (``remote: ...``, ``remote error``) is never this
    machine's: a server's full disk is the server's problem."""
    if isinstance(cause, OSError):
        return cause.errno in _NO_ROOM
    low = cause.lower()
    if "remote:" in low or "remote error" in low:
        return False
    return any(w in low for w in _NO_ROOM_WORDS)


#: How many characters of a value the user gave an error message quotes.
QUOTE_LIMIT = 80


def quoted(value: object, limit: int = QUOTE_LIMIT) -> str:
    """``value`` as an error message quotes what it was given (its ``repr``): at most its
    first ``limit`` characters, then how long it is, so that a message stays one paragraph
    whatever was given (``'xxx...'... (100000 characters)``)."""
    if isinstance(value, str):
        if len(value) <= limit:
            return repr(value)
        return f"{value[:limit]!r}... ({len(value)} characters)"
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


class LedgerError(Exception):
    """Base class of every error raised by the library."""

    exit_code: ClassVar[int] = 1
    label: ClassVar[str] = "error"

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def diagnostics(self) -> str:
        """The text shown to a user: what is wrong, then what to do."""
        if self.hint:
            return f"{self.message} {self.hint}"
        return self.message


class UsageError(LedgerError):
    """A command was called with arguments that do not fit together."""

    exit_code = 2
    label = "usage error"


class InputError(LedgerError):
    """Input given to the tool is malformed (data, URL, parameter, template)."""

    exit_code = 3
    label = "invalid input"


class RunbookError(InputError):
    """A runbook file is malformed, invalid against the schema, or cannot be rendered."""

    label = "invalid runbook"


class UnknownRun(InputError):
    """A run id names no run of the ledger (the same for report, resume and approve)."""

    label = "unknown run"


class TemplateError(InputError):
    """A report template cannot be loaded or rendered."""

    label = "template error"


class KeyProblem(LedgerError):
    """A signing key is missing, unreadable, encrypted without a passphrase, or malformed."""

    exit_code = 4
    label = "key error"


class PassphraseRequired(KeyProblem):
    """A private key file is encrypted and no passphrase was given (the CLI then asks)."""


class WrongPassphrase(KeyProblem):
    """The passphrase given for an encrypted private key file is not its passphrase."""


class UntrustedKey(KeyProblem):
    """The signing key is not trusted by the ledger at its current head."""

    label = "untrusted key"


class AgentError(KeyProblem):
    """Signing through ``ssh-agent`` (a public key or fingerprint named as the signing key)
    failed; nothing was signed, so nothing was appended. The subclasses say why."""

    label = "agent error"


class AgentUnavailable(AgentError):
    """No agent to sign with: ``$SSH_AUTH_SOCK`` is not set, its socket does not exist or
    refuses connections, or the agent went away. Start one (``eval $(ssh-agent)`` or the
    runner's dedicated ``ssh-agent -a SOCKET``), load the key with ``ssh-add``, and point
    ``$SSH_AUTH_SOCK`` at it; or name a private key file instead."""


class AgentLocked(AgentError):
    """The agent is locked (``ssh-add -x``): it lists no identities and refuses to sign.
    Unlock it with ``ssh-add -X``, or load the key if the agent is simply empty."""


class AgentIdentityMissing(AgentError):
    """The agent answers but does not hold the named key (the message gives its
    fingerprint). Load it with ``ssh-add KEYFILE`` (or plug in the token that holds it)."""


class AgentRefused(AgentError):
    """The agent holds the key but refused to sign with it: a key added with ``ssh-add -c``
    whose confirmation was declined, or a token that failed. Accept the confirmation, or
    load the key without ``-c`` for unattended use."""


class AgentTimeout(AgentError):
    """The agent did not answer within the signing timeout (``$LEDGER_AGENT_TIMEOUT``
    seconds): a hardware token not touched, or a confirmation left unanswered. Touch the
    token or answer the prompt in time, or raise the timeout."""


class RunSigningStopped(KeyProblem):
    """A run stopped at a step boundary because its next record could not be signed (the
    agent went away, was locked, refused or timed out). The message says which record and
    whether the step it belongs to ran; ``ledger abandon`` or ``ledger resume`` closes the
    run once signing works again."""

    label = "run stopped"


class LedgerNotFound(LedgerError):
    """No ledger at the given or discovered location."""

    exit_code = 5
    label = "no ledger"


class FleetNotFound(LedgerNotFound):
    """No fleet copy (``ledger fleet clone``) at the given or default location."""

    label = "no fleet copy"


class LedgerExists(LedgerError):
    """A ledger (or some other repository or file) already exists where one would be created."""

    exit_code = 5
    label = "ledger exists"


class StorageError(LedgerError):
    """Reading or writing the ledger repository failed (I/O, permissions, disk full, corrupt)."""

    exit_code = 6
    label = "storage error"


class LockTimeout(StorageError):
    """The ledger's append lock or a runbook lock could not be taken in time."""

    label = "lock busy"


class ConcurrentUpdate(StorageError):
    """The ledger's branch moved under us although we held the lock (another writer)."""

    label = "concurrent update"


class CorruptLedger(StorageError):
    """An object or reference of the ledger repository cannot be read or parsed: the ledger
    is damaged. The message names the object (or reference)."""

    exit_code = 7
    label = "corrupt ledger"


class SignatureError(LedgerError):
    """A signature is malformed or does not verify."""

    exit_code = 7
    label = "bad signature"


class VerificationFailed(LedgerError):
    """Verification found problems; the findings are attached."""

    exit_code = 7
    label = "verification failed"

    def __init__(
        self, message: str, *, findings: list[object] | None = None, hint: str | None = None
    ) -> None:
        super().__init__(message, hint=hint)
        self.findings = findings or []


class RemoteError(LedgerError):
    """A remote is unknown, unreachable, refused us, or diverged from our ledger."""

    exit_code = 8
    label = "remote error"


class RunFailed(LedgerError):
    """A run ended with a failed step."""

    exit_code = 10
    label = "run failed"


class RunRejected(LedgerError):
    """A run was stopped at an approval step by a rejection (a timeout fails the step)."""

    exit_code = 11
    label = "run rejected"


class FileExists(LedgerError):
    """A file (a key, an output) already exists where one would be written."""

    exit_code = 5
    label = "file exists"


class ResumeRefused(LedgerError):
    """A run cannot be resumed (runbook changed, run not failed, run unknown, handlers ran
    without a named restart point, a step never finished)."""

    exit_code = 12
    label = "resume refused"


class AbandonRefused(LedgerError):
    """A run cannot be closed with ``ledger abandon``: it already finished."""

    exit_code = 12
    label = "abandon refused"


class RunInterrupted(LedgerError):
    """A run was interrupted by a signal; ``exit_code`` is 128 + signal number."""

    exit_code = 130
    label = "interrupted"

    def __init__(self, message: str, *, signum: int = 2, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.signum = signum

    @property
    def code(self) -> int:
        return 128 + self.signum


class ApprovalRefused(LedgerError):
    """An approval cannot be given: the run is not waiting at that step, or the signer may
    not approve it (not among the step's approvers, or already decided)."""

    exit_code = 13
    label = "approval refused"


class GenesisNotPinned(LedgerError):
    """No genesis is pinned for this ledger on this machine (nor given): ``ledger verify
    --require-pin``, and ``run`` / ``record`` / ``approve``, which never trust an unpinned
    genesis silently."""

    exit_code = 14
    label = "genesis not pinned"
