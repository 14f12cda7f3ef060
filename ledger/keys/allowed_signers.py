"""Lines of the allowed-signers file ``git verify-commit`` reads (``ssh-keygen``'s
``ALLOWED SIGNERS`` format).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from ledger import errors
from ledger.format import records
from ledger.keys import keys


def _ssh_time(when: datetime) -> str:
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.astimezone(UTC).strftime("%Y%m%d%H%M%SZ")


def allowed_signers_line(
    principal: str,
    public_key: keys.PublicKey,
    valid_after: datetime | None = None,
    valid_before: datetime | None = None,
) -> str:
    """One line of an allowed-signers file (``ssh-keygen``'s ``ALLOWED SIGNERS``) for git.

    ``<principal> namespaces="git"[,valid-after="YYYYMMDDHHMMSSZ"][,valid-before="…"]
    <type> <base64>``, without newline. Times are written in UTC (naive datetimes are taken
    as UTC), to the second; OpenSSH treats both bounds as inclusive but refuses a line whose
    valid-before is not after its valid-after, so a key added and revoked within the same
    second is written valid for that second and the next (the ledger's own verification
    orders them by seq). InputError if the principal cannot be written safely
    (:func:`ledger.format.records.check_principal`) or valid-before precedes valid-after.
    """
    records.check_principal(principal)
    if (
        valid_after is not None
        and valid_before is not None
        and _ssh_time(valid_before) == _ssh_time(valid_after)
    ):
        valid_before = valid_after + timedelta(seconds=1)
    options = ['namespaces="git"']
    if valid_after is not None:
        options.append(f'valid-after="{_ssh_time(valid_after)}"')
    if valid_before is not None:
        options.append(f'valid-before="{_ssh_time(valid_before)}"')
    if (
        valid_after is not None
        and valid_before is not None
        and _ssh_time(valid_before) < _ssh_time(valid_after)
    ):
        raise errors.InputError(
            f"key validity for {principal} ends ({_ssh_time(valid_before)}) before it "
            f"starts ({_ssh_time(valid_after)}).",
            hint="Check the key's added and revoked times.",
        )
    return f"{principal} {','.join(options)} {public_key.openssh()}"
