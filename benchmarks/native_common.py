"""What every native baseline shares: the training loop over the numpy data.

A native implementation supplies `to_batch` (numpy batch -> what its step
takes) and `step` (one optimizer update, possibly dispatched
asynchronously) and `sync` (wait for the device). The loop is the one a
user would hand-write: shuffle the indices once per epoch, gather each
batch from the in-memory numpy arrays, run the step.
"""

from benchmarks.workload import epoch_batches


def select(loops, implementations, backend):
    """The loops named in `implementations` (all of them when it is None); LookupError, naming the backend's
    loops, when none is named there: raised before any step is taken."""
    if implementations is None:
        return list(loops)
    chosen = [loop for loop in loops if loop.impl in implementations]
    if not chosen:
        have = ", ".join(loop.impl for loop in loops) or "none"
        raise LookupError(f"no native loop named {' or '.join(implementations)} on {backend} (it has: {have})")
    return chosen


class NativeLoop:
    impl = "native"

    def __init__(self, workload, data):
        self.workload = workload
        self.data = data

    def to_batch(self, arrays):
        raise NotImplementedError

    def step(self, batch):
        raise NotImplementedError

    def sync(self):
        raise NotImplementedError

    def run_epoch(self, epoch):
        """One epoch of `workload.steps` updates on the permutation of `epoch`."""
        for indices in epoch_batches(self.workload, self.data, epoch):
            self.step(self.to_batch({key: array[indices] for key, array in self.data.items()}))
