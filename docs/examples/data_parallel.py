"""Data-parallel training with the Python API, on whichever backend KERAS_BACKEND names.

    # PyTorch, 2 processes on this machine (gloo on CPU, nccl on GPUs):
    KERAS_BACKEND=torch torchrun --nproc-per-node 2 docs/examples/data_parallel.py
    # JAX, 2 processes (run each line in its own shell, or on its own host with its address):
    KERAS_BACKEND=jax KERAS_DISTRIBUTION_JOB_ADDRESSES=localhost:12355,localhost:12355 \\
        KERAS_DISTRIBUTION_NUM_PROCESSES=2 KERAS_DISTRIBUTION_PROCESS_ID=0 python docs/examples/data_parallel.py
    KERAS_BACKEND=jax KERAS_DISTRIBUTION_JOB_ADDRESSES=localhost:12355,localhost:12355 \\
        KERAS_DISTRIBUTION_NUM_PROCESSES=2 KERAS_DISTRIBUTION_PROCESS_ID=1 python docs/examples/data_parallel.py
    # TensorFlow, 2 worker processes (the same with "index": 1 in the second shell):
    KERAS_BACKEND=tensorflow TF_CONFIG='{"cluster": {"worker": ["localhost:12356", "localhost:12357"]},
        "task": {"type": "worker", "index": 0}}' python docs/examples/data_parallel.py
    # One process over all local GPUs (JAX, TensorFlow): python docs/examples/data_parallel.py

Fashion-MNIST from /usr/share/datasets/fashion-mnist (apt-get install dataset-fashion-mnist),
else keras.datasets. The chief (rank 0) saves the embedding network to fashion_mnist_dp.keras.
"""

import keras

from siamese_k3 import MiningModel, TripletSemiHardLoss, backbones
from siamese_k3.data import ClassBalancedBatches, load_dataset
from siamese_k3.models import standalone_embedding
from siamese_k3.parallel import DataParallel

parallel = DataParallel()  # joins the processes its launcher started
keras.utils.set_random_seed(0)  # every process builds the same batches and initial weights
(x_train, y_train), _ = load_dataset("fashion_mnist")
batches = ClassBalancedBatches(x_train, y_train, classes_per_batch=8, samples_per_class=32, steps_per_epoch=100, seed=0)
parallel.check_batch_size(8 * 32)  # the global batch: 256 rows, 256 / replicas per replica

with parallel.scope():
    model = MiningModel(backbones.compact_cnn(input_shape=(28, 28), embedding_dim=64, rescale=1 / 255))
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=TripletSemiHardLoss(margin=0.5))
model.fit(**parallel.fit_inputs(batches), epochs=2, verbose=1 if parallel.is_chief else 0)
parallel.barrier()
parallel.stop()  # torch: leave the process group before exiting
if parallel.is_chief:
    standalone_embedding(model.backbone).save("fashion_mnist_dp.keras")
    print(f"trained on {parallel.replicas} replicas in {parallel.processes} processes; saved fashion_mnist_dp.keras")
