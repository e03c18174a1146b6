"""Training and data: data sets by name, augmentation, the training loop, checkpoints.

Knows nothing of morphing: it trains any ``torch.nn.Module``.
"""

from morphnas.train.augment import AUGMENTS, affine_augment, augment, cifar_augment
from morphnas.train.checkpoint import load_checkpoint, read_weights, save_checkpoint
from morphnas.train.data import DATASETS, Dataset, Split, download_dataset, load_dataset
from morphnas.train.trainer import (
    DeviceSettings,
    EpochReport,
    TrainConfig,
    TrainResult,
    device_settings,
    evaluate,
    pinned_threads,
    train,
)

__all__ = [
    "AUGMENTS", "DATASETS", "Dataset", "DeviceSettings", "EpochReport", "Split", "TrainConfig", "TrainResult",
    "affine_augment", "augment", "cifar_augment", "device_settings", "download_dataset", "evaluate",
    "load_checkpoint", "load_dataset", "pinned_threads", "read_weights", "save_checkpoint", "train",
]
