"""Distributed data parallel set-up: ranks from the environment, process group, synced BatchNorm.

Ranks come from, in order of precedence:
1. torchrun-style variables: `WORLD_SIZE > 1` with `RANK`, `LOCAL_RANK`, `MASTER_ADDR`,
   `MASTER_PORT`;
2. a multi-task submitit job (`SUBMITIT_EXECUTOR` set; `submitit.JobEnvironment` gives the
   global/local rank, number of tasks and host names; SLURM or local executor);
3. a multi-task SLURM step without submitit (`SLURM_PROCID`, `SLURM_NTASKS`, `SLURM_LOCALID`,
   `SLURM_JOB_NODELIST`).
The master is the first host of the job and the port is derived from the job id (unless
`MASTER_PORT` is set), so every task agrees without talking.

Backend: NCCL on CUDA, gloo on CPU. `nn.SyncBatchNorm` only runs on accelerators, so on CPU
BatchNorm layers are replaced by `CpuSyncBatchNorm`, which all-reduces the batch statistics with
a differentiable all-reduce. With either, training on P processes with a global batch B split
B/P per process equals training on one process with batch B, up to floating-point rounding.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import subprocess
from datetime import timedelta

import submitit
import torch
import torch.distributed as dist
from torch import nn

from bench.core.util import launcher_ranks

log = logging.getLogger(__name__)

DEFAULT_PORT_BASE = 20000


@dataclasses.dataclass(frozen=True)
class DistEnv:
    """Where this process stands in the job.

    Args:
        rank: global rank.
        world_size: number of processes.
        local_rank: rank on this host (picks the GPU).
        master_addr: host of rank 0.
        master_port: rendezvous port.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int = 29500

    @property
    def enabled(self) -> bool:
        """Whether more than one process takes part."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Whether this process writes files (rank 0)."""
        return self.rank == 0


def detect_env(environ: dict[str, str] | None = None) -> DistEnv:
    """Read the ranks from torchrun variables, a submitit job or a SLURM step (see module doc)."""
    env = os.environ if environ is None else environ
    ranks = launcher_ranks(env)
    if ranks is not None and ranks.launcher == "torchrun":
        return DistEnv(rank=ranks.rank, world_size=ranks.world_size, local_rank=ranks.local_rank,
                       master_addr=env.get("MASTER_ADDR", "127.0.0.1"),
                       master_port=int(env.get("MASTER_PORT", "29500")))
    if env.get("SUBMITIT_EXECUTOR") and environ is None:
        return _submitit_env(env)
    if ranks is not None:  # a SLURM step without submitit
        return DistEnv(rank=ranks.rank, world_size=ranks.world_size, local_rank=ranks.local_rank,
                       master_addr=env.get("MASTER_ADDR") or _first_slurm_host(env),
                       master_port=_job_port(env, env.get("SLURM_ARRAY_JOB_ID", env.get("SLURM_JOB_ID", "0"))))
    return DistEnv()


def _submitit_env(env) -> DistEnv:
    """Ranks of a submitit job (SLURM or local executor); one task means no distribution."""
    try:
        job = submitit.JobEnvironment()
    except RuntimeError:  # the variable is set but this is not a submitit job process
        return DistEnv()
    if job.num_tasks <= 1:
        return DistEnv()
    return DistEnv(rank=job.global_rank, world_size=job.num_tasks, local_rank=job.local_rank,
                   master_addr=job.hostnames[0], master_port=_job_port(env, str(job.job_id)))


def _job_port(env, job_id: str) -> int:
    """MASTER_PORT if set, else a port derived from the job id (every task derives the same)."""
    if env.get("MASTER_PORT"):
        return int(env["MASTER_PORT"])
    digits = "".join(filter(str.isdigit, job_id.split("_")[0]))
    return DEFAULT_PORT_BASE + int(digits or 0) % 20000


def _first_slurm_host(env) -> str:
    """First host of `SLURM_JOB_NODELIST`, expanded by `scontrol show hostnames`."""
    nodelist = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
    if not nodelist:
        return "127.0.0.1"
    out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True,
                         text=True, check=True, timeout=30).stdout.split()
    return out[0]


