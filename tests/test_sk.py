"""FIDO security keys (``sk-ssh-ed25519@openssh.com``, ``sk-ecdsa-sha2-nistp256@openssh.com``):
their public keys, their signatures (OpenSSH PROTOCOL.u2f inside PROTOCOL.sshsig) and ledgers
signed with them, judged by stock ``ssh-keygen -Y verify`` and ``git verify-commit``.

No token is needed: :class:`support.sktoken.SkToken` holds the key a token would hold and
signs the documented data, so the signatures are genuine.
"""

from __future__ import annotations

import base64
import hashlib
import os
import struct
import subprocess
from pathlib import Path
from typing import Literal

import gitservers
import pygit2
import pytest
from gitservers import GitDaemon, GitHttpServer
from support.cli import run_cli
from support.gitcmd import git
from support.skagent import TestAgent
from support.sktoken import SK_ECDSA, SK_ED25519, SkToken, mpint, string
from support.tamper import raw_commit, set_main, write_raw_commit

from ledger import replicate
from ledger.errors import KeyProblem, SignatureError
from ledger.format import gitobj
from ledger.keys import (
    PublicKey,
    SigningKey,
    allowed_signers_line,
    sign_sshsig,
    verify_signed_commit,
    verify_sshsig,
)
from ledger.keys.keys import low_s
from ledger.store import Ledger
from ledger.verify import local, objects, sk, verify_ledger

git_daemon = gitservers.git_daemon
http_server = gitservers.http_server

Kind = Literal["ed25519", "ecdsa"]
KINDS: list[Kind] = ["ed25519", "ecdsa"]
DATA = b"tree 4b825dc642cb6eb9a060e54bf8d69288fbee4904\n\nsigned by a token\n"


