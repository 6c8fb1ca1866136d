"""What the `siamese-k3` commands do: train, evaluate, embed, similarity, export.

Imported by `siamese_k3.cli` only after KERAS_BACKEND is set. A run folder holds:
config.json, status.json (unfinished, failed or finished), embedding.keras (raw
image in, embedding out: the inference model alone, loadable by plain keras),
model.keras (the trained model with its optimizer and loss, for resuming and
fine-tuning), history.json, metrics.json, *.png plots and backup/ (the per-epoch
checkpoint, removed once the run has finished). `train` and `evaluate` hold the
folder's lock (`siamese_k3.files.RunLock`) while they write, and every file is
written atomically.
"""

import contextlib
import importlib.util
import inspect
import json
import os
import shutil
import sys
import tempfile
import time
import warnings

import keras
import numpy as np

from siamese_k3 import backbones, evaluation, losses, plots, precision, recipes
from siamese_k3.backend import distributed, flush_denormals
from siamese_k3.callbacks import PairValidation, RetrievalValidation, StopOnNonFiniteLoss
from siamese_k3.data import (
    CLASS_NAMES,
    ClassBalancedBatches,
    PairedImageFolders,
    TripletBatches,
    load_dataset,
    load_image,
    offline_triplet_indices,
    take,
    verification_pair_indices,
)
from siamese_k3.data.image_folders import find_pairs, split_pair_names
from siamese_k3.errors import NonFiniteLossError, SiameseK3Error
from siamese_k3.files import RunLock, atomic_path, write_json
from siamese_k3.metrics import FractionPositiveTriplets
from siamese_k3.models import MiningModel, SiameseModel, standalone_embedding
from siamese_k3.parallel import DataParallel

RUN_FILES = (
    "config.json", "status.json", "embedding.keras", "model.keras", "history.json", "metrics.json",
    "loss.png", "distances.png", "triplets.png", "embeddings_pca.png",
)
VALIDATION_STEPS = 10


# --------------------------------------------------------------------------
# train
# --------------------------------------------------------------------------


def train(args):
    parallel = _start_data_parallel(args) if getattr(args, "data_parallel", False) else None
    pairs_dir = args.dataset[len("pairs:"):] if args.dataset.startswith("pairs:") else None
    defaults = recipes.defaults(getattr(args, "recipe", "default"), pairs=bool(pairs_dir))
    config = {key: getattr(args, key, None) for key in vars(args)}
    config.pop("command", None)
    for key, value in defaults.items():
        if config.get(key) is None:
            config[key] = value
    if config["backbone"] != defaults["backbone"]:  # the recipe's backbone options are for its own backbone
        config["backbone_options"] = {}
    if config["loss"] != "triplet" and pairs_dir:
        raise SiameseK3Error(
            f"--loss {config['loss']} needs class labels; a pairs:DIR dataset has none: use --loss triplet."
        )
    config["backend"] = keras.backend.backend()
    out = config["out"] = config["out"] or os.path.join("runs", pairs_dir and "pairs" or args.dataset)
    if parallel is None or parallel.is_chief:
        with RunLock(out):
            _train_in(out, config, pairs_dir, args.overwrite, parallel)
    else:  # the other processes train beside the chief and write nothing
        _train_in(out, config, pairs_dir, args.overwrite, parallel)


def _start_data_parallel(args):
    """`siamese_k3.parallel.DataParallel` for --data-parallel, its failures as one-line errors."""
    try:
        return DataParallel(timeout_seconds=args.collective_timeout)
    except (RuntimeError, ValueError) as error:
        raise SiameseK3Error(f"--data-parallel: {error}") from None


