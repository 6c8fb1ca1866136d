"""PyTorch as siamese_k3 drives it: keras' per-layer and per-step host work done more cheaply, the same results.

On torch every step of `fit` runs eagerly in Python, so keras' bookkeeping
around the model costs as much as a small model's arithmetic. `TorchPath`
trims it, module by module:

- `forward`: a functional backbone of keras' own layers runs its graph
  calling each layer's `call` directly, without `Layer.__call__`'s per-call
  bookkeeping; the model's own `__call__` likewise (`TorchPath.call`);
- `kernels`: Conv2D, MaxPooling2D, Dense, Activation and BatchNormalization
  as the torch ops keras' calls end in, without layout copies and per-op
  dispatch (BatchNormalization fused, equal to float32 rounding);
- `steps`: train and test steps with a cheaper running loss mean and Adam
  update (and the gradient average of torch data-parallel training);
- `arrays`: batches of in-memory numpy arrays in keras' own order, gathered
  directly;
- `callbacks`: batch hooks called only for the callbacks that have them,
  synchronously on the CPU.

Each part checks that it computes what keras' own path would for the model
at hand, and otherwise leaves the work to keras. ``jit_compile=True``
(torch.compile) is opt-in: it costs seconds to minutes of compilation per
model and a C++ compiler; under it keras' own calls are traced as they are.

Data-parallel training: `siamese_k3.backend.distributed.torch_engine`
(``torchrun``), whose gradient average lives in `steps.train_step`. Denormals
are flushed to zero on the CPU (`TorchBackend.flush_denormals`).
"""

from siamese_k3.backend import fast_path
from siamese_k3.backend.base import Backend
from siamese_k3.backend.torch import arrays, callbacks, forward, steps


class TorchBackend(Backend):
    """keras' torch trainer with its host work trimmed (see the module); `torch.distributed` under torchrun."""

    name = "torch"

    def call(self, model, inputs, training):
        if forward.can_call_directly(model, inputs, training):
            return model.call(inputs, training=training)
        return None

    def forward(self, backbone, inputs, training):
        return forward.forward(backbone, inputs, training)

    def train_step(self, model):
        if steps.can_step_directly(model):
            return steps.train_step
        steps.check_not_data_parallel(model)
        return None

    def test_step(self, model):
        return steps.test_step if steps.can_step_directly(model) else None

    def fit_input(self, model, x, y, fit_kwargs):
        return fast_path.adapt_arrays(arrays.array_loader, model, x, y, fit_kwargs)

    def callbacks(self, model, x, callback_list, verbose, epochs, steps_per_epoch):
        return callbacks.callback_list(model, x, callback_list, verbose, epochs, steps_per_epoch)

    def needed_for_data_parallel(self):
        """Whether torch data-parallel training runs: its gradient average lives in `steps.train_step`."""
        return steps.data_parallel_engine() is not None

    def engine(self, timeout_seconds=600):
        from siamese_k3.backend.distributed.torch_engine import TorchEngine

        return TorchEngine(timeout_seconds=timeout_seconds)

    def flush_denormals(self):
        """Treat float32 denormals as zero on the CPU, as XLA (jax, tensorflow) already does.

        PyTorch computes denormals exactly, which is many times slower on x86
        CPUs: late in training, Adam's second moments of tiny gradients fall into
        that range and a torch epoch can take several times as long as the first.
        """
        import torch

        torch.set_flush_denormal(True)
