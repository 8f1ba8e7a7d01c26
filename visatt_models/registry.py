"""The models and their presets: the one list that `visatt-train --help` and docs/models.md show.

Plain Python, no Keras import: `--help` stays fast. A model module is imported on first use.

    spec = get_model_spec("cnn")
    config = make_config(spec, preset="modern", overrides=["widths=16,32,64", "dropout=0.2"])
    model = spec.model_cls(config, task)

A preset is a description and the config fields it sets (everything else keeps the config
dataclass's default). Adding a model is one entry here and its module.

    python -m visatt_models.registry                          # the markdown table of docs/models.md
    python -m visatt_models.registry --write docs/models.md   # ... written into it
"""

from __future__ import annotations

import dataclasses
import importlib

from visatt_models.config import ConfigError, construct, parse_overrides, replace


@dataclasses.dataclass(frozen=True)
class Preset:
    description: str
    fields: dict


@dataclasses.dataclass(frozen=True)
class ModelEntry:
    module: str
    model_class: str
    config_class: str
    description: str
    presets: dict[str, Preset]


# The multi-digit CNN (`modern-seq`); `modern-seq-deep` changes only its widths.
_MODERN_SEQ = {"arch": "modern", "widths": (16, 32, 64, 128), "pool": "flatten", "dense": 256, "dropout": 0.3,
               "dense_dropout": 0.3}
# ST-CNN Single (`st-cnn-single`), which `st-cnn-ctc` extends.
_ST_CNN_SINGLE = {"loc_filters": (16, 32, 32), "loc_dense": (64,), "classifier": "modern", "cls_filters": (16, 32, 64, 128),
                  "cls_dense": 256, "dropout": 0.3}
# RAM's recipe for 60x60 (`visatt-60`), which `visatt-60-conv` extends.
_VISATT_60 = {"glimpses": 8, "patch_size": 12, "scales": 3, "core": "lstm", "std": 0.11, "reinforce_weight": 0.05}
# DRAM's CPU-sized networks and RAM's `visatt-*` policy recipe (`visatt-small`).
_DRAM_SMALL = {"conv_filters": (32, 32, 64), "glimpse_size": 256, "lstm_units": 256, "classifier_hidden": 256,
               "glimpses_per_digit": 3, "std": 0.11, "reinforce_weight": 0.05}

