"""Data-parallel training with each backend's own engine: one API, three launchers.

    parallel = DataParallel()                # joins the processes the launcher started
    with parallel.scope():                   # tf.distribute builds variables here
        model = MiningModel(backbones.compact_cnn())
        model.compile(optimizer="adam", loss=TripletSemiHardLoss())
    model.fit(**parallel.fit_inputs(ClassBalancedBatches(x, y, 16, 8, seed=0)), epochs=5,
              verbose=1 if parallel.is_chief else 0)
    parallel.barrier()
    parallel.stop()                          # torch: leave the process group before exiting

Launch the same script with the backend's launcher:

- JAX: one process sees all its local devices; several processes (hosts) set
  ``KERAS_DISTRIBUTION_JOB_ADDRESSES=host0:port,host1:port``,
  ``KERAS_DISTRIBUTION_NUM_PROCESSES=N`` and ``KERAS_DISTRIBUTION_PROCESS_ID=i``
  (`keras.distribution.initialize`, i.e. `jax.distributed`).
- TensorFlow: one process mirrors over its GPUs (`tf.distribute.MirroredStrategy`);
  several processes each get a ``TF_CONFIG`` naming the cluster and their index
  (`tf.distribute.MultiWorkerMirroredStrategy`).
- PyTorch: ``torchrun --nproc-per-node N script.py`` (`torch.distributed`: gloo on
  CPU, nccl on GPU; several hosts: torchrun's ``--nnodes`` and ``--rdzv-endpoint``).

Every process builds the same batches (same data, same seed); `fit_inputs`
gives each process its rows of every global batch, so ``batch_size`` is the
global batch: a P×K batch of B = P·K rows splits into B / replicas rows per
replica, which must divide evenly. What the replicas compute together:

- the mining losses (`TripletSemiHardLoss`, `TripletHardLoss`,
  `TripletBatchAllLoss`) and `FractionPositiveTriplets` gather every replica's
  embeddings and labels: triplets are mined over the global batch, the
  gradient reaches each replica's own rows once, and the losses are those of
  one device on the global batch, up to float rounding;
- `SiameseModel`'s offline triplet loss is the mean over the replicas' triplets:
  again the loss of one device on the global batch;
- BatchNormalization: on JAX the statistics of the global batch (the jitted
  step sees it whole); on TensorFlow and PyTorch each replica's own rows (use
  ``BatchNormalization(synchronized=True)`` on TensorFlow for global ones); on
  PyTorch the moving averages are averaged over the ranks after every step.
"""

from siamese_k3.backend import distributed, registry
from siamese_k3.backend.distributed import PeerTimeoutError  # noqa: F401 (raised by DataParallel)
from siamese_k3.errors import SiameseK3Error


class DataParallel:
    """The running backend's data-parallel engine, started from the launch environment.

    Attributes:
        rank: this process's index (0 is the chief, which alone should write files).
        processes: the number of processes.
        replicas: the number of devices the global batch is split over.

    Args:
        timeout_seconds: how long the startup waits for the other processes, and
            a collective for its peers, before failing (so a worker that never
            starts, or dies, ends the run instead of hanging it).

    Raises:
        PeerTimeoutError: (a RuntimeError, one line) the other processes did not
            all start within `timeout_seconds` (jax, tensorflow; torch raises
            its own `torch.distributed.DistStoreError`).
        SiameseK3Error: on torch outside ``torchrun`` (a ValueError).

    SIGINT and SIGTERM stop the startup's wait (a `KeyboardInterrupt`, or
    `siamese_k3.runs.interrupts.RunInterrupted` inside `stop_on_signals`).
    """

    def __init__(self, timeout_seconds=600):
        self.engine = distributed.start(registry.current().engine, timeout_seconds=timeout_seconds)
        self.rank, self.processes, self.replicas = self.engine.rank, self.engine.processes, self.engine.replicas

    @property
    def is_chief(self):
        return self.rank == 0

    def scope(self):
        """Build and compile models inside: `tf.distribute` mirrors their variables (a no-op elsewhere)."""
        return self.engine.scope()

    def check_batch_size(self, batch_size, name="batch size"):
        """Raise `SiameseK3Error` unless the global batch splits evenly over the replicas."""
        if batch_size % self.replicas:
            raise SiameseK3Error(
                f"data-parallel training splits each batch over {self.replicas} replicas: a {name} of "
                f"{batch_size} does not split evenly; use a multiple of {self.replicas}."
            )

    def fit_inputs(self, batches, validation=None):
        """`fit` keyword arguments: this process's share of `batches` (a PyDataset of global batches), and of `validation`."""
        return self.engine.fit_inputs(batches, validation)

    def barrier(self):
        """Wait until every process gets here."""
        self.engine.barrier()

    def stop(self):
        """Train on one device again in this process; torch leaves its process group.

        Call `barrier` first when every process has finished its collective work (after `fit`).
        """
        distributed.stop()
