"""Small helpers shared across the package: atomic files, devices, provenance."""

from __future__ import annotations

import errno
import functools
import hashlib
import json
import os
import signal
import subprocess
import tempfile
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import torch

from robustprune import __version__


class UserError(Exception):
    """A problem with what the user asked for or pointed at (a missing or corrupt run, a dataset
    that cannot be read, an optional package that is not installed): the command line prints its
    message on one line. Every other exception is a bug and reaches the user with its traceback."""


class MissingExtraError(UserError, ImportError, RuntimeError):
    """An optional dependency is not installed (``pip install 'robustprune[<extra>]'``)."""


class DiskFullError(UserError, OSError):
    """A file could not be written for want of space (or quota); the message names the file. The
    file was written atomically, so what was there before is intact and nothing half-written is left."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.ENOSPC, message)

    def __str__(self) -> str:
        return str(self.strerror)


#: test-only fault injection (``fault_point``): ``<point>:<n>[:<action>]``
FAULT_ENV = "ROBUSTPRUNE_FAULT"
FAULT_ACTIONS = ("kill", "killgroup", "killparent", "stop", "enospc")
_fault_hits: dict[str, int] = {}


def fault_point(name: str) -> None:
    """A named point where the fault-injection tests (``tests/test_faults.py``, ``bench/faults.py``)
    stop the program; inert unless ``$ROBUSTPRUNE_FAULT`` names this point.

    ``ROBUSTPRUNE_FAULT=<point>:<n>[:<action>]`` acts the ``n``-th time this process passes
    ``point`` (counted per process): ``kill`` (the default) sends itself SIGKILL, ``killgroup``
    SIGKILLs its whole process group (a ``--jobs`` parent and all its workers), ``killparent`` its
    parent (a ``--jobs`` worker's runner), ``stop`` sends itself SIGSTOP (alive, holding its locks),
    ``enospc`` raises ``OSError(ENOSPC)`` as a full disk would. The points: ``train-step`` (after each optimiser step),
    ``checkpoint-written`` (an epoch's files written, not yet renamed into place),
    ``checkpoint-renamed`` (renamed, ``LATEST`` not yet updated), ``atomic-write`` (any file written
    and synced, not yet renamed over its target), ``eval-batch`` (after each evaluated batch),
    ``task-done`` (a suite task finished, the next not started).
    """
    spec = os.environ.get(FAULT_ENV)
    if not spec or spec.partition(":")[0] != name:
        return
    _, count, action = (spec.split(":", 2) + ["", ""])[:3]
    _fault_hits[name] = _fault_hits.get(name, 0) + 1
    if _fault_hits[name] != int(count or 1):
        return
    if action == "enospc":
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    if action == "stop":
        os.kill(os.getpid(), signal.SIGSTOP)
        return
    if action == "killparent":
        os.kill(os.getppid(), signal.SIGKILL)
        return
    if action == "killgroup":
        os.killpg(os.getpgid(0), signal.SIGKILL)
    elif action not in ("", "kill"):
        raise ValueError(f"{FAULT_ENV}={spec!r}: unknown action {action!r}; one of {', '.join(FAULT_ACTIONS)}")
    os.kill(os.getpid(), signal.SIGKILL)


P = ParamSpec("P")
R = TypeVar("R")


def keeps_global_rng(fn: Callable[P, R]) -> Callable[P, R]:
    """Decorator of a job that seeds torch's global RNG for reproducible draws (attack starts, the
    passes of a random model): the caller's RNG state (CPU, and initialised CUDA devices) is the
    same after the call as before, so library code never moves the caller's random stream."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
        with torch.random.fork_rng(devices=devices):
            return fn(*args, **kwargs)

    return wrapper


def atomic_write(path: str | os.PathLike, write: Callable[[Path], object]) -> None:
    """Call ``write(tmp)`` on a temp file beside ``path`` and rename it over ``path``.

    A crash at any moment leaves either the old file or the new one, never half a file. The file
    gets the permissions of a plain ``open()`` (0666 less the umask), not mkstemp's private 0600.
    A full disk (or quota) raises :class:`DiskFullError` naming ``path``, whichever writer failed.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        if _disk_full(e, path.parent):
            raise DiskFullError(f"cannot write {path}: no space left on device ({e})") from e
        raise
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~_umask())
        write(Path(tmp))
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        fault_point("atomic-write")
        os.replace(tmp, path)
    except Exception as e:
        full = _disk_full(e, path.parent)
        Path(tmp).unlink(missing_ok=True)
        if full:
            raise DiskFullError(f"cannot write {path}: no space left on device "
                                f"({type(e).__name__}: {e}); the previous file, if any, is intact: "
                                "free some space and rerun") from e
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


#: free space below which a failed write is put down to a full disk (writers such as ``torch.save``
#: report ENOSPC without its errno)
FULL_DISK_BYTES = 1 << 20


def _disk_full(e: BaseException, directory: Path) -> bool:
    """Whether ``e`` (raised while writing into ``directory``) comes from a full disk or quota."""
    if isinstance(e, DiskFullError):
        return False  # already named
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    if "No space left on device" in str(e) or "os error 28" in str(e):
        return True
    try:
        st = os.statvfs(directory)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < FULL_DISK_BYTES


def _umask() -> int:
    mask = os.umask(0)  # the only portable way to read it is to set it
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write(path, lambda p: p.write_text(text))


def atomic_write_json(path: str | os.PathLike, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` -> cuda when available, else cpu. Asking for cuda without one, or for a device torch
    does not know (``--device gpu``), is a ``ValueError`` naming it."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available")
    try:
        return torch.device(device)
    except RuntimeError as e:  # torch's message for an unknown device type lists the known ones
        raise ValueError(f"unknown device {device!r}: {e}") from None


@cache
def git_sha() -> str:
    """The git commit of the robustprune source tree, or 'unknown' outside a checkout."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5, check=True
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def provenance(device: torch.device | str) -> dict[str, Any]:
    """What every result records about the software and hardware that produced it."""

    dev = torch.device(device)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    return {
        "robustprune_version": __version__,
        "git_sha": git_sha(),
        "torch_version": torch.__version__,
        "device": str(dev),
        "device_name": name,
    }


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file's bytes (hex), read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
