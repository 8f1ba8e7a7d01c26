"""PNG pictures of a run, drawn with Pillow (no plotting library needed).

    learning_curves.png   loss and the task's selection metric per epoch, train and val (log.csv)
    predictions.png       test images with the true and the predicted label or number
    glimpses.png          RAM, DRAM: each test image with its glimpse path (numbered; DRAM's
                          glimpses coloured per digit), the finest glimpse square at every step
                          and all scales at the last one; beside it, the retina's patches at every
                          step (one row per scale)
    transforms.png        STN: each test image beside its transformed output

Every picture of test images is captioned with the true and the predicted label (a number on
sequence stores), decoded by the model's task.

Which model pictures are drawn follows from the model's outputs ("locations" or
"transformed"), not from its name.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import keras
import numpy as np
from PIL import Image, ImageDraw, ImageFont

WHITE, BLACK, GREY = (255, 255, 255), (0, 0, 0), (200, 200, 200)
TRAIN_COLOUR, VAL_COLOUR = (31, 119, 180), (214, 39, 40)


def plot_run(out, model, split, *, count: int = 6, batch_size: int | None = None, crop=None) -> list[Path]:
    """Every picture that applies to the run in `out`; returns the files written.

    The first `count` test images (centre-cropped to `crop`, as evaluated) are drawn. They are
    predicted as part of a batch of `batch_size` (the evaluation's), so a compiled predict
    function is reused, not rebuilt.
    """
    from visatt_models.data import crop_images
    from visatt_models.tasks import decode_numpy, head_log_probs

    out = Path(out)
    written = [learning_curves(out / "log.csv", out / "learning_curves.png", model.task.selection_metric)]
    images, labels = split.read(np.arange(min(max(count, batch_size or 0), len(split))))  # (n, H, W, C) uint8
    if crop is not None:
        images = crop_images(images, crop)
    outputs = {k: keras.ops.convert_to_numpy(v)[:count] for k, v in model.predict_on_batch(images).items()}
    images, labels = images[:count], labels[:count]
    task = model.task
    predicted = decode_numpy(task, head_log_probs(task, outputs))
    captions = [f"label {task.format(y)}  predicted {task.format(p)}" for y, p in zip(labels, predicted)]
    written.append(predictions(images, captions, out / "predictions.png"))
    if "locations" in outputs and hasattr(model.config, "patch_size"):
        locations = outputs["locations"]  # (n, T, 2)
        group = getattr(model.config, "glimpses_per_digit", 1)  # DRAM: the glimpses of each digit in one colour
        written.append(glimpses(images, captions, locations, model.config.patch_size, model.config.scales, out / "glimpses.png", group=group))
    if "transformed" in outputs:
        transformed = outputs["transformed"]  # (n, h, w, C) in [0, 1]
        written.append(transforms(images, captions, transformed, out / "transforms.png"))
    return written


def _font(size: int = 12):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one fixed size
        return ImageFont.load_default()


def _read_log(path: Path) -> dict[str, list[float]]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    columns = {k: [] for k in (rows[0] if rows else {})}
    for row in rows:
        for k, v in row.items():
            columns[k].append(float(v) if v not in ("", None) else math.nan)
    return columns


def learning_curves(log_csv, png, metric: str = "accuracy") -> Path:
    """Two panels, loss and `metric` against epoch, train and val."""
    log = _read_log(Path(log_csv))
    epochs = log.get("epoch", [])
    image = Image.new("RGB", (900, 380), WHITE)
    draw = ImageDraw.Draw(image)
    for i, metric in enumerate(("loss", metric)):
        series = [(name, log[key], colour) for name, key, colour in
                  (("train", metric, TRAIN_COLOUR), ("val", f"val_{metric}", VAL_COLOUR)) if key in log]
        _panel(draw, (60 + i * 450, 30, 420 + i * 450, 330), epochs, series, metric)
    image.save(png)
    return Path(png)


def _panel(draw, box, xs, series, title) -> None:
    left, top, right, bottom = box
    font = _font(12)
    draw.text(((left + right) // 2, top - 22), title, fill=BLACK, font=_font(14), anchor="mt")
    draw.rectangle(box, outline=BLACK)
    values = [v for _, ys, _ in series for v in ys if math.isfinite(v)]
    if not xs or not values:
        draw.text(((left + right) // 2, (top + bottom) // 2), "no data", fill=BLACK, font=font, anchor="mm")
        return
    lo, hi = min(values), max(values)
    pad = (hi - lo) * 0.05 or abs(hi) * 0.05 or 0.5
    lo, hi = lo - pad, hi + pad
    x_lo, x_hi = min(xs), max(xs)
    x_span = (x_hi - x_lo) or 1.0

    def point(x, y):
        px = left + (x - x_lo) / x_span * (right - left) if x_hi > x_lo else (left + right) / 2
        return px, bottom - (y - lo) / (hi - lo) * (bottom - top)

    for k in range(5):  # y ticks and grid
        y = lo + (hi - lo) * k / 4
        py = point(x_lo, y)[1]
        draw.line([(left, py), (right, py)], fill=GREY)
        draw.text((left - 4, py), f"{y:.3g}", fill=BLACK, font=font, anchor="rm")
    step = max(1, math.ceil(len(xs) / 10))
    for x in xs[::step]:
        px = point(x, lo)[0]
        draw.line([(px, bottom), (px, bottom + 4)], fill=BLACK)
        draw.text((px, bottom + 6), f"{x:g}", fill=BLACK, font=font, anchor="mt")
    draw.text(((left + right) // 2, bottom + 22), "epoch", fill=BLACK, font=font, anchor="mt")
    for i, (name, ys, colour) in enumerate(series):
        points = [point(x, y) for x, y in zip(xs, ys) if math.isfinite(y)]
        if len(points) > 1:
            draw.line(points, fill=colour, width=2)
        for px, py in points:
            draw.ellipse([px - 3, py - 3, px + 3, py + 3], fill=colour)
        draw.line([(right - 70, top + 12 + 16 * i), (right - 50, top + 12 + 16 * i)], fill=colour, width=2)
        draw.text((right - 45, top + 12 + 16 * i), name, fill=BLACK, font=font, anchor="lm")


def _to_rgb(image: np.ndarray, size: int) -> Image.Image:
    """(H, W, C) uint8 or float in [0, 1] -> RGB picture scaled to `size` px high (nearest)."""
    if image.dtype != np.uint8:
        image = np.clip(np.asarray(image) * 255.0, 0, 255).astype(np.uint8)
    picture = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).convert("RGB")
    h, w = image.shape[:2]
    return picture.resize((max(1, round(w * size / h)), size), Image.NEAREST)


def glimpses(images, captions, locations, patch_size, scales, png, *, size: int = 240, group: int = 1) -> Path:
    """Glimpse paths (locations (n, T, 2) as (y, x) in [-1, 1], the retina convention).

    group = 1: steps coloured green (first) to red (last), numbered 1..T. group = N > 1 (DRAM):
    the N glimpses before each emission share a colour and are marked "1a", "1b", ..., "2a"."""
    from visatt_models.sampler import extract_glimpses

    n, steps = locations.shape[:2]
    h, w = images.shape[1:3]
    cell = 28  # px per patch in the patch grid
    width = size * w // h + 20 + steps * (cell + 4) + 10
    height_row = max(size, scales * (cell + 4)) + 24
    canvas = Image.new("RGB", (width, n * height_row), WHITE)
    draw = ImageDraw.Draw(canvas)
    for i in range(n):
        y0 = i * height_row
        picture = _to_rgb(images[i], size)
        marks = ImageDraw.Draw(picture)  # drawn on the picture: what leaves the image is cut off
        zoom = size / h
        # Retina convention: pixel-edge coordinate c = (l + 1) * H / 2 along each axis.
        centres = [((l[1] + 1) * w / 2 * zoom, (l[0] + 1) * h / 2 * zoom) for l in locations[i]]
        colours = [_step_colour(t, steps) if group == 1 else _group_colour(t // group) for t in range(steps)]
        names = [str(t + 1) if group == 1 else f"{t // group + 1}{chr(ord('a') + t % group)}" for t in range(steps)]
        for t, (cx, cy) in enumerate(centres):
            colour = colours[t]
            for k in range(scales if t == steps - 1 else 1):  # every scale at the last glimpse
                half = patch_size * 2**k / 2 * zoom
                marks.rectangle([cx - half, cy - half, cx + half, cy + half], outline=colour)
        if len(centres) > 1:
            marks.line(centres, fill=(255, 215, 0), width=1)
        for t, (cx, cy) in enumerate(centres):
            marks.text((cx, cy), names[t], fill=colours[t], font=_font(11), anchor="mm")
        canvas.paste(picture, (0, y0))
        draw.text((2, y0 + size + 4), captions[i], fill=BLACK, font=_font(12))
        # Retina patches: (T, S, g, g, C) for this image at its T locations.
        tiled = np.repeat(images[i : i + 1].astype(np.float32) / 255.0, steps, axis=0)  # (T, H, W, C)
        patches = keras.ops.convert_to_numpy(extract_glimpses(tiled, locations[i].astype(np.float32), patch_size, scales))
        x_patches = size * w // h + 20
        for t in range(steps):
            for k in range(scales):
                patch = _to_rgb(np.clip(patches[t, k], 0, 1), cell)  # (g, g, C) block means
                canvas.paste(patch, (x_patches + t * (cell + 4), y0 + k * (cell + 4)))
    canvas.save(png)
    return Path(png)


_GROUP_COLOURS = [(0, 200, 0), (255, 140, 0), (0, 160, 255), (255, 0, 200), (255, 255, 0), (255, 60, 60)]


def _group_colour(k: int) -> tuple[int, int, int]:
    return _GROUP_COLOURS[k % len(_GROUP_COLOURS)]


def _step_colour(t: int, steps: int) -> tuple[int, int, int]:
    """Green for the first glimpse to red for the last."""
    a = t / max(1, steps - 1)
    return (int(255 * a), int(200 * (1 - a)), 0)


def transforms(images, captions, transformed, png, *, size: int = 160) -> Path:
    """Each input beside the STN's transformed image (both scaled to `size` px high)."""
    n = len(images)
    h, w = images.shape[1:3]
    th, tw = transformed.shape[1:3]
    left_w, right_w = size * w // h, size * tw // th
    row = size + 24
    canvas = Image.new("RGB", (left_w + right_w + 30, n * row + 20), WHITE)
    draw = ImageDraw.Draw(canvas)
    draw.text((2, 2), "input", fill=BLACK, font=_font(12))
    draw.text((left_w + 20, 2), "transformed", fill=BLACK, font=_font(12))
    for i in range(n):
        y0 = 20 + i * row
        canvas.paste(_to_rgb(images[i], size), (0, y0))
        canvas.paste(_to_rgb(transformed[i], size), (left_w + 20, y0))
        draw.text((2, y0 + size + 4), captions[i], fill=BLACK, font=_font(12))
    canvas.save(png)
    return Path(png)


def predictions(images, captions, png, *, size: int = 160, columns: int = 3) -> Path:
    """A grid of images (B, H, W, C), each captioned."""
    h, w = images.shape[1:3]
    cell_w, cell_h = max(size * w // h, 200), size + 24
    rows = -(-len(images) // columns)
    canvas = Image.new("RGB", (columns * (cell_w + 10), rows * cell_h), WHITE)
    draw = ImageDraw.Draw(canvas)
    for i, image in enumerate(images):
        x0, y0 = (i % columns) * (cell_w + 10), (i // columns) * cell_h
        canvas.paste(_to_rgb(image, size), (x0, y0))
        draw.text((x0 + 2, y0 + size + 4), captions[i], fill=BLACK, font=_font(12))
    canvas.save(png)
    return Path(png)
