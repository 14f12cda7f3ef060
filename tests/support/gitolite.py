"""gitolite3 behind a private sshd on 127.0.0.1: a real multi-user git server for the
shared-remote tests (the recipe of /work/shared/GITOLITE.md).

gitolite runs as the current user with ``HOME`` set to the fixture's own directory (sshd's
``SetEnv HOME=``): no system user, nothing outside the fixture's directory. Each gitolite user
is an ssh key (``keydir/<user>.pub``); the ssh login is always the current user, the key picks
the gitolite user. The repository ``fleet`` is a shared ledger remote: each runner may write
only ``refs/ledgers/<its ledger id>/`` with ``RW`` (no rewind, no delete), auditors have
``R``, and our verifier is its pre-receive hook (gitolite's repo-specific hooks), with the
post-receive step that confirms each ledger's verified state.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

import gitservers
import pytest

import ledger
from ledger.replicate import protect
from support.waiting import wait_for

GITOLITE = shutil.which("gitolite") or "/usr/bin/gitolite"
REPO = "fleet"

RC = """%RC = (
    UMASK => 0077, GIT_CONFIG_KEYS => '', LOG_EXTRA => 1, ROLES => { READERS => 1, WRITERS => 1 },
    LOCAL_CODE => "$ENV{HOME}/local",
    ENABLE => [ 'help', 'info', 'ssh-authkeys', 'repo-specific-hooks' ],
);
1;
"""

SSHD_CONFIG = """Port {port}
ListenAddress 127.0.0.1
HostKey {host_key}
PidFile {pid_file}
AuthorizedKeysFile {home}/.ssh/authorized_keys
AllowUsers {user}
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PrintMotd no
SetEnv HOME={home}
KexAlgorithms curve25519-sha256,curve25519-sha256@libssh.org
MaxStartups 200
"""


def conf_text(runners: Mapping[str, str], auditors: tuple[str, ...]) -> str:
    """gitolite.conf: each runner (gitolite user -> ledger id) writes only its own refs."""
    lines = ["repo gitolite-admin", "    RW+     =   admin", "", f"repo {REPO}"]
    for user, ledger_id in sorted(runners.items()):
        lines.append(f"    RW      refs/ledgers/{ledger_id}/      =   {user}")
    if auditors:
        lines.append(f"    R                                   =   {' '.join(auditors)}")
    lines.append("    option  hook.pre-receive            =   ledger-pre-receive")
    lines.append("    option  hook.post-receive           =   ledger-post-receive")
    return "\n".join(lines) + "\n"


class Gitolite:
    """One gitolite installation and its sshd, under ``base``."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.home = base / "home"
        self.keys = base / "keys"
        self.sshd_dir = base / "sshd"
        for d in (
            self.home / ".gitolite" / "logs",
            self.home / ".gitolite" / "conf",
            self.home / ".gitolite" / "keydir",
            self.keys,
            self.sshd_dir,
        ):
            d.mkdir(parents=True, exist_ok=True)
        self.user = getpass.getuser()
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.host_key = gitservers.ssh_keygen(self.sshd_dir / "host_ed25519", "gitolite-host")
        self.known_hosts = base / "known_hosts"
        self.runners: dict[str, str] = {}
        self.auditors: tuple[str, ...] = ()

    # -- gitolite ---------------------------------------------------------------------------

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
        env.update(HOME=str(self.home), USER=self.user)
        return env

    def gitolite(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [GITOLITE, *args], env=self.env(), capture_output=True, text=True, check=True
        )

    def key(self, user: str) -> Path:
        """The private key of gitolite user ``user`` (made on first use)."""
        path = self.keys / user
        if not path.exists():
            gitservers.ssh_keygen(path, user)
        return path

    def _write_hooks(self) -> None:
        hooks = self.home / "local" / "hooks" / "repo-specific"
        hooks.mkdir(parents=True, exist_ok=True)
        package_home = Path(ledger.__file__).parent.parent
        for name, hook in (
            ("ledger-pre-receive", "pre-receive"),
            ("ledger-post-receive", "post-receive"),
        ):
            script = hooks / name
            script.write_text(
                protect.hook_script(sys.executable, package_home, shared=True, hook=hook)
            )
            script.chmod(0o755)

    def setup(self, runners: Mapping[str, str], auditors: tuple[str, ...] = ("auditor",)) -> None:
        """Write the rc, the conf, the keys and the hooks, and run ``gitolite setup``."""
        subprocess.run(
            ["git", "config", "--global", "init.defaultBranch", "master"],
            env=self.env(),
            check=True,
        )
        (self.home / ".gitolite.rc").write_text(RC)
        self._write_hooks()
        self._write_conf(runners, auditors)
        self.gitolite("setup", "-pk", f"{self.key('admin')}.pub")

    def set_rules(
        self, runners: Mapping[str, str], auditors: tuple[str, ...] = ("auditor",)
    ) -> None:
        """Change the users and rules (applies from the next connection)."""
        self._write_conf(runners, auditors)
        self.gitolite("compile")
        self.gitolite("trigger", "POST_COMPILE")

    def add_runner(self, user: str, ledger_id: str) -> None:
        """Add gitolite user ``user`` (its own key) allowed to write only that ledger's refs."""
        self.set_rules({**self.runners, user: ledger_id}, self.auditors or ("auditor",))

    def _write_conf(self, runners: Mapping[str, str], auditors: tuple[str, ...]) -> None:
        self.runners, self.auditors = dict(runners), tuple(auditors)
        keydir = self.home / ".gitolite" / "keydir"
        for user in ("admin", *runners, *auditors):
            shutil.copyfile(f"{self.key(user)}.pub", keydir / f"{user}.pub")
        (self.home / ".gitolite" / "conf" / "gitolite.conf").write_text(
            conf_text(runners, auditors)
        )

    @property
    def repo_path(self) -> Path:
        return self.home / "repositories" / f"{REPO}.git"

    # -- sshd ---------------------------------------------------------------------------------

    def start(self) -> None:
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        pid_file = self.sshd_dir / "sshd.pid"
        log = self.sshd_dir / "sshd.log"
        for _attempt in range(5):
            self.port = gitservers.free_port()
            config = self.sshd_dir / "sshd_config"
            config.write_text(
                SSHD_CONFIG.format(
                    port=self.port,
                    host_key=self.host_key,
                    pid_file=pid_file,
                    home=self.home,
                    user=self.user,
                )
            )
            with log.open("ab") as logf:
                self.proc = subprocess.Popen(
                    [gitservers.SSHD, "-D", "-e", "-f", str(config)],
                    stdout=logf,
                    stderr=logf,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                )
            proc = self.proc

            def ready(p: subprocess.Popen[bytes] = proc) -> bool:
                return pid_file.exists() or p.poll() is not None

            wait_for(
                ready,
                "sshd's pid file (written once it listens)",
                files=[pid_file],
                pids=[proc.pid],
                timeout=15,
            )
            if proc.poll() is None:
                host = Path(f"{self.host_key}.pub").read_text().split()
                self.known_hosts.write_text(f"[127.0.0.1]:{self.port} {host[0]} {host[1]}\n")
                return
        raise RuntimeError(f"sshd for gitolite did not start; log:\n{log.read_text()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    # -- clients ------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"ssh://{self.user}@127.0.0.1:{self.port}/{REPO}"

    def write_known_hosts(self, home: Path) -> None:
        """The server's host key in ``home/.ssh/known_hosts`` (for libgit2, i.e. ledger)."""
        ssh_dir = home / ".ssh"
        ssh_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        known = ssh_dir / "known_hosts"
        existing = known.read_text() if known.exists() else ""
        line = self.known_hosts.read_text()
        if line not in existing:
            known.write_text(existing + line)

    def git_env(self, user: str) -> dict[str, str]:
        """Environment for stock git to connect as gitolite user ``user``."""
        return {
            "GIT_SSH_COMMAND": (
                f"ssh -i {self.key(user)} -o IdentitiesOnly=yes -o BatchMode=yes "
                f"-o UserKnownHostsFile={self.known_hosts} -o StrictHostKeyChecking=yes "
                "-o GlobalKnownHostsFile=/dev/null -F /dev/null"
            )
        }


@contextlib.contextmanager
def running_gitolite() -> Iterator[Gitolite]:
    """A set-up gitolite (no runners yet: call :meth:`Gitolite.set_rules`) and its sshd."""
    gitservers.require(GITOLITE)
    gitservers.require(gitservers.SSHD)
    base = Path(tempfile.mkdtemp(prefix="ledger-gitolite-"))
    server = Gitolite(base)
    try:
        server.setup({})
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def gitolite_server() -> Iterator[Gitolite]:
    with running_gitolite() as server:
        yield server