MODELS: dict[str, ModelEntry] = {
    "cnn": ModelEntry(
        "visatt_models.cnn", "CNN", "CNNConfig",
        "CNN baselines (`cnn.py`): a feature extractor topped by the task's heads.",
        {
            "seed": Preset(
                "The seed article's baseline, the classic Keras `mnist_cnn` (conv32 3x3, conv64 3x3, max-pool, "
                "dropout .25, dense 128, dropout .5); on a sequence store with 5 independent 11-way softmaxes, the "
                "seed article's SVHN baseline.",
                {"arch": "seed"},
            ),
            "modern": Preset(
                "A small ResNet: conv-BN-ReLU basic blocks, one stride-2 stage per width (32-64-128-256), global "
                "average pooling; ~1.2M parameters.",
                {"arch": "modern"},
            ),
            "modern-small": Preset("`modern` with half the widths (16-32-64-128).", {"arch": "modern", "widths": (16, 32, 64, 128)}),
            "modern-seq": Preset(
                "The multi-digit CNN: the `modern-small` backbone (16-32-64-128) with its final map flattened (where a "
                "digit is tells its place in the number) into a dense layer of 256, dropout 0.3 before and after it.",
                _MODERN_SEQ,
            ),
            # mnist-pairs (README): the final units of `modern-seq` see 45x45 pixels, less than two
            # digits on a 100x100 canvas may be apart; a fourth stage makes it 93x93.
            "modern-seq-deep": Preset(
                "`modern-seq` with a fourth stage of 256 (16-32-64-128-256): the final map is 7x7 on 100x100, and "
                "each of its units sees 93x93 pixels instead of 45x45, enough to relate the two digits of "
                "`mnist-pairs`.",
                {**_MODERN_SEQ, "widths": (16, 32, 64, 128, 256)},
            ),
            "modern-seq-ctc": Preset(
                "For `--head ctc`: `modern-seq`'s backbone (16-32-64-128) with its last stage halving only the "
                "height, averaged over rows into one frame per 4-pixel column band (16 on 64x64), a "
                "bidirectional LSTM of 128 units a direction over the frames and the per-frame softmax: CRNN "
                "(Shi et al. 2015). A digit is read by the same weights wherever it is on the canvas.",
                {**_MODERN_SEQ, "pool": "columns", "rnn": 128, "dense": 0},
            ),
        },
    ),
    "ram": ModelEntry(
        "visatt_models.ram", "RAM", "RAMConfig",
        "Recurrent Attention Model (Mnih et al. 2014) with the hybrid loss (`ram.py`); stochastic: tested "
        "with Monte-Carlo averaging too.",
        {
            # The paper's classification experiments (Sec. 4.1, Tables 1-2; ReLU RNN core).
            "paper-28": Preset("28x28 MNIST: 7 glimpses of one 8x8 patch, ReLU RNN core (paper: 1.07%).",
                               {"glimpses": 7, "patch_size": 8, "scales": 1, "core": "rnn"}),
            "paper-60": Preset("60x60 translated / cluttered MNIST: 8 glimpses, 3 scales of 12x12, ReLU RNN core "
                               "(paper: 1.2% / 4.04%).", {"glimpses": 8, "patch_size": 12, "scales": 3, "core": "rnn"}),
            "paper-100": Preset("100x100 cluttered MNIST: 8 glimpses, 4 scales of 12x12, ReLU RNN core (paper: 8.11%).",
                                {"glimpses": 8, "patch_size": 12, "scales": 4, "core": "rnn"}),
            "seed-100": Preset("The seed article's variant of `paper-100` with an LSTM core.",
                               {"glimpses": 8, "patch_size": 12, "scales": 4, "core": "lstm"}),
            # Short experiments on mnist-cluttered-60 (README): at full weight the REINFORCE term, summed
            # over the glimpses and scaled by 1/std, swamps the classifier (chance level); detached, the
            # early glimpses hover around the centre.
            "visatt-60": Preset("Our recipe for 60x60: `paper-60` with an LSTM core, std 0.11 and the policy gradient "
                                "reaching the core at weight 0.05.",
                                _VISATT_60),
            "visatt-100": Preset("Our recipe for 100x100: `paper-100` with the changes of `visatt-60`.",
                                 {"glimpses": 8, "patch_size": 12, "scales": 4, "core": "lstm", "std": 0.11, "reinforce_weight": 0.05}),
            # 2.28% deterministic on mnist-cluttered-60 over 100 CPU epochs (docs/results.md), against 3.82 for
            # `visatt-60`'s dense glimpses over 207.
            "visatt-60-conv": Preset("`visatt-60` with DRAM's convolutional glimpse network (convs 16/16/32 on the scales "
                                     "stacked as channels, \"what\" times \"where\") and a leash of 1.0 on the policy means.",
                                     {**_VISATT_60, "glimpse_network": "conv", "conv_filters": (16, 16, 32),
                                      "location_leash": 1.0}),
        },
    ),
    "stn": ModelEntry(
        "visatt_models.stn", "STN", "STNConfig",
        "Spatial Transformer Network, ST-CNN (Jaderberg et al. 2015; `stn.py`); ST-CNN Single on sequence stores.",
        {
            "identity": Preset("Starts from the identity transform and keeps the input size (= the defaults).", {}),
            "zoom-100": Preset("For 100x100 canvases: starts on the central 50x50 pixels at full resolution (zoom 0.5 "
                               "onto a 50x50 output).", {"init": "zoom", "zoom": 0.5, "output_size": (50, 50)}),
            "zoom-60": Preset("Our recipe for 60x60 cluttered digits: starts on the central 30x30 pixels at full "
                              "resolution (zoom 0.5 onto a 30x30 output: the classifier starts out seeing about one "
                              "digit's cell, so the transform must find the digit), dropout 0.5 before the heads.",
                              {"init": "zoom", "zoom": 0.5, "output_size": (30, 30), "dropout": 0.5}),
            "st-cnn-single": Preset(
                "ST-CNN Single for multi-digit images: a 3-conv localisation network, then the classifier of "
                "`cnn --preset modern-seq` on the transformed image (same size).",
                _ST_CNN_SINGLE,
            ),
            "st-cnn-ctc": Preset(
                "For `--head ctc`: `st-cnn-single` with the classifier of `cnn --preset modern-seq-ctc` (frames of "
                "4-pixel column bands of the transformed image, a bidirectional LSTM of 128 a direction, the "
                "per-frame softmax).",
                {**_ST_CNN_SINGLE, "cls_pool": "columns", "cls_rnn": 128, "cls_dense": 0},
            ),
        },
    ),
    "dram": ModelEntry(
        "visatt_models.dram", "DRAM", "DRAMConfig",
        "Deep Recurrent Attention Model (Ba et al. 2015; `dram.py`): conv glimpses, two LSTMs, a context network, "
        "one emission per digit and an end-of-sequence; stochastic like RAM.",
        {
            "paper": Preset(
                "The paper's networks and loss: glimpse convs 5x5/3x3/3x3 with 64/64/128 filters, two scales of "
                "12x12, LSTMs of 512, 3 glimpses per digit, the policy gradient at full weight; std 0.03 location "
                "units of ~15% of the image width = 0.009 here.",
                {"conv_filters": (64, 64, 128), "conv_kernels": (5, 3, 3), "glimpse_size": 512, "lstm_units": 512,
                 "classifier_hidden": 512, "glimpses_per_digit": 3, "std": 0.009, "reinforce_weight": 1.0},
            ),
            "visatt-small": Preset(
                "A CPU-sized DRAM: glimpse convs 32/32/64, LSTMs of 256, 3 glimpses per digit, std 0.11 and the "
                "policy gradient at weight 0.05 (RAM's `visatt-*` recipe; also `DRAMConfig`'s defaults).",
                _DRAM_SMALL,
            ),
            "visatt-leash": Preset(
                "`visatt-small` with the paper's 2 scales and a leash on the policy means (`location_leash` 1.0: a "
                "penalty that pulls means past the clip back, from the first step, with no warm-up): 2.69% "
                "MC sequence error on `mnist-pairs` with `--set emissions=3` in 80 epochs (H200), 1.37% "
                "deterministic on `mnist-cluttered-60` in 120 (CPU; docs/results.md).",
                {**_DRAM_SMALL, "scales": 2, "location_leash": 1.0},
            ),
        },
    ),
}
MODEL_NAMES = tuple(MODELS)


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    name: str
    model_cls: type
    config_cls: type
    presets: dict[str, Preset]


