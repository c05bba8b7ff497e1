"""Resume: after every epoch OUT/checkpoint/ holds the weights, optimizer state, early-stopping
state and history; `resume(OUT)` continues from the last completed epoch of the same phase."""
from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np

from ..errors import EdgeclsError
from ..files import atomic_write_text, atomic_writer
from .config import TrainConfig

CHECKPOINT_DIR = "checkpoint"


class Checkpoint:
    """OUT/checkpoint/: the run's config (written first) and, after every epoch, one state file
    (weights, optimizer, early stopping, history), replaced atomically."""

    def __init__(self, out_dir: Path, extra: dict | None = None):
        self.dir = out_dir / CHECKPOINT_DIR
        self.config_path, self.state_path = self.dir / "config.json", self.dir / "state.npz"
        self.extra = extra or {}

    def with_fields(self, extra: dict) -> "Checkpoint":
        """The same checkpoint, adding fixed fields (such as earlier phases' history) to every state saved."""
        return Checkpoint(self.dir.parent, {**self.extra, **extra})

    def start(self, dataset: Path, config: TrainConfig) -> None:
        """A fresh checkpoint folder holding the run's dataset and config."""
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir.mkdir(parents=True)
        record = {"dataset": str(dataset), "config": asdict(config)}
        atomic_write_text(self.config_path, json.dumps(record, indent=2))

    def run(self) -> tuple[Path, TrainConfig]:
        """The dataset and config of the run this checkpoint belongs to."""
        try:
            record = json.loads(self.config_path.read_text())
            return Path(record["dataset"]), TrainConfig.from_dict(record["config"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise EdgeclsError(f"{self.config_path}: no resumable run here ({exc}); start one with edgecls train") from None

    def save(self, state: dict, model_vars, optimizer_vars, best: list | None) -> None:
        """One completed epoch: state (JSON), model and optimizer variables, the best weights so far."""
        arrays = {f"m{i}": np.asarray(v) for i, v in enumerate(model_vars)}
        arrays.update({f"o{i}": np.asarray(v) for i, v in enumerate(optimizer_vars)})
        arrays.update({f"b{i}": np.asarray(v) for i, v in enumerate(best or [])})
        with atomic_writer(self.state_path) as f:
            np.savez(f, state=np.asarray(json.dumps({**state, **self.extra})), **arrays)

    def load(self) -> dict | None:
        """The last completed epoch's state, or None before the first epoch completed."""
        if not self.state_path.exists():
            return None
        try:
            with np.load(self.state_path) as z:
                state = json.loads(str(z["state"]))
                for prefix, key in (("m", "model"), ("o", "optimizer"), ("b", "best_arrays")):
                    state[key] = [z[f"{prefix}{i}"] for i in range(sum(1 for k in z.files if k[0] == prefix
                                                                         and k[1:].isdigit()))]
        except (OSError, ValueError, KeyError) as exc:
            raise EdgeclsError(f"{self.state_path}: unreadable checkpoint ({exc})") from None
        return state

    def remove(self) -> None:
        """The run finished: its checkpoint goes."""
        shutil.rmtree(self.dir, ignore_errors=True)


def assign(variables, values) -> None:
    """Load checkpointed values into variables, refusing a checkpoint of another network."""
    if len(variables) != len(values):
        raise EdgeclsError(f"checkpoint holds {len(values)} tensors where the model has {len(variables)}; "
                           "was it written by another version of edgecls?")
    for var, value in zip(variables, values):
        var.assign(value)
