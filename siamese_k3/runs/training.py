"""Training a run: data and backbone from a `TrainConfig`, `fit` with a resumable checkpoint, then the results.

`train_run` is what ``siamese-k3 train`` and `siamese_k3.train` do:

1. check everything that can be checked before the folder is touched: the
   config (when it was built), the backbone's name, the data (found and read),
   the data-parallel layout;
2. prepare the folder (`RunFolder.prepare`): refuse a finished run unless
   overwrite, resume an unfinished one from its checked checkpoint; under
   overwrite the new run trains in a scratch sibling and replaces the old one
   after its first checkpoint, so no late check can lose the old run;
3. `fit` from the checkpoint's epoch, with the sampler continuing from that
   epoch, the optimizer and random-generator state restored: a resumed run
   equals an uninterrupted one;
4. save the models and history, evaluate (`siamese_k3.runs.evaluation`), write
   metrics.json, then status ``finished``, and only then remove the checkpoint.

Under data parallelism every process trains; only the chief (rank 0) writes
the run folder, saves and evaluates. Nothing here prints: messages go to the
``siamese_k3`` logger, which the CLI shows.
"""

import contextlib
import dataclasses
import inspect
import logging
import os

import keras
import numpy as np

from siamese_k3 import backbones, losses, precision
from siamese_k3.runs import evaluation as run_evaluation
from siamese_k3.backend import registry
from siamese_k3.callbacks import PairValidation, RetrievalValidation, RunCheckpoint, StopOnNonFiniteLoss
from siamese_k3.runs.config import OWN_OPTIONS_LOSSES, PROXY_LOSS_OPTIONS, TrainConfig
from siamese_k3.data import ClassBalancedBatches, TripletBatches
from siamese_k3.errors import NonFiniteLossError, PeerTimeoutError, SiameseK3Error
from siamese_k3.runs.interrupts import stop_on_signals
from siamese_k3.metrics import FractionPositiveTriplets
from siamese_k3.models import MiningModel, SiameseModel, standalone_embedding
from siamese_k3.parallel import DataParallel
from siamese_k3.runs.data import load_data
from siamese_k3.runs.folder import FAILED, FINISHED, FORMAT, SCRATCH, UNFINISHED, RunFolder

logger = logging.getLogger("siamese_k3")

VALIDATION_STEPS = 10


def default_out(config):
    """``runs/<dataset>``, or ``runs/pairs`` for a pairs:DIR dataset."""
    return os.path.join("runs", "pairs" if config.pairs_dir else config.dataset)


def train_run(config, out=None, overwrite=False, data_parallel=False, collective_timeout=600, verbose="auto"):
    """Train `config` (a `TrainConfig`) into the run folder `out`; return (folder, metrics), metrics None off the chief.

    `verbose` is keras' (``"auto"``/1: a progress bar, 0: none). Raises
    `SiameseK3Error` for bad input (before the folder is touched),
    `RunFolderError` for a folder that cannot be used, `NonFiniteLossError`
    when training diverges (status ``failed``, resumable from the last good
    epoch) and `RunInterrupted` / `KeyboardInterrupt` when stopped (status
    ``unfinished``, resumable).
    """
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a siamese_k3.TrainConfig, got {type(config).__name__}.")
    folder = RunFolder(out or default_out(config))
    backbones.check_name(config.backbone)
    with stop_on_signals() as stop:  # SIGINT, SIGTERM: RunInterrupted within seconds, on every backend
        parallel = start_data_parallel(collective_timeout) if data_parallel else None
        run = RunContext(config, folder, parallel, verbose, stop.callback)
        try:
            with folder.lock(", or choose another folder") if run.chief else contextlib.nullcontext():
                return folder, _train_locked(run, overwrite)
        finally:
            if parallel is not None:
                parallel.stop()