def get_model_spec(name: str) -> ModelSpec:
    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r}; known: {', '.join(MODEL_NAMES)}")
    entry = MODELS[name]
    try:
        module = importlib.import_module(entry.module)
    except ModuleNotFoundError as e:
        if e.name != entry.module:
            raise
        raise ConfigError(f"model {name!r} is not available: module {entry.module} does not exist") from None
    return ModelSpec(name, getattr(module, entry.model_class), getattr(module, entry.config_class), entry.presets)


def register_all() -> None:
    """Import every model module, registering its classes with Keras' serialization (needed
    before `keras.saving.load_model` can rebuild a visatt model from a `.keras` file)."""
    for name in MODELS:
        get_model_spec(name)


def make_config(spec: ModelSpec, *, preset: str | None = None, overrides=(), **fields):
    """The config of `spec`: its preset's fields (or the dataclass defaults), then `fields`, then `overrides`."""
    if preset is not None and preset not in spec.presets:
        known = ", ".join(spec.presets) or "none"
        raise ConfigError(f"unknown preset {preset!r} for model {spec.name!r}; known: {known}")
    base = construct(spec.config_cls, spec.presets[preset].fields if preset is not None else {})
    if fields:
        base = replace(base, **fields)
    return parse_overrides(spec.config_cls, list(overrides), base=base)


def presets_help() -> str:
    """One line for `--preset`'s help: every model's presets."""
    return "; ".join(f"{name}: {', '.join(entry.presets)}" for name, entry in MODELS.items())


def markdown_table() -> str:
    """The models table of docs/models.md."""
    lines = ["| `--model` | `--preset` | what |", "|---|---|---|"]
    for name, entry in MODELS.items():
        lines.append(f"| `{name}` | | {entry.description} |")
        lines.extend(f"| | `{preset}` | {p.description} |" for preset, p in entry.presets.items())
    return "\n".join(lines)


def write_table(path) -> None:
    """Replace the models table of the markdown file `path` (from its header row to the first
    blank line after it) with `markdown_table()`."""
    from pathlib import Path

    text = Path(path).read_text()
    start = text.index("| `--model` | `--preset` | what |")
    end = text.index("\n\n", start)
    Path(path).write_text(text[:start] + markdown_table() + text[end:])


if __name__ == "__main__":
    import sys

    if sys.argv[1:2] == ["--write"]:
        write_table(sys.argv[2])
    else:
        print(markdown_table())
