"""A private, verified cache folder for the native kernels' shared library.

The rules (``docs/design.md``, "Native code"): a library is loaded only from a
folder and a file that ``lstat`` shows are owned by this user, are no symbolic
links and have no group or other write bit; the folder's path is absolute (a
configured folder that breaks a rule is refused, and this process builds into a
fresh ``tempfile.mkdtemp()`` folder instead); the SHA-256 recorded when the
library was built is checked on the bytes that are loaded; builds hold a file
lock, so concurrent first uses compile once, and remove the temporary files of
builds that died.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import os
import shutil
import stat
import tempfile
import time
from pathlib import Path

try:  # POSIX; the kernels are built with a POSIX C++ toolchain anyway.
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

#: A temporary file of a build whose process is gone, or older than this, is removed.
STALE_AFTER_S = 3600


class Untrusted(Exception):
    """A folder or file that another user could have written."""


def _problem(st: os.stat_result, folder: bool) -> str | None:
    if stat.S_ISLNK(st.st_mode):
        return "is a symbolic link"
    if folder and not stat.S_ISDIR(st.st_mode):
        return "is not a folder"
    if not folder and not stat.S_ISREG(st.st_mode):
        return "is not a regular file"
    if st.st_uid != os.geteuid():
        return f"is owned by uid {st.st_uid}, not by this process's uid {os.geteuid()}"
    if st.st_mode & 0o022:
        return f"is writable by group or others (mode {stat.S_IMODE(st.st_mode):#o})"
    return None


def check(path: Path, folder: bool) -> None:
    """Raises :class:`Untrusted` unless ``path`` passes the ownership rules (no link followed)."""
    why = _problem(os.lstat(path), folder)
    if why:
        raise Untrusted(f"{path} {why}")


def _private(path: Path) -> Path:
    if not path.is_absolute():
        raise Untrusted(f"{str(path)!r} is not an absolute path")
    os.makedirs(path, mode=0o700, exist_ok=True)
    check(path, folder=True)
    if not os.access(path, os.W_OK | os.X_OK):
        raise Untrusted(f"{path} is not writable")
    return path


def folder() -> tuple[Path, list[str]]:
    """The cache folder, and notes on any configured folder that was refused and why.

    ``ACCEL_JAX_CACHE_DIR``, else ``$XDG_CACHE_HOME/accel_jax``, else
    ``~/.cache/accel_jax`` -- each only when absolute and private; otherwise a
    fresh private temporary folder, removed when the process exits.
    """
    notes: list[str] = []
    explicit = os.environ.get("ACCEL_JAX_CACHE_DIR")
    if explicit:
        label, path = "ACCEL_JAX_CACHE_DIR", explicit
    else:
        xdg = os.environ.get("XDG_CACHE_HOME", "")
        home = os.path.expanduser("~")  # stays "~" for a uid without HOME or passwd entry
        base = xdg if os.path.isabs(xdg) else os.path.join(home, ".cache")
        label, path = "the default cache folder", os.path.join(base, "accel_jax")
    try:
        return _private(Path(path)), notes
    except (OSError, Untrusted) as err:
        notes.append(f"{label} refused: {err}")
    tmp = tempfile.mkdtemp(prefix="accel_jax-")  # mode 0700, a name nobody can predict
    atexit.register(shutil.rmtree, tmp, True)
    notes.append(f"using the private temporary folder {tmp}")
    return Path(tmp), notes


@contextlib.contextmanager
def locked(where: Path):
    """An exclusive ``flock`` on ``where/.lock``: one build at a time per folder."""
    fd = os.open(where / ".lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def temporary(path: Path) -> Path:
    """This process's temporary name for ``path``, ``<path>.<pid>.tmp`` (:func:`remove_stale`)."""
    return path.with_name(f"{path.name}.{os.getpid()}.tmp")


def remove_stale(where: Path) -> None:
    """Removes temporary files of builds whose process is gone or that are over an hour old.

    Called with the lock held; ``tmp*.so`` are the temporary names of accel_jax <= 0.1.
    """
    now = time.time()
    for entry in where.iterdir():
        name = entry.name
        pid = name.rsplit(".", 2)[-2] if name.endswith(".tmp") else ""
        ours = pid.isdigit() or (name.startswith("tmp") and name.endswith(".so"))
        if not ours:
            continue
        with contextlib.suppress(OSError):
            old = now - entry.lstat().st_mtime > STALE_AFTER_S
            if old or (pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid))):
                entry.unlink()


def digest_path(library: Path) -> Path:
    return library.with_name(library.name + ".sha256")


def write_digest(built: Path, library: Path) -> None:
    """Records ``built``'s SHA-256 as ``library``'s, atomically (temporary file, then rename)."""
    digest = hashlib.sha256(built.read_bytes()).hexdigest()
    target = digest_path(library)
    tmp = temporary(target)
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(digest + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, target)


def _recorded(library: Path) -> str:
    path = digest_path(library)
    try:
        check(path, folder=False)
    except FileNotFoundError:
        raise Untrusted(f"{path} (the recorded SHA-256) is missing") from None
    return path.read_text().strip()


def open_verified(library: Path) -> int:
    """A read-only descriptor of ``library`` once its owner, mode and SHA-256 check out.

    The hash is computed on the bytes read through this descriptor, so what is
    loaded from it (``/proc/self/fd/N``) is what was checked. Raises
    :class:`Untrusted` (or ``FileNotFoundError``) otherwise; nothing is mapped.
    """
    fd = os.open(library, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        why = _problem(os.fstat(fd), folder=False)
        if why:
            raise Untrusted(f"{library} {why}")
        digest = hashlib.sha256()
        while chunk := os.read(fd, 1 << 20):
            digest.update(chunk)
        if digest.hexdigest() != _recorded(library):
            raise Untrusted(f"{library} does not match its recorded SHA-256 (damaged or altered)")
        return fd
    except BaseException:
        os.close(fd)
        raise


def problem(library: Path) -> str | None:
    """Why ``library`` cannot be loaded as it is (``None``: it can)."""
    try:
        os.close(open_verified(library))
    except (OSError, Untrusted) as err:
        return str(err)
    return None


def loadable_path(fd: int, library: Path) -> str:
    """The path to hand to ``dlopen``: the verified descriptor itself where ``/proc`` has it."""
    via_fd = f"/proc/self/fd/{fd}"
    return via_fd if os.path.exists(via_fd) else str(library)
