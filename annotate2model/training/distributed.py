"""Several processes training one run: `a2m train --gpus N` on one machine, or
`torchrun --nnodes M --nproc-per-node N -m annotate2model train ...` across machines.

torch.distributed holds the state (initialised from torchrun's environment: RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR); these helpers are no-ops in a single process, so the trainers read the
same either way. How the work is split (docs/scaling.md):

- the probe's feature extraction: each rank computes its share of the missing features; the
  shares are gathered so every rank holds them all, and one process per machine stores them in
  its embedding cache (the same cache file when the cache folder is shared);
- fine-tuning: DistributedDataParallel, with a DistributedSampler over the training rows; each
  rank steps on `batch_size / N` rows, so one global step sees the same rows as one process does
  with the same seed;
- evaluation: each rank judges its share of a split and the sums (or rows) are gathered;
- rank 0 alone writes the ledger, the run's folder and MLflow.

Collectives of Python objects and CPU tensors go through a gloo group, whatever the backend
(NCCL moves only the gradients between GPUs).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from annotate2model.errors import InputError, TrainingError

if TYPE_CHECKING:
    import torch
    from torch import nn

T = TypeVar("T")

# The CPU group (gloo) for objects and CPU tensors when the default group is NCCL.
_cpu_group: Any = None


def launched() -> bool:
    """Whether torchrun (or `--gpus N`) started this process as a rank (of one or more: one
    rank alone still trains through DistributedDataParallel, as a measure of its cost)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def _dist() -> Any:
    """torch.distributed once it is initialised, else None (one process)."""
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    dist = torch.distributed
    return dist if dist.is_available() and dist.is_initialized() else None


def world_size() -> int:
    dist = _dist()
    return int(dist.get_world_size()) if dist is not None else 1


def rank() -> int:
    dist = _dist()
    return int(dist.get_rank()) if dist is not None else 0


def is_main() -> bool:
    """Rank 0, the one process that writes the ledger, the run's folder and MLflow."""
    return rank() == 0


def machine_leader() -> bool:
    """The first process on its machine: it writes the machine's embedding cache."""
    return int(os.environ.get("LOCAL_RANK", "0")) == 0 if _dist() is not None else True


def start(requested: str) -> str:
    """Join the process group when launched as a rank (else do nothing); the device this
    process computes on: its own GPU (cuda:LOCAL_RANK) under CUDA, else the CPU."""
    global _cpu_group
    if not launched() or _dist() is not None:
        return requested
    import torch
    import torch.distributed as dist

    local = int(os.environ.get("LOCAL_RANK", "0"))
    wants_cuda = requested.startswith("cuda") or (
        requested in ("auto", "") and torch.cuda.is_available()
    )
    if wants_cuda:
        if local >= torch.cuda.device_count():
            raise InputError(
                f"process {local} on this machine has no GPU of its own: "
                f"{torch.cuda.device_count()} CUDA device(s) for "
                f"{os.environ.get('LOCAL_WORLD_SIZE', '?')} processes.",
                hint="start at most one process per GPU (--gpus / --nproc-per-node).",
            )
        torch.cuda.set_device(local)
        dist.init_process_group("nccl", device_id=torch.device("cuda", local))
        _cpu_group = dist.new_group(backend="gloo")
        return f"cuda:{local}"
    dist.init_process_group("gloo")
    _cpu_group = None
    return "cpu"


def shard(items: Sequence[T]) -> list[T]:
    """This rank's share: every world_size-th item from its rank on (all of them alone)."""
    return list(items[rank() :: world_size()])


def gather(value: T) -> list[T]:
    """Every rank's `value`, in rank order, on every rank."""
    dist = _dist()
    if dist is None:
        return [value]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, value, group=_cpu_group)
    return out


def broadcast(value: T) -> T:
    """Rank 0's `value` on every rank."""
    dist = _dist()
    if dist is None:
        return value
    box: list[Any] = [value]
    dist.broadcast_object_list(box, src=0, group=_cpu_group)
    return box[0]  # type: ignore[no-any-return]


def sums(*values: float) -> tuple[float, ...]:
    """Each value summed over the ranks."""
    dist = _dist()
    if dist is None:
        return values
    import torch

    total = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(total, group=_cpu_group)
    return tuple(float(v) for v in total.tolist())


def add_tensor(tensor: torch.Tensor) -> None:
    """Sum a CPU tensor over the ranks, in place (each rank filled its own rows, others 0)."""
    dist = _dist()
    if dist is not None:
        dist.all_reduce(tensor, group=_cpu_group)


def barrier() -> None:
    dist = _dist()
    if dist is not None:
        dist.barrier(group=_cpu_group)


