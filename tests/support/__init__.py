"""Helpers shared by the test modules: one version of each (test modules never import one
another, nor conftest).

- ``sandbox``: the session's scrubbed environment, private HOME and TMPDIR, libgit2
  isolation, and the check that nothing is left in the temporary directory (a plugin).
- ``childsite/sitecustomize.py``: libgit2 isolation in child Python processes.
- ``gitcmd``: stock git as the judge (``git``, ``explode_packs``, ``loose_object``).
- ``cli``: ``python -m ledger`` as a child process (``run_cli``, ``CliResult``), ``alive``.
- ``waiting``: ``wait_for``, woken by inotify and pidfd, never by a fixed sleep.
- ``ledgers``: a ledger with an operator key for running runbooks (``RunbookEnv`` and its
  engine and CLI flavours, ``EngineEnv`` and ``CliEnv``), ``finished`` records of a step,
  ``wait_for_request`` (until a run asks for approval).
- ``markdown``: a CommonMark parser's view of a document's structure.
- ``tamper``: building ledgers and forging commits, for verification tests.
- ``replicas``: ledgers, commits and bare repositories for replication tests.
- ``sktoken``: a FIDO security key in software (``SkToken``): genuine ``sk-*`` keys and
  signatures without a token; a signer the store accepts.
- ``skagent``: a small ssh-agent (``TestAgent``) holding such keys (or any signer), with
  refuse and hang switches, for signing through the agent protocol.
"""
