"""`siamese-k3 train ARGS...` that SIGKILLs itself at one moment of an --overwrite (test_training's kill test).

python overwrite_worker.py POINT OUT ARGS...; POINT is one of:
- ``first_epoch``: in the new run's first epoch, before its checkpoint;
- ``before_replace``: its first checkpoint written, before the new run replaces the old;
- ``before_removal``: the new run in place (the atomic exchange done), the old one not yet removed;
- ``between_renames``: without the atomic exchange, the old run renamed away, the new one not yet in its place.
"""

import os
import signal
import sys

from siamese_k3 import cli
from siamese_k3.runs import folder as run_folder, training


def kill():
    os.kill(os.getpid(), signal.SIGKILL)


def main(point, out, *args):
    out = os.path.abspath(out)
    exchange, rename = run_folder.exchange_paths, os.rename
    renames = []

    def killing_exchange(first, second):
        if point == "before_replace":
            kill()
        if point == "between_renames":  # as where the system has no atomic exchange
            return False
        assert exchange(first, second)
        if point == "before_removal":
            kill()
        return True

    def killing_rename(source, target):
        renames[:] += [source] if out in (os.fspath(source), os.fspath(target)) else []
        if len(renames) == 2:
            kill()
        rename(source, target)

    original = training.RunCheckpoint

    class KillInEpoch(original):
        def on_epoch_end(self, epoch, logs=None):
            if point == "first_epoch":
                kill()
            super().on_epoch_end(epoch, logs)

    run_folder.exchange_paths = killing_exchange
    if point == "between_renames":
        os.rename = killing_rename
    training.RunCheckpoint = KillInEpoch
    return cli.main(["train", "--out", out, *args])


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
