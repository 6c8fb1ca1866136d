"""Clock, memory and device helpers shared by the keras and native runners.

Memory: on CPU the peak resident set size (VmHWM) of the process while an
implementation runs; the kernel's high-water mark is reset before each of
its timed segments (`/proc/self/clear_refs`), so the value is that
implementation's own peak, not the process's all-time one. Frameworks,
data and the other implementations' state stay resident, so compare rows
of one backend with each other rather than across backends. On GPU the
device allocator's peak (torch, tensorflow: reset per segment; jax: peak
bytes in use since the process started, which cannot be reset).
"""

import os
import platform
import statistics
import time

import numpy as np


def summarize(step_times_ms):
    """(median, spread) of per-step times; spread = (max - min) / 2 over the repeats."""
    values = sorted(step_times_ms)
    return statistics.median(values), (values[-1] - values[0]) / 2


def cpu_name():
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} cores)"
    except OSError:
        pass
    return f"{platform.processor() or platform.machine()} ({os.cpu_count()} cores)"


class Memory:
    """Peak memory per implementation label, in MiB, over its timed segments."""

    def __init__(self, backend, on_gpu):
        self.backend = backend
        self.on_gpu = on_gpu
        self.peaks = {}
        self._can_reset_rss = _reset_rss_peak()

    def start(self):
        if self.on_gpu:
            _reset_gpu_peak(self.backend)
        elif self._can_reset_rss:
            _reset_rss_peak()

    def stop(self, label):
        peak = _gpu_peak_mb(self.backend) if self.on_gpu else _rss_peak_mb()
        self.peaks[label] = max(self.peaks.get(label, 0.0), peak)


def _reset_rss_peak():
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def _rss_peak_mb():
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _reset_gpu_peak(backend):
    if backend == "torch":
        import torch

        torch.cuda.reset_peak_memory_stats()
    elif backend == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.reset_memory_stats("GPU:0")


def _gpu_peak_mb(backend):
    if backend == "torch":
        import torch

        return torch.cuda.max_memory_allocated() / 2**20
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**20
    import jax

    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use", 0) / 2**20


class Stopwatch:
    """Wall-clock segments, each closed after the device has finished (`sync`)."""

    def __init__(self, sync):
        self.sync = sync
        self._start = None

    def start(self):
        self.sync()
        self._start = time.perf_counter()

    def stop(self):
        self.sync()
        return time.perf_counter() - self._start


def compile_seconds(first_segment_s, first_segment_steps, step_ms):
    """Time of the first (warm-up) segment beyond what its steps cost in steady state."""
    return max(0.0, first_segment_s - first_segment_steps * step_ms / 1000)


def as_float32(array):
    return np.ascontiguousarray(array, dtype=np.float32)


def thread_env(threads):
    """Environment limiting the frameworks' CPU thread pools to `threads` (None: their defaults).

    OMP/MKL (torch) and TensorFlow's intra-/inter-op pools take any count;
    XLA (jax, tensorflow with jit) only has a single-threaded switch, used
    when threads == 1.
    """
    if not threads:
        return {}
    names = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS")
    env = {name: str(threads) for name in names}
    if threads == 1:
        env["XLA_FLAGS"] = " ".join(
            filter(None, [os.environ.get("XLA_FLAGS", ""), "--xla_cpu_multi_thread_eigen=false"])
        )
    return env