@dataclasses.dataclass
class RunContext:
    """One training run as it goes, handed from step to step (instead of loose parameters).

    Set when the run starts: `config`, `folder` (the run folder), `parallel` (the `DataParallel`
    engine, or None), `verbose` and `stop_callback` (`stop_on_signals`' callback, first of the
    callbacks). Set once the data is read (`_train_locked`): `facts`, what config.json records
    beside the config (backend, data-parallel layout, input shape, class names), and `data`. Set
    once the folder is prepared: `work`, where it trains (`folder`, or under overwrite its scratch
    sibling, which replaces it after one epoch), and `metadata`, the checkpoint's when resuming.
    """

    config: TrainConfig
    folder: RunFolder
    parallel: object
    verbose: object
    stop_callback: object
    facts: dict = dataclasses.field(default_factory=dict)
    data: dict = None
    work: RunFolder = None
    metadata: dict = None

    @property
    def chief(self):
        """True in the process that writes the run folder: the only one, or rank 0 of a data-parallel run."""
        return self.parallel is None or self.parallel.is_chief

    @property
    def backend(self):
        return self.facts["backend"]


def start_data_parallel(collective_timeout):
    """`siamese_k3.parallel.DataParallel`, its failures as one-line errors (a peer timeout stays `PeerTimeoutError`)."""
    try:
        return DataParallel(timeout_seconds=collective_timeout)
    except PeerTimeoutError:
        raise
    except (RuntimeError, ValueError) as error:
        raise SiameseK3Error(f"data_parallel=True: {error}") from None


def _train_locked(run, overwrite):
    config, parallel = run.config, run.parallel
    keras.utils.set_random_seed(config.seed)
    registry.current().flush_denormals()
    layout = {}
    if parallel is not None:
        layout = {"data_parallel_devices": _check_data_parallel(parallel, config.train_batch_size),
                  "data_parallel_processes": parallel.processes}  # fmt: skip
    # data problems surface here, before the folder changes
    run.data, data_facts = load_data(config, devices=layout.get("data_parallel_devices", 1))
    run.facts = {"backend": keras.backend.backend(), **layout, **data_facts}
    with run.folder.prepare(config, overwrite) if run.chief else _follow(run.folder) as (run.work, run.metadata):
        return _train_prepared(run)


@contextlib.contextmanager
def _follow(folder):
    """A data-parallel process beside the chief: the folder the chief trains in (prepared after the barrier)."""
    yield folder, None


def _train_prepared(run):
    """Train in `run.work` (the run folder, or under --overwrite its scratch sibling, which replaces it after one epoch)."""
    config, folder, parallel = run.config, run.folder, run.parallel
    if run.chief:
        if run.metadata is not None:
            logger.info(f"Resuming the unfinished run in {folder.path} after epoch {run.metadata['epoch']}")
        run.work.write_json("config.json", {"format": FORMAT, **config.to_dict(), **run.facts})
        run.work.write_status(UNFINISHED, run.backend)
    if parallel is not None:
        parallel.barrier()  # the chief has prepared the folder (and its scratch sibling under overwrite)
        if not run.chief:  # the chief's checkpoint, read from the folder it prepared
            scratch = RunFolder(folder.sibling(SCRATCH))
            run.work = scratch if os.path.isdir(scratch.path) else folder
            run.metadata = RunCheckpoint.read(run.work.checkpoint)
    work = run.work
    precision.set_precision(config.mixed_precision)
    try:
        model, embedding_model, checkpoint = _fit(
            run, _ReplaceAfterCheckpoint(folder, work) if run.chief and work.path != folder.path else None,
        )
        if parallel is not None:
            parallel.barrier()  # every process is done with the collectives before any leaves
    except NonFiniteLossError as error:
        resumable = (
            " Rerunning the same command resumes it from the last finished epoch."
            if os.path.isfile(os.path.join(work.checkpoint, RunCheckpoint.METADATA)) else ""
        )
        if run.chief:
            work.write_status(FAILED, run.backend, f"{error}{resumable}")
        kept = f" The run it was to replace, in {folder.path}, is kept as it was." if work.path != folder.path else ""
        raise NonFiniteLossError(f"{error} The run in {work.path} is marked failed.{resumable}{kept}") from None
    except KeyboardInterrupt as error:  # SIGINT, SIGTERM (RunInterrupted): unfinished, resumable
        if run.chief:
            work.write_status(UNFINISHED, run.backend, f"{error or 'interrupted'}: rerun the same command to resume")
        raise
    finally:
        precision.set_precision(None)
        if parallel is not None:
            parallel.stop()  # saving and evaluating below run in the chief alone (a second stop is a no-op)
    if not run.chief:
        return None
    if work.path != folder.path:  # trained no epoch here (resumed past the last): replace the old run now
        folder.replace_with(work)
    return _finish(run, model, embedding_model, checkpoint)