def _train_in(out, config, pairs_dir, overwrite, parallel=None):
    """`train` once the run folder is locked: fit, save, evaluate; status.json says how it ended.

    Under --data-parallel every process trains; only the chief (rank 0) writes
    the run folder, saves, evaluates and prints.
    """
    chief = parallel is None or parallel.is_chief
    resuming = _prepare_run_folder(out, config, overwrite) if chief else None
    if parallel is not None:
        parallel.barrier()  # the chief has prepared the folder (and removed an old run under --overwrite)
    if not chief:  # the chief's answer, read from the folder it prepared
        resuming = os.path.isdir(os.path.join(out, "backup"))
        config["quiet"] = True
    keras.utils.set_random_seed(config["seed"])
    flush_denormals()
    precision.set_precision(config["mixed_precision"])
    try:
        if parallel is not None:
            config["data_parallel_devices"] = _check_data_parallel(parallel, _train_batch_size(config, pairs_dir))
            config["data_parallel_processes"] = parallel.processes
        if pairs_dir:
            data = _pairs_data(pairs_dir, config)
        else:
            data = _labelled_data(config)
        if chief:
            write_json(os.path.join(out, "config.json"), config)
        model, embedding_model, history, seconds = _fit(data, config, out, resuming, parallel)
        if parallel is not None:
            parallel.barrier()  # every process is done with the collectives before any leaves
    except NonFiniteLossError as error:
        checkpoint = os.path.isfile(os.path.join(out, "backup", "latest.weights.h5"))
        resumable = " Rerunning the same command resumes it from the last finished epoch." if checkpoint else ""
        if chief:
            _write_status(out, "failed", f"{error}{resumable}")
        raise NonFiniteLossError(f"{error} The run in {out} is left unfinished.{resumable}") from None
    finally:
        precision.set_precision(None)
        if parallel is not None:
            parallel.stop()
    if not chief:
        return
    save_model(embedding_model, os.path.join(out, "embedding.keras"))
    save_model(model, os.path.join(out, "model.keras"))
    if parallel is not None:  # the trained weights may live across processes: evaluate a local copy
        embedding_model = keras.models.load_model(os.path.join(out, "embedding.keras"))
    write_json(os.path.join(out, "history.json"), history)
    plots.plot_history(history, os.path.join(out, "loss.png"))
    metrics = _evaluate(config, embedding_model, data)
    metrics["train_seconds"] = round(seconds, 1)
    write_json(os.path.join(out, "metrics.json"), metrics)
    _write_status(out, "finished")
    shutil.rmtree(os.path.join(out, "backup"), ignore_errors=True)
    _print_table(metrics, out)


def save_model(model, path):
    """`model.save(path)` atomically: a kill mid-save leaves the previous file, never half of one."""
    with atomic_path(path) as temporary:
        model.save(temporary)


def _write_status(out, state, message=None):
    status = {"state": state, "backend": keras.backend.backend(), "time": time.strftime("%Y-%m-%d %H:%M:%S")}
    if message:
        status["message"] = message
    write_json(os.path.join(out, "status.json"), status)


def _prepare_run_folder(out, config, overwrite):
    """Create `out`; refuse a finished run unless overwrite; True when resuming a killed run."""
    config_path = os.path.join(out, "config.json")
    if os.path.exists(os.path.join(out, "metrics.json")) and not overwrite:
        raise SiameseK3Error(
            f"{out} holds a finished run: pass --overwrite to replace it, or choose another --out."
        )
    if overwrite:
        for name in RUN_FILES:
            if os.path.exists(os.path.join(out, name)):
                os.remove(os.path.join(out, name))
        shutil.rmtree(os.path.join(out, "backup"), ignore_errors=True)
    resuming = os.path.isdir(os.path.join(out, "backup"))
    if resuming:
        with open(config_path) as handle:
            previous = json.load(handle)
        ignored = {"overwrite", "quiet", "backend", "data_parallel", "collective_timeout", "validation_size"}
        changed = sorted(
            key for key in config if key not in ignored and previous.get(key) != config[key]
        )
        if changed:
            raise SiameseK3Error(
                f"{out} holds an unfinished run with other options ({', '.join(changed)}): "
                "rerun with the same options to resume it, or pass --overwrite to start over."
            )
        print(f"Resuming the unfinished run in {out}")
    os.makedirs(out, exist_ok=True)
    write_json(config_path, config)
    _write_status(out, "unfinished")
    return resuming


def _check_data_parallel(parallel, batch_size):
    """The number of replicas, once the global batch is known to split evenly over them."""
    try:
        parallel.check_batch_size(batch_size)
    except ValueError as error:
        raise SiameseK3Error(f"--data-parallel: {error} (set it with --batch-size).") from None
    return parallel.replicas


