"""Core commands: init, keys, record, log, show, verify."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ledger.cli.common import (
    JsonOpt,
    KeyOpt,
    LedgerOpt,
    app,
    console,
    console_err,
    default_key_path,
    default_ledger_path_for_init,
    find_ledger_path,
    read_passphrase,
    resolve_key_path,
)
from ledger.errors import (
    InputError,
    KeyProblem,
    LedgerExists,
    PassphraseRequired,
    UsageError,
    VerificationFailed,
)
from ledger.format import records
from ledger.keys import PublicKey, SigningKey, allowed_signers_line, key_file_mode_problem
from ledger.store import Ledger, StoredRecord, gitdir

if TYPE_CHECKING:
    from ledger.verify.local import LocalVerification

keys_app = typer.Typer(
    help="Generate keys and manage the ledger's trusted signers.", no_args_is_help=True
)
app.add_typer(keys_app, name="keys")


# --- helpers shared with other command modules -----------------------------------------


def open_ledger(path: Path | None) -> Ledger:
    return Ledger.open(find_ledger_path(path))


def load_key(path: Path) -> SigningKey:
    """Load a signing key, asking for its passphrase (env or prompt) when it is encrypted."""
    problem = key_file_mode_problem(path)
    if problem:
        console_err.print(f"ledger: warning: {problem}")
    try:
        return SigningKey.load(path)
    except PassphraseRequired:
        pass
    return SigningKey.load(path, read_passphrase(path))


def signing_key_for(ledger: Ledger | None, explicit: Path | None) -> SigningKey:
    configured = ledger.config_get("ledger.signingKey") if ledger is not None else None
    return load_key(resolve_key_path(explicit, configured))


def default_principal(key: SigningKey) -> str:
    if key.comment and "@" in key.comment:
        return key.comment
    user = os.environ.get("USER") or os.environ.get("LOGNAME") or "operator"
    return f"{user}@{socket.gethostname()}"


def record_to_json(rec: StoredRecord) -> dict[str, Any]:
    return {"seq": rec.seq, "commit": rec.commit_id, "path": rec.path, "record": rec.record}


# --- init -------------------------------------------------------------------------------


@app.command()
def init(
    path: Annotated[
        Path | None,
        typer.Argument(help="Where to create the ledger (default: $LEDGER_DIR, else ./.ledger)."),
    ] = None,
    name: Annotated[str | None, typer.Option("--name", help="Ledger name.")] = None,
    key: KeyOpt = None,
    principal: Annotated[
        str | None,
        typer.Option(
            "--principal",
            help="Identity of the initial signer (default: key comment or USER@HOST).",
        ),
    ] = None,
) -> None:
    """Create a new ledger with its signed genesis record."""
    target = default_ledger_path_for_init(path)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise LedgerExists(
            f"{target} already exists and is not empty; 'ledger init' never touches an "
            "existing ledger or directory.",
            hint="Choose another path, or use the existing ledger with --ledger.",
        )
    key_path = resolve_key_path(key)
    signing_key = load_key(key_path)
    who = principal or default_principal(signing_key)
    ledger = Ledger.init(
        target,
        name=name or target.resolve().parent.name or "ledger",
        key=signing_key,
        principal=who,
    )
    ledger.config_set("ledger.signingKey", str(key_path.resolve()))
    _pin_genesis(ledger)
    excluded = gitdir.exclude_from_worktree(target)
    console.print(f"Created ledger {ledger.name!r} at {target}")
    console.print(f"  ledger id:  {ledger.ledger_id}")
    console.print(f"  genesis:    {ledger.genesis_id}")
    console.print(f"  signer:     {who} {signing_key.public_key.fingerprint}")
    console.print(
        f"Auditors pin the genesis commit id: 'ledger verify --trust-genesis {ledger.genesis_id}'."
    )
    if excluded is not None:
        console.print(
            f"The ledger is inside a git work tree: {excluded} now excludes it, so the "
            "project's git never adds it.",
            markup=False,
        )


def _pin_genesis(ledger: Ledger) -> None:
    """The creator's own copy trusts the genesis it just wrote."""
    from ledger import verify

    result = verify.verify_ledger(ledger.path, trust_genesis=ledger.genesis_id)
    if result.state is not None:
        verify.save_state(ledger.path, result.state)


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
    target = path or default_key_path()
    secret: bytes | None = None
    if passphrase:
        env = os.environ.get("LEDGER_KEY_PASSPHRASE")
        if env is not None:
            secret = env.encode()
        else:
            text = typer.prompt("Passphrase", hide_input=True, confirmation_prompt=True)
            secret = text.encode()
        if not secret:
            raise InputError(
                "an empty passphrase does not encrypt anything.",
                hint="Give a passphrase, or use --no-passphrase.",
            )
    if target.parent and not target.parent.exists():
        target.parent.mkdir(parents=True, mode=0o700)
    key = SigningKey.generate(comment=comment)
    key.save(target, secret)
    console.print(f"Wrote {target} (private, mode 0600) and {target}.pub")
    bits = 256 if key.public_key.key_type == "ssh-ed25519" else 0
    console.print(f"{bits} {key.public_key.fingerprint} {comment or 'no comment'} (ED25519)")


