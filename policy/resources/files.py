"""Filesystem resources: ``file``, ``directory`` and ``symlink``.

Every path is mapped onto the converge root. Checks use one ``lstat`` and,
only when the size matches, one read to compare contents, so a converged
file costs a stat and a read. Writes go to a temporary file in the same
directory that gets its final mode and owner before an atomic rename, so a
reader never sees a half-written file or a moment with the wrong mode.

Paths come from ``Context.path``, which refuses a symlink leading out of the
root, and files are opened with ``O_NOFOLLOW``. A file rendered from a
secret is mode 0600 unless the bundle says otherwise and its diff is
hidden; the old side of a diff is hidden as well when the old file is not
readable by others or holds an opened secret value.
"""

from __future__ import annotations

import os
import stat
from typing import Any, Mapping

from grapevine.gossip.errors import PolicyError

from .accounts import lookup_gid, lookup_uid
from .base import Attr, Change, Context, Converged, Resource, ResourceError

# Unified diffs in plans and reports are for people; past this size the
# report says how big the change is instead of carrying it.
MAX_DIFF_BYTES = 64 * 1024
# Files we compare chunk by chunk above this size instead of reading whole.
READ_WHOLE_LIMIT = 4 * 1024 * 1024
# Mode of a new file or directory when the policy names none.
DEFAULT_FILE_MODE = 0o644
DEFAULT_DIR_MODE = 0o755
# Mode of a file rendered from a secret when the policy names none: only the
# owner (the agent, usually root) reads it.
SECRET_FILE_MODE = 0o600

ENSURE = ("present", "absent")


def text_diff(old: bytes | None, new: bytes | None, path: str) -> str:
    """Unified diff of two contents (None = the file does not exist)."""
    if old == new:
        return ""
    import difflib  # only when something differs

    a, b = old or b"", new or b""
    if b"\0" in a[:8192] or b"\0" in b[:8192]:
        return f"binary content differs ({len(a)} -> {len(b)} bytes)\n"
    if len(a) + len(b) > 4 * MAX_DIFF_BYTES:
        return f"content differs ({len(a)} -> {len(b)} bytes; too large to show)\n"
    lines = difflib.unified_diff(
        a.decode("utf-8", "replace").splitlines(keepends=True),
        b.decode("utf-8", "replace").splitlines(keepends=True),
        fromfile=path if old is not None else "/dev/null",
        tofile=path if new is not None else "/dev/null",
    )
    out = []
    for line in lines:
        out.append(line if line.endswith("\n") else line + "\n\\ No newline at end of file\n")
    text = "".join(out)
    if len(text) > MAX_DIFF_BYTES:
        text = text[:MAX_DIFF_BYTES] + "\n... diff truncated\n"
    return text


def _open_nofollow(path: str, flags: int = os.O_RDONLY) -> int:
    """Open the file itself, never a symlink swapped in since the ``lstat`` (nor block on a FIFO)."""
    return os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)


def _same_content(path: str, size: int, want: bytes) -> bool:
    if size != len(want):
        return False
    try:
        with os.fdopen(_open_nofollow(path), "rb") as fh:
            if size <= READ_WHOLE_LIMIT:
                return fh.read(size + 1) == want
            view = memoryview(want)
            pos = 0
            while True:
                chunk = fh.read(1024 * 1024)
                if not chunk:
                    return pos == len(want)
                if view[pos : pos + len(chunk)] != chunk:
                    return False
                pos += len(chunk)
    except OSError as exc:
        raise ResourceError(f"cannot read {path}: {exc.strerror}") from None


