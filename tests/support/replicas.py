"""Ledgers, commits made by stock git and bare repositories, for the replication tests
(with and without real servers)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ledger.keys import SigningKey
from ledger.store import Ledger
from ledger.verify import local
from support.gitcmd import git


@dataclass
class TestLedger:
    path: Path
    key: SigningKey
    key_path: Path
    ledger: Ledger

    __test__ = False

    def append(self, n: int = 1) -> str:
        done = None
        for i in range(n):
            done = self.ledger.append(
                "event", {"message": f"event {i}", "data": None}, key=self.key
            )
        assert done is not None
        return done.commit_id

    @property
    def head(self) -> str:
        head = self.ledger.head()
        assert head is not None
        return head.commit_id

    @property
    def seq(self) -> int:
        head = self.ledger.head()
        assert head is not None
        return head.seq


def make_ledger(tmp_path: Path, name: str = "led", records: int = 3) -> TestLedger:
    key = SigningKey.generate(comment="operator@example.com")
    key_path = tmp_path / f"{name}-key"
    key.save(key_path)
    led = Ledger.init(tmp_path / name, name=name, key=key, principal="operator@example.com")
    local.pin_after_init(led.path, led.genesis_id)  # as 'ledger init' does on its machine
    t = TestLedger(tmp_path / name, key, key_path, led)
    if records:
        t.append(records)
    return t


def remote_head(path: Path) -> str | None:
    out = git("--git-dir", path, "rev-parse", "--verify", "-q", "refs/heads/main", check=False)
    return out.stdout.strip() or None


def unsigned_commit_on(work: Path, message: str = "forged record") -> str:
    """A commit made with stock git (no signature) on top of a work tree's HEAD."""
    (work / "forged.json").write_text('{"forged":true}\n')
    git("add", "forged.json", cwd=work)
    git("commit", "-q", "-m", message, cwd=work)
    return git("rev-parse", "HEAD", cwd=work).stdout.strip()


def ssh_signed_commit_on(work: Path, key: Path, message: str = "signed by a stranger") -> str:
    """A commit signed by stock git with an SSH key that the ledger does not trust."""
    (work / "stranger.json").write_text('{"stranger":true}\n')
    git("add", "stranger.json", cwd=work)
    git(
        "-c",
        "gpg.format=ssh",
        "-c",
        f"user.signingkey={key}",
        "commit",
        "-q",
        "-S",
        "-m",
        message,
        cwd=work,
    )
    return git("rev-parse", "HEAD", cwd=work).stdout.strip()


def plain_bare(path: Path) -> Path:
    git("init", "-q", "--bare", "-b", "main", path)
    return path