def parallel(net: nn.Module, device: torch.device) -> nn.Module:
    """`net` in DistributedDataParallel when there are several ranks (rank 0's weights and
    buffers are copied to every rank as it is wrapped), else `net` itself."""
    if _dist() is None:
        return net
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index if device.index is not None else 0] if device.type == "cuda" else None
    # Batch-norm statistics are frozen while fine-tuning: no buffers to broadcast per step.
    return DistributedDataParallel(net, device_ids=ids, forward_sync_buffers=False)


def unwrap(net: nn.Module) -> nn.Module:
    inner = getattr(net, "module", None)
    from torch.nn.parallel import DistributedDataParallel

    return inner if isinstance(net, DistributedDataParallel) and inner is not None else net


def per_rank_batch(batch_size: int, processes: int | None = None) -> int:
    """Each rank's batch: the global `batch_size` split evenly over the ranks (or `processes`);
    refused when it does not split."""
    n = processes or world_size()
    if batch_size % n:
        raise InputError(
            f"--batch-size {batch_size} does not split evenly over {n} processes.",
            hint=f"pass a multiple of {n} as --batch-size.",
        )
    return batch_size // n


STOPPED_BY_LAUNCHER = (
    "torchrun stopped this process (SIGTERM): another process of this run failed, or torchrun "
    "itself was stopped; its output says which."
)


def peer_failure(exc: BaseException) -> TrainingError | None:
    """A clear error for what another rank stopping does to this one, else None: a collective
    that lost its connection (gloo and NCCL raise RuntimeError naming it), or the launcher's
    SIGTERM reaching this rank's DataLoader workers first."""
    if _dist() is None or not isinstance(exc, RuntimeError):
        return None
    text = str(exc)
    if "killed by signal: Terminated" in text:
        return TrainingError(STOPPED_BY_LAUNCHER)
    signs = ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "timed out")
    found = next((sign for sign in signs if sign in text), None)
    if found is None and "NCCL" not in text and "Gloo" not in text:
        return None
    return TrainingError(
        f"another process of this run stopped: rank {rank()} of {world_size()} lost its "
        f"connection to it ({found or type(exc).__name__}); torchrun's output says which rank "
        "failed and why."
    )


def env_rank() -> int:
    """This process's rank as torchrun set it (0 when not launched), before the group exists."""
    return int(os.environ.get("RANK", "0"))


# Whether a SIGTERM now fails the run (set while `train` runs; see `stop_on_sigterm`).
_training = False


@contextlib.contextmanager
def training() -> Iterator[None]:
    """The span in which torchrun's SIGTERM fails the run (the run's row is open)."""
    global _training
    _training = True
    try:
        yield
    finally:
        _training = False


def stop_on_sigterm() -> None:
    """Under torchrun, SIGTERM means the launcher is stopping every rank (most often because one
    of them failed): while training, the run is closed as failed, saying so, not as interrupted
    by the user; once the run is closed, or while a failure is being handled (its message,
    connections closing), the signal is let go: cutting that short would only lose the
    message."""
    import signal

    def terminated(_signum: int, _frame: Any) -> None:
        if not _training or sys.exc_info()[1] is not None:
            return
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        # The launcher stops this rank's DataLoader workers too: torch's SIGCHLD handler would
        # raise their deaths as a RuntimeError anywhere later (in the failure's own handling,
        # outside the trainer), hiding this message.
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        raise TrainingError(STOPPED_BY_LAUNCHER)

    signal.signal(signal.SIGTERM, terminated)


def launch(processes: int, argv: Sequence[str], cpu: bool) -> int:
    """Run `python -m annotate2model *argv` as `processes` ranks on this machine through
    torch's elastic launcher (what `torchrun --standalone --nproc-per-node N` does); the exit
    status, with one line naming the rank that failed first."""
    import logging
    import uuid

    import torch

    if not cpu and torch.cuda.device_count() < processes:
        found = torch.cuda.device_count()
        fewer = f"pass --gpus {found}, or " if found > 1 else "pass "
        raise InputError(
            f"--gpus {processes} asks for {processes} GPUs; this machine has {found}.",
            hint=fewer + "--device cpu to run the processes on the CPU (gloo), e.g. to try it.",
        )
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    # The agent's own log lines (rendezvous, "closing signal", its failure report) are for
    # torch's developers; the line below says which process failed.
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    if "OMP_NUM_THREADS" not in os.environ:
        # The cores shared out, not one thread each as torchrun would set.
        os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // processes))
    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=processes,
        run_id=str(uuid.uuid4()),
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",
        max_restarts=0,
    )
    try:
        elastic_launch(config, entrypoint=sys.executable)("-m", "annotate2model", *argv)
    except ChildFailedError as exc:
        rank_, failure = exc.get_first_failure()
        how = (
            f"was killed by signal {failure.signal_name()}"
            if failure.exitcode < 0
            else f"exited with status {failure.exitcode}"
        )
        sys.stderr.write(f"a2m: training process {rank_} of {processes} {how}.\n")
        return failure.exitcode if failure.exitcode > 0 else 1
    return 0