def keygen(*args: str | Path, input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    """Stock ssh-keygen, the judge."""
    return subprocess.run(
        ["ssh-keygen", *[str(a) for a in args]], input=input, capture_output=True, timeout=60
    )


def keygen_verify(tmp_path: Path, armored: str, key: PublicKey, data: bytes = DATA) -> bool:
    """Whether ``ssh-keygen -Y verify`` accepts ``armored`` as ``key``'s signature of ``data``,
    with the allowed-signers line the ledger exports."""
    (tmp_path / "judge.sig").write_text(armored)
    allowed = tmp_path / "judge_allowed"
    allowed.write_text(f'signer@test namespaces="git" {key.openssh()}\n')
    r = keygen(
        "-Y", "verify", "-f", allowed, "-I", "signer@test", "-n", "git", "-s",
        tmp_path / "judge.sig", input=data,
    )  # fmt: skip
    return r.returncode == 0


def armor(blob: bytes) -> str:
    text = base64.b64encode(blob).decode()
    body = "\n".join(text[i : i + 70] for i in range(0, len(text), 70))
    return f"-----BEGIN SSH SIGNATURE-----\n{body}\n-----END SSH SIGNATURE-----\n"


def sshsig_with(key: PublicKey, signature: bytes) -> str:
    """An SSHSIG naming ``key`` and carrying ``signature`` (any bytes)."""
    blob = b"SSHSIG" + struct.pack(">I", 1) + string(key.blob) + string(b"git") + string(b"")
    return armor(blob + string(b"sha512") + string(signature))


def sshsig_signed_data(data: bytes) -> bytes:
    digest = hashlib.sha512(data).digest()
    return b"SSHSIG" + string(b"git") + string(b"") + string(b"sha512") + string(digest)


def ours_accepts(armored: str, data: bytes = DATA, **kwargs: bool) -> bool:
    try:
        verify_sshsig(armored, data, **kwargs)
    except SignatureError:
        return False
    return True


def verifier_accepts(armored: str, data: bytes = DATA) -> bool:
    """The verifier's own reading (ledger/verify/sk.py), apart from ledger.keys."""
    fields = objects.parse_sshsig(armored.rstrip("\n"))
    try:
        sk.verify(fields.public_key, fields.signature, sshsig_signed_data(data))
    except objects.SigError:
        return False
    return True


# --- public keys ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_sk_public_keys_parse_with_ssh_keygen_fingerprints(tmp_path: Path, kind: Kind) -> None:
    token = SkToken(kind, comment="tok@example.com")
    line = token.public_key.openssh()
    assert line.startswith(token.key_type + " ")
    pub = tmp_path / "k.pub"
    pub.write_text(line + " tok@example.com\n")
    listed = keygen("-lf", pub).stdout.decode().split()
    assert listed[1] == token.public_key.fingerprint
    assert listed[-1] == ("(ED25519-SK)" if kind == "ed25519" else "(ECDSA-SK)")
    parsed = PublicKey.parse(pub.read_text())
    assert parsed == token.public_key and parsed.comment == "tok@example.com"
    assert parsed.application == b"ssh:" and parsed.is_security_key
    assert parsed.fingerprint == token.public_key.fingerprint
    # ssh-keygen reads it back the same: its RFC 4716 export holds the same blob
    exported = keygen("-e", "-f", pub).stdout.decode()
    body = "".join(x for x in exported.splitlines()[1:-1] if ":" not in x and "\\" not in x)
    assert base64.b64decode(body) == token.public_key.blob
    assert not SigningKey.generate().public_key.is_security_key


@pytest.mark.parametrize("kind", KINDS)
def test_malformed_sk_public_keys_are_refused(kind: Kind) -> None:
    blob = SkToken(kind).public_key.blob
    app_field = string(b"ssh:")
    assert blob.endswith(app_field)
    bad = [
        blob[: -len(app_field)],  # no application
        blob + b"\x00",  # trailing byte
        blob[:-1],  # truncated application
    ]
    if kind == "ecdsa":
        bad.append(blob.replace(string(b"nistp256"), string(b"nistp384"), 1))
    for b in bad:
        with pytest.raises(KeyProblem):
            PublicKey.from_blob(b)


def test_sk_private_key_file_is_refused_with_the_agent_as_the_way(tmp_path: Path) -> None:
    """An sk key's private file holds a handle only the token can use: a clear error."""
    token = SkToken("ed25519")
    private = struct.pack(">II", 7, 7) + string(SK_ED25519.encode()) + b"handle"
    body = b"openssh-key-v1\x00" + string(b"none") + string(b"none") + string(b"")
    body += struct.pack(">I", 1) + string(token.public_key.blob) + string(private)
    text = base64.b64encode(body).decode()
    path = tmp_path / "id_ed25519_sk"
    path.write_text(
        "-----BEGIN OPENSSH PRIVATE KEY-----\n"
        + "\n".join(text[i : i + 70] for i in range(0, len(text), 70))
        + "\n-----END OPENSSH PRIVATE KEY-----\n"
    )
    with pytest.raises(KeyProblem) as info:
        SigningKey.load(path)
    assert "FIDO security key" in info.value.message
    assert "ssh-agent" in (info.value.hint or "")


# --- signatures -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("flags", [0x01, 0x00, 0x05])
def test_sk_sshsig_is_judged_alike_by_ssh_keygen_and_us(
    tmp_path: Path, kind: Kind, flags: int
) -> None:
    """Stock ssh-keygen accepts an sk SSHSIG whatever its flags (allowed-signers files have no
    touch option); so do we by default; presence required refuses a signature without it."""
    token = SkToken(kind, flags=flags)
    armored = sign_sshsig(token, DATA)
    assert keygen_verify(tmp_path, armored, token.public_key)
    assert ours_accepts(armored) and verifier_accepts(armored)
    assert ours_accepts(armored, require_user_presence=True) == bool(flags & 0x01)


def test_no_touch_required_is_not_an_allowed_signers_option(tmp_path: Path) -> None:
    """Why the export writes no touch option: ssh-keygen refuses the line (the option exists
    only in sshd's authorized_keys), so git would accept nothing."""
    token = SkToken("ed25519")
    armored = sign_sshsig(token, DATA)
    (tmp_path / "s.sig").write_text(armored)
    allowed = tmp_path / "allowed"
    allowed.write_text(f'signer@test namespaces="git",no-touch-required {token.public_key}\n')
    r = keygen(
        "-Y", "verify", "-f", allowed, "-I", "signer@test", "-n", "git", "-s",
        tmp_path / "s.sig", input=DATA,
    )  # fmt: skip
    assert r.returncode != 0 and b"unknown key option" in r.stderr


def _tampered(token: SkToken, what: str) -> str:
    """An SSHSIG of DATA by ``token`` (flags 0x01, counter 7) with one thing changed."""
    signed = sshsig_signed_data(DATA)
    if what == "counter":
        blob = token.sign_with(signed, 0x01, 7)
        blob = blob[:-4] + struct.pack(">I", 8)
    elif what == "flags":
        blob = token.sign_with(signed, 0x01, 7)
        blob = blob[:-5] + b"\x05" + blob[-4:]
    elif what == "unset-presence":
        blob = token.sign_with(signed, 0x01, 7)
        blob = blob[:-5] + b"\x00" + blob[-4:]
    elif what == "application":
        other = SkToken(token.kind)
        other._ed, other._ec = token._ed, token._ec
        other.application = b"ssh:other"
        blob = other.sign_with(signed, 0x01, 7)
    elif what == "wrong-key":
        blob = SkToken(token.kind).sign_with(signed, 0x01, 7)
    elif what == "message":
        blob = token.sign_with(sshsig_signed_data(DATA + b"x"), 0x01, 7)
    elif what == "plain-type":
        blob = token.sign_with(signed, 0x01, 7)
        plain = b"ssh-ed25519" if token.kind == "ed25519" else b"ecdsa-sha2-nistp256"
        blob = string(plain) + blob[4 + len(token.key_type) :]
    elif what == "no-counter":
        blob = token.sign_with(signed, 0x01, 7)[:-4]
    else:
        raise AssertionError(what)
    return sshsig_with(token.public_key, blob)


TAMPERINGS = [
    "counter",
    "flags",
    "unset-presence",
    "application",
    "wrong-key",
    "message",
    "plain-type",
    "no-counter",
]


@pytest.mark.parametrize("kind", KINDS)
def test_tampered_sk_signatures_fail_in_ours_and_in_ssh_keygen(tmp_path: Path, kind: Kind) -> None:
    token = SkToken(kind)
    good = sshsig_with(token.public_key, token.sign_with(sshsig_signed_data(DATA), 0x01, 7))
    assert keygen_verify(tmp_path, good, token.public_key)
    assert ours_accepts(good) and verifier_accepts(good)
    for what in TAMPERINGS:
        bad = _tampered(token, what)
        assert not keygen_verify(tmp_path, bad, token.public_key), what
        assert not ours_accepts(bad), what
        assert not verifier_accepts(bad), what


def test_high_s_sk_ecdsa_is_refused_and_the_writer_embeds_low_s(tmp_path: Path) -> None:
    """A token may return either S form; OpenSSH accepts both (so anyone could change a
    commit's id); the writer embeds the low one and the verifier refuses the high one."""
    token = SkToken("ecdsa")
    token.high_s = True
    raw = token.sign(sshsig_signed_data(DATA))
    high = sshsig_with(token.public_key, raw)
    assert keygen_verify(tmp_path, high, token.public_key)  # the malleability
    assert not ours_accepts(high) and not verifier_accepts(high)
    fixed = sshsig_with(token.public_key, low_s(raw))
    assert low_s(raw)[-5:] == raw[-5:]  # flags and counter kept
    assert ours_accepts(fixed) and verifier_accepts(fixed)
    assert keygen_verify(tmp_path, fixed, token.public_key)
    embedded = sign_sshsig(token, DATA)
    assert ours_accepts(embedded) and verifier_accepts(embedded)


def test_non_canonical_sk_ecdsa_integers_are_refused() -> None:
    """A leading zero byte would be a second encoding of one signature (a second commit id)."""
    token = SkToken("ecdsa")
    blob = token.sign_with(sshsig_signed_data(DATA), 0x01, 3)
    pos = 4 + len(SK_ECDSA)
    inner_len = struct.unpack(">I", blob[pos : pos + 4])[0]
    inner = blob[pos + 4 : pos + 4 + inner_len]
    r_len = struct.unpack(">I", inner[:4])[0]
    r = int.from_bytes(inner[4 : 4 + r_len], "big")
    padded_r = string(b"\x00" + r.to_bytes((r.bit_length() + 8) // 8, "big"))
    inner2 = padded_r + inner[4 + r_len :]
    forged = blob[:pos] + string(inner2) + blob[pos + 4 + inner_len :]
    assert inner == mpint(r) + inner[4 + r_len :]
    armored = sshsig_with(token.public_key, forged)
    assert not ours_accepts(armored) and not verifier_accepts(armored)


# --- ledgers signed by tokens -----------------------------------------------------------------


def _sk_ledger(tmp_path: Path, kind: Kind) -> tuple[Path, list[str], SkToken, SkToken]:
    """genesis and events by token A (touched) · key.added token B · events by B, one of
    them without user presence (flags 0x00)."""
    a = SkToken(kind, comment="a")
    b = SkToken(kind, flags=0x01, counter=100)
    path = tmp_path / "skledger"
    led = Ledger.init(path, name="sk", key=a, principal="a@example.com")
    local.pin_after_init(path, led.genesis_id)
    ids = [led.genesis_id]
    ids.append(led.append("event", {"message": "by a", "data": None}, key=a).commit_id)
    pub = b.public_key
    ids.append(
        led.append(
            "key.added",
            {"principal": "b@example.com", "key": pub.openssh(), "fingerprint": pub.fingerprint,
             "comment": "a second token"},
            key=a,
        ).commit_id
    )  # fmt: skip
    ids.append(led.append("event", {"message": "by b", "data": None}, key=b).commit_id)
    b.flags = 0x00
    ids.append(led.append("event", {"message": "b, untouched", "data": None}, key=b).commit_id)
    b.flags = 0x01
    ids.append(led.append("event", {"message": "b again", "data": None}, key=b).commit_id)
    return path, ids, a, b


@pytest.mark.parametrize("kind", KINDS)
def test_sk_signed_ledger_passes_git_and_ledger_verify(tmp_path: Path, kind: Kind) -> None:
    path, ids, _a, _b = _sk_ledger(tmp_path, kind)
    allowed = tmp_path / "allowed_signers"
    r = run_cli("keys", "allowed-signers", "--ledger", path, "-o", allowed)
    assert r.code == 0, r.output
    assert allowed.read_text().count("sk-") == 2
    assert "no-touch-required" not in allowed.read_text()
    for oid in ids:
        v = git("-c", f"gpg.ssh.allowedSignersFile={allowed}", "verify-commit", oid, cwd=path,
                check=False)  # fmt: skip
        assert v.returncode == 0, (oid, v.stderr)
        assert 'Good "git" signature' in v.stderr
    r = run_cli("verify", "--ledger", path)
    assert r.code == 0, r.output
    assert "1 record(s) signed by a security key without user presence" in r.out
    r = run_cli("verify", "--ledger", path, "--json")
    assert r.code == 0 and '"without_presence": 1' in r.out
    r = run_cli("verify", "--ledger", path, "--require-user-presence")
    assert r.code == 7, r.output
    assert "[user-presence] seq 4" in r.out and r.out.count("[user-presence]") == 1
    result = verify_ledger(path, require_user_presence=True)
    assert [(f.rule, f.seq) for f in result.findings] == [("user-presence", 4)]


@pytest.mark.parametrize("kind", KINDS)
def test_keys_add_takes_an_sk_public_key(tmp_path: Path, kind: Kind) -> None:
    """``ledger keys add`` with an sk key line and with an sk .pub file; the token then signs."""
    op = SigningKey.generate(comment="op")
    op_path = tmp_path / "op_key"
    op.save(op_path)
    path = tmp_path / "led"
    led = Ledger.init(path, name="led", key=op, principal="op@example.com")
    local.pin_after_init(path, led.genesis_id)
    token = SkToken(kind)
    r = run_cli("keys", "add", "tok@example.com", token.public_key.openssh(), "--ledger", path,
                "--key", op_path)  # fmt: skip
    assert r.code == 0, r.output
    assert token.public_key.fingerprint in r.out
    other = SkToken(kind)
    pub = tmp_path / "id_sk.pub"
    pub.write_text(other.public_key.openssh() + " other@host\n")
    r = run_cli("keys", "add", "other@example.com", pub, "--ledger", path, "--key", op_path)
    assert r.code == 0, r.output
    Ledger.open(path).append("event", {"message": "touched", "data": None}, key=token)
    r = run_cli("keys", "list", "--ledger", path)
    assert r.code == 0 and token.public_key.fingerprint in r.out
    r = run_cli("verify", "--ledger", path, "--require-user-presence")
    assert r.code == 0, r.output


def _forge_head_signature(path: Path, change: bytes) -> str:
    """Rewrite the head commit with its sk signature's flags and counter replaced by
    ``change`` (5 bytes); the new head's id."""
    repo = pygit2.Repository(str(path))
    head = str(repo.references["refs/heads/main"].target)
    raw = raw_commit(repo, head)
    payload, sigs = gitobj.split_signed_commit(raw)
    fields = objects.parse_sshsig(sigs[0].decode() if isinstance(sigs[0], bytes) else sigs[0])
    forged_sig = fields.signature[:-5] + change
    key = PublicKey.from_blob(fields.public_key)
    armored = sshsig_with(key, forged_sig).rstrip("\n")
    header = "gpgsig " + armored.replace("\n", "\n ")
    head_part, message = payload.split(b"\n\n", 1)
    new = head_part + b"\n" + header.encode() + b"\n\n" + message
    oid = write_raw_commit(path, new)
    set_main(path, oid)
    return oid


@pytest.mark.parametrize("kind", KINDS)
def test_a_tampered_sk_commit_fails_in_ledger_verify_and_git(tmp_path: Path, kind: Kind) -> None:
    path, _ids, _a, _b = _sk_ledger(tmp_path, kind)
    allowed = tmp_path / "allowed_signers"
    assert run_cli("keys", "allowed-signers", "--ledger", path, "-o", allowed).code == 0
    forged = _forge_head_signature(path, b"\x01" + struct.pack(">I", 1))  # counter rolled back
    v = git("-c", f"gpg.ssh.allowedSignersFile={allowed}", "verify-commit", forged, cwd=path,
            check=False)  # fmt: skip
    assert v.returncode != 0
    r = run_cli("verify", "--ledger", path)
    assert r.code == 7 and "[bad-signature] seq 5" in r.out, r.output


# --- the pre-receive hook of a protected remote ---------------------------------------------


@pytest.mark.parametrize("transport", ["git", "http"])
def test_protected_remote_accepts_sk_records_and_can_require_presence(
    tmp_path: Path, git_daemon: GitDaemon, http_server: GitHttpServer, transport: str
) -> None:
    server = {"git": git_daemon, "http": http_server}[transport]
    path, ids, _a, _b = _sk_ledger(tmp_path, "ecdsa" if transport == "git" else "ed25519")
    genesis = ids[0]
    name = f"sk-{tmp_path.name}"
    remote = server.base / f"{name}.git"
    replicate.init_remote(remote, genesis=genesis)
    replicate.add_remote(path, "prot", server.url(f"{name}.git"))
    r = run_cli("push", "--ledger", path)
    assert r.code == 0, r.output
    out = git("--git-dir", remote, "rev-parse", "refs/heads/main").stdout.strip()
    assert out == ids[-1]

    strict = server.base / f"{name}-strict.git"
    r = run_cli("remote", "init", strict, "--trust-genesis", genesis, "--require-user-presence")
    assert r.code == 0 and "user presence" in r.out, r.output
    assert git("--git-dir", strict, "config", "ledger.requireUserPresence").stdout.strip() == "true"
    work = tmp_path / "work"
    git("clone", "-q", "--no-checkout", path, work)
    git("push", "-q", server.url(f"{name}-strict.git"), f"{ids[3]}:refs/heads/main", cwd=work)
    refused = git("push", server.url(f"{name}-strict.git"), f"{ids[-1]}:refs/heads/main",
                  cwd=work, check=False)  # fmt: skip
    assert refused.returncode != 0 and "pre-receive hook declined" in refused.stderr
    assert "[rule: user-presence]" in refused.stderr
    head = git("--git-dir", strict, "rev-parse", "refs/heads/main").stdout.strip()
    assert head == ids[3]


# --- a test agent holding the software token ------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_stock_tools_sign_through_the_test_agent_with_an_sk_key(tmp_path: Path, kind: Kind) -> None:
    """support/skagent.py speaks the agent protocol well enough for stock ssh-add, ssh-keygen
    and git to sign through it with the software token; we verify what they made."""
    token = SkToken(kind, counter=41)
    pub = tmp_path / "tok.pub"
    pub.write_text(token.public_key.openssh() + " tok@example.com\n")
    with TestAgent(tmp_path, [token], ["tok@example.com"]) as agent:
        env = dict(os.environ, **agent.env)
        listed = subprocess.run(["ssh-add", "-l"], env=env, capture_output=True, text=True)
        assert listed.returncode == 0, listed.stderr
        assert token.public_key.fingerprint in listed.stdout
        assert ("(ED25519-SK)" if kind == "ed25519" else "(ECDSA-SK)") in listed.stdout

        msg = tmp_path / "msg"
        msg.write_bytes(DATA)
        signed = subprocess.run(
            ["ssh-keygen", "-Y", "sign", "-n", "git", "-f", str(pub), str(msg)],
            env=env, capture_output=True, text=True,
        )  # fmt: skip
        assert signed.returncode == 0, signed.stderr
        armored = (tmp_path / "msg.sig").read_text()
        assert ours_accepts(armored) and verifier_accepts(armored)
        assert keygen_verify(tmp_path, armored, token.public_key)
        assert token.counter == 42  # the token signed once

        repo = tmp_path / "repo"
        git("init", "-q", "-b", "main", repo)
        # (a .pub path: with a key:: literal git 2.39 leaves its temporary key file behind)
        git("-c", "gpg.format=ssh", "-c", f"user.signingKey={pub}",
            "-c", "user.name=T", "-c", "user.email=t@example.com", "commit", "-q", "-S",
            "--allow-empty", "-m", "signed by a token", cwd=repo, env=env)  # fmt: skip
        raw = git("cat-file", "commit", "HEAD", cwd=repo).stdout.encode()
        _payload, signer = verify_signed_commit(raw)
        assert signer == token.public_key
        allowed = tmp_path / "allowed"
        allowed.write_text(allowed_signers_line("t@example.com", token.public_key) + "\n")
        v = git("-c", f"gpg.ssh.allowedSignersFile={allowed}", "verify-commit", "HEAD", cwd=repo,
                check=False)  # fmt: skip
        assert v.returncode == 0, v.stderr

        agent.refuse = True
        (tmp_path / "msg.sig").unlink()
        refused = subprocess.run(
            ["ssh-keygen", "-Y", "sign", "-n", "git", "-f", str(pub), str(msg)],
            env=env, capture_output=True, text=True,
        )  # fmt: skip
        assert refused.returncode != 0
    assert not agent.path.exists()


def test_a_high_s_token_signature_through_stock_tools_is_refused_by_the_verifier(
    tmp_path: Path,
) -> None:
    """Stock ssh-keygen embeds what the agent returns, high-S included, and accepts it; the
    ledger's verifier does not (FORMAT.md §6): the ledger's own writer embeds low-S."""
    token = SkToken("ecdsa")
    token.high_s = True
    pub = tmp_path / "tok.pub"
    pub.write_text(token.public_key.openssh() + "\n")
    msg = tmp_path / "msg"
    msg.write_bytes(DATA)
    with TestAgent(tmp_path, [token]) as agent:
        env = dict(os.environ, **agent.env)
        subprocess.run(["ssh-keygen", "-Y", "sign", "-n", "git", "-f", str(pub), str(msg)],
                       env=env, capture_output=True, check=True)  # fmt: skip
    armored = (tmp_path / "msg.sig").read_text()
    assert keygen_verify(tmp_path, armored, token.public_key)
    assert not ours_accepts(armored) and not verifier_accepts(armored)


@pytest.mark.parametrize("kind", KINDS)
def test_ledger_signs_through_the_agent_with_an_sk_key(tmp_path: Path, kind: Kind) -> None:
    """init/record/keys add signed by the software token behind the test agent (the key named
    by its .pub file, a key:: literal and its fingerprint), a high-S token answer embedded
    low-S, an untouched signature accepted and counted, a refused touch appends nothing; git
    and the verifier accept every commit. Needs the agent signing path."""
    pytest.importorskip("ledger.keys.agent")
    token = SkToken(kind)
    token.high_s = kind == "ecdsa"
    pub = tmp_path / "tok.pub"
    pub.write_text(token.public_key.openssh() + " tok@example.com\n")
    led = tmp_path / "led"
    with TestAgent(tmp_path, [token], ["tok@example.com"]) as agent:

        def cli(*args: str | Path) -> str:
            r = run_cli(*args, env=agent.env)
            assert r.code == 0, r.output
            return r.out

        cli("init", led, "--name", "sk", "--key", pub)
        cli("record", "--ledger", led, "--key", f"key::{token.public_key.openssh()}", "-m", "a")
        cli("record", "--ledger", led, "--key", token.public_key.fingerprint, "-m", "b")
        other = SigningKey.generate()
        cli("keys", "add", "other@example.com", other.public_key.openssh(), "--ledger", led,
            "--key", pub)  # fmt: skip
        token.flags = 0x00
        cli("record", "--ledger", led, "--key", pub, "-m", "untouched")
        agent.refuse = True
        refused = run_cli("record", "--ledger", led, "--key", pub, "-m", "no", env=agent.env)
        assert refused.code == 4, refused.output
        assert len(agent.requests) == 6
    assert "1 record(s) signed by a security key without user presence" in cli(
        "verify", "--ledger", led
    )
    strict = run_cli("verify", "--ledger", led, "--require-user-presence")
    assert strict.code == 7 and "[user-presence] seq 4" in strict.out
    allowed = tmp_path / "allowed"
    cli("keys", "allowed-signers", "--ledger", led, "-o", allowed)
    ids = git("rev-list", "main", cwd=led).stdout.split()
    assert len(ids) == 5
    for oid in ids:
        v = git("-c", f"gpg.ssh.allowedSignersFile={allowed}", "verify-commit", oid, cwd=led,
                check=False)  # fmt: skip
        assert v.returncode == 0, v.stderr


def test_a_policy_value_git_cannot_read_as_a_boolean_requires_presence(tmp_path: Path) -> None:
    """A typo in the remote's ledger.requireUserPresence must not switch the check off."""
    path, ids, _a, _b = _sk_ledger(tmp_path, "ed25519")
    remote = tmp_path / "remote.git"
    replicate.init_remote(remote, genesis=ids[0])
    git("--git-dir", remote, "config", "ledger.requireUserPresence", "ture")
    r = git("push", remote, f"{ids[-1]}:refs/heads/main", cwd=path, check=False)
    assert r.returncode != 0 and "[rule: user-presence]" in r.stderr, r.stderr
    git("--git-dir", remote, "config", "ledger.requireUserPresence", "false")
    r = git("push", remote, f"{ids[-1]}:refs/heads/main", cwd=path, check=False)
    assert r.returncode == 0, r.stderr
