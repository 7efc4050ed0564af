"""Build a directory once per key in the shared cache, safely across processes.

Used by the test toolchain (``provision``) and the fixtures (``fixtures``): builders of one
key serialise on ``<name>.lock`` (``flock``, released by the kernel if the holder dies),
build in a private directory and publish it with an atomic ``rename``. A build counts only
once its stamp file exists; the builder writes the stamp last.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def build_once(root: Path, name: str, stamp: str, build: Callable[[Path, Path], None]) -> tuple[Path, bool]:
    """Return ``root/name`` after making sure it is built; and whether this call built it.

    ``build(work, final)`` fills the private directory ``work`` (which becomes ``final``) and
    writes ``work/stamp`` last. If it raises, nothing is published.
    """
    final = root / name
    if (final / stamp).is_file():
        return final, False
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (final / stamp).is_file():  # another process finished while we waited
            return final, False
        # Holding the lock, any build directory of this name belongs to a builder that died.
        for leftover in root.glob(f"{name}.*"):
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
        if final.exists():  # published without its stamp: not trusted
            shutil.rmtree(final)
        work = Path(tempfile.mkdtemp(prefix=f"{name}.", dir=root))
        try:
            build(work, final)
            if not (work / stamp).is_file():
                raise RuntimeError(f"the build of {name} wrote no {stamp}")
            os.chmod(work, 0o755)  # mkdtemp made it private; the cache is for every user
            os.rename(work, final)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
    return final, True
