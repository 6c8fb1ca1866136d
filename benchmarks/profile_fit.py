"""Where a keras training step spends its time: cProfile of `fit`, and the step split into parts.

    KERAS_BACKEND=torch python -m benchmarks.profile_fit --compile '{"jit_compile": false}'

Prints, per step and for the current backend: the native loop, keras' train
function alone on pre-sliced batches (the compiled step), and the whole `fit`
(adding keras' data adapter, callbacks and loop); then the top functions of
a cProfile of `fit` by own time.
"""

import argparse
import cProfile
import importlib
import json
import pstats
import statistics
import time

import keras

from benchmarks import spec
from benchmarks import workload as wl
from benchmarks.worker import build_keras_model, fit_arguments


def _per_step_ms(function, steps, repeats=5):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(1000 * (time.perf_counter() - start) / steps)
    return statistics.median(times)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=spec.MODELS, default="mlp")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--compile", default="{}", help="JSON keyword arguments for SiameseModel.compile()")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args(argv)
    backend = keras.backend.backend()
    native = importlib.import_module(f"benchmarks.native_{backend}")
    workload = spec.Workload(args.model, "triplet", args.batch_size, args.steps, 1)
    backbone = wl.build_backbone(args.model)
    data = wl.make_data(workload, wl.input_shape(backbone))
    loop = native.implementations(workload, data, *wl.layer_plan(backbone))[0]
    model = build_keras_model(workload, backbone, json.loads(args.compile))
    x, _, _ = fit_arguments(workload, data)

    def fit():
        model.fit(x, batch_size=args.batch_size, epochs=1, verbose=0)
        native.sync_keras(model)

    def native_epoch():
        loop.run_epoch(1)
        loop.sync()

    fit()
    native_epoch()
    batches = [
        tuple(keras.ops.convert_to_tensor(part[i * args.batch_size : (i + 1) * args.batch_size]) for part in x)
        for i in range(min(args.steps, 20))
    ]
    step_only = _step_only(model, batches, backend, native)
    print(f"{backend}: {json.dumps(args.compile)} (jit_compile={model.jit_compile}, "
          f"steps_per_execution={model.steps_per_execution})")
    print(f"  native loop            {_per_step_ms(native_epoch, args.steps):8.3f} ms/step")
    if step_only is not None:
        print(f"  keras train function   {_per_step_ms(step_only, len(batches)):8.3f} ms/step (no data adapter, no callbacks)")
    print(f"  keras fit              {_per_step_ms(fit, args.steps):8.3f} ms/step")
    profile = cProfile.Profile()
    profile.enable()
    fit()
    profile.disable()
    print(f"\ncProfile of fit ({args.steps} steps), by own time:")
    pstats.Stats(profile).sort_stats("tottime").print_stats(args.top)


def _step_only(model, batches, backend, native):
    """Keras' compiled train step over pre-converted batches, without fit's loop (one step per call)."""
    if model.steps_per_execution != 1:
        return None
    model.make_train_function()
    if backend == "jax":
        state = model._get_jax_state(
            trainable_variables=True, non_trainable_variables=True,
            optimizer_variables=True, metrics_variables=True, purge_model_variables=False,
        )  # fmt: skip
        holder = {"state": state}

        def run():
            for batch in batches:
                _, holder["state"] = model.train_function(holder["state"], iter([(batch,)]))
            native.jax.block_until_ready(holder["state"])
            # The step donated the variables' buffers: hand the new ones back to the model.
            names = ("trainable_variables", "non_trainable_variables", "optimizer_variables", "metrics_variables")
            model._jax_state = dict(zip(names, holder["state"]))
            model.jax_state_sync()

        return run
    if backend == "tensorflow":
        return None  # the tf train function takes a tf.data iterator; see the cProfile instead

    def run():
        for batch in batches:
            model.train_function([(batch,)])
        native.sync()

    return run


if __name__ == "__main__":
    main()
