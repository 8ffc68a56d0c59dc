"""Joining a multi-process run (`jax.distributed`): one place for both the
command line's flags and a config's `distributed=True`."""

from __future__ import annotations

from absl import logging
import jax


def initialize(coordinator_address: str | None = None,
               num_processes: int | None = None,
               process_id: int | None = None) -> None:
  """`jax.distributed.initialize`, once per process, before other JAX calls.

  Without arguments JAX finds the coordinator and this process's id itself
  (TPU pod slices, Slurm); by hand, give all three. A second call (the
  command line initialised already, then the job's setup) does nothing.
  """
  if jax.distributed.is_initialized():
    return
  jax.distributed.initialize(coordinator_address,
                             num_processes=num_processes,
                             process_id=process_id)
  logging.info("Process %d of %d; %d of %d devices here.",
               jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count())
