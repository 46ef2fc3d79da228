"""Several processes, one model: data-parallel training with torch.distributed, as ``fit`` uses it.

Launch a script that calls ``ftlab.train.fit`` with

    torchrun --nproc_per_node N script.py          (or: python tools/torchrun.py -n N script.py)

torchrun starts N copies of the script and tells each, in its environment, its ``RANK``
(0 .. N-1), its ``LOCAL_RANK`` (which GPU of this machine) and the ``WORLD_SIZE`` N. Then ``fit``:

1. joins the process group (``setup``): gloo on the CPU, NCCL on CUDA with one GPU per process;
2. wraps the model in DistributedDataParallel (``wrap``): every process holds a full copy, rank
   0's weights are sent to all at the start, and during each backward pass the gradients are
   averaged across processes (an all-reduce), so every copy takes the same optimizer step;
3. gives each process its own share of the data (``Shard``), so one step sees N batches: the
   global batch is N times the per-process batch;
4. averages the loss it records (``average``); only rank 0 shows progress (``is_main``).

So N processes with batch b compute the same update as one process with batch N x b
(tests/test_distributed.py checks it to float tolerance). In your own script, guard what only
one process should do (print, save a file) with ``if ftlab.distributed.is_main():``.
"""
from __future__ import annotations

import atexit
import itertools
import os
from collections.abc import Iterable, Iterator

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler, SequentialSampler

from ftlab import config


def launched() -> bool:
    """True in a process that torchrun started as one of several (``WORLD_SIZE`` > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def get_rank() -> int:
    """This process's number, 0 .. get_world_size() - 1 (0 when there is one process)."""
    return dist.get_rank() if dist.is_initialized() else int(os.environ.get("RANK", "0"))


def get_world_size() -> int:
    """How many processes train together (1 without torchrun)."""
    return dist.get_world_size() if dist.is_initialized() else int(os.environ.get("WORLD_SIZE", "1"))


def is_main() -> bool:
    """True in the one process that prints, saves and shows progress (rank 0)."""
    return get_rank() == 0


def setup(device: torch.device | str | None = None) -> torch.device:
    """Join the process group (the first call only) and return this process's device.

    On CUDA every process gets its own GPU, ``cuda:LOCAL_RANK`` (a plain "cuda" means that
    one), and the backend is NCCL; on the CPU the backend is gloo. The group is left at exit.
    """
    device = torch.device(device) if device is not None else config.device()
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        atexit.register(_leave)
    return device


def _leave() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def wrap(model: torch.nn.Module, device: torch.device) -> DistributedDataParallel:
    """``model`` inside DistributedDataParallel; train through the wrapper, the weights are ``model``'s own."""
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def average(t: torch.Tensor) -> torch.Tensor:
    """The mean of ``t`` over all processes (``t`` itself in one process)."""
    if not dist.is_initialized():
        return t
    t = t.clone()
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t / dist.get_world_size()


class Shard:
    """This process's share of ``data``: re-iterable, one pass per ``iter``.

    * A DataLoader over a dataset with the usual sampler (in order, or shuffled) is rebuilt
      with a ``DistributedSampler``: process r reads examples r, r + N, r + 2N, ... (or that
      share of a shuffled order, reshuffled every pass with ``set_epoch``), in batches of the
      loader's batch size. When the examples do not split evenly, the sampler repeats a few so
      every process gets as many.
    * Anything else (a list of batches, a wrapper of loaders) gives process r the batches
      r, r + N, r + 2N, ... of each pass.
    """

    def __init__(self, data: Iterable, rank: int | None = None, world_size: int | None = None):
        self.data = data
        self.rank = get_rank() if rank is None else rank
        self.world_size = get_world_size() if world_size is None else world_size
        self.sampler = None
        if (isinstance(data, DataLoader) and data.batch_size is not None
                and isinstance(data.sampler, (SequentialSampler, RandomSampler))):
            seed = data.generator.initial_seed() if data.generator is not None else 0
            self.sampler = DistributedSampler(data.dataset, num_replicas=self.world_size, rank=self.rank,
                                              shuffle=isinstance(data.sampler, RandomSampler), seed=seed)
            self.data = DataLoader(data.dataset, batch_size=data.batch_size, sampler=self.sampler,
                                   collate_fn=data.collate_fn, num_workers=data.num_workers,
                                   pin_memory=data.pin_memory, drop_last=data.drop_last)
        self.passes = 0

    def __iter__(self) -> Iterator:
        if self.sampler is not None:
            self.sampler.set_epoch(self.passes)
            self.passes += 1
            return iter(self.data)
        self.passes += 1
        return itertools.islice(iter(self.data), self.rank, None, self.world_size)