@keys_app.command("add")
def keys_add(
    principal: Annotated[str, typer.Argument(help="Identity of the new signer, e.g. an e-mail.")],
    pubkey: Annotated[
        str, typer.Argument(help="Public key: a .pub file or 'ssh-ed25519 AAAA...'.")
    ],
    comment: Annotated[str, typer.Option("--comment", help="Why this key is added.")] = "",
    ledger: LedgerOpt = None,
    key: KeyOpt = None,
) -> None:
    """Trust a new signer: appends a key.added record signed by a trusted key."""
    led = open_ledger(ledger)
    public = _read_public_key(pubkey)
    if not principal.strip() or any(c in principal for c in '<>\n\r\t ,"'):
        raise InputError(
            f"{principal!r} is not a usable principal (no spaces, commas, quotes "
            "or angle brackets)."
        )
    if led.trusted_signer(public.fingerprint) is not None:
        raise InputError(f"the key {public.fingerprint} is already trusted by this ledger.")
    signing_key = signing_key_for(led, key)
    done = led.append(
        records.KIND_KEY_ADDED,
        {
            "principal": principal,
            "key": public.openssh(),
            "fingerprint": public.fingerprint,
            "comment": comment,
        },
        key=signing_key,
    )
    console.print(
        f"Added {principal} {public.fingerprint} (seq {done.seq}, commit {done.commit_id})"
    )


def _read_public_key(text: str) -> PublicKey:
    candidate = Path(text)
    if not text.startswith(("ssh-", "ecdsa-")) and candidate.exists():
        try:
            text = candidate.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise KeyProblem(f"cannot read the public key file {candidate}: {exc}.") from None
        if "PRIVATE KEY" in text:
            raise KeyProblem(
                f"{candidate} is a private key; give the public key (.pub).",
                hint="Never hand a private key to another signer.",
            )
    elif not text.startswith(("ssh-", "ecdsa-")):
        raise KeyProblem(
            f"{text!r} is neither a public key file nor an OpenSSH public key.",
            hint="Give PATH.pub or the line 'ssh-ed25519 AAAA...'.",
        )
    return PublicKey.parse(text)


@keys_app.command("revoke")
def keys_revoke(
    fingerprint: Annotated[str, typer.Argument(help="SHA256:... fingerprint of the key.")],
    reason: Annotated[str, typer.Option("--reason", help="Why the key is revoked.")] = "",
    ledger: LedgerOpt = None,
    key: KeyOpt = None,
) -> None:
    """Stop trusting a signer: appends a key.revoked record signed by a trusted key."""
    led = open_ledger(ledger)
    target = led.trusted_signer(fingerprint)
    if target is None:
        raise InputError(
            f"no trusted key has the fingerprint {fingerprint}.",
            hint="See 'ledger keys list' for the trusted keys.",
        )
    signing_key = signing_key_for(led, key)
    active = [s for s in led.signers() if s.active]
    if len(active) == 1:
        raise InputError(
            f"{fingerprint} is the ledger's last trusted key; revoking it would leave nobody "
            "able to sign.",
            hint="Add another key with 'ledger keys add' first.",
        )
    done = led.append(
        records.KIND_KEY_REVOKED, {"fingerprint": fingerprint, "reason": reason}, key=signing_key
    )
    console.print(
        f"Revoked {target.principal} {fingerprint} (seq {done.seq}, commit {done.commit_id})"
    )


