"""The store: init, durable appends, reading through the tree, concurrency, crashes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pygit2
import pytest
from support.gitcmd import git

from ledger.errors import InputError, LedgerExists, LedgerNotFound, UntrustedKey
from ledger.format import records
from ledger.keys import SigningKey
from ledger.store import Ledger, UpkeepPolicy
from ledger.verify import verify_ledger


@pytest.fixture()
def key(tmp_path: Path) -> SigningKey:
    k = SigningKey.generate(comment="alice@example.com")
    k.save(tmp_path / "alice")
    return k


@pytest.fixture()
def ledger(tmp_path: Path, key: SigningKey) -> Ledger:
    return Ledger.init(tmp_path / "ledger.git", name="ops", key=key, principal="alice@example.com")


def allowed_signers(led: Ledger, path: Path) -> Path:
    from ledger.keys import allowed_signers_line

    lines = []
    for s in led.signers():
        after = records.parse_time(s.added_time) if s.added_time else None
        before = records.parse_time(s.revoked_time) if s.revoked_time else None
        line = allowed_signers_line(s.principal, s.public_key, after, before)
        lines.append(line if line.endswith("\n") else line + "\n")
    path.write_text("".join(lines))
    return path


RUN_STARTED = {
    "env": {},
    "lock": None,
    "on_failure": [],
    "resumes": None,
    "steps": ["s"],
    "operator": {"principal": "alice@example.com", "user": None},
    "param_sources": {},
    "params": {},
    "tool_version": "runbook-ledger 0.1.0",
    "runbook": {
        "description": "",
        "name": "x",
        "path": "/x.yaml",
        "sha256": records.sha256_hex(b"name: x\n"),
    },
    "trigger": {
        "ci": None,
        "ci_run": None,
        "ci_url": None,
        "incident": "INC-42",
        "source": "manual",
        "text": None,
    },
}


def test_init_writes_genesis_and_protects_branch(ledger: Ledger, key: SigningKey) -> None:
    head = ledger.head()
    assert head is not None and head.seq == 0
    assert head.commit_id == ledger.genesis_id
    repo = pygit2.Repository(str(ledger.path))
    assert repo.is_bare
    cfg = repo.config
    assert cfg.get_bool("receive.denyNonFastForwards")
    assert cfg.get_bool("receive.denyDeletes")
    genesis = json.loads(ledger.read_blob("genesis.json"))
    assert genesis["seq"] == 0 and genesis["kind"] == "genesis"
    assert genesis["ledger"] == ledger.ledger_id
    assert genesis["data"]["signers"][0]["fingerprint"] == key.public_key.fingerprint
    assert records.canonical_json(genesis) == ledger.read_blob("genesis.json")


def test_a_new_ledger_is_protected_like_a_clone(ledger: Ledger) -> None:
    """One protected-repository configuration (``store.gitdir.protect``) for both: stock git
    judges what it says."""
    cfg = git("--git-dir", ledger.path, "config", "--list").stdout.splitlines()
    for line in (
        "receive.denynonfastforwards=true",
        "receive.denydeletes=true",
        "receive.fsckobjects=true",
        "transfer.fsckobjects=true",
        "core.logallrefupdates=always",
        "gc.auto=0",
    ):
        assert line in cfg


def test_init_refuses_existing(tmp_path: Path, key: SigningKey, ledger: Ledger) -> None:
    with pytest.raises(LedgerExists):
        Ledger.init(ledger.path, name="again", key=key, principal="a@b")
    (tmp_path / "file").write_text("x")
    with pytest.raises(LedgerExists):
        Ledger.init(tmp_path / "file", name="x", key=key, principal="a@b")


def test_open_missing_and_non_ledger(tmp_path: Path) -> None:
    with pytest.raises(LedgerNotFound):
        Ledger.open(tmp_path / "nothing")
    (tmp_path / "plain").mkdir()
    with pytest.raises(LedgerNotFound):
        Ledger.open(tmp_path / "plain")
    pygit2.init_repository(str(tmp_path / "bare.git"), bare=True)
    with pytest.raises(LedgerNotFound):
        Ledger.open(tmp_path / "bare.git")


def test_append_chain_paths_and_stock_git_agrees(
    ledger: Ledger, key: SigningKey, tmp_path: Path
) -> None:
    run = records.new_run_id()
    a = ledger.append("event", {"message": "hello", "data": None}, key=key)
    b = ledger.append(
        "run.started",
        RUN_STARTED,
        key=key,
        run=run,
        incident="INC-42",
        attachments={"runbook": b"name: x\n"},
    )
    c = ledger.append(
        "event",
        {"message": "during the run", "data": None},
        key=key,
        run=run,
        attachments={"stdout": b"out\n", "stderr": b""},
    )
    assert [a.seq, b.seq, c.seq] == [1, 2, 3]
    assert a.path.startswith("events/") and a.path.endswith("0000000001-event.json")
    assert b.path.startswith(f"runs/{run[0:4]}/{run[4:6]}/{run[6:8]}/{run}/")
    assert ledger.runs_for_incident("INC-42") == [run]
    assert [r.seq for r in ledger.run_records(run)] == [2, 3]
    assert ledger.record(3).attachment("stdout") == b"out\n"
    assert ledger.record(c.commit_id).seq == 3
    assert ledger.run_ids() == [run]
    assert ledger.unfinished_runs() == [run]

    signers = allowed_signers(ledger, tmp_path / "allowed")
    for rec in ledger.iter_records():
        out = git(
            "-c",
            f"gpg.ssh.allowedSignersFile={signers}",
            "verify-commit",
            rec.commit_id,
            cwd=ledger.path,
            check=False,
        )
        assert out.returncode == 0, out.stderr
    fsck = git("fsck", "--strict", cwd=ledger.path, check=False)
    assert fsck.returncode == 0 and fsck.stdout == "" and "warning" not in fsck.stderr, fsck.stderr
    result = verify_ledger(ledger.path, trust_genesis=ledger.genesis_id)
    assert result.ok, [f.message for f in result.findings]


def test_untrusted_key_cannot_append(ledger: Ledger) -> None:
    stranger = SigningKey.generate()
    with pytest.raises(UntrustedKey):
        ledger.append("event", {"message": "x", "data": None}, key=stranger)
    head = ledger.head()
    assert head is not None and head.seq == 0


def test_key_added_then_revoked(ledger: Ledger, key: SigningKey) -> None:
    bob = SigningKey.generate()
    ledger.append(
        "key.added",
        {
            "principal": "bob@example.com",
            "key": bob.public_key.openssh(),
            "fingerprint": bob.public_key.fingerprint,
            "comment": "",
        },
        key=key,
    )
    done = ledger.append("event", {"message": "by bob", "data": None}, key=bob)
    assert done.record["actor"] == {
        "principal": "bob@example.com",
        "key": bob.public_key.fingerprint,
    }
    ledger.append(
        "key.revoked", {"fingerprint": bob.public_key.fingerprint, "reason": "left"}, key=key
    )
    with pytest.raises(UntrustedKey):
        ledger.append("event", {"message": "after", "data": None}, key=bob)
    assert verify_ledger(ledger.path, trust_genesis=ledger.genesis_id).ok


def test_floats_and_bad_names_refused(ledger: Ledger, key: SigningKey) -> None:
    with pytest.raises(InputError):
        ledger.append("event", {"message": "x", "data": 1.5}, key=key)
    with pytest.raises(InputError):
        ledger.append(
            "event", {"message": "x", "data": None}, key=key, attachments={"../evil": b""}
        )
    with pytest.raises(InputError):
        ledger.append("genesis", {}, key=key)
    head = ledger.head()
    assert head is not None and head.seq == 0


def test_seq_index_rebuilds_when_missing(ledger: Ledger, key: SigningKey) -> None:
    for i in range(5):
        ledger.append("event", {"message": str(i), "data": None}, key=key)
    (ledger.gitdir / "ledger-state" / "seq-index").unlink()
    reopened = Ledger.open(ledger.path)
    assert reopened.record(2).data["message"] == "1"
    assert reopened.record(5).data["message"] == "4"


WRITER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from ledger.keys import SigningKey
    from ledger.store import Ledger
    led = Ledger.open(Path(sys.argv[1]))
    key = SigningKey.load(Path(sys.argv[2]))
    n = int(sys.argv[3])
    for i in range(n):
        led.append("event", {"message": sys.argv[4] + str(i), "data": None}, key=key)
        if len(sys.argv) > 5:
            print(i, flush=True)
    """
)


