"""The data side of training: stores and splits (`pipelines.reader`, the one store reader) and
shuffled, cropped batches (`pipelines.batches`), under the names the trainer uses."""

from pipelines.batches import (
    AFFINE_KEY, CROP_KEY, PERMUTE_KEY, REPOSITION_KEY, SHIFT_KEY, SHUFFLE_KEY, Batches, check_crop, check_permute, check_reposition, check_shift,
    crop_images, shift_images,
)
from pipelines.reader import SPLITS, Split, StoreError, StoreInfo, open_store

__all__ = ["AFFINE_KEY", "CROP_KEY", "PERMUTE_KEY", "REPOSITION_KEY", "SHIFT_KEY", "SHUFFLE_KEY", "SPLITS", "Batches", "Split", "StoreError",
           "StoreInfo", "check_crop", "check_permute", "check_reposition", "check_shift", "crop_images", "open_store", "shift_images"]