def _train_batch_size(config, pairs_dir):
    """Rows per training batch: P × (batch size // P) for the mining losses."""
    if pairs_dir or config["loss"] == "triplet":
        return config["batch_size"]
    per_class = config["batch_size"] // config["classes_per_batch"]
    return config["classes_per_batch"] * per_class


def _labelled_data(config):
    (x_train, y_train), (x_test, y_test) = load_dataset(config["dataset"], data_dir=config["data_dir"])
    config["input_shape"] = list(x_train.shape[1:])
    config["class_names"] = CLASS_NAMES.get(config["dataset"].replace("-", "_"))
    return {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}


def _pairs_data(directory, config):
    size = config["image_size"]
    options = dict(
        target_shape=(size, size), batch_size=config["batch_size"], seed=config["seed"],
        validation_split=config["validation_split"], skip_unpaired=config["skip_unpaired"],
    )
    config["input_shape"] = [size, size, 3]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train = PairedImageFolders(directory, subset="training", **options)
        # Validation batches may be smaller than training ones: a batch needs one spare pair for negatives.
        names = find_pairs(directory, skip_unpaired=config["skip_unpaired"], verify=False)
        held_out = len(split_pair_names(names, config["validation_split"], "validation", config["seed"]))
        devices = config.get("data_parallel_devices", 1)  # a batch must split evenly over them
        if held_out < 1 + devices:
            raise SiameseK3Error(
                f"--validation-split {config['validation_split']} holds out {held_out} pair of "
                f"{len(names)} in {directory}: validation needs at least {1 + devices}; "
                "raise --validation-split or add pairs."
            )
        options["batch_size"] = min(config["batch_size"], held_out - 1) // devices * devices
        # `train` has just verified every image of both subsets (find_pairs checks all pairs before the split).
        validation = PairedImageFolders(
            directory, subset="validation", shuffle=False, verify_images=False, **options
        )
        data = {"train": train, "validation": validation}
    for message in dict.fromkeys(str(warning.message) for warning in caught):
        print(f"siamese-k3: warning: {message}", file=sys.stderr)
    return data


def build_backbone(config):
    """The backbone named in config, with the arguments it takes (pixels 0-255 in)."""
    if config["backbone"] not in backbones.BACKBONES:
        raise SiameseK3Error(
            f"--backbone {config['backbone']!r} is unknown: choose one of "
            f"{', '.join(sorted(backbones.BACKBONES))}."
        )
    factory = backbones.BACKBONES[config["backbone"]]
    wanted = {
        "input_shape": tuple(config["input_shape"]),
        "embedding_dim": config["embedding_dim"],
        "rescale": 1.0 / 255.0,
        "normalize": True,
        "weights": config.get("weights"),
    }
    accepted = inspect.signature(factory).parameters
    options = {key: value for key, value in wanted.items() if key in accepted}
    return factory(**options, **(config.get("backbone_options") or {}))


def _fit(data, config, out, resuming, parallel=None):
    with parallel.scope() if parallel is not None else contextlib.nullcontext():  # tf.distribute mirrors the variables
        return _fit_in_scope(data, config, out, resuming, parallel)