def _read(path: str) -> bytes | None:
    try:
        with os.fdopen(_open_nofollow(path), "rb") as fh:
            return fh.read(4 * MAX_DIFF_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ResourceError(f"cannot read {path}: {exc.strerror}") from None


def _ownership(ctx: Context, owner: str | None, group: str | None) -> tuple[int, int]:
    uid = lookup_uid(ctx, owner) if owner is not None else -1
    gid = lookup_gid(ctx, group) if group is not None else -1
    return uid, gid


def _meta_changes(st: os.stat_result, mode: int | None, uid: int, gid: int, default_mode: int | None = None) -> list[str]:
    out = []
    if mode is not None and stat.S_IMODE(st.st_mode) != mode:
        out.append(f"mode {stat.S_IMODE(st.st_mode):04o} -> {mode:04o}")
    if uid >= 0 and st.st_uid != uid:
        out.append(f"owner {st.st_uid} -> {uid}")
    if gid >= 0 and st.st_gid != gid:
        out.append(f"group {st.st_gid} -> {gid}")
    return out


def atomic_write(path: str, data: bytes, mode: int, uid: int, gid: int, *, durable: bool = True) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename.

    Readers see the old file or the new one, never a mix. With ``durable``
    the data is on disk before the rename, so a crash cannot replace a
    working file with an empty one; without it the caller syncs later
    (``sync_written``), which costs one flush per converge instead of one
    per file.
    """
    import tempfile

    directory, base = os.path.split(path)
    os.makedirs(directory, mode=DEFAULT_DIR_MODE, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{base}.", suffix=".gv-tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fchmod(fh.fileno(), mode)
            if uid >= 0 or gid >= 0:
                os.fchown(fh.fileno(), uid, gid)
            if durable:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def sync_written(ctx: Context) -> None:
    """Flush files created without fsync (one syncfs of the root's filesystem)."""
    if not ctx.cache.pop("files:unsynced", False):
        return
    import ctypes

    fd = os.open(str(ctx.root), os.O_RDONLY | os.O_DIRECTORY)
    try:
        syncfs = getattr(ctypes.CDLL(None, use_errno=True), "syncfs", None)
        if syncfs is None or syncfs(fd) != 0:
            os.sync()
    finally:
        os.close(fd)


class FileResource(Resource):
    TYPE = "file"
    NAME_IS_PATH = True
    ATTRS = {
        "ensure": Attr(kind="str", default="present", choices=ENSURE),
        "content": Attr(kind="str"),
        "source": Attr(kind="str"),
        "template": Attr(kind="bool"),
        "mode": Attr(kind="mode"),
        "owner": Attr(kind="str"),
        "group": Attr(kind="str"),
    }
    __slots__ = ("desired", "sensitive")

    @classmethod
    def validate_combination(cls, name: str, attrs: dict[str, Any]) -> None:
        if attrs["content"] is not None and attrs["source"] is not None:
            raise PolicyError("give either 'content' or 'source', not both")
        if attrs["ensure"] == "absent" and any(attrs[k] is not None for k in ("content", "source", "mode", "owner", "group")):
            raise PolicyError("an absent file takes no content, source, mode, owner or group")

    def check_files(self, files: Mapping[str, bytes]) -> None:
        source = self.attrs["source"]
        if source is not None and source not in files:
            known = ", ".join(sorted(files)) or "none"
            raise PolicyError(f"source {source!r} is not attached to the bundle (attached: {known})")

    def prepare(self, ctx: Context) -> None:
        self.check_files(self.files)
        a = self.attrs
        text: str | bytes | None
        if a["source"] is not None:
            text = self.files[a["source"]]
            is_template = a["template"] if a["template"] is not None else a["source"].endswith(".j2")
            name = a["source"]
        else:
            text = a["content"]
            is_template = bool(a["template"])
            name = f"content of {self.id}"
        self.sensitive = False
        if text is None:
            self.desired = None
            return
        if is_template:
            from grapevine.policy.templates import SecretsView, render

            if isinstance(text, bytes):
                try:
                    text = text.decode("utf-8")
                except UnicodeDecodeError:
                    raise PolicyError(f"template {name} is not UTF-8 text") from None
            where = f"node key {ctx.node_key_id}" if ctx.node_key_id else "this converge has no node key"
            view = SecretsView(ctx.secrets.get(self.bundle), where=where)
            text = render(text, ctx.facts, name=name, secrets=view)
            # A file that may hold a secret never shows its content in a
            # diff, a report or a log, and is private unless the bundle
            # gives a mode: its template read the secrets (any way: the view
            # records it), or its output holds an opened value.
            self.sensitive = view.used or ctx.holds_secret(text)
        self.desired = text.encode("utf-8") if isinstance(text, str) else text

    def _mode(self) -> int | None:
        """The mode to enforce: the bundle's, else 0600 for a file rendered from a secret."""
        mode = self.attrs["mode"]
        if mode is None and getattr(self, "sensitive", False):
            return SECRET_FILE_MODE
        return mode

    def _diff(self, ctx: Context, old: bytes | None, new: bytes | None, old_st: os.stat_result | None = None) -> str:
        """The content diff, or why it is hidden.

        Hidden when the new content was rendered from a secret, when the old
        file is not readable by others (its owner kept it private: a file
        once rendered from a secret is 0600 by default), or when the old
        content holds a secret value opened on this node. Neither side is
        shown then, so rewriting or removing such a file never prints the
        old plaintext.
        """
        if getattr(self, "sensitive", False):
            why = "rendered from a secret"
        elif old is not None and old_st is not None and not old_st.st_mode & stat.S_IROTH:
            why = f"the file is not readable by others (mode {stat.S_IMODE(old_st.st_mode):04o})"
        elif ctx.holds_secret(old):
            why = "the file holds a secret"
        else:
            return text_diff(old, new, self.name)
        return f"content hidden: {why}; diff hidden\n"

    def check(self, ctx: Context) -> Change | Converged:
        path = ctx.path(self.name)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            st = None
        except OSError as exc:
            raise ResourceError(f"cannot stat {path}: {exc.strerror}") from None
        if self.attrs["ensure"] == "absent":
            if st is None:
                return Converged(reason="absent")
            if stat.S_ISDIR(st.st_mode):
                raise ResourceError(f"{self.name} is a directory; a file resource will not remove it")
            old = _read(path) if stat.S_ISREG(st.st_mode) else None
            return Change(summary=("remove",), diff=self._diff(ctx, old, None, st), data="remove")
        uid, gid = _ownership(ctx, self.attrs["owner"], self.attrs["group"])
        want = self.desired
        mode = self._mode()
        if st is None or not stat.S_ISREG(st.st_mode):
            if st is not None and stat.S_ISDIR(st.st_mode):
                raise ResourceError(f"{self.name} is a directory, not a file")
            what = "create" if st is None else "replace symlink with file" if stat.S_ISLNK(st.st_mode) else "replace special file"
            summary = [what]
            if mode is not None:
                summary.append(f"mode {mode:04o}")
            return Change(summary=tuple(summary), diff=self._diff(ctx, None, want or b""), data="write")
        summary = []
        rewrite = False
        diff = ""
        if want is not None and not _same_content(path, st.st_size, want):
            diff = self._diff(ctx, _read(path), want, st)
            summary.append("content (hidden)" if getattr(self, "sensitive", False) else f"content ({st.st_size} -> {len(want)} bytes)")
            rewrite = True
        summary.extend(_meta_changes(st, mode, uid, gid))
        if not summary:
            return Converged(reason="content matches" if want is not None else "exists; mode and owner match")
        meta = "\n".join(line for line in summary if not line.startswith("content"))
        if meta:
            diff = diff + meta + "\n"
        return Change(summary=tuple(summary), diff=diff, data="write" if rewrite else "meta")

    def apply(self, ctx: Context, change: Change) -> str:
        path = ctx.confined(self.name)
        if change.data == "remove":
            os.unlink(path)
            return ""
        uid, gid = _ownership(ctx, self.attrs["owner"], self.attrs["group"])
        mode = self._mode()
        if change.data == "write":
            if mode is None:
                try:
                    st = os.lstat(path)
                    mode = stat.S_IMODE(st.st_mode) if stat.S_ISREG(st.st_mode) else DEFAULT_FILE_MODE
                except FileNotFoundError:
                    mode = DEFAULT_FILE_MODE
            data = self.desired
            if data is None:  # no content managed: keep what is there, create empty
                data = b""
            # Replacing a file: fsync first, a crash must not leave it empty.
            # A new file: batched; at worst a crash leaves it missing or
            # empty, and the next converge writes it again.
            replacing = os.path.lexists(path)
            atomic_write(path, data, mode, uid, gid, durable=replacing)
            if not replacing:
                ctx.cache["files:unsynced"] = True
            return ""
        _set_meta(path, mode, uid, gid)
        return ""


def _set_meta(path: str, mode: int | None, uid: int, gid: int, flags: int = 0) -> None:
    """chmod/chown the object at ``path`` itself, through a descriptor opened without following a link."""
    if mode is None and uid < 0 and gid < 0:
        return
    fd = _open_nofollow(path, os.O_RDONLY | flags)
    try:
        if mode is not None:
            os.fchmod(fd, mode)
        if uid >= 0 or gid >= 0:
            os.fchown(fd, uid, gid)
    finally:
        os.close(fd)


class DirectoryResource(Resource):
    TYPE = "directory"
    NAME_IS_PATH = True
    ATTRS = {
        "ensure": Attr(kind="str", default="present", choices=ENSURE),
        "mode": Attr(kind="mode"),
        "owner": Attr(kind="str"),
        "group": Attr(kind="str"),
        "force": Attr(kind="bool", default=False),  # absent: remove a non-empty tree
    }
    __slots__ = ()

    def check(self, ctx: Context) -> Change | Converged:
        path = ctx.path(self.name)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            st = None
        if self.attrs["ensure"] == "absent":
            if st is None:
                return Converged(reason="absent")
            if not stat.S_ISDIR(st.st_mode):
                raise ResourceError(f"{self.name} exists and is not a directory")
            if not self.attrs["force"] and os.listdir(path):
                raise ResourceError(f"{self.name} is not empty (set force: true to remove the tree)")
            return Change(summary=("remove directory",), diff=f"remove directory {self.name}\n", data="remove")
        uid, gid = _ownership(ctx, self.attrs["owner"], self.attrs["group"])
        mode = self.attrs["mode"]
        if st is None:
            m = mode if mode is not None else DEFAULT_DIR_MODE
            return Change(summary=(f"create directory (mode {m:04o})",), diff=f"create directory {self.name}\n", data="create")
        if not stat.S_ISDIR(st.st_mode):
            raise ResourceError(f"{self.name} exists and is not a directory")
        summary = _meta_changes(st, mode, uid, gid)
        if not summary:
            return Converged(reason="directory exists; mode and owner match")
        return Change(summary=tuple(summary), diff="\n".join(summary) + "\n", data="meta")

    def apply(self, ctx: Context, change: Change) -> str:
        path = ctx.confined(self.name)
        if change.data == "remove":
            if self.attrs["force"]:
                import shutil

                shutil.rmtree(path)
            else:
                os.rmdir(path)
            return ""
        uid, gid = _ownership(ctx, self.attrs["owner"], self.attrs["group"])
        mode = self.attrs["mode"]
        if change.data == "create":
            os.makedirs(path, mode=DEFAULT_DIR_MODE, exist_ok=True)
            mode = mode if mode is not None else DEFAULT_DIR_MODE  # makedirs is subject to umask
        _set_meta(path, mode, uid, gid, os.O_DIRECTORY)
        return ""


class SymlinkResource(Resource):
    TYPE = "symlink"
    NAME_IS_PATH = True
    ATTRS = {
        "ensure": Attr(kind="str", default="present", choices=ENSURE),
        "to": Attr(kind="str"),
        "force": Attr(kind="bool", default=False),  # replace a directory in the way
    }
    __slots__ = ()

    @classmethod
    def validate_combination(cls, name: str, attrs: dict[str, Any]) -> None:
        if attrs["ensure"] == "present" and not attrs["to"]:
            raise PolicyError("missing attribute 'to' (a symlink needs the path it points to)")

    def check(self, ctx: Context) -> Change | Converged:
        path = ctx.path(self.name)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            st = None
        to = self.attrs["to"]
        if self.attrs["ensure"] == "absent":
            if st is None:
                return Converged(reason="absent")
            if not stat.S_ISLNK(st.st_mode):
                raise ResourceError(f"{self.name} is not a symlink; not removing it")
            return Change(summary=("remove symlink",), diff=f"remove symlink {self.name}\n", data="remove")
        if st is None:
            return Change(summary=(f"create -> {to}",), diff=f"symlink {self.name} -> {to}\n", data="create")
        if stat.S_ISLNK(st.st_mode):
            current = os.readlink(path)
            if current == to:
                return Converged(reason=f"points to {to}")
            return Change(summary=(f"{current} -> {to}",), diff=f"-{self.name} -> {current}\n+{self.name} -> {to}\n", data="create")
        if stat.S_ISDIR(st.st_mode):
            if not self.attrs["force"]:
                raise ResourceError(f"{self.name} is a directory (set force: true to replace it with a symlink)")
            return Change(summary=(f"replace directory with symlink -> {to}",), diff=f"symlink {self.name} -> {to}\n", data="replace-dir")
        return Change(summary=(f"replace file with symlink -> {to}",), diff=f"symlink {self.name} -> {to}\n", data="create")

    def apply(self, ctx: Context, change: Change) -> str:
        path = ctx.confined(self.name)
        ctx.forget_paths()
        if change.data == "remove":
            os.unlink(path)
            return ""
        if change.data == "replace-dir":
            import shutil

            shutil.rmtree(path)
        directory, base = os.path.split(path)
        os.makedirs(directory, mode=DEFAULT_DIR_MODE, exist_ok=True)
        tmp = os.path.join(directory, f".{base}.{os.getpid()}.gv-tmp")
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        os.symlink(self.attrs["to"], tmp)
        os.replace(tmp, path)
        return ""