class _ReplaceAfterCheckpoint(keras.callbacks.Callback):
    """--overwrite: the new run, trained in the scratch sibling, replaces the old one once it holds a checkpoint."""

    def __init__(self, folder, work):
        super().__init__()
        self.folder, self.work, self.checkpoint = folder, work, None

    def on_epoch_end(self, epoch, logs=None):
        if self.work.path != self.folder.path:
            self.folder.replace_with(self.work)
            self.checkpoint.folder = self.work.checkpoint


def _finish(run, model, embedding_model, checkpoint):
    """Save, evaluate and mark the run finished; the checkpoint goes last, so any kill before resumes."""
    folder = run.folder
    folder.save_model(embedding_model, "embedding.keras")
    folder.save_model(model, "model.keras")
    if run.parallel is not None:  # the trained weights may live across processes: evaluate a local copy
        embedding_model = keras.models.load_model(folder.file("embedding.keras"))
    history = checkpoint.history()
    folder.write_json("history.json", history)
    evaluation = run_evaluation.evaluate(run.config, run.facts, embedding_model, run.data)
    if run.config.plots:
        evaluation.write_plots(folder.path, history)
    evaluation.write_calibration(folder.path, fingerprint=folder.fingerprint(), plot=run.config.plots)
    metrics = evaluation.metrics
    metrics["train_seconds"] = round(checkpoint.seconds, 1)
    folder.write_json("metrics.json", metrics)
    folder.write_status(FINISHED, run.backend)
    folder.remove_checkpoint()
    return metrics


def _check_data_parallel(parallel, batch_size):
    """The number of replicas, once the global batch is known to split evenly over them."""
    try:
        parallel.check_batch_size(batch_size)
    except ValueError as error:
        raise SiameseK3Error(f"data_parallel=True: {error}") from None
    return parallel.replicas


# --------------------------------------------------------------------------
# data and backbone
# --------------------------------------------------------------------------


def build_backbone(config, input_shape):
    """The backbone `config` names, with the arguments it takes (pixels 0-255 in)."""
    backbones.check_name(config.backbone)
    factory = backbones.BACKBONES[config.backbone]
    wanted = {
        "input_shape": tuple(input_shape),
        "embedding_dim": config.embedding_dim,
        "rescale": 1.0 / 255.0,
        "normalize": True,
        "weights": config.weights,
    }
    accepted = inspect.signature(factory).parameters
    options = {key: value for key, value in wanted.items() if key in accepted}
    return factory(**options, **(config.backbone_options or {}))


# --------------------------------------------------------------------------
# fit
# --------------------------------------------------------------------------


def _fit(run, replace=None):
    """Build, compile and `fit` the model from the run's checkpoint; (model, embedding model, checkpoint)."""
    with run.parallel.scope() if run.parallel is not None else contextlib.nullcontext():  # tf.distribute mirrors the variables
        return _fit_in_scope(run, replace)


