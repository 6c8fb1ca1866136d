"""The Adam update alone on torch: keras' (as siamese_k3's fast path runs it) against torch.optim.Adam.

    KERAS_BACKEND=torch python -m benchmarks.tools.adam_update

For the MLP's and the main job's weights, with the same gradients: keras'
torch Adam update as the fast path runs it (keras' formula, bit for bit:
`siamese_k3.backend.torch.steps`), and `torch.optim.Adam` with
``foreach=True`` and ``fused=True``. Median over `--repeats` blocks of
`--updates` updates, after 20 warm-up updates; ms per update.
"""

import argparse
import statistics
import sys
import time


def _timed_ms(update, updates, repeats):
    for _ in range(20):
        update()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(updates):
            update()
        times.append((time.perf_counter() - start) / updates * 1000)
    return statistics.median(times)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="mlp,compact")
    parser.add_argument("--updates", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)

    import keras
    import torch

    from benchmarks import measure
    from benchmarks import workload as wl
    from siamese_k3.backend.torch import adam

    if keras.backend.backend() != "torch":
        sys.exit("KERAS_BACKEND=torch: this compares torch's own Adam")
    print(f"{measure.cpu_name()}, torch threads {torch.get_num_threads()}")
    print("| weights | keras' update (fast path) ms | Adam(foreach=True) ms | Adam(fused=True) ms |")
    print("|---|---:|---:|---:|")
    for model in args.models.split(","):
        backbone = wl.build_backbone(model)
        weights = backbone.trainable_weights
        gradients = [torch.randn_like(weight.value) * 1e-3 for weight in weights]
        optimizer = keras.optimizers.Adam()
        optimizer.build(weights)
        tensors = adam.adam_tensors(optimizer, weights)

        def keras_update():
            with torch.no_grad():
                adam._adam_update(optimizer, gradients, *tensors)

        cells = [_timed_ms(keras_update, args.updates, args.repeats)]
        for kind in ("foreach", "fused"):
            parameters = [torch.nn.Parameter(weight.value.detach().clone()) for weight in weights]
            for parameter, gradient in zip(parameters, gradients):
                parameter.grad = gradient
            torch_adam = torch.optim.Adam(parameters, lr=1e-3, eps=1e-7, **{kind: True})
            cells.append(_timed_ms(torch_adam.step, args.updates, args.repeats))
        print(f"| {model} | " + " | ".join(f"{cell:.3f}" for cell in cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
