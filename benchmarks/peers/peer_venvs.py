"""The peer frameworks' virtual environments: made once outside the project's .venv, reused.

Each peer (Flower, pfl) gets its own environment under the venv root (default
~/.cache/fedlm/peer-venvs, or $FEDLM_PEER_VENVS), installed from its fully pinned
requirements file in this folder with `pip install --no-deps -r FILE`: no resolver, so
Flower's unsatisfiable certifi floor does not stop the install (see
flower-requirements.txt), and the same versions come every time.

A stamp file in each environment holds the SHA-256 of its requirements file and the
Python version; while both match, the environment is reused as it is. When they differ
(or the environment is missing or half made), it is rebuilt from scratch.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
STAMP_NAME = "fedlm-peer-stamp.txt"


@dataclass(frozen=True)
class Peer:
    """A peer framework: its name, requirements file, and the import that proves it works."""

    name: str
    requirements: Path
    smoke_import: str


PEERS = {
    "flower": Peer("flower", HERE / "flower-requirements.txt", "import flwr.simulation, ray"),
    "pfl": Peer("pfl", HERE / "pfl-requirements.txt", "import pfl.model.pytorch, torch"),
}


def default_venv_root() -> Path:
    return Path(os.environ.get("FEDLM_PEER_VENVS", Path.home() / ".cache/fedlm/peer-venvs"))


def venv_python(root: Path, peer: Peer) -> Path:
    return root / peer.name / "bin" / "python"


def expected_stamp(peer: Peer) -> str:
    digest = hashlib.sha256(peer.requirements.read_bytes()).hexdigest()
    return f"requirements-sha256 {digest}\npython {sys.version_info.major}.{sys.version_info.minor}\n"


def is_ready(root: Path, peer: Peer) -> bool:
    stamp = root / peer.name / STAMP_NAME
    return stamp.is_file() and stamp.read_text() == expected_stamp(peer)


def ensure_venv(root: Path, peer: Peer, log) -> Path:
    """Create (or rebuild) the peer's environment unless its stamp matches; its python."""
    python = venv_python(root, peer)
    if is_ready(root, peer):
        log(f"{peer.name}: reusing {root / peer.name}")
        return python
    home = root / peer.name
    if _is_project_venv(home):
        raise SystemExit(f"refusing to install peers into the project's environment {home}")
    log(f"{peer.name}: creating {home} from {peer.requirements.name} (takes a minute or two)")
    root.mkdir(parents=True, exist_ok=True)
    (home / STAMP_NAME).unlink(missing_ok=True)
    _run([sys.executable, "-m", "venv", "--clear", str(home)], log)
    _run([str(python), "-m", "pip", "install", "--no-deps", "-r", str(peer.requirements)], log)
    _run([str(python), "-c", peer.smoke_import], log)
    (home / STAMP_NAME).write_text(expected_stamp(peer))
    return python


def _is_project_venv(home: Path) -> bool:
    project_venv = (HERE.parent.parent / ".venv").resolve()
    return home.resolve() == project_venv or project_venv in home.resolve().parents


def _run(command: list[str], log) -> None:
    """Run one install step; on failure show its output's tail and stop."""
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        log((done.stdout + done.stderr)[-3000:])
        raise SystemExit(f"failed ({done.returncode}): {' '.join(command)}")
