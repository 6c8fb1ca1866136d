"""torch.distributed, launched by torchrun: one process per device, gradients averaged (DDP-equivalent).

Each rank runs the same keras `fit` on its slice of every global batch. After
the backward pass, `all_reduce` averages the gradients over the ranks (one
collective on one flat buffer, as DDP's buckets do), together with the
non-trainable float variables (BatchNorm's moving statistics, updated from
each rank's local batch) and the batch loss that is logged, so every rank takes
the same optimizer step and reports the loss of the global batch.
"""

import datetime
import os

from siamese_k3.backend.distributed.base import Engine
from siamese_k3.backend.distributed.rendezvous import PeerTimeoutError
from siamese_k3.errors import SiameseK3Error


class _AllGather:
    """The autograd function behind `TorchEngine.gather` (built once torch is imported)."""

    function = None

    @classmethod
    def get(cls):
        if cls.function is None:
            import torch
            import torch.distributed as dist

            class AllGather(torch.autograd.Function):
                @staticmethod
                def forward(ctx, x):
                    x = x.contiguous()
                    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
                    dist.all_gather(parts, x)
                    ctx.rows, ctx.rank = x.shape[0], dist.get_rank()
                    return torch.cat(parts, dim=0)

                @staticmethod
                def backward(ctx, gradient):
                    # Every rank's loss reads every row: the gradient of this rank's rows is
                    # the sum over ranks of the upstream gradients (gloo has no reduce_scatter).
                    gradient = gradient.contiguous().clone()
                    dist.all_reduce(gradient)
                    return gradient[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows]

            cls.function = AllGather
        return cls.function


def _startup_timeouts(dist):
    """The errors torch raises when the other ranks do not all arrive in time (none on an old torch)."""
    return tuple(getattr(dist, name) for name in ("DistStoreError", "DistNetworkError") if hasattr(dist, name))


class TorchEngine(Engine):
    backend = "torch"

    def __init__(self, timeout_seconds=600):
        import torch
        import torch.distributed as dist

        if not dist.is_available():
            raise SiameseK3Error(
                "this torch build has no torch.distributed: install one that has it for data-parallel training."
            )
        if not dist.is_initialized():
            if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
                raise SiameseK3Error(
                    "data-parallel training on torch runs under torchrun, which starts one process per "
                    "device: torchrun --nproc-per-node N -m siamese_k3 train --backend torch --data-parallel ..."
                )
            cuda = torch.cuda.is_available()
            if cuda:
                torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
            try:
                dist.init_process_group(
                    "nccl" if cuda else "gloo", timeout=datetime.timedelta(seconds=timeout_seconds)
                )
            except _startup_timeouts(dist) as error:  # the other ranks did not all arrive
                raise PeerTimeoutError(
                    f"data-parallel rank {os.environ['RANK']} of {os.environ['WORLD_SIZE']}: "
                    f"{' '.join(str(error).split())} Launch every rank with torchrun, or wait longer with "
                    "DataParallel(timeout_seconds=...) (siamese-k3 train --collective-timeout)."
                ) from error
        self.rank = dist.get_rank()
        self.processes = self.replicas = dist.get_world_size()

    def stop(self):
        # Leave the group before the interpreter exits: gloo's threads otherwise may abort it
        # ("terminate called without an active exception"), seen in CI.
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()

    def gather(self, x):
        if self.replicas == 1:
            return x
        return _AllGather.get().apply(x)

    def barrier(self):
        import torch.distributed as dist

        dist.barrier()

    def average(self, loss, gradients, states):
        """(loss, gradients, states) averaged over the ranks, in place where possible; one all_reduce.

        `gradients` may hold None (a variable the loss does not reach): it stays None.
        `states` are the non-trainable float variables' tensors, overwritten with the mean.
        """
        import torch
        import torch.distributed as dist

        with torch.no_grad():
            parts = [loss.detach().reshape(1).to(torch.float32)]
            parts += [gradient.reshape(-1) for gradient in gradients if gradient is not None]
            parts += [state.reshape(-1) for state in states]
            flat = torch.cat([part.to(torch.float32) for part in parts])
            dist.all_reduce(flat)
            flat /= self.replicas
            position = 1
            for tensor in [g for g in gradients if g is not None] + list(states):
                count = tensor.numel()
                tensor.copy_(flat[position : position + count].reshape(tensor.shape))
                position += count
            return flat[0]