def init_process_group(denv: DistEnv, device: torch.device, timeout_s: float = 1800) -> bool:
    """Join the process group of `denv` (NCCL on CUDA, gloo otherwise).

    Returns True when this call created the group (so the caller destroys it), False when there
    is nothing to do (one process) or a group already exists (e.g. created by a test harness).
    """
    if not denv.enabled or dist.is_initialized():
        return False
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend, init_method=f"tcp://{denv.master_addr}:{denv.master_port}",
                            rank=denv.rank, world_size=denv.world_size,
                            timeout=timedelta(seconds=timeout_s))
    log.info("joined %s process group: rank %d of %d (master %s:%d)", backend, denv.rank,
             denv.world_size, denv.master_addr, denv.master_port)
    return True


def current_env() -> DistEnv:
    """The DistEnv of an already initialised process group (or of the environment)."""
    if dist.is_available() and dist.is_initialized():
        ranks = launcher_ranks()
        return DistEnv(rank=dist.get_rank(), world_size=dist.get_world_size(),
                       local_rank=ranks.local_rank if ranks else 0)
    return detect_env()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum `tensor` over all processes in place (no-op on one process); returns it."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        if dist.get_backend() == "nccl" and tensor.device.type != "cuda":  # NCCL reduces GPU tensors only
            on_gpu = tensor.to(torch.device("cuda", torch.cuda.current_device()))
            dist.all_reduce(on_gpu, op=dist.ReduceOp.SUM)
            tensor.copy_(on_gpu.cpu())
        else:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def barrier() -> None:
    """Wait for every process (no-op on one process)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


class _DifferentiableAllReduce(torch.autograd.Function):
    """Sum over processes whose backward sums the gradients over processes too.

    (The same as `torch.distributed.nn.functional.all_reduce`, which is deprecated.)
    """

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        summed = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(summed, op=dist.ReduceOp.SUM)
        return summed

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        summed = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(summed, op=dist.ReduceOp.SUM)
        return summed


class CpuSyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics are computed over the global batch of all processes.

    Works on any device and backend (gloo included) because it uses a
    differentiable all-reduce whose backward all-reduces the gradients, so
    the gradient equals that of one process seeing the whole batch. Outside training, or on one
    process, it is plain BatchNorm. Parameters and buffers keep BatchNorm's names, so state dicts
    are interchangeable.
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2-D input (got {input.dim()}-D)")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized()
                and dist.get_world_size() > 1):
            return super().forward(input)
        mean, var, count = self._global_moments(input)
        if self.track_running_stats:
            self._update_running(mean.detach(), var.detach(), count)
        shape = [1, -1] + [1] * (input.dim() - 2)
        out = (input - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out

    def _global_moments(self, input: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
        """Mean and biased variance over the global batch (two-pass, for accuracy)."""
        all_reduce = _DifferentiableAllReduce.apply
        dims = [0] + list(range(2, input.dim()))
        x = input.float()
        count = torch.tensor([x.numel() / x.size(1)], dtype=torch.float64)
        dist.all_reduce(count)
        total = float(count.item())
        mean = all_reduce(x.sum(dims)) / total
        shape = [1, -1] + [1] * (input.dim() - 2)
        var = all_reduce(((x - mean.view(shape)) ** 2).sum(dims)) / total
        return mean.to(input.dtype), var.to(input.dtype), total

    @torch.no_grad()
    def _update_running(self, mean: torch.Tensor, var: torch.Tensor, count: float) -> None:
        self.num_batches_tracked.add_(1)
        factor = (1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum)
        unbiased = var * (count / max(count - 1.0, 1.0))
        self.running_mean.mul_(1 - factor).add_(mean, alpha=factor)
        self.running_var.mul_(1 - factor).add_(unbiased, alpha=factor)


def convert_sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Replace every BatchNorm by a synced one: `nn.SyncBatchNorm` on CUDA, else CpuSyncBatchNorm."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return _convert_cpu(module)


def _convert_cpu(module: nn.Module) -> nn.Module:
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, CpuSyncBatchNorm):
        synced = CpuSyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                                  module.track_running_stats)
        synced.load_state_dict(module.state_dict())
        synced.train(module.training)
        tensors = list(module.parameters()) + list(module.buffers())
        return synced.to(tensors[0].device) if tensors else synced
    for name, child in module.named_children():
        module.add_module(name, _convert_cpu(child))
    return module