def _fit_in_scope(run, replace):
    config, data, parallel = run.config, run.data, run.parallel
    backbone = build_backbone(config, run.facts["input_shape"])
    model, train_data, validation, compile_options = _model_and_batches(backbone, data, config)
    schedule = keras.optimizers.schedules.CosineDecay(
        config.learning_rate, decay_steps=max(1, config.epochs * len(train_data))
    )
    optimizer = precision.wrap_optimizer(keras.optimizers.Adam(schedule), config.mixed_precision)
    model.compile(optimizer=optimizer, **compile_options)
    if not model.built:
        inputs = train_data[0][0]
        if parallel is not None:  # no eager call on weights that may span processes
            model.build(keras.tree.map_structure(lambda part: (None, *part.shape[1:]), inputs))
        else:
            model(tuple(part[:1] for part in inputs) if isinstance(model, SiameseModel) else inputs[:1])
    checkpoint = RunCheckpoint(run.work.checkpoint, writer=run.chief)
    checkpoint.set_model(model)
    initial_epoch = checkpoint.restore(run.metadata)
    if hasattr(train_data, "set_epoch"):  # the batches continue where the checkpoint stopped
        train_data.set_epoch(initial_epoch)
    # The signal check first: an interrupted epoch is never checkpointed.
    if replace is not None:  # after the checkpoint: the new run replaces the old once it can resume
        replace.checkpoint = checkpoint
    callbacks = [run.stop_callback, StopOnNonFiniteLoss(), _validation_callback(data, config, backbone), checkpoint, replace]
    if parallel is not None:
        inputs = parallel.fit_inputs(train_data, validation)
    else:
        inputs = {"x": train_data, "validation_data": validation}
    if initial_epoch < config.epochs:
        # shuffle=False: the batches are drawn at random by the sampler, per epoch (resumable);
        # keras' own shuffling of their order would draw from the process's global RNG.
        model.fit(
            **inputs, epochs=config.epochs, initial_epoch=initial_epoch, shuffle=False,
            callbacks=[callback for callback in callbacks if callback is not None], verbose=run.verbose,
        )
    return model, standalone_embedding(backbone), checkpoint


def _model_and_batches(backbone, data, config):
    """(model, training batches, validation batches, compile options) for `config.loss`."""
    labelled = "x_train" in data
    if config.loss == "triplet":
        model = SiameseModel(backbone, margin=config.margin, distance=config.distance)
        if not labelled:
            return model, data["train"], data["validation"], {}
        train_data = TripletBatches(
            data["x_train"], data["y_train"], config.batch_size, steps_per_epoch=config.steps_per_epoch,
            seed=config.seed,
        )
        validation = TripletBatches(
            data["x_test"], data["y_test"], config.batch_size, steps_per_epoch=VALIDATION_STEPS, seed=config.seed + 1,
        )
        return model, train_data, FixedBatches(validation), {}
    sampler = dict(classes_per_batch=config.classes_per_batch, samples_per_class=config.batch_size // config.classes_per_batch)
    train_data = ClassBalancedBatches(
        data["x_train"], data["y_train"], steps_per_epoch=config.steps_per_epoch, seed=config.seed, **sampler,
    )
    validation = ClassBalancedBatches(
        data["x_test"], data["y_test"], steps_per_epoch=VALIDATION_STEPS, seed=config.seed + 1, **sampler,
    )
    options = dict(margin=config.margin, distance=config.distance)
    # a mining loss takes the run's margin and distance; a pair or proxy loss its own options only (losses/)
    loss_options = dict(config.loss_options) if config.loss in OWN_OPTIONS_LOSSES else {**options, **config.loss_options}
    proxies = None
    if config.loss in PROXY_LOSS_OPTIONS:  # one proxy per class, trained and saved with the model
        classes = int(np.max(data["y_train"])) + 1
        proxies = losses.Proxies(classes, lr_multiplier=loss_options.pop("proxy_lr_multiplier", 1.0))
    compile_options = {"loss": losses.get(config.loss, **loss_options), "metrics": [FractionPositiveTriplets(**options)]}
    return MiningModel(backbone, proxies=proxies), train_data, FixedBatches(validation), compile_options


class FixedBatches(keras.utils.PyDataset):
    """The first epoch's batches of `batches`, every epoch: the validation loss of every epoch is measured
    on the same data, so epochs compare, and a resumed run validates as the uninterrupted one."""

    def __init__(self, batches):
        super().__init__()
        self.batches = [batches[index] for index in range(len(batches))]

    def __len__(self):
        return len(self.batches)

    def __getitem__(self, index):
        return self.batches[index]


def _validation_callback(data, config, backbone):
    """Per-epoch quality: retrieval on a fixed test sample, or ROC AUC of the held-out pairs."""
    if "validation" in data:
        return PairValidation(
            *data["validation"].triplet_arrays(), distance=config.distance, embedding_model=backbone, batch_size=32,
        )
    size = min(config.validation_size, len(data["y_test"]))
    if not size:
        return None
    return RetrievalValidation(
        data["x_test"], data["y_test"], distance=config.distance, sample_size=size,
        seed=config.seed, embedding_model=backbone, batch_size=512,  # as the final evaluation
    )