@keys_app.command("list")
def keys_list(ledger: LedgerOpt = None, json_out: JsonOpt = False) -> None:
    """The ledger's signers: principal, fingerprint, when added and revoked."""
    led = open_ledger(ledger)
    signers = led.signers()
    if json_out:
        console.print_json(
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
        return
    for s in signers:
        state = "trusted" if s.active else f"revoked at seq {s.revoked_seq} ({s.revoked_time})"
        added = "genesis" if s.added_seq == 0 else f"seq {s.added_seq}"
        console.print(f"{s.fingerprint}  {s.principal}  added {added}  {state}")


@keys_app.command("allowed-signers")
def keys_allowed_signers(
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write to FILE instead of stdout.")
    ] = None,
    ledger: LedgerOpt = None,
) -> None:
    """git's allowed-signers file for the ledger's keys (for 'git verify-commit')."""
    led = open_ledger(ledger)
    lines = []
    for s in led.signers():
        after = records.parse_time(s.added_time) if s.added_time else None
        before = records.parse_time(s.revoked_time) if s.revoked_time else None
        lines.append(allowed_signers_line(s.principal, s.public_key, after, before))
    text = "".join(line if line.endswith("\n") else line + "\n" for line in lines)
    if output is None:
        console.out(text, end="")
    else:
        output.write_text(text, encoding="utf-8")
        console_err.print(
            f"Wrote {len(lines)} signer(s) to {output}. Use it with: git -c "
            f"gpg.ssh.allowedSignersFile={output} verify-commit COMMIT"
        )


# --- record, log, show ------------------------------------------------------------------


@app.command("record")
def record_cmd(
    message: Annotated[str, typer.Option("--message", "-m", help="What happened.")],
    kind: Annotated[str, typer.Option("--kind", help="Record kind (only 'event').")] = "event",
    data: Annotated[
        str | None,
        typer.Option("--data", help="JSON value to attach, or @FILE to read it from a file."),
    ] = None,
    run: Annotated[str | None, typer.Option("--run", help="Attach the event to a run id.")] = None,
    ledger: LedgerOpt = None,
    key: KeyOpt = None,
) -> None:
    """Append an external event to the ledger (for other tools)."""
    if kind != records.KIND_EVENT:
        raise UsageError(
            f"--kind {kind!r} cannot be recorded by hand; only 'event' can.",
            hint="Run records are written by 'ledger run'; keys by 'ledger keys'.",
        )
    value = _parse_data(data)
    led = open_ledger(ledger)
    if run is not None:
        records.check_run_id(run)
        recs = led.run_records(run)
        if not recs or recs[0].kind != records.KIND_RUN_STARTED:
            raise InputError(
                f"there is no run {run} in the ledger at {led.path}; an event attached to it "
                "would make up a run that never started.",
                hint="Check the run id ('ledger log --kind run.started' lists runs), or record "
                "the event without --run.",
            )
    signing_key = signing_key_for(led, key)
    done = led.append(
        records.KIND_EVENT, {"message": message, "data": value}, key=signing_key, run=run
    )
    console.print(f"Recorded event seq {done.seq} commit {done.commit_id}")


def _parse_data(data: str | None) -> Any:
    if data is None:
        return None
    source = "--data"
    text = data
    if data.startswith("@"):
        path = Path(data[1:])
        source = str(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise InputError(f"--data file {path} does not exist.") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"cannot read --data file {path}: {exc}.") from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(
            f"{source} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}.",
            hint='Pass a JSON value, e.g. --data \'{"ticket": "OPS-1"}\', or @FILE.',
        ) from None
    records.canonical_json(value)  # refuses floats with a clear message
    return value


