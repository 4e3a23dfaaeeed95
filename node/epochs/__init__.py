"""How a node builds and stores its epochs: streamed from DuckDB, blinded on every core or a
Dask cluster, split into partitions by filter hash, written in one transaction.

- `node.epochs.tasks`: the one unit of work a worker runs (blind a chunk, hash its points).
- `node.epochs.builder`: reads the dataset in batches and assembles table and filters.
- `node.epochs.cluster`: the Dask backend (`[compute] scheduler`), imported only when used.
- `node.epochs.storage`: the `epochs` and `epoch_partitions` tables and lazy partition loads.

`node.epoch` is the face the rest of the node uses (`Epoch`, `current_epoch`).
"""

from fedtrace.errors import FedtraceError


class EpochBuildError(FedtraceError):
    """A new epoch could not be built (a worker died for good, the cluster is unreachable,
    the data changed mid-build); nothing of it was stored and the old epoch still serves."""
