"""A run's data, read as its `TrainConfig` names it: a labelled dataset in memory, or left/right pair folders.

`load_data(config)` returns the data and the facts config.json records about it (input shape, class
names), before the run folder is touched, so a missing or damaged dataset fails first. Used by
training and by `siamese_k3.api` (evaluate, calibrate); imports `siamese_k3.data` and `.errors`.
"""

import logging
import warnings

from siamese_k3.data import CLASS_NAMES, PairedImageFolders, load_dataset
from siamese_k3.data.image_folders import find_pairs, split_pair_names
from siamese_k3.errors import SiameseK3Error

logger = logging.getLogger("siamese_k3")


def load_data(config, devices=1):
    """(data, facts) of the run `config` describes.

    data: {x_train, y_train, x_test, y_test}, or {train, validation} (`PairedImageFolders`) for pairs:DIR;
    facts: what config.json records about it beside the config, {input_shape, class_names}.
    `devices`: the data-parallel replicas a validation batch must split evenly over.
    """
    if config.pairs_dir:
        return _pairs_data(config, devices)
    (x_train, y_train), (x_test, y_test) = load_dataset(config.dataset, data_dir=config.data_dir)
    facts = {"input_shape": list(x_train.shape[1:]), "class_names": CLASS_NAMES.get(config.dataset.replace("-", "_"))}
    return {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}, facts


def _pairs_data(config, devices):
    directory, size = config.pairs_dir, config.image_size
    options = dict(
        target_shape=(size, size), batch_size=config.batch_size, seed=config.seed,
        validation_split=config.validation_split, skip_unpaired=config.skip_unpaired,
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train = PairedImageFolders(directory, subset="training", **options)
        # Validation batches may be smaller than training ones: a batch needs one spare pair for negatives.
        names = find_pairs(directory, skip_unpaired=config.skip_unpaired, verify=False)
        held_out = len(split_pair_names(names, config.validation_split, "validation", config.seed))
        if held_out < 1 + devices:
            raise SiameseK3Error(
                f"validation_split={config.validation_split} holds out {held_out} pair of "
                f"{len(names)} in {directory}: validation needs at least {1 + devices}; "
                "raise the validation split or add pairs."
            )
        options["batch_size"] = min(config.batch_size, held_out - 1) // devices * devices
        # `train` has just verified every image of both subsets (find_pairs checks all pairs before the split).
        validation = PairedImageFolders(directory, subset="validation", shuffle=False, verify_images=False, **options)
    for message in dict.fromkeys(str(warning.message) for warning in caught):
        logger.warning(message)
    return {"train": train, "validation": validation}, {"input_shape": [size, size, 3]}
