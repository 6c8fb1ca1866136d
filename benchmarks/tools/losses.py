"""The loss algorithms on their own: siamese_k3's O(B²) mining losses against the textbook O(B³) ones, and
every other loss family against pytorch-metric-learning's.

    python -m benchmarks.tools.losses --backends jax,tensorflow,torch --sizes 64,256,1024,4096
    python -m benchmarks.tools.losses --losses contrastive,supcon,arcface --implementations siamese_k3,pytorch_metric_learning

For every (backend, implementation, loss, B) a fresh worker process builds B
embeddings of `--dim` dimensions (labels: B / 4 classes of 4, a P × K batch)
and times the loss with its gradient (forward + backward, median of
`--repeats` calls after one warm-up call), compiled as training runs it:
`jax.jit`, `tf.function(jit_compile=True)`, eager torch. Implementations:

- ``siamese_k3``: `siamese_k3.losses` (sorted negatives and a bisection for
  semi-hard, prefix sums for batch-all: O(B² log B) time, O(B²) memory);
- ``native``: siamese_k3's algorithm written in the backend's own framework
  (`benchmarks.native_<backend>.LOSSES`, with its own sort and searchsorted: what
  the training benchmark's native loops run), so the cost of going through
  `keras.ops` shows;
- ``textbook``: the same losses written as TF Addons' semi-hard and the usual
  batch-all are, on [B, B, B] tensors, in the backend's own framework
  (`benchmarks.native_<backend>.CUBIC_LOSSES`, checked equal to siamese_k3's
  by `benchmarks.check_native`);
- ``pytorch_metric_learning`` (torch, when installed): its `TripletMarginMiner`
  (``"semihard"`` or ``"all"``) feeding `TripletMarginLoss`, the way its users
  mine. Its semi-hard miner keeps every semi-hard triplet rather than the
  closest one per pair, so its value differs; the cost is what is compared.
  For the pair and proxy losses (`PML_LOSSES`: siamese_k3 and PML only), PML's
  class of the same name at its defaults: the same value (tests/test_losses_pairs.py).
  The proxy losses get B / 4 classes of proxies (fixed, the gradient is the
  embeddings').

Peak memory: what the calls added to the worker's peak resident set
(ru_maxrss after minus before; imports and data already resident), so each
case runs in a process of its own. ``--process-per backend`` runs all of a
backend's cases in one process instead (much faster, as the tests' smoke run
does), and then reports no memory: a case's peak would be hidden by an earlier
one's. A case whose [B, B, B] tensors would not fit in `--max-cubic-gib` is not
run and says so.
"""

import argparse
import importlib
import importlib.util
import resource
import statistics
import sys
import time

from benchmarks import launcher, measure

IMPLEMENTATIONS = ("siamese_k3", "native", "textbook", "pytorch_metric_learning")
TRIPLET_LOSSES = ("semi_hard", "batch_all")
# siamese_k3's loss function and PML's class of the same loss (both at their defaults), by short name
PML_LOSSES = {
    "contrastive": ("contrastive_loss", "ContrastiveLoss"),
    "multi_similarity": ("multi_similarity_loss", "MultiSimilarityLoss"),
    "circle": ("circle_loss", "CircleLoss"),
    "ntxent": ("ntxent_loss", "NTXentLoss"),
    "supcon": ("supcon_loss", "SupConLoss"),
    "arcface": ("arcface_loss", "ArcFaceLoss"),
    "cosface": ("cosface_loss", "CosFaceLoss"),
    "proxy_anchor": ("proxy_anchor_loss", "ProxyAnchorLoss"),
}
PROXY_LOSSES = ("arcface", "cosface", "proxy_anchor")
LOSSES = (*TRIPLET_LOSSES, *PML_LOSSES)
SAMPLES_PER_CLASS = 4
MARGINS = {"semi_hard": 1.0, "batch_all": 0.2}
# float32 [B, B, B] tensors the textbook formulation keeps alive at once, and pml's boolean masks (its triplet
# miner's: the pair and proxy losses form no B³ tensor).
CUBIC_TENSORS = {"textbook": 4 * 4, "pytorch_metric_learning": 3}


