"""Using a trained run: the model of a run folder, and predictions on image files.

    from visatt_models import load_run, predict
    model = load_run("runs/cnn-seq")                     # best checkpoint, ready for raw uint8 images
    predict("runs/cnn-seq", ["house.png", "door.png"])   # -> ["123", "7"]

Images are taken as the store's images were made: converted to grayscale (ITU-R 601-2 luma,
PIL's "L", as the SVHN pipeline does; RGB for a colour store), resized to the store's image
size with PIL's bilinear filter, and centre-cropped when the run trained on crops. The MNIST
stores hold light digits on a black background; a photo of a dark digit on white paper is not
what those models saw.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from visatt_models.data import crop_images
from visatt_models.evaluate import mc_log_probs, predictions
from visatt_models.runs import RunError, RunFolder
from visatt_models.tasks import decode_numpy


def load_run(run_dir, *, checkpoint: str = "best"):
    """The model of the run in `run_dir` with its best-val weights (or `checkpoint="last"`).

    It takes raw uint8 images (B, h, w, C) of the run's input shape (`model.run_spec.input_shape`)
    and returns a dict of outputs; `model.task` decodes them (`visatt_models.evaluate.predictions`).
    """
    import keras

    folder = RunFolder(run_dir)
    spec = folder.load_spec()
    state = folder.load_state()
    if state is None or state["epochs_completed"] == 0:
        raise RunError(f"{run_dir}: the run has no completed epoch")
    if checkpoint not in ("best", "last"):
        raise ValueError(f"checkpoint must be 'best' or 'last', got {checkpoint!r}")
    keras.utils.set_random_seed(spec.train.seed)
    model = spec.build_model()
    model.load_weights(folder.path / state[f"{checkpoint}_checkpoint"])
    model.run_spec = spec
    return model


def read_images(paths, image_shape: tuple[int, int, int]) -> np.ndarray:
    """Image files as a store holds images: (N, H, W, C) uint8, grayscale (C = 1) or RGB (C = 3).

    Raises RunError naming the file for a missing file or one that is not an image.
    """
    height, width, channels = image_shape
    mode = {1: "L", 3: "RGB"}[channels]
    out = np.empty((len(paths), height, width, channels), np.uint8)
    for i, path in enumerate(paths):
        try:
            with Image.open(path) as image:
                pixels = image.convert(mode).resize((width, height), Image.Resampling.BILINEAR)
        except FileNotFoundError:
            raise RunError(f"{path}: no such file") from None
        except (UnidentifiedImageError, OSError) as e:
            raise RunError(f"{path}: not a readable image ({type(e).__name__})") from None
        out[i] = np.asarray(pixels).reshape(height, width, channels)
    return out


def predict(run_dir, images, *, mc_samples: int | None = None, checkpoint: str = "best", model=None) -> list[str]:
    """The predicted label or number of each image: file paths, or a uint8 array (N, H, W, C)
    of the store's image size.

    A stochastic model (RAM) averages `mc_samples` location samples (default: the run's `--mc`;
    0: one sampled pass). `model` reuses a model from `load_run`.
    """
    model = model if model is not None else load_run(run_dir, checkpoint=checkpoint)
    spec = model.run_spec
    if isinstance(images, np.ndarray):
        pixels = images.astype(np.uint8, copy=False)
        if pixels.shape[1:] != tuple(spec.image_shape):
            raise RunError(f"images of shape {pixels.shape[1:]} given; the run's store holds {tuple(spec.image_shape)}")
    else:
        pixels = read_images([Path(p) for p in images], spec.image_shape)
    if spec.train.crop is not None:
        pixels = crop_images(pixels, spec.train.crop)
    mc = spec.train.mc_samples if mc_samples is None else mc_samples
    if model.stochastic and mc > 0:
        predicted = decode_numpy(model.task, mc_log_probs(model, pixels, mc))
    else:
        predicted = predictions(model, pixels)
    return [model.task.format(p) for p in predicted]
