"""Using a trained run: the model of a run folder, and predictions on image files.

    from visatt_models import load_run, predict
    model = load_run("runs/cnn-seq")                     # best checkpoint, ready for raw uint8 images
    predict("runs/cnn-seq", ["house.png", "door.png"])   # -> ["123", "7"]

Images are taken as the store's images were made, by the SVHN pipeline's own preprocessing
of a whole image: converted to grayscale (ITU-R 601-2 luma, PIL's "L"; RGB for a colour store),
resized to the store's image size with the store's PIL filter (bilinear unless its recipe
names another), and centre-cropped when the run trained on crops. The MNIST stores hold light
digits on a black background; a photo of a dark digit on white paper is not what those models
saw.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from pipelines import svhn
from visatt_models.data import crop_images
from visatt_models.evaluate import mc_log_probs, predictions
from visatt_models.runs import RunError, RunFolder, load_weights_checked
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
    load_weights_checked(model, folder.path / state[f"{checkpoint}_checkpoint"])
    model.run_spec = spec
    return model


def read_images(paths, image_shape: tuple[int, int, int], resample: str = "bilinear") -> np.ndarray:
    """Image files as a store holds images: (N, S, S, C) uint8, grayscale (C = 1) or RGB (C = 3),
    made by the SVHN pipeline's own preprocessing of a whole image (`--no-eval-crop`).

    Raises RunError naming the file for a file that is missing or not an image.
    """
    size, width, channels = image_shape
    if size != width or channels not in (1, 3):
        raise RunError(f"predicting on files needs square grayscale or RGB store images, not {image_shape}")
    out = np.empty((len(paths), size, size, channels), np.uint8)
    for i, path in enumerate(paths):
        try:
            out[i], _ = svhn.preprocess_image(Path(path), np.zeros((0, 4)), size=size, expand=0.0, color=channels == 3,
                                              resample=resample, crop=False)
        except (svhn.SvhnError, Image.DecompressionBombError) as e:
            raise RunError(str(e)) from None
    return out


def predict(run_dir, images, *, mc_samples: int | None = None, checkpoint: str = "best", model=None,
            batch_size: int = 128) -> list[str]:
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
        pixels = read_images([Path(p) for p in images], spec.image_shape, spec.resample)
    if spec.train.crop is not None:
        pixels = crop_images(pixels, spec.train.crop)
    mc = spec.train.mc_samples if mc_samples is None else mc_samples
    numbers = []
    for start in range(0, len(pixels), batch_size):  # bounded memory, whatever the number of files
        batch = pixels[start : start + batch_size]
        if model.stochastic and mc > 0:
            predicted = decode_numpy(model.task, mc_log_probs(model, batch, mc))
        else:
            predicted = predictions(model, batch)
        numbers += [model.task.format(p) for p in predicted]
    return numbers