def _fit_in_scope(data, config, out, resuming, parallel):
    backbone = build_backbone(config)
    labelled = "x_train" in data
    batch_size = config["batch_size"]
    if config["loss"] == "triplet":
        model = SiameseModel(backbone, margin=config["margin"], distance=config["distance"])
        if labelled:
            train_data = TripletBatches(
                data["x_train"], data["y_train"], batch_size, steps_per_epoch=config["steps_per_epoch"],
                seed=config["seed"],
            )
            validation = TripletBatches(
                data["x_test"], data["y_test"], batch_size, steps_per_epoch=VALIDATION_STEPS,
                seed=config["seed"] + 1,
            )
        else:
            train_data, validation = data["train"], data["validation"]
        compile_options = {}
    else:
        per_class = batch_size // config["classes_per_batch"]
        if per_class < 2:
            raise SiameseK3Error(
                f"--batch-size {batch_size} with --classes-per-batch {config['classes_per_batch']} "
                "leaves fewer than 2 samples per class: raise --batch-size or lower --classes-per-batch."
            )
        sampler = dict(classes_per_batch=config["classes_per_batch"], samples_per_class=per_class)
        train_data = ClassBalancedBatches(
            data["x_train"], data["y_train"], steps_per_epoch=config["steps_per_epoch"], seed=config["seed"],
            **sampler,
        )
        validation = ClassBalancedBatches(
            data["x_test"], data["y_test"], steps_per_epoch=VALIDATION_STEPS, seed=config["seed"] + 1,
            **sampler,
        )
        model = MiningModel(backbone)
        options = dict(margin=config["margin"], distance=config["distance"])
        compile_options = {"loss": losses.get(config["loss"], **options), "metrics": [FractionPositiveTriplets(**options)]}
    schedule = keras.optimizers.schedules.CosineDecay(
        config["learning_rate"], decay_steps=max(1, config["epochs"] * len(train_data))
    )
    optimizer = precision.wrap_optimizer(keras.optimizers.Adam(schedule), config["mixed_precision"])
    model.compile(optimizer=optimizer, **compile_options)
    if not model.built:  # BackupAndRestore restores weights into a built model only
        inputs = train_data[0][0]
        if parallel is not None:  # no eager call on weights that may span processes
            model.build(keras.tree.map_structure(lambda part: (None, *part.shape[1:]), inputs))
        else:
            model(tuple(part[:1] for part in inputs) if isinstance(model, SiameseModel) else inputs[:1])
    epoch_log, callbacks = training_callbacks(
        os.path.join(out, "backup"), _validation_callback(data, config, backbone),
        writer=parallel is None or parallel.is_chief,
    )
    if parallel is not None:
        inputs = parallel.fit_inputs(train_data, validation)
    else:
        inputs = {"x": train_data, "validation_data": validation}
    started = time.perf_counter()
    model.fit(**inputs, epochs=config["epochs"], callbacks=callbacks, verbose=0 if config["quiet"] else 1)
    seconds = time.perf_counter() - started + epoch_log.previous_seconds
    return model, standalone_embedding(backbone), epoch_log.history(), seconds


def _validation_callback(data, config, backbone):
    """Per-epoch quality: retrieval on a fixed test sample, or ROC AUC of the held-out pairs."""
    if "validation" in data:
        return PairValidation(
            *data["validation"].triplet_arrays(), distance=config["distance"], embedding_model=backbone, batch_size=32,
        )
    size = min(config.get("validation_size") or 0, len(data["y_test"]))
    if not size:
        return None
    return RetrievalValidation(
        data["x_test"], data["y_test"], distance=config["distance"], sample_size=size,
        seed=config["seed"], embedding_model=backbone, batch_size=512,  # as the final evaluation
    )


def training_callbacks(backup, validation=None, writer=True):
    """(epoch log, the callback list) of a resumable run checkpointed in the folder `backup`.

    In this order: the non-finite loss check, so a diverged epoch raises before
    anything is saved (the checkpoint stays the last good epoch); `validation`
    (a `RetrievalValidation` or `PairValidation`, or None), whose metrics then
    reach the epoch log, keras' History and the progress bar; the epoch log,
    so a run killed between it and the checkpoint redoes that epoch and
    overwrites its entry; keras' `BackupAndRestore` with `double_checkpoint`,
    which falls back to the previous checkpoint if a kill left the latest one
    unreadable. With ``writer=False`` (a data-parallel process other than the
    chief) both read the chief's files to resume but write nothing.
    """
    epoch_log = EpochLog(os.path.join(backup, "epochs.json"), writer=writer)
    backup_and_restore = (BackupAndRestore if writer else ReadOnlyBackup)(backup, double_checkpoint=True)
    callbacks = [StopOnNonFiniteLoss(), validation, epoch_log, backup_and_restore]
    return epoch_log, [callback for callback in callbacks if callback is not None]


class BackupAndRestore(keras.callbacks.BackupAndRestore):
    """keras' `BackupAndRestore`, saving outside any data-parallel distribution (the chief saves alone)."""

    def on_epoch_end(self, epoch, logs=None):
        with distributed.local_scope():
            super().on_epoch_end(epoch, logs)


