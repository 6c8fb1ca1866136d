"""The Python API: `train` a run, `Run.open` one, and use it (metrics, embeddings, similarity, export).

    import siamese_k3

    run = siamese_k3.train(recipe="strong", out="runs/strong")   # or train(TrainConfig(...), out=...)
    run.metrics["map_at_r"]
    run.history["loss"]
    vectors = run.embed(["a.png", "b.png"])                    # float32 [2, 64]
    run.similarity("a.png", "b.png")                          # {"euclidean": 0.41, ..., "same": True}
    run.build_index(dataset="fashion_mnist:train")            # RUN/index/
    run.search(["query.png"], k=10)                           # a siamese_k3.search.SearchResult
    run.calibrate(target_precision=0.95)                      # RUN/calibration.json
    run.export("onnx")
    same = siamese_k3.Run.open("runs/strong")

Every command of the CLI is one of these calls; the CLI only parses, calls
and prints. Errors follow `siamese_k3.errors`.
"""

import dataclasses
import os

from siamese_k3.search import calibration as calibrating
from siamese_k3.runs import export as exporting
from siamese_k3.search import index as indexing
from siamese_k3.runs import data as run_data
from siamese_k3.runs import evaluation as run_evaluation
from siamese_k3.runs import inference, training
from siamese_k3.runs.config import TrainConfig
from siamese_k3.errors import RunFolderError, SiameseK3Error
from siamese_k3.runs.folder import FINISHED, INDEX, RunFolder, check_finite_weights, load_model


def train(config=None, *, out=None, overwrite=False, data_parallel=False, collective_timeout=600, verbose="auto",
          **options):
    """Train a run and return it as a `Run` (resuming it if `out` holds the same unfinished run).

    Give a `TrainConfig`, or its fields as keyword arguments (``recipe="strong",
    epochs=2, ...``; unset fields take the recipe's values). `out` is the run
    folder (default ``runs/<dataset>``); `overwrite` replaces a finished run
    there (only once everything is checked). `verbose` is keras' (0: no progress
    bar). `data_parallel` splits each batch over every device and process with
    the backend's own engine (`siamese_k3.parallel.DataParallel`); every process
    trains and the chief's return value is the run (the others get None).
    """
    if config is None:
        config = TrainConfig.from_recipe(**options)
    elif options:
        raise TypeError(
            f"give either a TrainConfig or its fields as keyword arguments, not both (got {', '.join(sorted(options))})."
        )
    folder, metrics = training.train_run(
        config, out=out, overwrite=overwrite, data_parallel=data_parallel, collective_timeout=collective_timeout,
        verbose=verbose,
    )
    return Run(folder.path) if metrics is not None else None


