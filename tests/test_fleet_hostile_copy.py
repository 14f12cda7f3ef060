"""What someone who can write an auditor's fleet copy (or a ledger directory), but not the
auditor's state directory, can plant there: a link in place of one of the tool's own files
(never written through), a FIFO (never waited on), a ``.git`` inside the repository (never
read instead of it), a damaged refs file (a clear error), a URL rewrite in its config (no
fetch or push follows it). Real ledgers and copies made by the CLI and stock git, the CLI as
a subprocess (a hang fails the test by its timeout)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import gitservers
import pytest
from gitservers import GitDaemon
from support.cli import CliResult, run_cli
from support.gitcmd import git
from support.replicas import make_ledger
from test_fleet_report import INCIDENT, Fleet

from ledger import fleet as ledger_fleet
from ledger import replicate

git_daemon = gitservers.git_daemon

#: Seconds a command may take here before it is taken to hang (each takes about one).
HANG = 60


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Fleet:
    """Three runners with one run of the incident each, in a copy made by stock git."""
    f = Fleet(tmp_path_factory.mktemp("hostile"))
    for who in f.runners:
        f.run(who)
        f.fetch(who)
    return f


@pytest.fixture()
def copy(base: Fleet, tmp_path: Path) -> Path:
    """A fresh copy of the base fleet copy, for one test to plant things in."""
    # A path of its own: the auditor's state is kept per copy path, and pytest may give the
    # next test the same tmp_path (only remotes added for this copy count).
    where = Path(tempfile.mkdtemp(dir=tmp_path)) / "fleet.git"
    shutil.copytree(base.copy, where, symlinks=True)
    ledger_fleet.add_remote(where, "origin", str(base.tmp / "origin.git"))
    return where


def report(copy: Path) -> CliResult:
    return run_cli("fleet", "report", "--fleet", copy, "--incident", INCIDENT, timeout=HANG)


def one_paragraph(r: CliResult) -> None:
    assert "Traceback" not in r.output and "this is a bug" not in r.output, r.output
    assert r.err.strip() and "\n" not in r.err.strip(), r.err


# --- the tool's own files in the copy --------------------------------------------------------


@pytest.mark.parametrize("form", ["symlink", "hard link", "linked directory"])
def test_a_link_in_place_of_the_reports_seq_index_is_never_written_through(
    base: Fleet, copy: Path, tmp_path: Path, form: str
) -> None:
    """The report's seq index (``ledger-state/fleet-seq-<id>``) is written while reading; a
    link planted there to one of the auditor's files (a pins file, say) is left alone, and
    the report is the one a clean copy gives."""
    assert report(copy).code == 0  # (verifies; the next report only checks the heads)
    clean = report(copy)
    assert clean.code == 0, clean.output
    shutil.rmtree(copy / "ledger-state")
    victim_dir = tmp_path / "state"
    victim_dir.mkdir()
    victim = victim_dir / "pins"
    victim.write_bytes(b"the auditor's pins\n")
    (copy / "ledger-state").mkdir()
    index = copy / "ledger-state" / f"fleet-seq-{base.runners[0].ledger_id}"
    if form == "symlink":
        index.symlink_to(victim)
    elif form == "hard link":
        os.link(victim, index)
    else:
        (copy / "ledger-state").rmdir()
        (copy / "ledger-state").symlink_to(victim_dir)
    r = report(copy)
    assert r.code == 0, r.output
    assert r.out == clean.out
    assert victim.read_bytes() == b"the auditor's pins\n"
    assert sorted(p.name for p in victim_dir.iterdir()) == ["pins"]


def test_a_fifo_in_place_of_a_seq_index_is_not_waited_on(base: Fleet, copy: Path) -> None:
    """A FIFO where the report's seq index is, or where the verifier's plan of a long chain
    reads the copy's seq index: an unusable index, read around, never blocked on."""
    assert report(copy).code == 0  # (verifies; the next report only checks the heads)
    clean = report(copy)
    assert clean.code == 0, clean.output
    shutil.rmtree(copy / "ledger-state")
    (copy / "ledger-state").mkdir()
    os.mkfifo(copy / "ledger-state" / f"fleet-seq-{base.runners[0].ledger_id}")
    os.mkfifo(copy / "ledger-state" / "seq-index")
    r = report(copy)
    assert r.code == 0 and r.out == clean.out, r.output
    head = base.head(base.runners[0])
    planned = subprocess.run(
        [sys.executable, "-c", "import sys; from pathlib import Path; "
         "from ledger.verify import warmup; "
         "print(warmup.planned_chain(Path(sys.argv[1]), sys.argv[2], 3))", copy, head],
        capture_output=True, text=True, timeout=HANG, check=True,
    )  # fmt: skip
    assert planned.stdout == "None\n"


