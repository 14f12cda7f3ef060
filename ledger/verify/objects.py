"""Raw git objects as the verifier reads them: commits split into headers, signature and
signed payload, armored SSHSIG blobs, tree entries, and opening a repository without search.
"""

from __future__ import annotations

import binascii
import struct
from dataclasses import dataclass
from pathlib import Path

import pygit2

from ledger import errors, keys
from ledger.format import gitobj
from ledger.verify import rules

SSHSIG_MAGIC = b"SSHSIG"
_ARMOR_BEGIN = "-----BEGIN SSH SIGNATURE-----"
_ARMOR_END = "-----END SSH SIGNATURE-----"

# --- raw object parsing -------------------------------------------------------------------


class ObjectError(Exception):
    """An object could not be read; ``rule`` is object-missing or object-corrupt."""

    def __init__(self, rule: str, message: str) -> None:
        super().__init__(message)
        self.rule = rule
        self.message = message


#: Headers whose value is a signature, dropped from the signed payload. Stricter than git's
#: rule (:func:`ledger.format.gitobj.split_signed_commit`, which drops every header whose
#: name starts with ``gpgsig``): any other such name stays in the payload and is reported
#: as an unexpected header.
_SIGNATURE_HEADERS = frozenset({b"gpgsig", b"gpgsig-sha256"})


@dataclass(slots=True)
class Commit:
    tree: str
    parents: list[str]
    author: bytes | None
    committer: bytes | None
    signatures: list[str]  # values of gpgsig / gpgsig-sha256 headers
    header_problems: list[str]
    signature_problems: list[str]
    payload: bytes
    message: bytes | None


def parse_commit(raw: bytes) -> Commit:
    """Split a raw commit into its headers, signature(s), signed payload and message (the
    decoding is the git object codec's; what the headers must be is checked here)."""
    fast = gitobj.parse_signed_commit(raw)
    if fast is not None:  # the layout of FORMAT.md §3 and §6: one quick match
        signature = fast.signature.decode("utf-8", "replace")
        return Commit(
            fast.tree,
            fast.parents,
            fast.author,
            fast.committer,
            [signature],
            [],
            [],
            fast.payload,
            fast.message,
        )
    split = gitobj.split_headers(raw)
    tree = ""
    parents: list[str] = []
    author = committer = None
    sigs: list[str] = []
    problems: list[str] = []
    sig_problems: list[str] = []
    order: list[bytes] = []
    for header in split.headers:
        name, value = header.name, header.value
        order.append(name)
        if name == b"tree" and not tree:
            tree = value.decode("ascii", "replace")
        elif name == b"parent":
            parents.append(value.decode("ascii", "replace"))
        elif name == b"author" and author is None:
            author = value
        elif name == b"committer" and committer is None:
            committer = value
        elif name in _SIGNATURE_HEADERS:
            sigs.append(value.decode("utf-8", "replace"))
            if name != b"gpgsig":
                sig_problems.append(f"it has a {name.decode()} header")
        else:
            problems.append(f"unexpected commit header {name.decode('utf-8', 'replace')!r}")
    if not rules.HEX40.fullmatch(tree) or any(not rules.HEX40.fullmatch(p) for p in parents):
        raise ObjectError("object-corrupt", "the commit's tree or parent header is malformed")
    structural = [n for n in order if n not in _SIGNATURE_HEADERS]
    want = [b"tree"] + [b"parent"] * len(parents) + [b"author", b"committer"]
    if structural != want:
        problems.append("its headers are not tree, parent, author, committer in that order")
    if sigs and order[len(want) : len(want) + 1] != [b"gpgsig"]:
        sig_problems.append("the gpgsig header does not directly follow the committer line")
    payload = split.without(_SIGNATURE_HEADERS)
    return Commit(
        tree, parents, author, committer, sigs, problems, sig_problems, payload, split.message
    )


class SigError(Exception):
    pass


