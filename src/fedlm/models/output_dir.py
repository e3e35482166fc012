"""An output directory written whole or not at all, with the permissions a user's own files get.

Exports are built in a hidden temporary sibling of the target and renamed into place, so
a crash or a refusal never leaves a half-written directory. `tempfile.mkdtemp` makes that
sibling 0700 and safetensors (0.8) writes its files 0600, which would hand on an adapter
nobody else can read: before the rename every directory becomes 0777 and every file 0666,
less the process umask (0755 and 0644 under the usual umask 022). No torch here: the
command line imports this on its fast path.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path


def check_output_dir(target: Path, *, overwrite: bool) -> None:
    """Refuse a file, or a non-empty directory unless `overwrite`; creates nothing."""
    target = Path(target)
    if target.exists() and not target.is_dir():
        raise ValueError(f"{target} exists and is not a directory")
    if target.is_dir() and any(target.iterdir()) and not overwrite:
        raise ValueError(f"{target} already exists and is not empty; choose another directory or pass --overwrite")


def current_umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it; put it straight back
    os.umask(mask)
    return mask


def make_readable(root: Path, *, umask: int) -> None:
    """Directories 0777 and files 0666 under `root` (itself included), less `umask`."""
    dir_mode, file_mode = 0o777 & ~umask, 0o666 & ~umask
    os.chmod(root, dir_mode)
    for folder, dirs, files in os.walk(root):
        for name in dirs:
            os.chmod(os.path.join(folder, name), dir_mode)
        for name in files:
            os.chmod(os.path.join(folder, name), file_mode)


def write_output_dir(target: Path, build: Callable[[Path], None], *, overwrite: bool) -> Path:
    """Run `build(tmp)` in a temporary sibling of `target`, then put it in place of `target`.

    An existing non-empty `target` is refused unless `overwrite`; with it, the old directory
    is replaced only once the new one is complete. On any failure `target` is left as it was.
    """
    target = Path(target)
    check_output_dir(target, overwrite=overwrite)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        build(tmp)
        make_readable(tmp, umask=current_umask())
        replace_dir(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def replace_dir(source: Path, target: Path) -> None:
    """Rename `source` to `target`; a non-empty `target` is moved aside first and removed once `source` is in."""
    if not target.exists() or (target.is_dir() and not any(target.iterdir())):
        os.replace(source, target)  # rename(2) may replace an empty directory
        return
    old = target.parent / f".{target.name}-old-{uuid.uuid4().hex[:8]}"
    os.replace(target, old)
    try:
        os.replace(source, target)
    except OSError:
        os.replace(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)