# --- the repository opened is exactly the directory named -------------------------------------


def _plant_dotgit(where: Path, other: Path, form: str) -> None:
    if form == "directory":
        shutil.copytree(other, where / ".git")
    else:
        (where / ".git").write_text(f"gitdir: {other}\n")


@pytest.mark.parametrize("form", ["directory", "gitdir file"])
def test_a_dotgit_in_the_copy_is_not_read_instead_of_it(
    base: Fleet, copy: Path, tmp_path: Path, form: str
) -> None:
    """An empty fleet copy planted as ``.git`` (or named by a ``.git`` file) would hide
    every ledger of the copy; the copy itself is what is read."""
    decoy = tmp_path / "decoy.git"
    git("init", "--bare", "-q", decoy)
    git("--git-dir", decoy, "config", "ledger.fleet", "true")
    _plant_dotgit(copy, decoy, form)
    r = run_cli("fleet", "status", "--fleet", copy, timeout=HANG)
    assert r.code == 0, r.output
    for who in base.runners:
        assert who.ledger_id in r.out, r.output
    r = report(copy)
    assert r.code == 0 and "alpha" in r.out, r.output


@pytest.mark.parametrize("form", ["directory", "gitdir file"])
def test_a_dotgit_in_a_ledger_is_not_read_instead_of_it(
    base: Fleet, tmp_path: Path, form: str
) -> None:
    """The same inside a ledger: another ledger planted as its ``.git`` is not what is
    verified, listed or appended to."""
    alpha, bravo = base.runners[0], base.runners[1]
    ledger = tmp_path / "alpha.ledger"
    shutil.copytree(alpha.path, ledger, symlinks=True)
    _plant_dotgit(ledger, bravo.path, form)
    r = run_cli("verify", "--ledger", ledger, "--trust-genesis", alpha.genesis, timeout=HANG)
    assert r.code == 0, r.output
    r = run_cli("log", "--ledger", ledger, timeout=HANG)
    assert r.code == 0 and "alpha" in r.out and "bravo" not in r.out, r.output


# --- files libgit2 reads: only regular files ---------------------------------------------------


def _fifo(path: Path) -> None:
    if path.exists():
        path.unlink()
    os.mkfifo(path)


@pytest.mark.parametrize(
    "planted",
    ["packed-refs FIFO", "config FIFO", "HEAD FIFO", "ref FIFO", "packed-refs link",
     "config include"],
)  # fmt: skip
def test_a_file_git_reads_that_is_not_a_regular_file_is_refused(
    base: Fleet, copy: Path, tmp_path: Path, planted: str
) -> None:
    """libgit2 would block forever on a FIFO (or follow a link) among the files it reads to
    open the copy and list its refs: refused before it reads any, naming the file (exit 6)."""
    elsewhere = tmp_path / "elsewhere"
    os.mkfifo(elsewhere)
    name = {
        "packed-refs FIFO": "packed-refs",
        "config FIFO": "config",
        "HEAD FIFO": "HEAD",
        "ref FIFO": "refs/fleet/origin/x/main",
        "packed-refs link": "packed-refs",
        "config include": "config includes",
    }[planted]
    if planted == "ref FIFO":
        (copy / "refs/fleet/origin/x").mkdir(parents=True)
    if planted.endswith("FIFO"):
        _fifo(copy / name)
    elif planted == "packed-refs link":
        (copy / "packed-refs").unlink(missing_ok=True)
        (copy / "packed-refs").symlink_to(elsewhere)
    else:
        with (copy / "config").open("a") as fh:
            fh.write(f"[include]\n\tpath = {elsewhere}\n")
    for args in (
        ("fleet", "status", "--fleet", copy),
        ("fleet", "verify", "--fleet", copy, "--no-fetch"),
        ("fleet", "report", "--fleet", copy, "--incident", INCIDENT),
    ):
        r = run_cli(*args, timeout=HANG)
        assert r.code == 6, r.output
        assert f"the fleet copy {copy} is damaged or was tampered with: {name}" in r.err
        assert "'ledger fleet clone'" in r.err
        one_paragraph(r)


