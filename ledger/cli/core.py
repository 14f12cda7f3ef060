"""Core commands: init, keys, record, log, show."""

from __future__ import annotations

import contextlib
import json
import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ledger import errors, keys, outfile, store
from ledger.cli import common
from ledger.format import records, shapes

if TYPE_CHECKING:
    from ledger.keys import keyspec

keys_app = typer.Typer(
    help="Generate keys and manage the ledger's trusted signers.", no_args_is_help=True
)
common.app.add_typer(keys_app, name="keys")


# --- helpers shared with other command modules -----------------------------------------


def open_ledger(path: Path | None) -> store.Ledger:
    return store.Ledger.open(common.find_ledger_path(path))


def open_verified(path: Path | None, allow_unverified: bool, what: str) -> store.Ledger:
    """Open the ledger for a command that shows what its records say (:func:`check_verified`)."""
    led = open_ledger(path)
    check_verified(led, allow_unverified, what)
    return led


def check_verified(
    led: store.Ledger, allow_unverified: bool, what: str, *, appending: bool = False
) -> None:
    """Verify the ledger's chain up to ``main`` before a command shows or decides from its
    records (incrementally from this copy's verified head). One that does not verify is
    refused (exit 7, findings named: "..., so ``what``") unless ``allow_unverified``; then a
    warning naming the findings comes first on stderr, and every record appended says so
    (its signed ``Ledger-Unverified`` trailer)."""
    led.allow_unverified = allow_unverified
    view = led.trust_view() if led.head() is not None else None
    if view is None or view.ok:
        return
    if not allow_unverified:
        raise view.refuse(led.path, what)
    shown = "; ".join(f"{f.rule} at seq {f.seq}" for f in view.findings[:5])
    more = f"; and {len(view.findings) - 5} more" if len(view.findings) > 5 else ""
    then = (
        "the record appended names these rules in its signed Ledger-Unverified trailer"
        if appending
        else "what follows is read from a chain that failed verification and may be forged"
    )
    common.console_err.print(
        f"ledger: WARNING: the ledger at {led.path} does NOT verify ({shown}{more}). "
        f"--allow-unverified: {then}; run 'ledger verify' for the findings.",
        style="bold red",
        markup=False,
        soft_wrap=True,
    )


def load_key(spec: keyspec.KeySpec) -> keys.SigningIdentity:
    """The named signing key: the agent's identity for a public key or fingerprint; else the
    private key file, asking for its passphrase (env or prompt) when it is encrypted, unless
    the agent holds that key."""
    from ledger.keys import keyspec  # here: 'ledger --help' starts without cryptography

    if spec.path is None:
        return spec.agent_key()
    path = spec.path
    problem = keys.key_file_mode_problem(path)
    if problem:
        common.console_err.print(f"ledger: warning: {problem}")
    try:
        return keys.SigningKey.load(path)
    except errors.PassphraseRequired:
        pass
    held = keyspec.agent_key_for_file(path)
    if held is not None:
        return held
    return keys.SigningKey.load(path, common.read_passphrase(path))


def signing_key_for(ledger: store.Ledger | None, explicit: str | None) -> keys.SigningIdentity:
    from ledger.keys import keyspec  # here: 'ledger --help' starts without cryptography

    configured = ledger.config_get("ledger.signingKey") if ledger is not None else None
    return load_key(keyspec.parse_key_spec(common.resolve_key_name(explicit, configured)))


def default_principal(key: keys.SigningIdentity) -> str:
    """The key's comment if it is an e-mail-like usable principal, else ``USER@HOST``."""
    if key.comment and "@" in key.comment:
        with contextlib.suppress(errors.InputError):
            return records.check_principal(key.comment)
    user = os.environ.get("USER") or os.environ.get("LOGNAME") or "operator"
    return f"{user}@{socket.gethostname()}"


def record_to_json(rec: store.StoredRecord) -> dict[str, Any]:
    return {"seq": rec.seq, "commit": rec.commit_id, "path": rec.path, "record": rec.record}


# --- init -------------------------------------------------------------------------------


