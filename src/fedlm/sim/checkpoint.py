"""The run's persisted server state, written after every round, so a run can resume.

Holds the global vector, the server optimizer's moments, the clip norm, the version,
the privacy ledger (so a resumed run continues the epsilon count), banded MF-DP-FTRL's
last noise vectors (secret server state: a resumed run continues the same correlated
noise, fedlm.privacy.correlated_noise) and, in the
simulation, the clients' private parameters (client-side state kept here only because
the simulation plays every client). Arrays go to safetensors, the rest to JSON; the
pair is replaced atomically, so a crash mid-write leaves the previous checkpoint whole.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

from fedlm.privacy.ledger import PrivacyLedger
from fedlm.server.rounds import ServerState
from fedlm.sim.rundir import CHECKPOINT_DIR

PRIVATE_PREFIX = "private/"
RESIDUAL_PREFIX = "residual/"
NOISE_PREFIX = "noise/"
FINGERPRINT_KIND = "changed-settings"  # sim.rundir.run_fingerprint: the settings that differ from their defaults


def save_checkpoint(
    run_dir: Path, state: ServerState, private: dict[str, np.ndarray], residuals: dict[str, np.ndarray] | None = None,
    *, fingerprint: str = "",
) -> None:
    """Replace the checkpoint atomically; `fingerprint` names the run that wrote it (sim.rundir.run_fingerprint)."""
    arrays = {"global": state.global_vector}
    arrays.update({f"opt/{i}": m for i, m in enumerate(state.opt_state)})
    arrays.update({f"{NOISE_PREFIX}{i}": w for i, w in enumerate(state.noise_state)})
    arrays.update({PRIVATE_PREFIX + cid: v for cid, v in private.items() if v.size})
    arrays.update({RESIDUAL_PREFIX + cid: v for cid, v in (residuals or {}).items()})
    meta = {
        "version": state.version,
        "rounds_done": state.rounds_done,
        "clip_norm": state.clip_norm,
        "opt_state_len": len(state.opt_state),
        "noise_state_len": len(state.noise_state),
        "ledger": json.loads(state.ledger.to_json()),
        "run_fingerprint": fingerprint,
        "fingerprint_kind": FINGERPRINT_KIND,  # how run_fingerprint hashes; checkpoints without it hashed every table
    }
    target = Path(run_dir) / CHECKPOINT_DIR
    staging = Path(run_dir) / (CHECKPOINT_DIR + ".new")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(staging / "state.safetensors"))
    (staging / "state.json").write_text(json.dumps(meta, indent=1))
    old = Path(run_dir) / (CHECKPOINT_DIR + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        os.replace(target, old)
    os.replace(staging, target)
    shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(run_dir: Path) -> tuple[ServerState, dict[str, np.ndarray]]:
    """The state saved after the last completed round, and the clients' private parameters."""
    state, private, _ = load_checkpoint_full(run_dir)
    return state, private


def checkpoint_folder(run_dir: Path) -> Path:
    """The checkpoint to read; the previous one if a crash hit between replacing it and publishing the new one."""
    folder = Path(run_dir) / CHECKPOINT_DIR
    if not (folder / "state.json").is_file():
        folder = Path(run_dir) / (CHECKPOINT_DIR + ".old")
    if not (folder / "state.json").is_file():
        raise ValueError(f"{run_dir} has no checkpoint to resume from")
    return folder


def checkpoint_meta(run_dir: Path) -> dict:
    """The checkpoint's small JSON half: version, rounds_done, the run's fingerprint ("" before fingerprints were kept)."""
    return json.loads((checkpoint_folder(run_dir) / "state.json").read_text())


def load_checkpoint_full(run_dir: Path) -> tuple[ServerState, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """State, private parameters and error-feedback residuals (see checkpoint_folder)."""
    folder = checkpoint_folder(run_dir)
    meta = json.loads((folder / "state.json").read_text())
    arrays = load_file(str(folder / "state.safetensors"))
    state = ServerState(
        version=int(meta["version"]),
        global_vector=arrays["global"],
        rounds_done=int(meta["rounds_done"]),
        opt_state=tuple(arrays[f"opt/{i}"] for i in range(int(meta["opt_state_len"]))),
        clip_norm=float(meta["clip_norm"]),
        ledger=PrivacyLedger.from_json(json.dumps(meta["ledger"])),
        noise_state=tuple(arrays[f"{NOISE_PREFIX}{i}"] for i in range(int(meta.get("noise_state_len", 0)))),
    )
    private = {k[len(PRIVATE_PREFIX):]: v for k, v in arrays.items() if k.startswith(PRIVATE_PREFIX)}
    residuals = {k[len(RESIDUAL_PREFIX):]: v for k, v in arrays.items() if k.startswith(RESIDUAL_PREFIX)}
    return state, private, residuals