def read_string(buf: bytes, pos: int) -> tuple[bytes, int]:
    if pos + 4 > len(buf):
        raise SigError("truncated SSHSIG blob")
    (n,) = struct.unpack_from(">I", buf, pos)
    pos += 4
    if pos + n > len(buf):
        raise SigError("truncated SSHSIG blob")
    return buf[pos : pos + n], pos + n


def ssh_string(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def parse_sshsig(armored: str) -> keys.SshSigFields:
    """Parse an armored SSHSIG (OpenSSH PROTOCOL.sshsig). The armor is read here, strictly
    (exactly the BEGIN and END lines around base64 lines; ``keys.parse_sshsig`` tolerates
    CRs and trailing blanks); the blob's layout is ``keys.decode_sshsig``."""
    lines = armored.strip("\n").split("\n")
    if len(lines) < 3 or lines[0] != _ARMOR_BEGIN or lines[-1] != _ARMOR_END:
        raise SigError("the signature is not an armored SSH signature")
    try:
        blob = binascii.a2b_base64("".join(lines[1:-1]), strict_mode=True)
    except binascii.Error as exc:
        raise SigError(f"the signature's base64 is malformed ({exc})") from None
    try:
        return keys.decode_sshsig(blob)
    except ValueError as exc:
        raise SigError(str(exc)) from None


def tree_entries(raw: bytes) -> dict[str, tuple[int, str]]:
    """All entries of a raw tree: name -> (mode, hex id). ObjectError if malformed (the
    entries are the codec's; a mode that is not octal or a name that is not UTF-8 is
    malformed here)."""
    out: dict[str, tuple[int, str]] = {}
    try:
        for mode, name, oid in gitobj.iter_tree(raw):
            try:
                out[name.decode("utf-8")] = (int(mode, 8), oid.hex())
            except (ValueError, UnicodeDecodeError):
                raise ObjectError("object-corrupt", "a tree entry is malformed") from None
    except ValueError:
        raise ObjectError("object-corrupt", "a tree object is malformed") from None
    return out


def open_repo(repo: Path | str | pygit2.Repository) -> pygit2.Repository:
    if isinstance(repo, pygit2.Repository):
        return repo
    path = Path(repo)
    if not path.exists():
        raise errors.LedgerNotFound(
            f"there is no ledger at {path} (the path does not exist).",
            hint="Point --ledger at an existing ledger.",
        )
    try:
        # Exactly this directory: never a .git planted inside it (nor a .git file's gitdir:).
        flags = pygit2.enums.RepositoryOpenFlag
        return pygit2.Repository(str(path), flags.NO_SEARCH | flags.NO_DOTGIT)
    except pygit2.GitError as exc:
        raise errors.LedgerNotFound(
            f"{path} is not a ledger: it is not a git repository ({exc}).",
            hint="Point --ledger at a ledger repository.",
        ) from None


# --- reading objects ------------------------------------------------------------------------


def _pack_backend(repo: pygit2.Repository) -> tuple[pygit2.Odb, pygit2.OdbBackendPack | None]:
    """The repository's packs, to be read directly, and the object database that owns them.

    pygit2 frees a pack backend (closing its pack files) only with the object database it
    was added to, never on its own: the reader keeps both and reads through the backend
    only while it holds the database (None when there is no pack directory)."""
    owner = pygit2.Odb()
    try:
        packs = pygit2.OdbBackendPack(str(Path(repo.path) / "objects"))
        owner.add_backend(packs, 1)
    except (pygit2.GitError, OSError, ValueError):
        return owner, None
    return owner, packs


class ObjectReader:
    """Raw reads for one verification, with the small caches the chain walk needs.

    Trees read for the previous commit and for this one are kept: a commit's parent trees
    are the trees read for the previous commit, so each tree is inflated once. Raw commits
    read on the walk back are kept (within a budget) for the forward pass.

    Every object's SHA-1 (of its header and content, as git hashes it) is compared with its
    id here, whichever way it was read: the one check of an object's id in the verifier.
    Objects are read from the ledger's packs directly. Through the object database, libgit2
    would read a full id by its prefix search, which also asks for a loose file (a failed
    ``access`` call per object), and would check the id with its collision-detecting SHA-1,
    about a twelfth of a record's instructions. That detection guards nothing here
    (FORMAT.md §10): every record and attachment is bound by SHA-256 as well, a commit's
    signature covers its content, and trees hold only the layout's modes, names and ids.
    What the packs do not hold (a loose object, an alternate such as a hook's quarantine) is
    read through the object database.
    """

    def __init__(self, repo: pygit2.Repository) -> None:
        self.odb = repo.odb
        self._packs_owner, self._packs = _pack_backend(repo)
        self._trees_old: dict[str, bytes] = {}
        self._trees: dict[str, bytes] = {}
        self._parsed: dict[str, dict[str, tuple[int, str]]] = {}
        self._raw_commits: dict[str, bytes] = {}
        self._raw_budget = 16 * 1024 * 1024

    def read(self, oid: str, want: int, what: str) -> bytes:
        try:
            typ, data = self._read_packed(oid)
            if data is None:
                typ, data = self.odb.read(oid)
                typ = int(typ)
            if typ not in gitobj.TYPE_NAMES:
                raise ValueError("the object has no type git knows")
            if gitobj.object_id(typ, data).hex() != oid:
                raise ValueError("the object's content does not hash to its id")
        except KeyError:  # pygit2.NotFoundError is a KeyError
            raise ObjectError("object-missing", f"{what} {oid} is missing") from None
        except (pygit2.GitError, ValueError, OSError) as exc:
            raise ObjectError("object-corrupt", f"{what} {oid} cannot be read: {exc}") from None
        if typ != want:
            raise ObjectError("object-corrupt", f"{what} {oid} has the wrong object type")
        return data

    def _read_packed(self, oid: str) -> tuple[int, bytes | None]:
        """An object from the packs, as stored (an int type, bytes); (0, None) when no
        pack holds it."""
        if self._packs is None:
            return 0, None
        try:
            return self._packs.read(oid)
        except KeyError:
            return 0, None

    def read_tree(self, oid: str, what: str) -> bytes:
        cached = self._trees.get(oid)
        if cached is None:
            cached = self._trees_old.get(oid)
            if cached is None:
                cached = self.read(oid, rules.OBJ_TREE, what)
            self._trees[oid] = cached
        return cached

    def next_generation(self) -> None:
        self._trees_old, self._trees = self._trees, {}
        if len(self._parsed) > 64:
            self._parsed.clear()

    def entries(self, oid: str, raw: bytes) -> dict[str, tuple[int, str]]:
        parsed = self._parsed.get(oid)
        if parsed is None:
            parsed = tree_entries(raw)
            self._parsed[oid] = parsed
        return parsed

    def parents_of(self, oid: str, keep: bool = False) -> list[str]:
        """The parent ids of a commit (the forward check re-parses it fully).

        With ``keep``, the raw commit is kept for the forward pass while the cache is
        under its budget, saving a second read of the object."""
        raw = self.read(oid, rules.OBJ_COMMIT, "commit")
        if keep and self._raw_budget > 0:
            self._raw_commits[oid] = raw
            self._raw_budget -= len(raw) + 100
        parents = []
        pos = raw.find(b"\n") + 1
        while raw.startswith(b"parent ", pos):
            parents.append(raw[pos + 7 : pos + 47].decode("ascii", "replace"))
            pos += 48
        return parents

    def commit(self, oid: str) -> bytes:
        """A raw commit: the one kept on the walk back (once), else read again."""
        return self._raw_commits.pop(oid, None) or self.read(oid, rules.OBJ_COMMIT, "commit")
