"""`siamese-k3 train --recipe strong` with some of the recipe's values replaced: how its alternatives were measured.

    python -m benchmarks.recipe_variant '{"backbone_options": {"filters": [32, 64, 128]}}' --out runs/no_flip --quiet

The backend is KERAS_BACKEND's: `--backend` is refused, since a different one
would restart `siamese-k3` in a new interpreter without the variant.

The JSON (argv[1]) is merged into `siamese_k3.runs.recipes.LABELLED["strong"]`;
every further argument goes to `siamese-k3 train` as usual. The values end up
in the run's config.json, as for any run.
"""

import json
import sys

from siamese_k3 import cli
from siamese_k3.runs import recipes


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if any(argument == "--backend" or argument.startswith("--backend=") for argument in argv[1:]):
        # --backend restarts `siamese-k3` in a new interpreter, which would train the unchanged recipe.
        sys.exit("recipe_variant: choose the backend with KERAS_BACKEND=<backend>, not --backend "
                 "(a different --backend restarts the command without the variant).")
    recipes.LABELLED["strong"] = {**recipes.LABELLED["strong"], **json.loads(argv[0])}
    print("recipe:", recipes.LABELLED["strong"], flush=True)
    return cli.main(["train", "--recipe", "strong", *argv[1:]])


if __name__ == "__main__":
    sys.exit(main())