@common.app.command()
def init(
    path: Annotated[
        Path | None,
        typer.Argument(help="Where to create the ledger (default: $LEDGER_DIR, else ./.ledger)."),
    ] = None,
    name: Annotated[
        str | None,
        typer.Option(
            "--name",
            help="The ledger's name, recorded in its genesis record (default: the name of "
            "the directory the ledger is created in).",
            show_default=False,
        ),
    ] = None,
    key: common.KeyOpt = None,
    principal: Annotated[
        str | None,
        typer.Option(
            "--principal",
            help="Identity of the initial signer (default: key comment or USER@HOST).",
        ),
    ] = None,
) -> None:
    """Create a new ledger with its signed genesis record."""
    from ledger.keys import keyspec  # here: 'ledger --help' starts without cryptography
    from ledger.store import gitdir  # here: 'ledger --help' starts without pygit2

    target = common.default_ledger_path_for_init(path)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise errors.LedgerExists(
            f"{target} already exists and is not empty; 'ledger init' never touches an "
            "existing ledger or directory.",
            hint="Choose another path, or use the existing ledger with --ledger.",
        )
    if principal is not None:
        records.check_principal(principal)  # before a passphrase is asked for
    key_spec = keyspec.parse_key_spec(common.resolve_key_name(key))
    signing_key = load_key(key_spec)
    who = records.check_principal(principal or default_principal(signing_key))
    ledger = store.Ledger.init(
        target,
        name=name or target.resolve().parent.name or "ledger",
        key=signing_key,
        principal=who,
    )
    ledger.config_set("ledger.signingKey", key_spec.text)
    from ledger.verify import local  # here: the verifier is large; --help starts without it

    local.pin_after_init(ledger.path, ledger.genesis_id)
    excluded = gitdir.exclude_from_worktree(target)
    common.console.print(f"Created ledger {ledger.name!r} at {target}")
    common.console.print(f"  ledger id:  {ledger.ledger_id}")
    common.console.print(f"  genesis:    {ledger.genesis_id}")
    common.console.print(f"  signer:     {who} {signing_key.public_key.fingerprint}")
    common.console.print(
        f"Auditors pin the genesis commit id: 'ledger verify --trust-genesis {ledger.genesis_id}'."
    )
    if excluded is not None:
        common.console.print(
            f"The ledger is inside a git work tree: {excluded} now excludes it, so the "
            "project's git never adds it.",
            markup=False,
        )


_OTHER_GENESIS = "genesis-mismatch"  # (the rule of docs/FORMAT.md §9)


def verify_for_append(
    led: store.Ledger, trust_genesis: str | None, allow_unverified: bool, what: str
) -> None:
    """Before ``record``, ``approve`` and ``fleet witness`` append: the genesis pinned (exit 14
    without one) and the chain verified against that pin, as ``ledger run`` does, so that a
    ``--trust-genesis`` is checked, never merely present, and a first verification
    remembers it. With ``allow_unverified`` a chain with findings is appended to under a
    warning (:func:`check_verified`), but never one of another genesis than the pin."""
    from ledger.verify import local  # here: the verifier is large; --help starts without it

    try:
        local.verify_before_append(led.path, local.Anchors.given(trust_genesis), what)
    except errors.VerificationFailed as exc:
        other_genesis = any(getattr(f, "rule", None) == _OTHER_GENESIS for f in exc.findings)
        if not allow_unverified or other_genesis:
            raise
    check_verified(led, allow_unverified, what, appending=True)


# --- keys -------------------------------------------------------------------------------


