"""Data: loaders, triplet and pair builders, samplers (numpy and keras.utils.PyDataset only)."""
