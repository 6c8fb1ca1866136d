"""Check that the native baselines train the same thing as keras: same loss on the same batch.

    KERAS_BACKEND=torch python -m benchmarks.check_native --model cnn --loss semi_hard

From the same initial weights, eager keras (`train_on_batch`) and each native
loop take `--steps` optimizer steps on the same batches. The loss of the
first step (computed before any update) checks the model, its batch-norm
mode and the loss, and must agree to `--rtol`. Later steps are printed as
well; they drift apart slowly because Adam's epsilon sits in slightly
different places in keras, optax and torch (it matters for gradients near
zero), so they are information, not a test.
"""

import argparse
import sys

import keras
import numpy as np

from benchmarks import native_common, spec
from benchmarks import workload as wl
from benchmarks.worker import build_keras_model


def losses_per_step(workload, steps, implementations=None):
    """{"keras": losses, impl: losses, ...} for every native loop of this backend, or those in `implementations`."""
    backend = keras.backend.backend()
    native = __import__(f"benchmarks.native_{backend}", fromlist=["implementations"])
    backbone = wl.build_backbone(workload.model, workload.image_size)
    data = wl.make_data(workload, wl.input_shape(backbone))
    loops = native_common.select(native.implementations(workload, data, *wl.layer_plan(backbone)), implementations,
                                 backend)  # before any step is taken
    # eager keras, one batch per call: the reference the natives are compared with.
    model = build_keras_model(workload, backbone, {"jit_compile": False, "steps_per_execution": 1})
    batches = wl.epoch_batches(workload, data, 0)[:steps]
    result = {"keras": []}
    for indices in batches:
        arrays = {key: array[indices] for key, array in data.items()}
        if workload.loss == "triplet":
            loss = model.train_on_batch((arrays["anchor"], arrays["positive"], arrays["negative"]))
        else:
            loss = model.train_on_batch(arrays["images"].astype("float32"), arrays["labels"])
        result["keras"].append(float(loss))
    for loop in loops:
        result[loop.impl] = []
        for indices in batches:
            loop.step(loop.to_batch({key: array[indices] for key, array in loop.data.items()}))
            result[loop.impl].append(float(loop.loss))
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=spec.MODELS, default="mlp")
    parser.add_argument("--loss", choices=spec.LOSSES, default="triplet")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=0)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--rtol", type=float, default=1e-4)
    parser.add_argument("--implementations", nargs="+", metavar="IMPL",
                        help="only these native loops (e.g. native; torch also has native_compiled); default: all")
    args = parser.parse_args(argv)
    workload = spec.Workload(args.model, args.loss, args.batch_size, args.steps, 1, args.image_size)
    try:
        losses = losses_per_step(workload, args.steps, args.implementations)
    except LookupError as error:
        parser.error(str(error))
    reference = np.array(losses["keras"])
    ok = True
    for impl, values in losses.items():
        close = np.isclose(values[0], reference[0], rtol=args.rtol, atol=1e-6)
        ok &= bool(close)
        drift = np.max(np.abs(np.array(values) - reference) / np.maximum(np.abs(reference), 1e-6))
        print(
            f"{keras.backend.backend():10s} {impl:16s} first step {'ok  ' if close else 'DIFF'} "
            f"losses {np.round(values, 6).tolist()} (largest relative drift {drift:.1e})"
        )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
