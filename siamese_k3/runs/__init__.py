"""A training run, from its configuration to the folder it leaves: what `siamese-k3 train` and `siamese_k3.train` do.

Modules, each importing only those above it in this list (and every package below `runs` in
tests/test_package.py's layers: models, callbacks, search, data, losses, backend, ...):

- `recipes`: the named sets of defaults (``default``, ``strong``), as values;
- `config`: `TrainConfig`, every option of a run, checked, with its recipe's defaults under it;
- `interrupts`: `stop_on_signals`, SIGINT and SIGTERM ending training within seconds;
- `inference`: images in, float32 embeddings out (``embed``), and pair distances (``similarity``);
- `export`: a run's embedding model as SavedModel, ONNX or TorchScript;
- `evaluation`: a finished run's metrics, plots and calibration on its held-out data;
- `folder`: the run folder, its files written whole and its state (`RunFolder`);
- `training`: `train_run`, which ties them together: data, model, `fit`, evaluation, the folder.

`siamese_k3.api` and `siamese_k3.cli` sit on top; nothing below imports `runs`.
"""