@keys_app.command("generate")
def keys_generate(
    path: Annotated[
        Path | None,
        typer.Argument(
            help="Private key file to write (PATH.pub gets the public key). "
            "Default: ~/.ssh/ledger_ed25519."
        ),
    ] = None,
    comment: Annotated[
        str, typer.Option("--comment", "-C", help="Key comment (for example your e-mail address).")
    ] = "",
    passphrase: Annotated[
        bool,
        typer.Option(
            "--passphrase/--no-passphrase",
            help="Encrypt the private key; the passphrase comes from $LEDGER_KEY_PASSPHRASE or a "
            "prompt.",
        ),
    ] = False,
) -> None:
    """Generate an Ed25519 key pair in OpenSSH format (private key mode 0600)."""
    target = path or common.default_key_path()
    secret: bytes | None = None
    if passphrase:
        env = os.environ.get("LEDGER_KEY_PASSPHRASE")
        if env is not None:
            secret = env.encode()
        else:
            text = typer.prompt("Passphrase", hide_input=True, confirmation_prompt=True)
            secret = text.encode()
        if not secret:
            raise errors.InputError(
                "an empty passphrase does not encrypt anything.",
                hint="Give a passphrase, or use --no-passphrase.",
            )
    if target.parent and not target.parent.exists():
        target.parent.mkdir(parents=True, mode=0o700)
    key = keys.SigningKey.generate(comment=comment)
    key.save(target, secret)
    common.console.print(f"Wrote {target} (private, mode 0600) and {target}.pub")
    bits = 256 if key.public_key.key_type == "ssh-ed25519" else 0
    common.console.print(f"{bits} {key.public_key.fingerprint} {comment or 'no comment'} (ED25519)")


@keys_app.command("add")
def keys_add(
    principal: Annotated[str, typer.Argument(help="Identity of the new signer, e.g. an e-mail.")],
    pubkey: Annotated[
        str, typer.Argument(help="Public key: a .pub file or 'ssh-ed25519 AAAA...'.")
    ],
    comment: Annotated[str, typer.Option("--comment", help="Why this key is added.")] = "",
    ledger: common.LedgerOpt = None,
    key: common.KeyOpt = None,
) -> None:
    """Trust a new signer: appends a key.added record signed by a trusted key."""
    led = open_ledger(ledger)
    public = _read_public_key(pubkey)
    records.check_principal(principal)
    if led.trusted_signer(public.fingerprint) is not None:
        raise errors.InputError(f"the key {public.fingerprint} is already trusted by this ledger.")
    signing_key = signing_key_for(led, key)
    done = led.append(
        records.KIND_KEY_ADDED,
        shapes.KeyAdded(
            principal=principal,
            key=public.openssh(),
            fingerprint=public.fingerprint,
            comment=comment,
        ),
        key=signing_key,
    )
    common.console.print(
        f"Added {principal} {public.fingerprint} (seq {done.seq}, commit {done.commit_id})"
    )


#: how an OpenSSH public key line starts (security keys: ``sk-ssh-…``, ``sk-ecdsa-…``)
_KEY_LINE_STARTS = ("ssh-", "ecdsa-", "sk-ssh-", "sk-ecdsa-")


def _read_public_key(text: str) -> keys.PublicKey:
    candidate = Path(text)
    if not text.startswith(_KEY_LINE_STARTS) and candidate.exists():
        try:
            text = candidate.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise errors.KeyProblem(
                f"cannot read the public key file {candidate}: {exc}."
            ) from None
        if "PRIVATE KEY" in text:
            raise errors.KeyProblem(
                f"{candidate} is a private key; give the public key (.pub).",
                hint="Never hand a private key to another signer.",
            )
    elif not text.startswith(_KEY_LINE_STARTS):
        raise errors.KeyProblem(
            f"{errors.quoted(text)} is neither a public key file nor an OpenSSH public key.",
            hint="Give PATH.pub or the line 'ssh-ed25519 AAAA...'.",
        )
    return keys.PublicKey.parse(text)


@keys_app.command("revoke")
def keys_revoke(
    fingerprint: Annotated[str, typer.Argument(help="SHA256:... fingerprint of the key.")],
    reason: Annotated[str, typer.Option("--reason", help="Why the key is revoked.")] = "",
    ledger: common.LedgerOpt = None,
    key: common.KeyOpt = None,
) -> None:
    """Stop trusting a signer: appends a key.revoked record signed by a trusted key."""
    led = open_ledger(ledger)
    target = led.trusted_signer(fingerprint)
    if target is None:
        raise errors.InputError(
            f"no trusted key has the fingerprint {fingerprint}.",
            hint="See 'ledger keys list' for the trusted keys.",
        )
    signing_key = signing_key_for(led, key)
    active = [s for s in led.signers() if s.active]
    if len(active) == 1:
        raise errors.InputError(
            f"{fingerprint} is the ledger's last trusted key; revoking it would leave nobody "
            "able to sign.",
            hint="Add another key with 'ledger keys add' first.",
        )
    done = led.append(
        records.KIND_KEY_REVOKED,
        shapes.KeyRevoked(fingerprint=fingerprint, reason=reason),
        key=signing_key,
    )
    common.console.print(
        f"Revoked {target.principal} {fingerprint} (seq {done.seq}, commit {done.commit_id})"
    )