@pytest.mark.slow
def test_four_processes_append_800_records(ledger: Ledger, tmp_path: Path) -> None:
    key_path = tmp_path / "alice"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(ledger.path), str(key_path), "200", f"w{w}-"]
        )
        for w in range(4)
    ]
    assert [p.wait(timeout=600) for p in procs] == [0, 0, 0, 0]
    head = ledger.head()
    assert head is not None and head.seq == 800
    seen = [r.seq for r in ledger.iter_records(newest_first=False)]
    assert seen == list(range(801))
    messages = {r.data["message"] for r in ledger.iter_records() if r.kind == "event"}
    assert len(messages) == 800
    result = verify_ledger(ledger.path, trust_genesis=ledger.genesis_id)
    assert result.ok, result.findings


def test_writer_killed_mid_append_leaves_verifiable_ledger(ledger: Ledger, tmp_path: Path) -> None:
    key_path = tmp_path / "alice"
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(ledger.path), str(key_path), "100000", "x", "progress"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    acknowledged: list[int] = []  # each line: the record of seq i + 1 is durable
    for line in proc.stdout:
        acknowledged.append(int(line) + 1)
        if acknowledged[-1] > 20:
            break
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    # What it printed before it died was acknowledged too.
    acknowledged += [int(line) + 1 for line in proc.stdout.read().split()]
    assert acknowledged == list(range(1, len(acknowledged) + 1))
    reopened = Ledger.open(ledger.path)
    result = verify_ledger(ledger.path, trust_genesis=ledger.genesis_id)
    assert result.ok, result.findings
    head = reopened.head()
    assert head is not None and head.seq >= acknowledged[-1]
    for seq in acknowledged:
        assert reopened.record(seq).data["message"] == f"x{seq - 1}"
    last = reopened.record(head.seq)
    assert last.data["message"] == f"x{head.seq - 1}"
    fsck = git("fsck", "--strict", cwd=ledger.path, check=False)
    assert fsck.returncode == 0, fsck.stderr
    # The next append continues the chain.
    key = SigningKey.load(key_path)
    assert reopened.append("event", {"message": "after", "data": None}, key=key).seq == head.seq + 1


