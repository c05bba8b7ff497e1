"""Training on several processes or machines: JAX data parallelism through Keras' distribution API.

* `settings.from_env` reads who this process is (Keras' KERAS_DISTRIBUTION_* variables, or SLURM).
* `initialize` joins the run with bounded waits and starts a watchdog (`session`); the `Session`
  it returns says which process writes (`is_writer`), which rows of each batch it feeds
  (`local_rows`), checks that every process has the same data (`check_same`), hands process 0's
  text and arrays to the others (`share`, `broadcast`), gathers rows computed on each process's
  share back into the batches' order (`gather_batches`), and ends the run (`finish`, `abort`).
* `edgecls.train` uses all of it when the environment describes several processes.
* `launch` starts N processes of a command with that environment and stops all when one fails.

Nothing here imports JAX until `initialize` runs in a multi-process setting.
"""
from .session import EXIT_NOT_JOINED, EXIT_STOPPED, Session, current, initialize
from .settings import Settings, from_env
from .sharding import batch_count, global_batch, local_rows

__all__ = ["EXIT_NOT_JOINED", "EXIT_STOPPED", "Session", "Settings", "batch_count", "current", "from_env",
           "global_batch", "initialize", "local_rows"]