@keys_app.command("list")
def keys_list(ledger: common.LedgerOpt = None, json_out: common.JsonOpt = False) -> None:
    """The ledger's signers: principal, fingerprint, when added and revoked."""
    led = open_ledger(ledger)
    signers = led.signers()
    if json_out:
        common.console.print_json(
            json.dumps(
                [
                    {
                        "principal": s.principal,
                        "fingerprint": s.fingerprint,
                        "key": s.public_key.openssh(),
                        "added_seq": s.added_seq,
                        "added": s.added_time,
                        "revoked_seq": s.revoked_seq,
                        "revoked": s.revoked_time,
                        "active": s.active,
                    }
                    for s in signers
                ]
            )
        )
    else:
        for s in signers:
            state = "trusted" if s.active else f"revoked at seq {s.revoked_seq} ({s.revoked_time})"
            added = "genesis" if s.added_seq == 0 else f"seq {s.added_seq}"
            common.console.print(f"{s.fingerprint}  {s.principal}  added {added}  {state}")
    _unless_verified(led, "the keys above are those the verifier's replay trusts")


def _unless_verified(led: store.Ledger, shown: str) -> None:
    """Exit 7 naming the findings when the chain under what was shown does not verify."""
    view = led.trust_view() if led.head() is not None else None
    if view is not None and not view.ok:
        raise view.refuse(led.path, f"{shown} (a record that fails a check changes nothing)")


@keys_app.command("allowed-signers")
def keys_allowed_signers(
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write to FILE instead of stdout.")
    ] = None,
    ledger: common.LedgerOpt = None,
) -> None:
    """git's allowed-signers file for the ledger's keys (for 'git verify-commit')."""
    led = open_ledger(ledger)
    lines = []
    for s in led.signers():
        after = records.parse_time(s.added_time) if s.added_time else None
        before = records.parse_time(s.revoked_time) if s.revoked_time else None
        lines.append(keys.allowed_signers_line(s.principal, s.public_key, after, before))
    text = "".join(line if line.endswith("\n") else line + "\n" for line in lines)
    if output is None:
        common.console.out(text, end="")
    else:
        outfile.write(output, text, "the allowed-signers file")
        common.console_err.print(
            f"Wrote {len(lines)} signer(s) to {output}. Use it with: git -c "
            f"gpg.ssh.allowedSignersFile={output} verify-commit COMMIT"
        )
    _unless_verified(led, "the lines written are the keys the verifier's replay trusts")


# --- record, log, show ------------------------------------------------------------------


@common.app.command("record")
def record_cmd(
    message: Annotated[str, typer.Option("--message", "-m", help="What happened.")],
    kind: Annotated[str, typer.Option("--kind", help="Record kind (only 'event').")] = "event",
    data: Annotated[
        str | None,
        typer.Option("--data", help="JSON value to attach, or @FILE to read it from a file."),
    ] = None,
    run: Annotated[str | None, typer.Option("--run", help="Attach the event to a run id.")] = None,
    ledger: common.LedgerOpt = None,
    key: common.KeyOpt = None,
    trust_genesis: common.TrustGenesisOpt = None,
    allow_unverified: common.AppendUnverifiedOpt = False,
) -> None:
    """Append an external event to the ledger (for other tools)."""
    if kind != records.KIND_EVENT:
        raise errors.UsageError(
            f"--kind {errors.quoted(kind)} cannot be recorded by hand; only 'event' can.",
            hint="Run records are written by 'ledger run'; keys by 'ledger keys'.",
        )
    common.check_text(message, "--message")
    value = _parse_data(data)
    led = open_ledger(ledger)
    verify_for_append(led, trust_genesis, allow_unverified, "nothing is recorded in it")
    if run is not None:
        records.check_run_id(run)
        recs = led.usable_run_records(run)  # (the verified chain's)
        if not recs or recs[0].kind != records.KIND_RUN_STARTED:
            raise errors.InputError(
                f"there is no run {run} in the ledger at {led.path}; an event attached to it "
                "would make up a run that never started.",
                hint="Check the run id ('ledger log --kind run.started' lists runs), or record "
                "the event without --run.",
            )
    signing_key = signing_key_for(led, key)
    done = led.append(
        records.KIND_EVENT,
        shapes.EventData(message=message, data=value),
        key=signing_key,
        run=run,
    )
    common.console.print(f"Recorded event seq {done.seq} commit {done.commit_id}")


