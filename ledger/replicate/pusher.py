"""The background pusher of a run: one worker thread per remote, pushes coalesced to the
newest head, unreachable remotes retried with a growing delay."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pygit2

from ledger import errors, store
from ledger.replicate import chain, pushes, state, transport
from ledger.replicate import remotes as replicate_remotes


class BackgroundPusher:
    """Pushes the newest head to every remote in the background during a run.

    One worker thread per remote, so a slow or unreachable remote never delays the others.
    :meth:`notify` is cheap and never blocks or raises; pushes coalesce (while a push is in
    flight, any number of notifications become one later push of the newest head). After an
    unreachable attempt a remote is retried with a growing delay (up to ``max_retry_delay``),
    except that :meth:`flush` always makes one more attempt. Nothing here ever raises into the
    run: problems end up in the outcomes of :meth:`flush`.

        pusher = BackgroundPusher(ledger_path)       # all configured remotes
        pusher.start()
        ... pusher.notify(appended.commit_id) after each record ...
        summary = pusher.close(timeout=30)           # flush, stop, pushes.PushSummary
    """

    def __init__(
        self,
        ledger_path: Path,
        remotes: Sequence[str] | None = None,
        *,
        credentials: transport.Credentials | None = None,
        on_outcome: Callable[[pushes.PushOutcome], None] | None = None,
        max_retry_delay: float = 15.0,
    ) -> None:
        self.ledger_path = ledger_path
        self._creds = credentials
        self._on_outcome = on_outcome
        self._max_retry_delay = max_retry_delay
        self._cond = threading.Condition()
        self.latest: str | None = None
        self._generation = 0
        self._done: dict[str, int] = {}
        self._outcomes: dict[str, pushes.PushOutcome] = {}
        self._urgent = False
        self._stop = False
        self._threads: list[threading.Thread] = []
        self.warnings: list[str] = []
        self.error: str | None = None
        try:
            repo = store.open_repository(ledger_path)
            infos = replicate_remotes.select_remotes(repo, remotes)
            self.names = [r.name for r in infos]
            self._urls = {r.name: r.url for r in infos}
            self.warnings = [r.warning for r in infos if r.warning]
        except errors.LedgerError as exc:
            self.names = []
            self._urls = {}
            self.error = exc.diagnostics()

    def start(self) -> BackgroundPusher:
        if self._creds is None:
            try:
                self._creds = transport.Credentials.from_env()
            except errors.LedgerError as exc:
                self.error = exc.diagnostics()
                self._creds = transport.Credentials()
        for name in self.names:
            t = threading.Thread(
                target=self._worker, args=(name,), daemon=True, name=f"ledger-push-{name}"
            )
            t.start()
            self._threads.append(t)
        return self

    def __enter__(self) -> BackgroundPusher:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def notify(self, head: str | None = None) -> None:
        """A new record is durable: push the newest head soon. Never blocks, never raises.

        ``head`` is informational (the workers always push the ledger's current main)."""
        with self._cond:
            self.latest = head or self.latest
            self._generation += 1
            self._cond.notify_all()

    def _worker(self, name: str) -> None:
        done = 0
        delay = 0.0
        retry_at = 0.0
        while True:
            with self._cond:
                while True:
                    if self._stop:
                        return
                    if self._generation > done:
                        now = time.monotonic()
                        if self._urgent or now >= retry_at:
                            break
                        self._cond.wait(timeout=retry_at - now)
                    else:
                        self._cond.wait()
                generation = self._generation
            outcome = self._attempt(name)
            done = generation
            if outcome.status is pushes.PushStatus.UNREACHABLE:
                delay = min(max(delay * 2, 1.0), self._max_retry_delay)
                retry_at = time.monotonic() + delay
            else:
                delay = retry_at = 0.0
            with self._cond:
                self._outcomes[name] = outcome
                self._done[name] = generation
                self._cond.notify_all()
            if self._on_outcome is not None:
                with contextlib.suppress(errors.LedgerError):
                    self._on_outcome(outcome)

    def _attempt(self, name: str) -> pushes.PushOutcome:
        try:
            repo = store.open_repository(self.ledger_path)
            seen = state.read(repo)
            outcome = pushes.push_one(
                self.ledger_path, name, self._creds or transport.Credentials(), seen.get(name)
            )
            pushes.record_outcomes(repo, [outcome])
        except errors.LedgerError as exc:
            outcome = pushes.PushOutcome(
                name, self._urls.get(name, ""), pushes.PushStatus.ERROR, message=exc.diagnostics()
            )
        except Exception as exc:  # noqa: BLE001  (reported in the outcome: a run never fails)
            outcome = pushes.PushOutcome(
                name,
                self._urls.get(name, ""),
                pushes.PushStatus.ERROR,
                message=f"{type(exc).__name__}: {exc}",
            )
        return outcome

    def flush(self, timeout: float = 30.0) -> pushes.PushSummary:
        """Wait (at most ``timeout`` s) until every remote has tried the newest head."""
        deadline = time.monotonic() + timeout
        with self._cond:
            self._urgent = True
            self._cond.notify_all()
            target = self._generation
            while any(self._done.get(n, 0) < target for n in self.names):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(timeout=left)
            self._urgent = False
            return self._summary(target)

    def _summary(self, target: int) -> pushes.PushSummary:
        head: str | None = None
        seq: int | None = None
        with contextlib.suppress(errors.LedgerError, pygit2.GitError, OSError):
            repo = store.open_repository(self.ledger_path)
            head = chain.main_head(repo)
            seq = chain.commit_seq(repo, head) if head else None
        outcomes = []
        for n in self.names:
            o = self._outcomes.get(n)
            if o is None or self._done.get(n, 0) < target:
                pending = pushes.PushOutcome(
                    n,
                    self._urls.get(n, ""),
                    pushes.PushStatus.PENDING,
                    message="still pushing when the wait ended",
                )
                if o is not None:
                    pending.message += f"; last attempt: {o.line()}"
                o = pending
            outcomes.append(o)
        warnings = list(self.warnings) + ([self.error] if self.error else [])
        return pushes.PushSummary(head, seq, outcomes, warnings)

    def close(self, timeout: float = 30.0) -> pushes.PushSummary:
        """Flush, then stop the workers. Returns the final per-remote summary."""
        summary = self.flush(timeout)
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        for t in self._threads:
            t.join(timeout=max(0.1, min(timeout, 5.0)))
        return summary
