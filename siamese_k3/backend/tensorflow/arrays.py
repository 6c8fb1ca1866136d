"""fit()'s input pipeline on TensorFlow: keras' own tf.data batches, without tf.data's autotuning.

For in-memory arrays keras' TensorFlow trainer builds a tf.data pipeline
(shuffled indices, a parallel ``map`` that gathers each batch, a prefetch)
whose parallelism tf.data's autotuner tunes at run time, in threads of its
own. On a small CPU those threads compete with the training step (timings in
benchmarks/RESULTS.md). keras itself runs a `PyDataset` that has workers with
autotuning off.

`array_dataset` gives that pipeline: the same batches keras' adapter gives
(its own code builds them), with these options. Nothing here imports
TensorFlow at module level.
"""

import keras
import numpy as np

try:  # keras' adapter for in-memory arrays; without it keras' own fit input is used
    from keras.src.trainers.data_adapters.array_data_adapter import ArrayDataAdapter
except ImportError:  # pragma: no cover - a keras that moved it
    ArrayDataAdapter = None


def array_dataset(x, batch_size, shuffle, y=None, model=None):
    """keras' tf.data pipeline for ``model.fit(x, y, batch_size=batch_size, shuffle=shuffle)``, autotuning off; or None.

    `x` is a numpy array, or a tuple, list or dict of them; `y` None or a numpy
    array. None (keras builds its own input) unless the backend is
    TensorFlow, outside any `tf.distribute` strategy (neither in a strategy's
    scope nor a `model` built in one), and every array is a numpy array of
    the same, non-zero length.
    """
    if keras.backend.backend() != "tensorflow" or ArrayDataAdapter is None:
        return None
    import tensorflow as tf

    if tf.distribute.has_strategy() or keras.distribution.distribution() is not None:
        return None
    if model is not None and model.distribute_strategy is not tf.distribute.get_strategy():
        return None
    arrays = list(x.values()) if isinstance(x, dict) else list(x) if type(x) in (tuple, list) else [x]
    arrays += [y] if y is not None else []
    if not arrays or not all(type(array) is np.ndarray and array.ndim >= 1 for array in arrays):
        return None
    count = len(arrays[0])
    if count == 0 or any(len(array) != count for array in arrays):
        return None
    adapter = ArrayDataAdapter(x, y, batch_size=batch_size, shuffle=shuffle)
    # Its flat_map hides the number of batches, which keras knows from the adapter itself.
    dataset = adapter.get_tf_dataset().apply(tf.data.experimental.assert_cardinality(adapter.num_batches))
    options = tf.data.Options()
    options.autotune.enabled = False
    options.threading.private_threadpool_size = 1
    return dataset.with_options(options)