def _parse_data(data: str | None) -> Any:
    if data is None:
        return None
    source = "--data"
    text = data
    if data.startswith("@"):
        path = Path(data[1:])
        source = str(path)
        if path.exists() and not path.is_file():
            raise errors.InputError(f"--data file {path} is not a regular file.")
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise errors.InputError(f"--data file {path} does not exist.") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise errors.InputError(f"cannot read --data file {path}: {exc}.") from None
    return records.parse_data(text, source)


@common.app.command("log")
def log_cmd(
    run: Annotated[str | None, typer.Option("--run", help="Only records of this run.")] = None,
    kind: Annotated[list[str] | None, typer.Option("--kind", help="Only these kinds.")] = None,
    limit: Annotated[int | None, typer.Option("--limit", "-n", help="At most N records.")] = None,
    ledger: common.LedgerOpt = None,
    json_out: common.JsonOpt = False,
    allow_unverified: common.ShowUnverifiedOpt = False,
) -> None:
    """Records of the verified chain, newest first."""
    kinds = set(kind or [])
    unknown = kinds - records.KINDS
    if unknown:
        raise errors.UsageError(
            f"unknown --kind {', '.join(sorted(unknown))}; known kinds: "
            f"{', '.join(sorted(records.KINDS))}."
        )
    led = open_verified(ledger, allow_unverified, "its records are not listed")
    source = (
        reversed(led.run_records(records.check_run_id(run), signed=True))
        if run
        else led.iter_records(newest_first=True)
    )
    shown = 0
    out: list[dict[str, Any]] = []
    for rec in source:
        if kinds and rec.kind not in kinds:
            continue
        if limit is not None and shown >= limit:
            break
        shown += 1
        if json_out:
            out.append(record_to_json(rec))
            continue
        actor = rec.record.get("actor", {})
        common.console.print(
            f"{rec.seq:>6}  {rec.commit_id[:12]}  {rec.time[:19]}Z  "
            f"{actor.get('principal', '')}  {rec.summary}",
            markup=False,
        )
    if json_out:
        common.console.out(json.dumps(out, ensure_ascii=False, indent=1))


@common.app.command("show")
def show_cmd(
    ref: Annotated[str, typer.Argument(help="Seq number or commit id.")],
    file: Annotated[
        str | None, typer.Option("--file", help="Print this attached file (e.g. stdout) instead.")
    ] = None,
    ledger: common.LedgerOpt = None,
    json_out: common.JsonOpt = False,
    allow_unverified: common.ShowUnverifiedOpt = False,
) -> None:
    """One record of the verified chain with its commit and attachments."""
    led = open_verified(ledger, allow_unverified, "none of its records is shown")
    rec = led.record(ref, signed=True)
    if file is not None:
        data = rec.attachment(file)
        common.console.file.flush()
        os.write(1, data)
        return
    if json_out:
        common.console.out(json.dumps(record_to_json(rec), ensure_ascii=False, indent=1))
        return
    common.console.print(f"seq {rec.seq}  commit {rec.commit_id}", markup=False)
    common.console.print(f"file {rec.path}", markup=False)
    common.console.print(rec.message.rstrip("\n"), markup=False)
    common.console.print("")
    common.console.out(json.dumps(rec.record, ensure_ascii=False, indent=2, sort_keys=True))
