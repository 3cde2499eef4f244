"""Device mesh, shardings and host-local -> global batches for data-parallel training.

One code path from one CPU to many hosts: the batch's leading axis is split over the mesh's
`data` axis, parameters and optimizer state are replicated. Each process feeds its own part of
the global batch (grain shards the data by process) and `make_array_from_process_local_data`
stitches the parts into one global array without a host round trip.
"""
from __future__ import annotations

import logging

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def maybe_initialize_distributed(coordinator_address: str = "", num_processes: int = 0,
                                 process_id: int = -1, initialize: bool = False,
                                 heartbeat_timeout_s: int = 100) -> None:
    """Calls `jax.distributed.initialize` for multi-host runs (before any device is used).

    With `initialize=True` and no address, JAX discovers the cluster itself (Slurm, Kubernetes,
    Cloud TPU). With an explicit address (e.g. a localhost coordinator for CPU tests), the
    process count and id must be given too. CPU collectives go through gloo.
    `heartbeat_timeout_s`: after that long without a process's heartbeats the coordination
    service declares it dead and every other process stops with an error (a killed process
    would otherwise leave the rest blocked in their next collective).
    """
    if not (initialize or coordinator_address) or jax.distributed.is_initialized():
        return
    # Only affects the CPU backend (collectives across processes); harmless on GPU / TPU, and
    # asking for the backend here would initialise it too early.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if int(heartbeat_timeout_s) < 1:
        raise ValueError(f"config.distributed.heartbeat_timeout_s={heartbeat_timeout_s!r}: "
                         "expected a positive number of seconds")
    kwargs = dict(heartbeat_timeout_seconds=int(heartbeat_timeout_s))
    if coordinator_address:
        if num_processes <= 0 or process_id < 0:
            raise ValueError("config.distributed: coordinator_address needs num_processes > 0 "
                             "and process_id >= 0")
        kwargs.update(coordinator_address=coordinator_address, num_processes=num_processes,
                      process_id=process_id)
    jax.distributed.initialize(**kwargs)
    logging.info("jax.distributed: process %d of %d, %d local / %d global devices",
                 jax.process_index(), jax.process_count(), jax.local_device_count(),
                 jax.device_count())


def make_mesh(data_parallel: int = -1) -> Mesh:
    """A 1-D mesh over `data_parallel` devices (-1 = all devices of all processes)."""
    n = jax.device_count() if data_parallel in (-1, 0) else int(data_parallel)
    if n > jax.device_count():
        raise ValueError(f"config.train.data_parallel={n} but only {jax.device_count()} "
                         "devices are visible")
    if jax.process_count() > 1 and n != jax.device_count():
        # the first n devices could all be one process's, leaving the others' rows nowhere
        raise ValueError(f"config.train.data_parallel={data_parallel}: a multi-process run "
                         f"uses every device of every process ({jax.device_count()}); use -1")
    devices = np.asarray(jax.devices()[:n])
    return Mesh(devices, (DATA_AXIS,), axis_types=(jax.sharding.AxisType.Auto,))


def data_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over the data axis."""
    return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def local_batch_size(global_batch_size: int, mesh: Mesh) -> int:
    """This process's share of the global batch; the global batch must split evenly."""
    n_dev = mesh.devices.size
    if global_batch_size % n_dev:
        raise ValueError(f"config.input.batch_size={global_batch_size} must be a multiple of the "
                         f"{n_dev} devices on the mesh")
    return global_batch_size // jax.process_count()


def to_global(tree, mesh: Mesh):
    """Host-local numpy arrays (this process's rows) -> global arrays sharded over `data`."""
    sharding = data_sharding(mesh)
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), tree)
