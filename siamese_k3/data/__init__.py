"""Data: loaders, triplet and pair builders, samplers (numpy and keras.utils.PyDataset only)."""
from siamese_k3.data.image_folders import PairedImageFolders, load_image
from siamese_k3.data.datasets import CLASS_NAMES, DatasetFormatError, DatasetNotFoundError, load_dataset, read_idx, write_idx
from siamese_k3.data.triplets import TripletBatches, offline_triplet_indices, offline_triplets, random_triplet_batch, random_triplet_indices, take, verification_pair_indices, verification_pairs
from siamese_k3.data.sampler import ClassBalancedBatches