class Run:
    """A run folder written by `train` (see `siamese_k3.runs.folder` for its files)."""

    def __init__(self, path):
        if not _is_path(path):
            raise TypeError(f"a run folder is a path (str or os.PathLike), not {type(path).__name__}.")
        self.folder = RunFolder(path)
        self._facts = _checked_facts(self.folder)
        self.folder.check_version()  # a folder of another format or state is refused, not misread
        self._embedding_model = None

    @classmethod
    def open(cls, path):
        """The run in folder `path`; `RunFolderError` when it is not a run folder, its config is damaged (not
        JSON, or without the run's distance and input shape), or it was written in a format (config.json
        ``format``) or state (status.json) this version does not read."""
        return cls(path)

    def __repr__(self):
        return f"Run({self.path!r}, state={self.state!r})"

    @property
    def path(self):
        return self.folder.path

    @property
    def config(self):
        """The run's `TrainConfig`."""
        return TrainConfig.from_dict(self._facts)

    @property
    def backend(self):
        """The backend the run trained on."""
        return self._facts.get("backend")

    @property
    def input_shape(self):
        return tuple(self._facts["input_shape"])

    @property
    def state(self):
        """``finished``, ``unfinished``, ``failed``, or None (no status.json)."""
        return self.folder.state()

    @property
    def metrics(self):
        """metrics.json as a dict (`RunFolderError` if the run has none yet)."""
        return self.folder.read_json("metrics.json")

    @property
    def history(self):
        """history.json: {metric: [value per epoch]}."""
        return self.folder.read_json("history.json")

    def embedding_model(self):
        """The embedding model (raw 0-255 images in, embeddings out), checked finite; loaded once."""
        if self._embedding_model is None:
            self.folder.require_usable()
            path = self.folder.file("embedding.keras")
            model = load_model(path)
            check_finite_weights(model, path)
            self._embedding_model = model
        return self._embedding_model

    def evaluate(self, plots=True):
        """Recompute the metrics on the run's held-out data, write metrics.json (and the plots); return them.

        Only a finished run (or one without status.json) is evaluated: an
        unfinished one is finished by rerunning its train command.
        """
        model = self.embedding_model()
        config = self.config
        data, data_facts = run_data.load_data(config)
        facts = {**self._facts, **data_facts}
        result = run_evaluation.evaluate(config, facts, model, data)
        if plots:
            result.write_plots(self.path)
        metrics = result.metrics
        previous = self.folder.read_json("metrics.json", required=False) or {}
        metrics["train_seconds"] = previous.get("train_seconds")
        self.folder.write_json("metrics.json", metrics)
        if self.folder.state() is None:
            self.folder.write_status(FINISHED, facts.get("backend"))
        return metrics

    def embed(self, images, batch_size=256, verbose=0):
        """float32 embeddings [N, D] of `images`: image file paths, raw 0-255 pixels [N, *input_shape], or a
        list mixing paths and single images; no images give an empty [0, D] array.

        Files are read by `siamese_k3.data.load_image`'s rule and must have the
        run's image size, except for a pairs:DIR run, which resizes them as it
        did in training. `SiameseK3Error` for a shape that is not the run's, a
        non-numeric array, or NaN / inf pixels (it names the images); see
        `siamese_k3.runs.inference.as_pixels`.
        """
        return inference.embed(self.embedding_model(), images, self.input_shape, batch_size=batch_size,
                               verbose=verbose, resize=self.config.pairs_dir is not None)  # fmt: skip

    def similarity(self, first, second):
        """{run's distance: value, "cosine_similarity": value} of two images (paths or arrays), and the verdict.

        With a calibration (calibration.json, written by `train` and `calibrate`)
        it adds ``"same"`` (distance <= the threshold), ``"threshold"`` and
        ``"expected_precision"``.
        """
        embeddings = self.embed([first, second])
        values = inference.similarity(embeddings[0], embeddings[1], self._facts["distance"])
        calibration = self.calibration()
        if calibration is not None:
            answer = calibrating.match(values[self._facts["distance"]], calibration)
            values.update(same=bool(answer.is_same), threshold=answer.threshold,
                          expected_precision=answer.expected_precision)  # fmt: skip
        return values

    # ------------------------------------------------------------------ search, calibrate

    def calibration(self):
        """The run's `Calibration` (calibration.json), or None when it has none."""
        path = self.folder.file("calibration.json")
        if not os.path.isfile(path):
            return None
        try:
            calibration = calibrating.Calibration.load(path)
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise RunFolderError(f"{path} is damaged ({' '.join(str(error).split())}): {self._calibrate_advice}") from None
        fingerprint = self.folder.fingerprint()
        if calibration.fingerprint not in (None, fingerprint):  # None: calibrated before fingerprints (0.3)
            raise RunFolderError(
                f"{path} was chosen with another model than {self.folder.file('embedding.keras')} (fingerprint "
                f"{calibration.fingerprint}, not {fingerprint}): {self._calibrate_advice}"
            )
        return calibration

    @property
    def _calibrate_advice(self):
        return f"calibrate this run again with `siamese-k3 calibrate {self.path}` (Run.calibrate)."

    def calibrate(self, target_precision=None, target_recall=None):
        """Choose the "same or not" threshold on one half of the test split (pairs runs: the held-out pairs).

        For `target_precision` (the largest threshold reaching it), `target_recall`,
        or the best F1; writes calibration.json and calibration.png, and returns
        ``(Calibration, summary)``, the summary with the precision and recall
        measured at that threshold on the other half.
        """
        with self.folder.lock():  # one writer: calibrate, index and evaluate of one run wait for each other
            return self._calibrate(target_precision, target_recall)

    def _calibrate(self, target_precision, target_recall):
        model, config = self.embedding_model(), self.config
        data, data_facts = run_data.load_data(config)
        facts = {**self._facts, **data_facts}
        if "validation" in data:  # pairs: the held-out pairs' distances (same: anchor-positive)
            same, different = run_evaluation.evaluate(config, facts, model, data).distances
            is_same = [True] * len(same) + [False] * len(different)
            calibration = calibrating.calibrate([*same, *different], is_same, target_precision, target_recall,
                                                distance=config.distance)  # fmt: skip
            summary = {"threshold": calibration.threshold, "precision": calibration.precision,
                       "recall": calibration.recall}  # fmt: skip
        else:
            embeddings = self.embed(data["x_test"], batch_size=512)
            calibration, summary = run_evaluation.calibrate_held_out(
                embeddings, data["y_test"], config.distance, config.seed, target_precision, target_recall
            )
        fingerprint = self.folder.fingerprint()
        run_evaluation.write_calibration(calibration, self.path, fingerprint=fingerprint)
        return dataclasses.replace(calibration, fingerprint=fingerprint), summary

    def build_index(self, images=None, labels=None, ids=None, dataset=None, method="exact", engine="auto",
                    params=None, batch_size=256, verbose=0):  # fmt: skip
        """Embed a gallery and save its `SimilarityIndex` as RUN/index/; return the index.

        The gallery: `dataset` (``"fashion_mnist"`` or ``"fashion_mnist:train"``,
        the split defaulting to test; ids are ``"fashion_mnist:test:ROW"``), or
        `images` (file paths, ids default to the paths; a folder stands for its
        image files, subfolders included, as `inference.image_files` lists them; or arrays
        of raw pixels with optional `labels` and `ids`). `method`: ``exact``,
        ``hnsw``, ``ivf``.
        """
        with self.folder.lock():  # one writer: two index runs into one run never mix their files
            return self._build_index(images, labels, ids, dataset, method, engine, params, batch_size, verbose)

    def _build_index(self, images, labels, ids, dataset, method, engine, params, batch_size, verbose):
        self.embedding_model()  # an unusable run is refused before the gallery is read
        if dataset is not None:
            images, labels, ids = _dataset_gallery(dataset, self.config)
        elif images is None:
            raise SiameseK3Error("build_index needs a gallery: images (paths or arrays) or dataset='NAME[:split]'.")
        elif _is_path(images) or (isinstance(images, (list, tuple)) and images and all(map(_is_path, images))):
            images = inference.image_files([images] if _is_path(images) else images)[0]
            ids = [os.fspath(path) for path in images] if ids is None else ids
        index = indexing.SimilarityIndex(self._facts["distance"], method=method, engine=engine, params=params,
                                         fingerprint=self.folder.fingerprint())  # checked before the work  # fmt: skip
        index.add(self.embed(images, batch_size=batch_size, verbose=verbose), labels=labels, ids=ids)
        index.save(self.folder.file(INDEX))
        return index

    def index(self):
        """The run's saved `SimilarityIndex` (RUN/index), refused when another run's model built it."""
        folder = self.folder.file(INDEX)
        if not os.path.isdir(folder):
            raise RunFolderError(f"{self.path} has no similarity index: {self._index_advice('build one')}")
        try:
            index = indexing.SimilarityIndex.load(folder)
        except SiameseK3Error as error:
            what = str(error).rsplit(": ", 1)[0]  # the library's advice (save it again) replaced by the command
            raise RunFolderError(f"{what}: {self._index_advice('rebuild it')}") from None
        if index.fingerprint != self.folder.fingerprint():
            raise RunFolderError(
                f"the index in {folder} was built by another model than {self.folder.file('embedding.keras')} "
                f"(fingerprint {index.fingerprint}, not {self.folder.fingerprint()}): {self._index_advice('rebuild it')}"
            )
        return index

    def _index_advice(self, what):
        return (
            f"{what} with `siamese-k3 index {self.path} --dataset NAME[:split]` or "
            f"`siamese-k3 index {self.path} --images DIR` (Run.build_index)."
        )

    def search(self, queries, k=10):
        """The `k` nearest gallery items of each query (image paths or raw pixels, as `embed` takes them):
        a `SearchResult`."""
        return self.index().search(self.embed(queries), k=k)

    def images(self, references):
        """(raw pixels [N, ...], labels [N] or None) of image files and dataset rows written NAME:split:ROW.

        `references` may mix the two (one path alone is a list of one). Files
        are read as the run's model reads them (their size must be the run's,
        except for pairs:DIR runs); dataset rows come with their labels, which
        are returned when every reference is a row.
        """
        import numpy as np

        references = [references] if _is_path(references) else list(references)
        resize = self.config.pairs_dir is not None
        images, labels, splits = [], [], {}
        for reference in references:
            if not _is_path(reference):
                raise TypeError(
                    f"images are named by paths or NAME:split:ROW strings, not {type(reference).__name__}."
                )
            reference = os.fspath(reference)
            if os.path.exists(reference) or reference.count(":") != 2:
                images.append(inference.load_images([reference], self.input_shape, resize=resize)[0])
                labels.append(None)
                continue
            name, split, row = reference.split(":")
            if not row.isdigit():
                raise SiameseK3Error(f"{reference!r} is neither an image file nor a dataset row NAME:train|test:ROW.")
            if (name, split) not in splits:  # each split read once
                splits[name, split] = _dataset_split(name, split, self.config, repr(reference))
            x, y = splits[name, split]
            if int(row) >= len(y):
                raise SiameseK3Error(f"{reference!r}: {name}:{split} has {len(y)} rows.")
            images.append(x[int(row)])
            labels.append(y[int(row)])
        if not images:
            return np.zeros((0, *self.input_shape), np.float32), None
        known = all(label is not None for label in labels)
        return np.stack(images), np.asarray(labels) if known else None

    def neighbour_images(self, result):
        """[Q, k, ...] images of a `SearchResult`'s neighbours, read from the files or dataset rows their ids
        name; None when the ids name neither (arrays indexed without ids)."""
        import numpy as np

        ids = [list(row) for row in (result.ids if result.ids is not None else [])]
        flat = sorted({item for row in ids for item in row if item is not None})
        if not flat or not all(isinstance(item, str) for item in flat):
            return None
        if not all(os.path.isfile(item) or item.count(":") == 2 for item in flat):
            return None
        loaded = dict(zip(flat, self.images(flat)[0]))
        blank = np.zeros_like(next(iter(loaded.values())))
        return np.stack([[loaded.get(item, blank) for item in row] for row in ids])

    def export(self, export_format, output=None):
        """Write the embedding model as ``"savedmodel"`` or ``"onnx"``; the path written.

        Default path: RUN/embedding_savedmodel or RUN/embedding.onnx.
        """
        import keras

        if export_format in exporting.EXPORT_FORMATS:
            exporting.check_export_requirements(export_format, keras.backend.backend())
        output = output or self.folder.file(exporting.EXPORT_NAMES.get(export_format, "embedding"))
        return exporting.export_model(self.embedding_model(), self.input_shape, export_format, output)