def test_loose_objects_are_packed_and_packs_consolidated(ledger: Ledger, key: SigningKey) -> None:
    ledger = Ledger.open(ledger.path, upkeep=UpkeepPolicy(pack_every=10, max_packs=2))
    for i in range(90):
        ledger.append("event", {"message": f"m{i}", "data": None}, key=key)
        ledger.wait_for_packing()
    objects = ledger.gitdir / "objects"
    packs = sorted(objects.glob("pack/pack-*.pack"))
    assert ledger.last_pack_error is None
    assert 1 <= len(packs) <= 2
    loose = [f for d in objects.iterdir() if len(d.name) == 2 for f in d.iterdir()]
    assert len(loose) < 10 * 8  # only what came after the last pack
    assert [r.seq for r in ledger.iter_records(newest_first=False)] == list(range(91))
    assert ledger.record(5).data["message"] == "m4"
    assert verify_ledger(ledger.path, trust_genesis=ledger.genesis_id).ok
    fsck = git("fsck", "--strict", "--no-dangling", cwd=ledger.path, check=False)
    assert fsck.returncode == 0 and "error" not in fsck.stderr, fsck.stderr


def test_appends_go_on_while_packing(
    ledger: Ledger, key: SigningKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The append that reaches pack_every starts packing and returns; later appends do not
    wait for it (here the packing is held until the test lets it go)."""
    import threading

    from ledger.store import upkeep

    ledger = Ledger.open(ledger.path, upkeep=UpkeepPolicy(pack_every=5))
    release = threading.Event()
    started = threading.Event()
    real_pack = upkeep.pack_objects

    def held_pack(repo: object, gitdir: Path, policy: UpkeepPolicy, *, threads: int = 0) -> int:
        started.set()
        assert release.wait(60)
        return real_pack(repo, gitdir, policy, threads=threads)  # type: ignore[arg-type]

    monkeypatch.setattr(upkeep, "pack_objects", held_pack)
    for i in range(5):
        ledger.append("event", {"message": f"m{i}", "data": None}, key=key)
    assert started.wait(60)
    for i in range(5, 12):  # seq 10 falls while the first packing is still held
        ledger.append("event", {"message": f"m{i}", "data": None}, key=key)
    assert ledger.head() is not None and ledger.head().seq == 12  # type: ignore[union-attr]
    release.set()
    ledger.wait_for_packing()
    assert ledger.last_pack_error is None
    assert list((ledger.gitdir / "objects" / "pack").glob("pack-*.pack"))
    assert verify_ledger(ledger.path, trust_genesis=ledger.genesis_id).ok
    fsck = git("fsck", "--strict", "--no-dangling", cwd=ledger.path, check=False)
    assert fsck.returncode == 0 and "error" not in fsck.stderr, fsck.stderr


def test_packing_concurrent_with_appends_loses_nothing(ledger: Ledger, key: SigningKey) -> None:
    """Packings (and pack consolidations) running beside a stream of appends remove only
    objects already in a pack on disk: every record stays readable and the chain verifies."""
    ledger = Ledger.open(ledger.path, upkeep=UpkeepPolicy(pack_every=7, max_packs=3))
    for i in range(150):
        ledger.append(
            "event", {"message": f"m{i}", "data": None}, key=key, attachments={"out": b"x%d" % i}
        )
    ledger.wait_for_packing()
    assert ledger.last_pack_error is None
    reopened = Ledger.open(ledger.path)
    assert [r.seq for r in reopened.iter_records(newest_first=False)] == list(range(151))
    assert reopened.record(100).attachment("out") == b"x99"
    assert verify_ledger(ledger.path, trust_genesis=ledger.genesis_id).ok
    fsck = git("fsck", "--strict", "--no-dangling", cwd=ledger.path, check=False)
    assert fsck.returncode == 0 and "error" not in fsck.stderr, fsck.stderr


def test_a_second_packing_of_the_same_ledger_does_nothing(ledger: Ledger, key: SigningKey) -> None:
    import fcntl
    import os

    from ledger.store import gitdir

    for i in range(3):
        ledger.append("event", {"message": f"m{i}", "data": None}, key=key)
    fd = os.open(ledger.gitdir / gitdir.PACK_LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        assert ledger.pack_objects() == 0  # another packer holds the lock
    finally:
        os.close(fd)
    assert ledger.pack_objects() > 0


def test_trees_stay_in_gits_order_whatever_the_order_of_appends(
    ledger: Ledger, key: SigningKey
) -> None:
    """New names that sort before existing ones (a 'keys/' directory after 'runs/' exists, an
    earlier run's directory after a later one's) still give trees stock git accepts."""
    late, early = "20261122T120000Z-bbbbbbbb", "20261122T110000Z-aaaaaaaa"
    ledger.append("event", {"message": "late", "data": None}, key=key, run=late)
    ledger.append(
        "event",
        {"message": "early", "data": None},
        key=key,
        run=early,
        attachments={"b": b"1", "a": b"2"},
    )
    other = SigningKey.generate(comment="o@example.com")
    ledger.append(
        "key.added",
        {
            "principal": "o@example.com",
            "key": other.public_key.openssh(),
            "fingerprint": other.public_key.fingerprint,
            "comment": "",
        },
        key=key,
    )
    ledger.append("event", {"message": "m", "data": None}, key=key)
    fsck = git("fsck", "--strict", "--no-dangling", cwd=ledger.path, check=False)
    assert fsck.returncode == 0 and "error" not in fsck.stderr, fsck.stderr
    assert verify_ledger(ledger.path, trust_genesis=ledger.genesis_id).ok
    assert sorted(ledger.run_ids()) == [early, late]


def test_upkeep_removes_what_a_dead_writer_left_and_nothing_fresh(
    ledger: Ledger, key: SigningKey
) -> None:
    """A writer killed mid-append can leave a temporary file or a pack without its index
    (never acknowledged, never referenced): old ones go at the next upkeep, recent ones stay
    (they may be an append in flight in another process)."""
    import time as time_mod

    from ledger.store import upkeep

    pack_dir = ledger.gitdir / "objects" / "pack"
    old_tmp = pack_dir / "tmp_ledger_0123_pack-x.pack"
    old_pack = pack_dir / ("pack-" + "1" * 40 + ".pack")
    fresh_tmp = pack_dir / "tmp_ledger_4567_pack-y.idx"
    for path in (old_tmp, old_pack, fresh_tmp):
        path.write_bytes(b"partial")
    past = time_mod.time() - upkeep.STALE_LEFTOVER_S - 60
    for path in (old_tmp, old_pack):
        os.utime(path, (past, past))
    ledger.append("event", {"message": "m", "data": None}, key=key)
    upkeep.merge_small_packs(ledger.repo, ledger.gitdir)
    assert not old_tmp.exists() and not old_pack.exists()
    assert fresh_tmp.exists()
    assert ledger.record(1).data["message"] == "m"


def test_small_packs_with_deltas_are_merged_through_the_object_database(
    ledger: Ledger, key: SigningKey, tmp_path: Path
) -> None:
    """Packs a fetch brings can hold deltas, whose entries cannot be copied as they are:
    their objects are read and stored whole instead, and nothing is lost."""
    from ledger.store import packs, upkeep

    def add(n: int) -> None:
        for i in range(n):
            ledger.append("event", {"message": "x" * 200 + str(i), "data": None}, key=key)

    add(20)
    copy = tmp_path / "copy.git"
    # (a local clone copies the pack files: not while the ledger's upkeep replaces them)
    ledger.wait_for_packing()
    git("clone", "-q", "--bare", ledger.path, copy)
    for _ in range(2):
        add(3)
        ledger.wait_for_packing()
        git("-c", "fetch.unpackLimit=1", "fetch", "-q", ledger.path, "main:main", cwd=copy)
    pack_dir = copy / "objects" / "pack"
    small = [p for p in upkeep.list_packs(pack_dir) if p.count <= UpkeepPolicy().small_pack_objects]
    assert len(small) >= 2
    with_deltas = [
        p
        for p in small
        if packs.whole_entries(
            p.base.with_suffix(".pack").read_bytes(), p.base.with_suffix(".idx").read_bytes()
        )
        is None
    ]
    assert with_deltas, "git sent no deltas; the fallback path is not exercised"
    assert upkeep.merge_small_packs(pygit2.Repository(str(copy)), copy) == len(small)
    left = [p for p in upkeep.list_packs(pack_dir) if p.count <= UpkeepPolicy().small_pack_objects]
    assert len(left) <= 1
    fsck = git("fsck", "--strict", "--no-dangling", cwd=copy, check=False)
    assert fsck.returncode == 0 and "error" not in fsck.stderr, fsck.stderr
    assert verify_ledger(copy, trust_genesis=ledger.genesis_id).ok


def test_small_packs_are_merged_while_a_repack_runs(
    ledger: Ledger, key: SigningKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A repack with deltas can take seconds; the merges of small packs do not wait for it,
    so a busy ledger never piles up hundreds of packs for readers to search."""
    import threading

    from ledger.store import upkeep

    policy = UpkeepPolicy(pack_every=5, merge_every=4)
    ledger = Ledger.open(ledger.path, upkeep=policy)
    release = threading.Event()
    real_pack = upkeep.pack_objects

    def held_pack(repo: object, gitdir: Path, given: UpkeepPolicy, *, threads: int = 0) -> int:
        assert release.wait(60)
        return real_pack(repo, gitdir, given, threads=threads)  # type: ignore[arg-type]

    monkeypatch.setattr(upkeep, "pack_objects", held_pack)
    for i in range(40):
        ledger.append("event", {"message": f"m{i}", "data": None}, key=key)
        if ledger._upkeep.merger is not None:
            ledger._upkeep.merger.join()  # (only to make the count below exact)
    pack_dir = ledger.gitdir / "objects" / "pack"
    small = [p for p in upkeep.list_packs(pack_dir) if p.count <= policy.small_pack_objects]
    assert (
        ledger._upkeep.packer is not None and ledger._upkeep.packer.is_alive()
    )  # the repack is held
    assert len(small) <= policy.merge_every  # ... and yet the small packs were merged
    release.set()
    ledger.wait_for_packing()
    assert ledger.last_pack_error is None
    assert verify_ledger(ledger.path, trust_genesis=ledger.genesis_id).ok
    fsck = git("fsck", "--strict", "--no-dangling", cwd=ledger.path, check=False)
    assert fsck.returncode == 0 and "error" not in fsck.stderr, fsck.stderr


def test_upkeep_runs_at_low_priority(
    ledger: Ledger, key: SigningKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pack upkeep is background work: its thread is niced so that the appends and a run's
    commands keep the CPU; the appending thread keeps its own priority."""
    import threading

    from ledger.store import upkeep

    seen: list[int] = []
    real_merge = upkeep.merge_small_packs

    def observed(repo: object, gitdir: Path, given: UpkeepPolicy) -> int:
        seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
        return real_merge(repo, gitdir, given)  # type: ignore[arg-type]

    monkeypatch.setattr(upkeep, "merge_small_packs", observed)
    before = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    policy = UpkeepPolicy()
    for i in range(policy.merge_every):
        ledger.append("event", {"message": f"m{i}", "data": None}, key=key)
    ledger.wait_for_packing()
    assert seen == [max(before, policy.nice)]
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == before


def test_a_stored_record_reads_its_attachments_through_the_reader_it_was_given() -> None:
    """A record read back holds a blob reader, not the ledger: any reader of (path, commit)
    serves, and a record without one has no attachments to give."""
    from ledger.store import StoredRecord

    asked: list[tuple[str, str]] = []

    def reader(path: str, commit_id: str) -> bytes:
        asked.append((path, commit_id))
        return b"content of " + path.encode()

    files = {"out": {"path": "runs/x/1-out", "sha256": "", "size": 0}}
    rec = StoredRecord("c0ffee", 1, "event", "p", {"files": files}, b"{}", "m\n", 0, reader)
    assert rec.attachment("out") == b"content of runs/x/1-out"
    assert asked == [("runs/x/1-out", "c0ffee")]
    with pytest.raises(InputError):
        rec.attachment("err")
    alone = StoredRecord("c0ffee", 1, "event", "p", {"files": files}, b"{}", "m\n", 0)
    with pytest.raises(InputError):
        alone.attachment("out")


DIES_MOVING_MAIN = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from ledger.keys import SigningKey
    from ledger.store import Ledger
    real_replace = os.replace
    def replace(src, dst, *args, **kwargs):
        if str(src).endswith("refs/heads/main.lock"):
            os.kill(os.getpid(), signal.SIGKILL)  # dies holding refs/heads/main.lock
        return real_replace(src, dst, *args, **kwargs)
    os.replace = replace
    led = Ledger.open(Path(sys.argv[1]))
    led.append("event", {"message": "never", "data": None}, key=SigningKey.load(Path(sys.argv[2])))
    """
)


def test_a_writer_killed_holding_main_lock_does_not_block_appends(
    ledger: Ledger, tmp_path: Path
) -> None:
    """A writer killed between writing ``refs/heads/main.lock`` and renaming it over ``main``
    leaves the lock file behind. Every writer holds the ``ledger.lock`` flock while the lock
    file exists, so one found under the flock is stale: the next append removes it."""
    from support.cli import run_cli

    key_path = tmp_path / "alice"
    proc = subprocess.run(
        [sys.executable, "-c", DIES_MOVING_MAIN, str(ledger.path), str(key_path)], check=False
    )
    assert proc.returncode == -signal.SIGKILL
    stale = ledger.gitdir / "refs" / "heads" / "main.lock"
    assert stale.is_file()
    res = run_cli(
        "record",
        "-L",
        ledger.path,
        "-k",
        key_path,
        "-m",
        "after the crash",
        "--trust-genesis",
        ledger.genesis_id,
    )
    assert res.code == 0, res.output
    assert not stale.exists()
    reopened = Ledger.open(ledger.path)
    head = reopened.head()
    assert head is not None and head.seq == 1
    assert reopened.record(1).data["message"] == "after the crash"
    fsck = git("fsck", "--strict", "--no-dangling", cwd=ledger.path, check=False)
    assert fsck.returncode == 0 and "error" not in fsck.stderr, fsck.stderr
    assert run_cli("verify", "-L", ledger.path).code == 0


@pytest.mark.parametrize("content", [b"", b"0123", ("f" * 40 + "\n").encode()])
def test_a_stale_main_lock_file_is_removed_under_the_append_lock(
    ledger: Ledger, key: SigningKey, content: bytes
) -> None:
    stale = ledger.gitdir / "refs" / "heads" / "main.lock"
    stale.write_bytes(content)
    done = ledger.append("event", {"message": "m", "data": None}, key=key)
    assert done.seq == 1 and not stale.exists()
    assert (ledger.gitdir / "refs" / "heads" / "main").read_text() == done.commit_id + "\n"
    assert verify_ledger(ledger.path, trust_genesis=ledger.genesis_id).ok


def test_a_main_lock_that_is_not_a_regular_file_is_left_alone(
    ledger: Ledger, key: SigningKey, tmp_path: Path
) -> None:
    """Only a regular file is a lock some writer could have left; anything else (a symbolic
    link, a directory) is refused, named, and not touched."""
    from ledger.errors import ConcurrentUpdate

    lock = ledger.gitdir / "refs" / "heads" / "main.lock"
    target = tmp_path / "elsewhere"
    target.write_text("keep me\n")
    lock.symlink_to(target)
    with pytest.raises(ConcurrentUpdate, match=r"refs/heads/main\.lock is"):
        ledger.append("event", {"message": "m", "data": None}, key=key)
    assert lock.is_symlink() and target.read_text() == "keep me\n"
    lock.unlink()
    lock.mkdir()
    with pytest.raises(ConcurrentUpdate, match=r"refs/heads/main\.lock is"):
        ledger.append("event", {"message": "m", "data": None}, key=key)
    assert lock.is_dir()
    head = ledger.head()
    assert head is not None and head.seq == 0


def test_principals_that_cannot_name_a_signer_are_refused(tmp_path: Path, key: SigningKey) -> None:
    for bad in ("two words", "del\x7f", "a,b", "#x", "bidi\u202e"):
        with pytest.raises(InputError, match="not a usable principal"):
            Ledger.init(tmp_path / "l.git", name="ops", key=key, principal=bad)
        assert not (tmp_path / "l.git").exists()
    led = Ledger.init(tmp_path / "l.git", name="ops", key=key, principal="alice@example.com")
    bob = SigningKey.generate()
    added = {"key": bob.public_key.openssh(), "fingerprint": bob.public_key.fingerprint}
    for bad_principal in ("bob smith", 7):
        with pytest.raises(InputError, match="principal"):
            led.append("key.added", {**added, "principal": bad_principal, "comment": ""}, key=key)
    head = led.head()
    assert head is not None and head.seq == 0


def test_a_deleted_append_lock_never_loses_an_acknowledged_record(
    ledger: Ledger, key: SigningKey
) -> None:
    """Someone who can write the ledger directory deletes ``ledger.lock`` while a writer holds
    it: a second writer then takes a lock on a new file, finds the first one's
    ``main.lock`` and removes it as stale. Whatever the interleaving, a record acknowledged
    by ``append`` is on ``main`` (the first writer, whose lock file was taken over, fails
    instead of renaming the other's over ``main``)."""
    import threading

    first, second = Ledger.open(ledger.path), Ledger.open(ledger.path)
    ref_lock = ledger.gitdir / "refs" / "heads" / "main.lock"
    mine: list[str] = []
    at_cas, go_on, second_at_cas, second_go_on = (threading.Event() for _ in range(4))

    def paused(led: Ledger, arrived: threading.Event, wait: threading.Event) -> None:
        real = led._read_main

        def read_main() -> str | None:
            # The compare of the compare-and-swap: this writer's main.lock exists now.
            content = ref_lock.read_text() if ref_lock.is_file() else None
            if content is not None and content not in mine and not arrived.is_set():
                mine.append(content)
                arrived.set()
                assert wait.wait(30)
            return real()

        led._read_main = read_main  # type: ignore[method-assign]

    paused(first, at_cas, go_on)
    paused(second, second_at_cas, second_go_on)
    done: dict[str, object] = {}

    def write(name: str, led: Ledger) -> None:
        try:
            done[name] = led.append("event", {"message": name, "data": None}, key=key)
        except Exception as exc:  # noqa: BLE001  (the outcome is what the test judges)
            done[name] = exc

    t1 = threading.Thread(target=write, args=("first", first))
    t1.start()
    assert at_cas.wait(30)
    (ledger.gitdir / "ledger.lock").unlink()  # the attacker's part
    t2 = threading.Thread(target=write, args=("second", second))
    t2.start()
    assert second_at_cas.wait(30)
    go_on.set()  # the first writer finishes its compare-and-swap first
    t1.join(30)
    second_go_on.set()
    t2.join(30)
    main = git("--git-dir", ledger.path, "rev-parse", "main").stdout.strip()
    acknowledged = [d for d in done.values() if not isinstance(d, BaseException)]
    assert acknowledged, done
    for appended in acknowledged:
        commit = appended.commit_id  # type: ignore[attr-defined]
        on_main = git(
            "--git-dir", ledger.path, "merge-base", "--is-ancestor", commit, main, check=False
        )
        assert on_main.returncode == 0, (done, main)
    assert verify_ledger(ledger.path, trust_genesis=ledger.genesis_id).ok