class ReadOnlyBackup(keras.callbacks.BackupAndRestore):
    """keras' `BackupAndRestore` that restores the run from the checkpoint but never saves or deletes it.

    For the data-parallel processes beside the chief: they resume from the
    chief's checkpoint, which the chief alone writes. Under
    MultiWorkerMirroredStrategy saving creates variables collectively, so they
    save alongside the chief into a scratch folder (TensorFlow's own pattern).
    """

    def on_epoch_end(self, epoch, logs=None):
        if distributed.saving_is_collective():  # every worker takes part in the chief's save
            with tempfile.TemporaryDirectory() as scratch:
                self.model.save_weights(os.path.join(scratch, "discarded.weights.h5"))

    def on_train_batch_end(self, batch, logs=None):
        pass

    def on_train_end(self, logs=None):
        pass


class EpochLog(keras.callbacks.Callback):
    """Per-epoch logs kept on disk beside the checkpoint, so a resumed run's history is whole.

    `fit`'s own History starts empty on resume; this file holds every finished
    epoch's metrics and the training seconds spent so far.
    """

    def __init__(self, path, writer=True):
        super().__init__()
        self.path, self.writer = path, writer
        self.epochs = {}
        if os.path.isfile(path):
            with open(path) as handle:
                self.epochs = {int(key): value for key, value in json.load(handle).items()}
        self.previous_seconds = sum(entry.get("seconds", 0.0) for entry in self.epochs.values())

    def on_epoch_begin(self, epoch, logs=None):
        self._started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        entry = {key: float(value) for key, value in (logs or {}).items()}
        entry["seconds"] = time.perf_counter() - self._started
        self.epochs = {key: value for key, value in self.epochs.items() if key < epoch}
        self.epochs[epoch] = entry
        if self.writer:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            write_json(self.path, self.epochs)

    def history(self):
        """{metric: [value per epoch]} over all epochs, as `History.history`."""
        ordered = [self.epochs[epoch] for epoch in sorted(self.epochs)]
        keys = [key for key in ordered[0] if key != "seconds"] if ordered else []
        return {key: [entry.get(key, float("nan")) for entry in ordered] for key in keys}


# --------------------------------------------------------------------------
# evaluate
# --------------------------------------------------------------------------


def evaluate(args):
    with RunLock(args.run):
        _evaluate_in(args.run)


def _evaluate_in(run):
    config = _read_config(run)
    embedding_model = _load_embedding_model(run)
    if config["dataset"].startswith("pairs:"):
        data = _pairs_data(config["dataset"][len("pairs:"):], config)
    else:
        data = _labelled_data(config)
    metrics = _evaluate(config, embedding_model, data)
    previous = os.path.join(run, "metrics.json")
    if os.path.exists(previous):
        with open(previous) as handle:
            metrics["train_seconds"] = json.load(handle).get("train_seconds")
    write_json(previous, metrics)
    _print_table(metrics, run)


def _evaluate(config, embedding_model, data):
    """Metrics of a trained embedding model; also writes the evaluation plots."""
    out, distance = config["out"], config["distance"]
    if "validation" in data:
        return _evaluate_pairs(config, embedding_model, data["validation"])
    images, labels = data["x_test"], data["y_test"]
    embeddings = embedding_model.predict(images, batch_size=512, verbose=0)
    metrics = evaluation.retrieval_metrics(embeddings, labels, distance=distance)
    pairs, is_same = verification_pair_indices(labels, seed=config["seed"])
    is_same = np.asarray(is_same).astype(bool)
    distances = evaluation.paired_distances(embeddings[pairs[:, 0]], embeddings[pairs[:, 1]], distance)
    metrics["verification"] = evaluation.verification_metrics(distances, is_same)
    metrics["raw_pixel_baseline"] = evaluation.raw_pixel_baseline(images, labels)
    metrics["backend"] = keras.backend.backend()
    plots.plot_distance_boxplot(distances[is_same], distances[~is_same], os.path.join(out, "distances.png"))
    triplets = offline_triplet_indices(labels, seed=config["seed"])[::997][:5]
    plots.plot_triplets(*take(images, triplets), os.path.join(out, "triplets.png"))
    plots.plot_embeddings_2d(
        embeddings, labels, os.path.join(out, "embeddings_pca.png"), class_names=config.get("class_names")
    )
    return metrics


