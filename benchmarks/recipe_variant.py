"""`siamese-k3 train --recipe strong` with some of the recipe's values replaced: how its alternatives were measured.

    python -m benchmarks.recipe_variant '{"backbone_options": {"filters": [32, 64, 128]}}' --out runs/no_flip --quiet

The JSON (argv[1]) holds recipe values (`siamese_k3.runs.recipes.LABELLED["strong"]`'s
keys); each becomes the `siamese-k3 train` flag of that name
(``backbone_options`` is ``--backbone-options JSON``), placed before every further
argument, which goes to `siamese-k3 train` as usual. The recipe itself is not
changed: the variant is a run with options given, recorded in its config.json as
any run's, and ``--backend`` works as for `siamese-k3`.
"""

import json
import sys

from siamese_k3 import cli
from siamese_k3.runs import recipes


def variant_flags(variant):
    """`siamese-k3 train` flags for a dict of strong-recipe values; SystemExit naming any key that is not one."""
    if not isinstance(variant, dict):
        sys.exit(f"recipe_variant: the variant is a JSON object of recipe values, got {json.dumps(variant)}")
    unknown = sorted(set(variant) - set(recipes.LABELLED["strong"]))
    if unknown:
        sys.exit(f"recipe_variant: {', '.join(unknown)} not recipe values; the strong recipe's are "
                 f"{', '.join(recipes.LABELLED['strong'])}")
    flags = []
    for key, value in variant.items():
        flags += [f"--{key.replace('_', '-')}", json.dumps(value) if isinstance(value, (dict, list)) else str(value)]
    return flags


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        sys.exit("usage: python -m benchmarks.recipe_variant JSON [siamese-k3 train options ...]")
    try:
        variant = json.loads(argv[0])
    except ValueError as error:
        sys.exit(f"recipe_variant: the variant {argv[0]!r} is not JSON ({error})")
    command = ["train", "--recipe", "strong", *variant_flags(variant), *argv[1:]]
    print("siamese-k3", " ".join(command), flush=True)
    return cli.main(command)


if __name__ == "__main__":
    sys.exit(main())
