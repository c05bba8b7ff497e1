"""Resume: after every epoch OUT/checkpoint/ holds the weights, optimizer state, early-stopping
state and history; `resume(OUT)` continues from the last completed epoch of the same phase."""
from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np

from ..errors import EdgeclsError
from ..files import atomic_write_text, atomic_writer, remove_partial_writes
from ..manifest import manifest_path
from .config import TrainConfig

CHECKPOINT_DIR = "checkpoint"


class Checkpoint:
    """OUT/checkpoint/: the run's config (written first) and, after every epoch, one state file
    (weights, optimizer, early stopping, history), replaced atomically."""

    def __init__(self, out_dir: Path, extra: dict | None = None, writes: bool = True):
        self.dir = out_dir / CHECKPOINT_DIR
        self.config_path, self.state_path = self.dir / "config.json", self.dir / "state.npz"
        self.extra = extra or {}
        self.writes = writes  # False in the processes of a run other than process 0: `save` does nothing

    def with_fields(self, extra: dict) -> "Checkpoint":
        """The same checkpoint, adding fixed fields (such as earlier phases' history) to every state saved."""
        return Checkpoint(self.dir.parent, {**self.extra, **extra}, self.writes)

    def start(self, dataset: Path, config: TrainConfig) -> None:
        """A fresh checkpoint folder holding the run's dataset and config."""
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir.mkdir(parents=True)
        record = {"dataset": str(dataset), "config": asdict(config)}
        atomic_write_text(self.config_path, json.dumps(record, indent=2))

    def run(self) -> tuple[Path, TrainConfig]:
        """The dataset and config of the run this checkpoint belongs to."""
        if not self.config_path.exists():
            done = " (that run finished)" if manifest_path(self.dir.parent / "model.keras").exists() else ""
            raise EdgeclsError(f"{self.dir.parent}: no checkpoint to resume{done}; expected {self.config_path}")
        try:
            record = json.loads(self.config_path.read_text())
            return Path(record["dataset"]), TrainConfig.from_dict(record["config"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise EdgeclsError(f"{self.config_path}: no resumable run here ({exc}); start one with edgecls train") from None

    def save(self, state: dict, model_vars, optimizer_vars, best: list | None) -> None:
        """One completed epoch: state (JSON), model and optimizer variables, the best weights so far."""
        if not self.writes:
            return
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

    def remove_partial(self) -> None:
        """A state half written when the process was ended from another thread (a lost peer)."""
        remove_partial_writes(self.dir)

    def shared_run(self, session) -> tuple[Path, TrainConfig]:
        """`run()` read by process 0 and handed to every process of `session` (only its disk
        need hold the checkpoint); its error, if any, is raised in every process."""
        if not session.distributed:
            return self.run()
        record = None
        if session.is_writer:
            try:
                dataset, config = self.run()
                record = json.dumps({"dataset": str(dataset), "config": asdict(config)})
            except EdgeclsError as exc:
                record = json.dumps({"error": str(exc)})
        record = json.loads(session.share("checkpoint run", record))
        if "error" in record:
            raise EdgeclsError(record["error"])
        return Path(record["dataset"]), TrainConfig.from_dict(record["config"])

    def shared_load(self, session) -> dict | None:
        """`load()` read by process 0 and handed to every process: the state as text, the arrays
        broadcast (the others learn their shapes first)."""
        if not session.distributed:
            return self.load()
        keys = ("model", "optimizer", "best_arrays")
        record = None
        if session.is_writer:
            state = self.load()
            record = json.dumps(None if state is None else {
                "state": {k: v for k, v in state.items() if k not in keys},
                "shapes": {k: [[list(a.shape), a.dtype.str] for a in state[k]] for k in keys}})
        record = json.loads(session.share("checkpoint state", record))
        if record is None:
            return None
        layout = [(k, shape, dtype) for k in keys for shape, dtype in record["shapes"][k]]
        mine = ([a for k in keys for a in state[k]] if session.is_writer
                else [np.zeros(shape, dtype) for _, shape, dtype in layout])
        arrays = iter(session.broadcast(mine))
        state = dict(record["state"])
        for k in keys:
            state[k] = [next(arrays) for _ in record["shapes"][k]]
        return state


def assign(variables, values) -> None:
    """Load checkpointed values into variables, refusing a checkpoint of another network."""
    if len(variables) != len(values):
        raise EdgeclsError(f"checkpoint holds {len(values)} tensors where the model has {len(variables)}; "
                           "was it written by another version of edgecls?")
    for var, value in zip(variables, values):
        var.assign(value)
