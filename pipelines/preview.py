"""`info` (what a store holds) and `preview` (a PNG grid of samples with labels and digit boxes)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from pipelines import store

BLANK = 10
_SPLIT_ORDER = {"train": 0, "val": 1, "test": 2, "extra": 3}


def store_info(path: Path) -> dict:
    """Splits with array shapes and dtypes, label histograms, and the store's attributes."""
    root = store.open_root(path)
    attrs = dict(root.attrs[store.ATTRS_KEY])
    splits = {}
    for split_name, group in sorted(root.groups(), key=lambda g: _SPLIT_ORDER.get(g[0], 99)):
        arrays = {name: {"shape": list(a.shape), "dtype": str(a.dtype)} for name, a in sorted(group.arrays())}
        labels = store.read(path, group, "labels")
        counts = np.bincount(labels.ravel(), minlength=BLANK + 1)[:BLANK]  # blanks are not digits
        entry = {"arrays": arrays, "samples": int(labels.shape[0]), "label_histogram": counts.tolist()}
        if "lengths" in group:
            lengths = store.read(path, group, "lengths")
            entry["length_histogram"] = np.bincount(lengths).tolist()
        splits[split_name] = entry
    return {"path": str(path), "attributes": attrs, "splits": splits}


def format_info(info: dict) -> str:
    a = info["attributes"]
    version = a.get("version") or "unlocked"
    lines = [
        f"{info['path']}: {a['dataset']} {version} ({'frozen' if a.get('frozen') else 'not frozen'}), "
        f"source {a['recipe'].get('source')}, written by visatt {a.get('package_version')}",
        f"recipe {a['recipe_digest'][:23]}...: "
        + ", ".join(f"{k}={v}" for k, v in a["recipe"].items()),
    ]
    if a.get("limit"):
        lines.append(f"limited to {a['limit']} samples per split (not a frozen version)")
    if "eval_crop" in a:
        lines.append(f"evaluation crop: {a['eval_crop']}")
    if "dropped_longer_than_5" in a:
        dropped = ", ".join(f"{k} {v}" for k, v in a["dropped_longer_than_5"].items())
        lines.append(f"numbers longer than 5 digits dropped: {dropped}")
    for split, s in info["splits"].items():
        shapes = ", ".join(f"{n} {tuple(v['shape'])} {v['dtype']}" for n, v in s["arrays"].items())
        lines.append(f"  {split:<6} {s['samples']:>7} samples: {shapes}")
        lines.append(f"         labels 0-9: {' '.join(str(c) for c in s['label_histogram'])}")
        if s.get("length_histogram"):
            lines.append(f"         lengths 0-{len(s['length_histogram']) - 1}: {' '.join(map(str, s['length_histogram']))}")
    return "\n".join(lines)


def preview(path: Path, out: Path, *, split: str = "test", count: int = 16, columns: int = 8, scale: int = 2) -> Path:
    """Write a PNG grid of the first `count` samples of `split`, digit boxes in red, labels above."""
    root = store.open_root(path)
    if split not in root:
        raise store.StoreError(f"{path}: no split {split!r} (has {', '.join(sorted(n for n, _ in root.groups()))})")
    group = root[split]
    count = min(count, group["images"].shape[0])
    images = store.read(path, group, "images", slice(count))  # (n, H, W, C)
    labels = store.read(path, group, "labels", slice(count)).reshape(count, -1)  # (n, L)
    boxes = store.read(path, group, "boxes", slice(count)).reshape(count, -1, 4)  # (n, L, 4)
    n, h, w, c = images.shape
    caption = 14
    rows = -(-n // columns)
    sheet = Image.new("RGB", (columns * (w * scale + 4), rows * (h * scale + caption + 4)), "white")
    draw = ImageDraw.Draw(sheet)
    for i in range(n):
        x0 = (i % columns) * (w * scale + 4) + 2
        y0 = (i // columns) * (h * scale + caption + 4) + caption + 2
        tile = Image.fromarray(images[i] if c == 3 else images[i, :, :, 0]).convert("RGB")
        sheet.paste(tile.resize((w * scale, h * scale), Image.Resampling.NEAREST), (x0, y0))
        for top, left, bh, bw in boxes[i]:
            if bh > 0 and bw > 0:
                draw.rectangle(
                    [x0 + left * scale, y0 + top * scale, x0 + (left + bw) * scale - 1, y0 + (top + bh) * scale - 1],
                    outline=(255, 40, 40),
                )
        text = "".join(str(int(d)) for d in labels[i] if d != BLANK)
        draw.text((x0, y0 - caption), text, fill=(0, 0, 0))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    return out
