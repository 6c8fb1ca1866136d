"""One backend, in its own process: keras `fit` and the native loops, interleaved.

Timeline (all implementations see the same numpy data):

1. each native loop trains one warm-up epoch (its first step compiles);
2. keras `fit(..., epochs=repeats + 1, verbose=0)` as a user calls it; epoch 0
   is keras' warm-up; after each later epoch a callback runs one timed epoch
   of every native loop, so that all implementations share the machine's
   slow and fast moments.

A step time is the wall time of one epoch (device synchronised at both
ends) divided by its number of steps: for keras that includes its data
adapter, callbacks and every other per-step cost of `fit`. The compile
time is the first epoch's excess over the steady state (for keras from the
`fit` call on, so it includes fit's setup and tracing).
"""

import importlib
import json
import os
import time

import keras

from benchmarks import measure, native_common
from benchmarks import spec
from benchmarks import workload as wl
from siamese_k3.losses import TripletBatchAllLoss, TripletSemiHardLoss
from siamese_k3.models import MiningModel, SiameseModel

MINING_LOSSES = {"semi_hard": TripletSemiHardLoss, "batch_all": TripletBatchAllLoss}


def build_keras_model(workload, backbone, compile_kwargs):
    """The model a user would train, compiled with `compile_kwargs`, and its (x, y) for fit."""
    if workload.loss == "triplet":
        model = SiameseModel(backbone, margin=spec.MARGIN)
        model.compile(**compile_kwargs)
        return model
    model = MiningModel(backbone)
    loss = MINING_LOSSES[workload.loss](margin=spec.margin(workload.loss))
    model.compile(optimizer="adam", loss=loss, **compile_kwargs)
    return model


def fit_arguments(workload, data):
    """(x, y, batch_size) for `fit`: in-memory arrays, or for compact the main job's P×K sampler."""
    if workload.loss == "triplet":
        return (data["anchor"], data["positive"], data["negative"]), None, workload.batch_size
    if workload.model == "compact":
        return wl.class_balanced(workload, data), None, None
    return data["images"], data["labels"], workload.batch_size


class Interleave(keras.callbacks.Callback):
    """Times each keras epoch, then runs `between(epoch)` (outside the timed span)."""

    def __init__(self, stopwatch, memory, between):
        super().__init__()
        self.stopwatch, self.memory, self.between = stopwatch, memory, between
        self.epoch_seconds = []
        self.first_epoch_end = None

    def on_epoch_begin(self, epoch, logs=None):
        self.memory.start()
        self.stopwatch.start()

    def on_epoch_end(self, epoch, logs=None):
        self.epoch_seconds.append(self.stopwatch.stop())
        if epoch > 0:  # the warm-up epoch's compiler memory is not a training step's
            self.memory.stop("keras")
        if self.first_epoch_end is None:
            self.first_epoch_end = time.perf_counter()
        self.between(epoch)


def _keras_settings(model):
    return f"jit_compile={model.jit_compile}, steps_per_execution={model.steps_per_execution}"


def threads_used(backend):
    """The CPU threads the framework computes with, as it reports them, and where the setting comes from."""
    setting = os.environ.get("OMP_NUM_THREADS") or os.environ.get("TF_NUM_INTRAOP_THREADS")
    origin = f"--threads {setting}" if setting else "default"
    if backend == "torch":
        import torch

        return f"{torch.get_num_threads()} ({origin})"
    return f"{os.cpu_count()} ({origin})" if not setting else f"{setting} ({origin})"


def run(backend, workload, compile_kwargs, log, implementations=None):
    """The result rows of keras and every native loop on `backend`, or those in `implementations`
    (KERAS_BACKEND must already be it)."""
    native = importlib.import_module(f"benchmarks.native_{backend}")
    backbone = wl.build_backbone(workload.model, workload.image_size)
    data = wl.make_data(workload, wl.input_shape(backbone))
    memory = measure.Memory(backend, native.on_gpu())
    device = native.device_name() or measure.cpu_name()
    threads = threads_used(backend) if not native.on_gpu() else ""

    try:
        loops = native_common.select(native.implementations(workload, data, *wl.layer_plan(backbone)),
                                     implementations, backend)
    except NotImplementedError as error:
        log(f"[{backend}] no native baseline for {workload.model}: {error}")
        loops = []

    seconds = {loop.impl: [] for loop in loops}
    first_epoch = {}
    for loop in loops:
        log(f"[{backend}] warm-up {loop.impl}")
        stopwatch = measure.Stopwatch(loop.sync)
        stopwatch.start()
        loop.run_epoch(0)
        first_epoch[loop.impl] = stopwatch.stop()

    def run_natives(epoch):
        if epoch == 0:
            return
        for loop in loops:
            stopwatch = measure.Stopwatch(loop.sync)
            memory.start()
            stopwatch.start()
            loop.run_epoch(epoch)
            seconds[loop.impl].append(stopwatch.stop())
            memory.stop(loop.impl)

    log(f"[{backend}] keras fit ({workload.repeats} timed epochs, natives interleaved)")
    model = build_keras_model(workload, backbone, compile_kwargs)
    interleave = Interleave(measure.Stopwatch(lambda: native.sync_keras(model)), memory, run_natives)
    x, y, batch_size = fit_arguments(workload, data)
    fit_start = time.perf_counter()
    model.fit(
        x,
        y,
        batch_size=batch_size,
        epochs=workload.repeats + 1,
        verbose=0,
        callbacks=[interleave],
    )
    seconds["keras"] = interleave.epoch_seconds[1:]
    # fit()'s setup (data adapter, symbolic build) counts as keras compile time.
    first_epoch["keras"] = interleave.first_epoch_end - fit_start

    rows = []
    settings = {loop.impl: getattr(loop, "settings", "") for loop in loops}
    settings["keras"] = _keras_settings(model)
    for impl in ["keras", *(loop.impl for loop in loops)]:
        step_ms = [1000 * s / workload.steps for s in seconds[impl]]
        median, spread = measure.summarize(step_ms)
        rows.append(
            {
                "backend": backend,
                "impl": impl,
                "model": workload.model,
                "loss": workload.loss,
                "batch_size": workload.batch_size,
                "step_ms": round(median, 4),
                "step_ms_spread": round(spread, 4),
                "samples_per_s": round(workload.batch_size * 1000 / median, 1),
                "compile_s": round(measure.compile_seconds(first_epoch[impl], workload.steps, median), 3),
                "peak_memory_mb": round(memory.peaks.get(impl, 0.0), 1),
                "device": device,
                "threads": threads,
                "settings": settings[impl],
                "step_ms_all": [round(value, 4) for value in step_ms],
            }
        )
    return rows


def main(backend, workload, compile_kwargs, out_path, log, implementations=None):
    rows = run(backend, workload, compile_kwargs, log, implementations)
    with open(out_path, "w") as handle:
        json.dump(rows, handle)
