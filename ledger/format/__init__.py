"""The ledger's formats, pure: no I/O.

- ``gitobj``: the git object codec: object ids, trees, commit encoding and decoding, signature
  headers.
"""

__all__: list[str] = []