@app.command("log")
def log_cmd(
    run: Annotated[str | None, typer.Option("--run", help="Only records of this run.")] = None,
    kind: Annotated[list[str] | None, typer.Option("--kind", help="Only these kinds.")] = None,
    limit: Annotated[int | None, typer.Option("--limit", "-n", help="At most N records.")] = None,
    ledger: LedgerOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Records, newest first."""
    led = open_ledger(ledger)
    kinds = set(kind or [])
    unknown = kinds - records.KINDS
    if unknown:
        raise UsageError(
            f"unknown --kind {', '.join(sorted(unknown))}; known kinds: "
            f"{', '.join(sorted(records.KINDS))}."
        )
    source = (
        reversed(led.run_records(records.check_run_id(run)))
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
        console.print(
            f"{rec.seq:>6}  {rec.commit_id[:12]}  {rec.time[:19]}Z  "
            f"{actor.get('principal', '')}  {rec.summary}",
            markup=False,
        )
    if json_out:
        console.out(json.dumps(out, ensure_ascii=False, indent=1))


@app.command("show")
def show_cmd(
    ref: Annotated[str, typer.Argument(help="Seq number or commit id.")],
    file: Annotated[
        str | None, typer.Option("--file", help="Print this attached file (e.g. stdout) instead.")
    ] = None,
    ledger: LedgerOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """One record with its commit and attachments."""
    led = open_ledger(ledger)
    rec = led.record(ref)
    if file is not None:
        data = rec.attachment(file)
        console.file.flush()
        os.write(1, data)
        return
    if json_out:
        console.out(json.dumps(record_to_json(rec), ensure_ascii=False, indent=1))
        return
    console.print(f"seq {rec.seq}  commit {rec.commit_id}", markup=False)
    console.print(f"file {rec.path}", markup=False)
    console.print(rec.message.rstrip("\n"), markup=False)
    console.print("")
    console.out(json.dumps(rec.record, ensure_ascii=False, indent=2, sort_keys=True))


# --- verify -----------------------------------------------------------------------------


@app.command("verify")
def verify_cmd(
    since_last: Annotated[
        bool, typer.Option("--since-last", help="Verify only records after the last verified head.")
    ] = False,
    trust_genesis: Annotated[
        str | None,
        typer.Option("--trust-genesis", help="Genesis commit id to pin (else the one remembered)."),
    ] = None,
    remotes: Annotated[
        bool,
        typer.Option(
            "--remotes",
            help="Also fetch every remote and check it is a prefix of ours or ours of it.",
        ),
    ] = False,
    progress: Annotated[
        bool, typer.Option("--progress/--no-progress", help="Show a progress bar on a terminal.")
    ] = True,
    ledger: LedgerOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Verify signatures, trust, chain and tree of every record; report every finding."""
    path = find_ledger_path(ledger)
    Ledger.open(path)  # a clear error when there is no ledger
    show_bar = progress and not json_out and console_err.is_terminal
    outcome = _verify_local(path, trust_genesis, since_last, show_bar)
    result = outcome.result
    remote_states: list[Any] = []
    if remotes:
        from ledger import replicate
        from ledger.verify import Finding

        remote_states = replicate.check_remotes(path)
        for st in remote_states:
            if st.problem:
                result.add(  # (not ok from now on: ok is derived from the findings)
                    Finding(
                        st.rule or "diverged",
                        st.remote_seq,
                        st.remote_head,
                        f"remote {st.name} ({st.url}): {st.line()}",
                    )
                )
    if json_out:
        doc = result.to_json()
        doc["pinned_now"] = outcome.pinned_now
        if remotes:
            doc["remotes"] = [s.to_json() for s in remote_states]
        console.out(json.dumps(doc, indent=1, ensure_ascii=False))
    else:
        _print_verification(result, outcome.pinned_now, since_last)
        for st in remote_states:
            console.print(f"remote {st.name}: {st.line()}", markup=False)
    if not result.ok:
        where = "in the JSON output" if json_out else "above"
        raise VerificationFailed(
            f"{len(result.findings)} finding(s), listed {where}.",
            findings=list(result.findings),
            hint="Each finding names the rule of docs/FORMAT.md §9 that it breaks.",
        )


def _verify_local(
    path: Path, trust_genesis: str | None, since_last: bool, show_bar: bool
) -> LocalVerification:
    """Verify this copy (:func:`ledger.verify.local.verify_local`), with a progress bar on stderr
    when ``show_bar``."""
    # Imported here: only 'ledger verify' needs the verifier; the other core commands start
    # faster without it.
    from ledger.verify.local import verify_local

    if not show_bar:
        return verify_local(path, trust_genesis=trust_genesis, since_last=since_last)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    with Progress(
        "verifying",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console_err,
        transient=True,
    ) as bar:
        task = bar.add_task("verify", total=None)

        def tick(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        return verify_local(path, trust_genesis=trust_genesis, since_last=since_last, progress=tick)


def _print_verification(result: Any, pinned_now: bool, since_last: bool) -> None:
    for f in result.findings:
        where = f"seq {f.seq}" if f.seq is not None else "ledger"
        commit = f" commit {f.commit}" if f.commit else ""
        console.print(f"FINDING [{f.rule}] {where}{commit}: {f.message}", markup=False)
    scope = (
        f"{result.records_checked} new record(s)"
        if since_last
        else f"{result.records_checked} record(s)"
    )
    if result.ok:
        console.print(f"Verified {scope}: head seq {result.seq}, commit {result.head}.")
        if pinned_now:
            console.print(
                f"Genesis {result.genesis} was not pinned on this machine; it is "
                "pinned now (trust on first use). Compare it with the ledger's owner."
            )
        elif result.genesis_pinned:
            console.print(f"Genesis {result.genesis} matches the pinned genesis.")
    else:
        console.print(f"Verification FAILED: {len(result.findings)} finding(s) over {scope}.")