def _peak_rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _proxies(size, dim):
    """The proxy losses' fixed proxies: B / 4 classes (a P × K batch of 4 per class), normal draws."""
    import numpy as np

    return np.random.default_rng(1).normal(size=(size // SAMPLES_PER_CLASS, dim)).astype("float32")


def _loss_function(backend, implementation, loss, size=None, dim=None):
    """loss(embeddings, labels) → scalar for `implementation`, or None when it does not exist here."""
    if loss in PML_LOSSES:
        return _family_function(backend, implementation, loss, size, dim)
    if implementation == "siamese_k3":
        from siamese_k3 import losses

        function = {"semi_hard": losses.semi_hard_triplet_loss, "batch_all": losses.batch_all_triplet_loss}[loss]
        return lambda embeddings, labels: function(labels, embeddings, margin=MARGINS[loss])
    if implementation in ("native", "textbook"):
        native = importlib.import_module(f"benchmarks.native_{backend}")
        function = (native.LOSSES if implementation == "native" else native.CUBIC_LOSSES)[loss]
        return lambda embeddings, labels: function(embeddings, labels, margin=MARGINS[loss])
    if backend != "torch" or importlib.util.find_spec("pytorch_metric_learning") is None:
        return None
    from pytorch_metric_learning import losses as pml_losses
    from pytorch_metric_learning import miners

    miner = miners.TripletMarginMiner(margin=MARGINS[loss], type_of_triplets="semihard" if loss == "semi_hard" else "all")
    triplet = pml_losses.TripletMarginLoss(margin=MARGINS[loss])
    return lambda embeddings, labels: triplet(embeddings, labels, miner(embeddings, labels))


def _family_function(backend, implementation, loss, size, dim):
    """A pair or proxy loss: siamese_k3's function, or PML's class (torch), at its defaults; None otherwise."""
    ours, theirs = PML_LOSSES[loss]
    proxies = _proxies(size, dim) if loss in PROXY_LOSSES else None
    if implementation == "siamese_k3":
        import keras

        from siamese_k3 import losses

        function = getattr(losses, ours)
        if proxies is None:
            return lambda embeddings, labels: function(labels, embeddings)
        proxies = keras.ops.convert_to_tensor(proxies)
        return lambda embeddings, labels: function(labels, embeddings, proxies)
    if implementation != "pytorch_metric_learning" or backend != "torch":
        return None
    if importlib.util.find_spec("pytorch_metric_learning") is None:
        return None
    import torch
    from pytorch_metric_learning import losses as pml_losses

    if proxies is None:
        pml = getattr(pml_losses, theirs)()
        return lambda embeddings, labels: pml(embeddings, labels.long())
    pml = getattr(pml_losses, theirs)(num_classes=len(proxies), embedding_size=dim)
    weights = pml.proxies if loss == "proxy_anchor" else pml.W
    with torch.no_grad():
        weights.copy_(torch.from_numpy(proxies if loss == "proxy_anchor" else proxies.T.copy()))
    weights.requires_grad_(False)  # the embeddings' gradient, as for siamese_k3's fixed proxies
    return lambda embeddings, labels: pml(embeddings, labels.long())


def _value_and_gradient(backend, function, labels):
    """(embeddings → (loss, gradient), wait for the result), compiled as training runs it."""
    if backend == "jax":
        import jax

        step = jax.jit(jax.value_and_grad(lambda embeddings: function(embeddings, labels)))
        return step, jax.block_until_ready
    if backend == "tensorflow":
        import tensorflow as tf

        @tf.function(jit_compile=True)
        def step(embeddings):
            with tf.GradientTape() as tape:
                tape.watch(embeddings)
                value = function(embeddings, labels)
            return value, tape.gradient(value, embeddings)

        return step, lambda result: [tensor.numpy() for tensor in result]

    def step(embeddings):
        embeddings = embeddings.detach().requires_grad_(True)
        value = function(embeddings, labels)
        value.backward()
        return value.detach(), embeddings.grad

    return step, lambda result: [tensor.cpu() for tensor in result]


def _median_ms(step, finish, argument, repeats):
    finish(step(argument))  # warm-up: compiles
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        finish(step(argument))
        times.append(1000 * (time.perf_counter() - start))
    return statistics.median(times)


def _worker(args):
    import keras
    import numpy as np

    backend = keras.backend.backend()
    rows = []
    for implementation, loss, size in _cases(args):
        function = _loss_function(backend, implementation, loss, size, args.dim)
        if function is None:
            continue
        row = {"backend": backend, "implementation": implementation, "loss": loss, "batch": size, "dim": args.dim,
               "device": measure.cpu_name()}  # fmt: skip
        cubic_gib = CUBIC_TENSORS.get(implementation, 0) * size**3 / 2**30 if loss in TRIPLET_LOSSES else 0.0
        if cubic_gib > args.max_cubic_gib:
            rows.append(dict(row, skipped=f"needs ~{cubic_gib:.0f} GiB of B³ tensors"))
            continue
        rng = np.random.default_rng(0)
        labels = keras.ops.convert_to_tensor((np.arange(size) // SAMPLES_PER_CLASS).astype("int32"))
        embeddings = keras.ops.convert_to_tensor(rng.normal(size=(size, args.dim)).astype("float32"))
        step, finish = _value_and_gradient(backend, function, labels)
        before = _peak_rss_mib()
        milliseconds = _median_ms(step, finish, embeddings, args.repeats)
        row["ms"] = round(milliseconds, 3)
        if args.process_per == "case":  # the process's peak is this case's alone
            row["added_peak_mib"] = round(_peak_rss_mib() - before, 1)
        rows.append(row)
        launcher.log(f"[{backend}] {implementation} {loss} B={size}: {milliseconds:.1f} ms")
    launcher.write_rows(rows, args.worker_out)


def _cases(args):
    """(implementation, loss, B) for every combination the arguments name."""
    return [(implementation, loss, size) for implementation in args.implementations.split(",")
            for loss in args.losses.split(",") for size in map(int, args.sizes.split(","))]  # fmt: skip


COLUMNS = [
    ("backend", "backend", ""),
    ("loss", "loss", ""),
    ("B", "batch", ":"),
    ("implementation", "implementation", ""),
    ("forward + backward ms", lambda row: row.get("ms", row.get("skipped", "")), ":"),
    ("added peak MiB", lambda row: row.get("added_peak_mib", ""), ":"),
    ("device", "device", ""),
]


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", default="jax,tensorflow,torch")
    parser.add_argument("--implementations", default=",".join(IMPLEMENTATIONS))
    parser.add_argument("--losses", default=",".join(LOSSES), help=f"any of {', '.join(LOSSES)}")
    parser.add_argument("--sizes", default="64,256,1024,4096", help="batch sizes B")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--max-cubic-gib", type=float, default=6.0, help="skip a case whose B³ tensors need more")
    parser.add_argument("--threads", type=int, help="CPU threads per framework (default: each framework's own)")
    parser.add_argument("--process-per", choices=("case", "backend"), default="case",
                        help="a fresh process per case, for its peak memory (default), or one per backend (no memory)")
    parser.add_argument("--out", default="benchmarks/results/losses.json")
    launcher.add_worker_arguments(parser)
    args = parser.parse_args(argv)
    if args.worker:
        return _worker(args)
    rows = []
    common = ["--dim", str(args.dim), "--repeats", str(args.repeats), "--max-cubic-gib", str(args.max_cubic_gib),
              "--process-per", args.process_per]  # fmt: skip
    for backend in args.backends.split(","):
        cases = [case for case in _cases(args) if case[0] != "pytorch_metric_learning" or backend == "torch"]
        if args.process_per == "backend":
            cases = [(",".join(dict.fromkeys(case[0] for case in cases)), args.losses, args.sizes)] if cases else []
        for implementations, losses, sizes in cases:
            worker_argv = ["--implementations", implementations, "--losses", losses, "--sizes", str(sizes), *common]
            rows += launcher.run_in_backend(backend, "benchmarks.tools.losses", worker_argv, args.threads)
    rows.sort(key=lambda row: (row["backend"], row["loss"], row["batch"], IMPLEMENTATIONS.index(row["implementation"])))
    table = launcher.markdown_table(rows, COLUMNS)
    note = f"threads: {args.threads or 'framework defaults'}; embeddings {args.dim}-d, {SAMPLES_PER_CLASS} per class"
    launcher.write_outputs(table, rows, args.out, "benchmarks.tools.losses", argv, note)
    expected = len(args.backends.split(","))
    return 0 if len({row["backend"] for row in rows}) == expected else 1


if __name__ == "__main__":
    sys.exit(main())