def _evaluate_pairs(config, embedding_model, validation):
    """Seeds 003/004: positive vs negative distances and cosine similarities on held-out pairs."""
    anchor, positive, negative = validation.triplet_arrays()
    predict = lambda images: embedding_model.predict(images, batch_size=32, verbose=0)  # noqa: E731
    anchor_e, positive_e, negative_e = predict(anchor), predict(positive), predict(negative)
    distance = config["distance"]
    positive_d = evaluation.paired_distances(anchor_e, positive_e, distance)
    negative_d = evaluation.paired_distances(anchor_e, negative_e, distance)
    is_same = np.concatenate([np.ones_like(positive_d, bool), np.zeros_like(negative_d, bool)])
    metrics = evaluation.verification_metrics(np.concatenate([positive_d, negative_d]), is_same)
    cosine = lambda x, y: 1.0 - evaluation.paired_distances(x, y, "cosine")  # noqa: E731
    metrics["mean_cosine_similarity_anchor_positive"] = float(np.mean(cosine(anchor_e, positive_e)))
    metrics["mean_cosine_similarity_anchor_negative"] = float(np.mean(cosine(anchor_e, negative_e)))
    metrics["num_validation_pairs"] = int(len(anchor))
    metrics["backend"] = keras.backend.backend()
    out = config["out"]
    plots.plot_distance_boxplot(positive_d, negative_d, os.path.join(out, "distances.png"))
    plots.plot_triplets(anchor, positive, negative, os.path.join(out, "triplets.png"))
    return metrics


# --------------------------------------------------------------------------
# embed, similarity
# --------------------------------------------------------------------------


def embed(args):
    config = _read_config(args.run)
    embeddings = _embed_files(args.run, config, args.images)
    np.save(args.output, embeddings)
    print(f"Wrote {embeddings.shape[0]} embeddings of dimension {embeddings.shape[1]} to {args.output}")


def similarity(args):
    config = _read_config(args.run)
    first, second = _embed_files(args.run, config, [args.image1, args.image2])
    distance = float(evaluation.paired_distances(first[None], second[None], config["distance"])[0])
    cosine = 1.0 - float(evaluation.paired_distances(first[None], second[None], "cosine")[0])
    print(f"{config['distance']} distance: {distance:.6f}")
    print(f"cosine similarity: {cosine:.6f}")


def _embed_files(run, config, paths):
    input_shape = config["input_shape"]
    grayscale = len(input_shape) == 2
    images = np.stack([load_image(path, tuple(input_shape[:2]), grayscale=grayscale) for path in paths])
    return _load_embedding_model(run).predict(images, verbose=0)


# --------------------------------------------------------------------------
# export
# --------------------------------------------------------------------------

EXPORT_FORMATS = {"savedmodel": "tf_saved_model", "onnx": "onnx"}
EXPORT_NAMES = {"savedmodel": "embedding_savedmodel", "onnx": "embedding.onnx"}
# What keras' Model.export needs besides the backend, as (module, pip package):
# SavedModel goes through TensorFlow (jax2tf on JAX, torch_xla's StableHLO on
# PyTorch); ONNX through tf2onnx, jax2onnx or torch.onnx, which all write with onnx.
EXPORT_REQUIREMENTS = {
    ("savedmodel", "jax"): (("tensorflow", "tensorflow-cpu"),),
    ("savedmodel", "tensorflow"): (),
    ("savedmodel", "torch"): (("tensorflow", "tensorflow-cpu"), ("torch_xla", "torch-xla")),
    ("onnx", "jax"): (("onnx", "onnx"), ("jax2onnx", "jax2onnx")),
    ("onnx", "tensorflow"): (("onnx", "onnx"), ("tf2onnx", "tf2onnx")),
    ("onnx", "torch"): (("onnx", "onnx"),),
}