def _is_path(value):
    return isinstance(value, (str, os.PathLike))


RUN_FACTS = ("distance", "input_shape")  # what using a run needs from its config.json


def _checked_facts(folder):
    """config.json of `folder`, refused (`RunFolderError`) when it lacks what using the run needs."""
    from siamese_k3.checks import DISTANCES

    facts = folder.config()
    path = folder.file("config.json")
    missing = [key for key in RUN_FACTS if key not in facts]
    if missing:
        raise RunFolderError(
            f"{path} has no {' and no '.join(map(repr, missing))}: it was edited or not written by "
            "`siamese-k3 train`; restore it, or train the run again."
        )
    if facts["distance"] not in DISTANCES:
        raise RunFolderError(
            f"{path} names the distance {facts['distance']!r}: expected one of {', '.join(DISTANCES)}; restore it, "
            "or train the run again."
        )
    shape = facts["input_shape"]
    if not (isinstance(shape, list) and len(shape) in (2, 3)
            and all(isinstance(size, int) and not isinstance(size, bool) and size > 0 for size in shape)):  # fmt: skip
        raise RunFolderError(
            f"{path} gives the input shape {shape!r}: expected [height, width] or [height, width, channels]; "
            "restore it, or train the run again."
        )
    return facts


def _dataset_split(name, split, config, argument):
    """(images, labels) of a dataset's train or test split; `argument` names what the user wrote, for errors."""
    from siamese_k3.data import load_dataset

    if split not in ("train", "test"):
        raise SiameseK3Error(f"{argument}: the split must be train or test, as in fashion_mnist:train.")
    data_dir = config.data_dir if name == config.dataset else None
    (x_train, y_train), (x_test, y_test) = load_dataset(name, data_dir=data_dir)
    return (x_train, y_train) if split == "train" else (x_test, y_test)


def _dataset_gallery(dataset, config):
    """(images, labels, ids) of ``NAME[:split]`` (split: train or test, default test)."""
    name, _, split = dataset.partition(":")
    split = split or "test"
    images, labels = _dataset_split(name, split, config, f"dataset={dataset!r}")
    return images, labels, [f"{name}:{split}:{row}" for row in range(len(labels))]
