"""git's SSH commit signatures: :func:`sign_commit`, :func:`verify_signed_commit`, and
:func:`split_signed_commit` (git's own ``parse_buffer_signed_by_header`` logic).
"""

from __future__ import annotations

from typing import Final

from ledger.errors import SignatureError
from ledger.keys import sshsig
from ledger.keys.keys import PublicKey, SigningKey

_GPGSIG: Final = b"gpgsig"
_GPGSIG_SP: Final = b"gpgsig "


def split_signed_commit(raw: bytes) -> tuple[bytes, list[bytes]]:
    """Split a raw commit object's content into the payload git verifies and its signatures.

    This is git's ``parse_buffer_signed_by_header`` for a SHA-1 repository: every
    ``gpgsig`` header (with its continuation lines) is removed and its value collected
    (continuation spaces dropped, each line keeping its newline); any other header whose
    name starts with ``gpgsig`` (such as ``gpgsig-sha256``) is removed and ignored.
    Everything from the first empty line on is payload. Git concatenates the signatures of
    several ``gpgsig`` headers into one; here each header is one list item.
    """
    data = bytes(raw)
    size = len(data)
    if _GPGSIG not in data:
        return data, []
    payload = bytearray()
    signatures: list[bytearray] = []
    in_signature = False
    other_signature = False
    pos = 0
    while pos < size:
        newline = data.find(b"\n", pos)
        nxt = newline + 1 if newline >= 0 else size
        first = data[pos]
        sig_start = -1
        if in_signature and first == 0x20:
            sig_start = pos + 1
        elif data.startswith(_GPGSIG_SP, pos):
            sig_start = pos + len(_GPGSIG_SP)
            other_signature = False
            signatures.append(bytearray())
        elif data.startswith(_GPGSIG, pos):
            other_signature = True
        elif other_signature and first != 0x20:
            other_signature = False
        if sig_start >= 0:
            signatures[-1] += data[sig_start:nxt]
            in_signature = True
        else:
            if first == 0x0A:
                nxt = size  # the message: everything after the empty line is payload
            if not other_signature:
                payload += data[pos:nxt]
            in_signature = False
        pos = nxt
    return bytes(payload), [bytes(s) for s in signatures]


def sign_commit(content: bytes | str, key: SigningKey) -> str:
    """The armored SSH signature of a commit, for ``Repository.create_commit_with_signature``.

    ``content`` is the unsigned commit (as ``create_commit_string`` makes it). The result has
    no final newline: libgit2 adds one after the header value (with it, the commit would get
    an extra line holding a single space). The payload git later verifies
    (:func:`split_signed_commit`) is exactly ``content``.
    """
    data = content.encode("utf-8") if isinstance(content, str) else bytes(content)
    if b"\n\n" not in data:
        raise SignatureError(
            "commit content has no empty line after its headers.",
            hint="Sign the output of create_commit_string.",
        )
    payload, signatures = split_signed_commit(data)
    if signatures or payload != data:
        raise SignatureError(
            "commit content already has a gpgsig header; it cannot be signed again.",
            hint="Sign the unsigned commit content.",
        )
    return sshsig.sign_sshsig(key, data, "git").rstrip("\n")


def verify_signed_commit(raw: bytes, namespace: str = "git") -> tuple[bytes, PublicKey]:
    """Verify the single ``gpgsig`` signature of a raw commit; (payload, signer's key).

    SignatureError if the commit is unsigned, has several signature headers, or its
    signature is malformed or does not verify.
    """
    payload, signatures = split_signed_commit(raw)
    if not signatures:
        raise SignatureError(
            "the commit is not signed (no gpgsig header).",
            hint="Every ledger commit must carry an SSH signature.",
        )
    if len(signatures) > 1:
        raise SignatureError(
            f"the commit has {len(signatures)} gpgsig headers; exactly one is allowed.",
            hint="Do not trust this commit.",
        )
    return payload, sshsig.verify_sshsig(signatures[0], payload, namespace)