def export(args):
    """RUN/embedding.keras as a TF SavedModel folder or an ONNX file, for serving without keras.

    The artifact maps a batch of raw images (any batch size, float32, as
    `embed` reads them) to their embeddings. A SavedModel's endpoint is
    ``tf.saved_model.load(path).serve(images)``; an ONNX file has one input.
    """
    config = _read_config(args.run)
    check_export_requirements(args.format, keras.backend.backend())
    model = _load_embedding_model(args.run)
    output = args.output or os.path.join(args.run, EXPORT_NAMES[args.format])
    # The torch exporter wants a model that has been called once.
    model(np.zeros((1, *config["input_shape"]), "float32"), training=False)
    if args.format == "onnx" and keras.backend.backend() == "jax" and _has_max_pooling(model):
        print(
            "siamese-k3: warning: on jax, ONNX export (jax2onnx) writes max pooling as a MaxPool over "
            "4 spatial axes, which onnxruntime cannot run; for onnxruntime export with --backend "
            "tensorflow or --backend torch (embedding.keras loads on any backend).",
            file=sys.stderr,
        )
    model.export(output, format=EXPORT_FORMATS[args.format], verbose=False)
    print(f"Wrote {output} ({args.format}, exported on {keras.backend.backend()})")


def _has_max_pooling(model):
    pooling = (keras.layers.MaxPooling1D, keras.layers.MaxPooling2D, keras.layers.MaxPooling3D)
    return any(isinstance(layer, pooling) for layer in model._flatten_layers())


def check_export_requirements(export_format, backend):
    """Raise SiameseK3Error naming every package `export_format` needs on `backend` that is missing."""
    missing = [
        (module, package)
        for module, package in EXPORT_REQUIREMENTS[export_format, backend]
        if importlib.util.find_spec(module) is None
    ]
    if missing:
        modules, packages = zip(*missing)
        raise SiameseK3Error(
            f"exporting {export_format} on the {backend} backend needs {', '.join(modules)}: "
            f"pip install {' '.join(packages)} (or export with another --backend: embedding.keras loads on any)."
        )


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------


def _read_config(run):
    path = os.path.join(run, "config.json")
    if not os.path.isfile(path):
        raise SiameseK3Error(f"{run} is not a run folder (no config.json): give a folder written by `siamese-k3 train`.")
    with open(path) as handle:
        config = json.load(handle)
    config["out"] = run
    return config


def _load_embedding_model(run):
    """RUN/embedding.keras, refused when the run failed or its weights are not all finite."""
    status_path = os.path.join(run, "status.json")
    if os.path.isfile(status_path):
        with open(status_path) as handle:
            status = json.load(handle)
        if status.get("state") == "failed":
            raise SiameseK3Error(
                f"{run} holds a failed run ({status.get('message', 'no reason recorded')}): "
                "train it again with --overwrite."
            )
    path = os.path.join(run, "embedding.keras")
    if not os.path.isfile(path):
        raise SiameseK3Error(f"{path} is missing: the run did not finish; train it again with the same --out.")
    model = keras.models.load_model(path)
    bad = [weight.path for weight in model.weights if not np.all(np.isfinite(keras.ops.convert_to_numpy(weight)))]
    if bad:
        raise SiameseK3Error(
            f"{path} has non-finite weights (NaN or inf) in {', '.join(bad[:3])}"
            f"{' and others' if len(bad) > 3 else ''}: the training diverged; train it again with "
            "--overwrite and a lower --learning-rate."
        )
    return model


def _print_table(metrics, out):
    rows = []
    if "map_at_r" in metrics:
        baseline = metrics["raw_pixel_baseline"]
        rows.append(("metric", "model", "raw pixels"))
        for key in ("precision_at_1", "r_precision", "map_at_r", "recall_at_5", "recall_at_10"):
            rows.append((key, f"{metrics[key]:.4f}", f"{baseline[key]:.4f}"))
        verification = metrics["verification"]
    else:
        rows.append(("metric", "model", ""))
        verification = metrics
        for key in ("mean_cosine_similarity_anchor_positive", "mean_cosine_similarity_anchor_negative"):
            rows.append((key, f"{metrics[key]:.4f}", ""))
    rows.append(("pair best_accuracy", f"{verification['best_accuracy']:.4f}", ""))
    rows.append(("pair roc_auc", f"{verification['roc_auc']:.4f}", ""))
    if metrics.get("train_seconds") is not None:
        rows.append(("train seconds", f"{metrics['train_seconds']:.0f}", ""))
    width = max(len(row[0]) for row in rows)
    for name, model_value, baseline_value in rows:
        print(f"{name:<{width}}  {model_value:>8}  {baseline_value:>10}")
    print(f"Run folder: {out}")
