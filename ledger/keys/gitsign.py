"""git's SSH commit signatures: :func:`sign_commit` and :func:`verify_signed_commit`. The
payload and signatures of a signed commit come from the git object codec
(:func:`ledger.format.gitobj.split_signed_commit`, git's own ``parse_buffer_signed_by_header``
logic).
"""

from __future__ import annotations

from ledger import errors
from ledger.format import gitobj
from ledger.keys import keys, sshsig


def sign_commit(content: bytes | str, key: keys.SigningIdentity) -> str:
    """The armored SSH signature of a commit, for ``Repository.create_commit_with_signature``.

    ``content`` is the unsigned commit (as ``create_commit_string`` makes it). The result has
    no final newline: libgit2 adds one after the header value (with it, the commit would get
    an extra line holding a single space). The payload git later verifies
    (:func:`~ledger.format.gitobj.split_signed_commit`) is exactly ``content``.
    """
    data = content.encode("utf-8") if isinstance(content, str) else bytes(content)
    if b"\n\n" not in data:
        raise errors.SignatureError(
            "commit content has no empty line after its headers.",
            hint="Sign the output of create_commit_string.",
        )
    payload, signatures = gitobj.split_signed_commit(data)
    if signatures or payload != data:
        raise errors.SignatureError(
            "commit content already has a gpgsig header; it cannot be signed again.",
            hint="Sign the unsigned commit content.",
        )
    return sshsig.sign_sshsig(key, data, "git").rstrip("\n")


def verify_signed_commit(
    raw: bytes, namespace: str = "git", *, require_user_presence: bool = False
) -> tuple[bytes, keys.PublicKey]:
    """Verify the single ``gpgsig`` signature of a raw commit; (payload, signer's key).

    SignatureError if the commit is unsigned, has several signature headers, or its
    signature is malformed or does not verify (``require_user_presence``: as
    :func:`~ledger.keys.sshsig.verify_sshsig`).
    """
    payload, signatures = gitobj.split_signed_commit(raw)
    if not signatures:
        raise errors.SignatureError(
            "the commit is not signed (no gpgsig header).",
            hint="Every ledger commit must carry an SSH signature.",
        )
    if len(signatures) > 1:
        raise errors.SignatureError(
            f"the commit has {len(signatures)} gpgsig headers; exactly one is allowed.",
            hint="Do not trust this commit.",
        )
    return payload, sshsig.verify_sshsig(
        signatures[0], payload, namespace, require_user_presence=require_user_presence
    )