def test_a_garbage_packed_refs_is_a_damaged_copy(copy: Path) -> None:
    (copy / "packed-refs").write_text("garbage\n")
    for args in (
        ("fleet", "status", "--fleet", copy),
        ("fleet", "verify", "--fleet", copy, "--no-fetch"),
        ("fleet", "report", "--fleet", copy, "--incident", INCIDENT),
    ):
        r = run_cli(*args, timeout=HANG, env={"LEDGER_DEBUG": "1"})
        assert r.code == 6, r.output
        assert "is damaged or was tampered with" in r.err
        assert "corrupted packed references file" in r.err and "fleet clone" in r.err
        one_paragraph(r)


# --- URL rewrites in a repository's own config ------------------------------------------------


def _shared(server: GitDaemon, name: str) -> tuple[str, Path]:
    path = server.base / f"{name}.git"
    assert run_cli("remote", "init", path, "--shared").code == 0
    return server.url(f"{name}.git"), path


@pytest.mark.server
@pytest.mark.parametrize("key", ["insteadOf", "pushInsteadOf"])
def test_a_url_rewrite_in_the_copys_config_is_refused(
    git_daemon: GitDaemon, home: Path, tmp_path: Path, key: str
) -> None:
    """``url.<decoy>.insteadOf <real URL>`` in the copy's config would make 'fleet fetch'
    fetch the decoy while naming the real URL; refused (exit 8) naming the key and the file.
    (``pushInsteadOf`` rewrites no fetch: refused all the same, being no copy's business.)"""
    real, _ = _shared(git_daemon, f"real-{key}-{tmp_path.name}")
    decoy, _ = _shared(git_daemon, f"decoy-{key}-{tmp_path.name}")
    t, stranger = make_ledger(tmp_path, "a", records=1), make_ledger(tmp_path, "s", records=1)
    for led, url in ((t, real), (stranger, decoy)):
        replicate.add_remote(led.path, "fleet", url, shared=True)
        replicate.push(led.path).check(None)
    copy = tmp_path / "audit.git"
    assert run_cli("fleet", "clone", real, copy).code == 0
    git("--git-dir", copy, "config", f"url.{decoy}.{key}", real)
    for args in (("fleet", "fetch", "--fleet", copy), ("fleet", "verify", "--fleet", copy)):
        r = run_cli(*args, timeout=HANG)
        assert r.code == 8, r.output
        assert f"{copy}/config sets url.{decoy}.{key.lower()} = {real}" in r.err, r.err
        assert "Remove it" in r.err and "Nothing was fetched or pushed" in r.err
        one_paragraph(r)
    assert set(ledger_fleet.heads(ledger_fleet.open_copy(copy))) == {t.ledger.ledger_id}
    assert ledger_fleet.load_ledger(copy, stranger.ledger.ledger_id) is None


@pytest.mark.server
@pytest.mark.parametrize("key", ["insteadOf", "pushInsteadOf"])
def test_a_url_rewrite_in_a_ledgers_config_is_refused(
    git_daemon: GitDaemon, home: Path, tmp_path: Path, key: str
) -> None:
    """The same in a ledger's own config: 'ledger push' would go to the decoy (with
    ``pushInsteadOf`` silently: the remote's URL reads unchanged); refused (exit 8), naming
    the key and the file, the decoy untouched."""
    real, real_path = _shared(git_daemon, f"lreal-{key}-{tmp_path.name}")
    decoy = tmp_path / "decoy.git"
    assert run_cli("remote", "init", decoy, "--shared").code == 0
    t = make_ledger(tmp_path, "a", records=1)
    replicate.add_remote(t.path, "fleet", real, shared=True)
    git("--git-dir", t.path, "config", f"url.{decoy}.{key}", real)
    for args in (("push", "--ledger", t.path), ("fetch", "--ledger", t.path)):
        r = run_cli(*args, timeout=HANG)
        assert r.code == 8, r.output
        assert f"{t.path}/config sets url.{decoy}.{key.lower()} = {real}" in r.err, r.output
        one_paragraph(r)
    ledger_ref = f"refs/ledgers/{t.ledger.ledger_id}/main"
    for server in (decoy, real_path):
        assert git("--git-dir", server, "for-each-ref", ledger_ref).stdout == ""
    git("--git-dir", t.path, "config", "--unset", f"url.{decoy}.{key}")
    r = run_cli("push", "--ledger", t.path, timeout=HANG)
    assert r.code == 0, r.output
    assert git("--git-dir", real_path, "rev-parse", ledger_ref).stdout.strip() == t.head
