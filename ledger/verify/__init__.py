"""The verifier: an independent reading of docs/FORMAT.md over raw git objects.

Nothing here trusts the store, the repository config or any index: the chain is read as raw
objects (``repo.odb.read``), every commit is re-parsed from its bytes, every digest is
recomputed, and the set of trusted keys is replayed from the genesis record and the
``key.added`` / ``key.revoked`` records. Every problem becomes a :class:`Finding` naming the
rule of FORMAT.md §9 it breaks; verification goes on after a finding so that one run reports
them all.

The chain is verified forward from the genesis (or from the last verified head, see
:class:`VerifiedState`) while only the commit ids are held in memory, so that memory stays
small on long ledgers.

The package imports nothing from ``ledger.format.records`` or ``ledger.store`` (only
``ledger.keys`` for public keys, ``ledger.format.gitobj`` to decode raw commits and trees,
and ``ledger.errors``): it re-reads the format's rules on purpose, so that a bug in the
writer cannot hide from it.

Verify a clone pinned to a genesis::

    from ledger.verify import verify_ledger, save_state

    result = verify_ledger("/srv/ledgers/ops.git", trust_genesis="<40-hex genesis id>")
    for finding in result.findings:
        print(finding.rule, finding.seq, finding.message)
    if result.ok and result.state is not None:
        save_state("/srv/ledgers/ops.git", result.state)  # resume here with since=...

Modules:

- ``rules``: FORMAT.md §9 rule names, kinds, fields, trailers and identifier regexes
- ``findings``: :class:`Finding`, :class:`VerifyResult`
- ``objects``: raw commit, SSHSIG and tree parsing; reading objects with caches
- ``records``: canonical JSON, common fields, record paths, message and trailers
- ``kinds``: each kind's ``data`` (§5, §5.1 predicate tables)
- ``trust``: signatures (§6), :class:`TrustedKey` and the trust replay of §7
- ``sk``: FIDO security-key signatures (§6.1), read and checked apart from ``ledger.keys``
- ``tree``: the append-only tree comparison of §4
- ``commit``: one commit's checks, step 5 of §10, one method per step
- ``chain``: the chain walk (§10 steps 1–6), :func:`verify_chain`, :func:`verify_ledger`
- ``parallel``: step 5 in worker processes for long chains (``jobs``), with the same result
- ``state``: :class:`VerifiedState` and its JSON form (§8)
- ``pinfile``: pin files (this machine's ``pins``, an auditor's ``--pins FILE``)
- ``local``: this copy's trust anchors (pin, verified head) in the user's state directory,
  and every decision made from them (:func:`verify_local`, ...)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ledger import lazy

if TYPE_CHECKING:
    from ledger.verify.chain import verify_chain, verify_ledger
    from ledger.verify.findings import Finding, ProgressFn, VerifyResult, WitnessClaim
    from ledger.verify.local import (
        LocalVerification,
        load_state,
        save_state,
        state_path,
        verify_local,
    )
    from ledger.verify.records import expected_record_path
    from ledger.verify.rules import MAIN_REF, RULES
    from ledger.verify.state import VerifiedState
    from ledger.verify.trust import TrustedKey

__getattr__, __dir__ = lazy.attach(
    __name__,
    {
        "ledger.verify.chain": ("verify_chain", "verify_ledger"),
        "ledger.verify.findings": ("Finding", "ProgressFn", "VerifyResult", "WitnessClaim"),
        "ledger.verify.local": (
            "LocalVerification",
            "load_state",
            "save_state",
            "state_path",
            "verify_local",
        ),
        "ledger.verify.records": ("expected_record_path",),
        "ledger.verify.rules": ("MAIN_REF", "RULES"),
        "ledger.verify.state": ("VerifiedState",),
        "ledger.verify.trust": ("TrustedKey",),
    },
)

__all__ = [
    "MAIN_REF",
    "RULES",
    "Finding",
    "LocalVerification",
    "ProgressFn",
    "TrustedKey",
    "VerifiedState",
    "VerifyResult",
    "WitnessClaim",
    "expected_record_path",
    "load_state",
    "save_state",
    "state_path",
    "verify_chain",
    "verify_ledger",
    "verify_local",
]
