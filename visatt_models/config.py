"""Plain-Python configuration: typed `key=value` overrides of config dataclasses, training options.

    config = parse_overrides(CNNConfig, ["widths=16,32,64", "dropout=0.2"])

An unknown key, or a value of the wrong type, raises `ConfigError` with a one-line message.
The models and their presets are listed in `registry.py`; `TrainConfig` holds the options of a
training run.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import types
import typing
from typing import Any, Literal

from pipelines.affine import check_affine
from pipelines.reader import DEFAULT_MEMORY_LIMIT  # bytes of a split held in memory

HEADS = ("independent", "length", "ctc")  # the sequence task's heads (`tasks.SequenceTask`; --head)
PRECISIONS = ("float32", "mixed_bfloat16")  # Keras dtype policies a run may train under (--precision)

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
_NONE = {"none", "null"}




@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Training options (everything but the model's own config).

    epochs: total epochs of the run (a resumed run may raise it).
    limit: use at most this many samples of each split (the first ones; for quick runs).
    mc_samples: test-time Monte-Carlo location samples for stochastic models (RAM); 0 skips
        the MC evaluation.
    memory_limit: bytes of a split held in memory; larger splits are streamed by chunks.
    crop: (h, w): train on random h x w crops of the store's images, drawn per (seed, epoch,
        sample index), and evaluate on the centre crop (Goodfellow et al. 2013: 54x54 of 64x64);
        None: whole images.
    shift: translate every training image (after cropping) by (dy, dx), each drawn uniformly
        from -shift..shift per (seed, epoch, sample index), zero-filled; evaluation sees the
        images as they are; 0: none.
    shift_keep_ink: draw each image's shift only among those of at most `shift` that keep all
        its non-zero pixels inside (`pipelines.batches`): no digit is cut, and where a store's
        images leave room (one digit on a 64x64 `mnist-sequences` canvas) a large `shift` moves
        them far.
    shift_floor: with `shift_keep_ink`, every image may still move by up to this many pixels
        each way even where that cuts ink, so that strips filling the width are shifted too
        (at most `shift`; 0: never cut).
    reposition: `mnist-pairs` only: take each training image's two digits apart along the
        store's boxes and paste them at new positions drawn as the builder draws them, labels
        back in reading order (`pipelines.batches`), before cropping and shifting: new pairs of
        the same digits every epoch.
    permute: `mnist-sequences` only: give each training image's digits a new order among their
        cells (the store's boxes), labels with them (`pipelines.batches`), before cropping and
        shifting: other numbers of the same digits, in the same layout, every epoch.
    rotate, shear: turn every training image by an angle drawn uniformly from -rotate..rotate
        degrees and shear it horizontally (x += k * y) by k drawn uniformly from -shear..shear,
        about its centre, per (seed, epoch, sample index), after repositioning or permuting and
        before cropping and shifting (`pipelines.batches`); 0: none.
    precision: the Keras dtype policy of the model: "float32", or "mixed_bfloat16" (bfloat16
        compute on float32 weights, the heads' logits in float32; `base.VisattModel`), for cnn
        and stn (`benchmarks/bench_sequence.py --precision` times both).
    schedule: the learning rate per optimizer step (`train.make_schedule`):
        constant  `lr` throughout;
        cosine    linear warm-up from 0 over `warmup_epochs`, then a cosine from `lr` down to
                  `final_lr_fraction * lr` at the last step of `epochs` (Loshchilov & Hutter);
        step      `lr * step_factor ** floor(epoch / step_epochs)`, changing at epoch boundaries.
    clipnorm: clip each variable's gradient to this norm; global_clipnorm: scale all gradients
        together so that their global norm is at most this (exclusive with clipnorm).
    weight_decay: decoupled weight decay (Loshchilov & Hutter's AdamW; with SGD the same
        shrinking step): every step multiplies each trainable variable by (1 - weight_decay * lr),
        apart from the gradient step, as Keras' optimizers do; 0: none. It applies to every
        trainable variable (biases and batch-norm scales too, as in Keras' AdamW by default), so
        that a resumed run, whose optimizer comes back from its checkpoint, decays the same ones.
    """

    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    optimizer: Literal["adam", "sgd"] = "adam"
    momentum: float = 0.9  # sgd only
    clipnorm: float | None = None
    seed: int = 0
    limit: int | None = None
    mc_samples: int = 10
    memory_limit: int = DEFAULT_MEMORY_LIMIT
    crop: tuple[int, int] | None = None
    schedule: Literal["constant", "cosine", "step"] = "constant"
    warmup_epochs: float = 0.0  # cosine only
    final_lr_fraction: float = 0.0  # cosine only
    step_epochs: int = 10  # step only
    step_factor: float = 0.1  # step only
    global_clipnorm: float | None = None
    weight_decay: float = 0.0
    shift: int = 0
    shift_keep_ink: bool = False
    shift_floor: int = 0
    reposition: bool = False
    permute: bool = False
    rotate: float = 0.0
    shear: float = 0.0
    precision: str = "float32"

    def __post_init__(self):
        for field in dataclasses.fields(self):  # nan and inf pass every bound below
            value = getattr(self, field.name)
            if isinstance(value, numbers.Real) and not isinstance(value, bool) and not math.isfinite(value):
                raise ValueError(f"{field.name} must be a finite number, got {value!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.schedule not in ("constant", "cosine", "step"):
            raise ValueError(f"schedule must be constant, cosine or step, got {self.schedule!r}")
        if self.warmup_epochs < 0 or not 0 <= self.final_lr_fraction <= 1:
            raise ValueError("warmup_epochs must be >= 0 and final_lr_fraction in [0, 1]")
        if self.schedule != "cosine" and (self.warmup_epochs or self.final_lr_fraction):
            raise ValueError("warm-up and a final lr fraction belong to the cosine schedule (--schedule cosine)")
        if self.schedule == "cosine" and self.warmup_epochs >= self.epochs:
            raise ValueError(f"the warm-up ({self.warmup_epochs} epochs) must end before the run does ({self.epochs} epochs)")
        if self.step_epochs < 1 or not 0 < self.step_factor <= 1:
            raise ValueError("step_epochs must be >= 1 and step_factor in (0, 1]")
        if self.clipnorm is not None and self.global_clipnorm is not None:
            raise ValueError("clipnorm (per variable) and global_clipnorm exclude each other")
        for name in ("clipnorm", "global_clipnorm"):
            if getattr(self, name) is not None and not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0")
        if self.optimizer == "sgd" and not 0 <= self.momentum <= 1:  # Keras' SGD refuses it; adam ignores it
            raise ValueError(f"momentum must be in [0, 1], got {self.momentum}")
        if not 0 <= self.weight_decay < 1:
            raise ValueError(f"weight_decay must be in [0, 1), got {self.weight_decay}")
        if isinstance(self.shift, bool) or not (isinstance(self.shift, int) and self.shift >= 0):
            raise ValueError(f"shift must be a whole number of pixels >= 0, got {self.shift!r}")
        if not isinstance(self.shift_keep_ink, bool):
            raise ValueError(f"shift_keep_ink must be true or false, got {self.shift_keep_ink!r}")
        if self.shift_keep_ink and not self.shift:
            raise ValueError("shift_keep_ink (--keep-ink) needs a shift (--shift K, K > 0)")
        if isinstance(self.shift_floor, bool) or not (isinstance(self.shift_floor, int) and 0 <= self.shift_floor <= self.shift):
            raise ValueError(f"shift_floor (--shift-floor) must be a whole number of pixels in 0..{self.shift} (--shift), "
                             f"got {self.shift_floor!r}")
        if self.shift_floor and not self.shift_keep_ink:
            raise ValueError("shift_floor (--shift-floor) belongs to --keep-ink (without it every image moves by up to --shift)")
        for name in ("reposition", "permute"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.reposition and self.permute:
            raise ValueError("reposition (--reposition, mnist-pairs) and permute (--permute, mnist-sequences) exclude each other")
        for name in ("rotate", "shear"):
            try:
                check_affine(**{name: getattr(self, name)})
            except ValueError as e:
                raise ValueError(f"{e} (--{name})") from None
            object.__setattr__(self, name, float(getattr(self, name)))
        if self.crop is not None:
            object.__setattr__(self, "crop", tuple(int(v) for v in self.crop))
            if len(self.crop) != 2 or min(self.crop) < 1:
                raise ValueError(f"crop must be (height, width) >= 1, got {self.crop}")
        if self.epochs < 1 or self.batch_size < 1 or not self.lr > 0:
            raise ValueError("epochs, batch size and learning rate must be positive")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be positive, got {self.limit}")
        if self.mc_samples < 0 or self.seed < 0:
            raise ValueError("mc_samples and seed must be non-negative")


class ConfigError(ValueError):
    """A model name, preset, override key or value is not valid (one-line message)."""


def parse_overrides(config_cls: type, overrides: list[str], *, base=None):
    """Apply `["key=value", ...]` to `base` (default: `config_cls()`), converting by field type.

    Supported field types: int, float, bool (true/false/yes/no/1/0), str, Literal[...],
    tuple[T, ...] and tuple[T1, T2] (comma-separated, brackets optional), and `X | None`
    ("none"). Raises ConfigError for a malformed item, an unknown or repeated key, a value that
    does not convert, or a value the config's own validation rejects.
    """
    base = config_cls() if base is None else base
    fields = {f.name: f for f in dataclasses.fields(config_cls) if f.init}
    hints = typing.get_type_hints(config_cls)
    changes: dict[str, Any] = {}
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        if key not in fields:
            raise ConfigError(f"unknown key {key!r} for {config_cls.__name__}; valid keys: {', '.join(fields)}")
        if key in changes:
            raise ConfigError(f"key {key!r} is set twice")
        try:
            changes[key] = convert(text.strip(), hints[key])
        except ValueError as e:
            raise ConfigError(f"{key}={text!r}: {e}") from None
    return replace(base, **changes)


def check_rates(config, *names: str) -> None:
    """Raise ValueError unless each named field of `config` (a dropout rate) lies in [0, 1)."""
    for name in names:
        value = getattr(config, name)
        if not 0.0 <= value < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {value}")


def replace(config, **changes):
    """`dataclasses.replace` with the config's validation errors turned into ConfigError."""
    try:
        return dataclasses.replace(config, **changes)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"invalid {type(config).__name__}: {e}") from None


def construct(config_cls: type, values: dict):
    """`config_cls(**values)` with the config's validation errors turned into ConfigError."""
    try:
        return config_cls(**values)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"invalid {config_cls.__name__}: {e}") from None


def config_to_dict(config) -> dict:
    """JSON-ready field values (tuples become lists)."""
    return dataclasses.asdict(config)


def config_from_dict(config_cls: type, values: dict):
    """Inverse of `config_to_dict`; unknown keys are an error (the config changed since)."""
    hints = typing.get_type_hints(config_cls)
    names = {f.name for f in dataclasses.fields(config_cls) if f.init}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(f"{config_cls.__name__} has no field(s) {', '.join(unknown)}")
    return construct(config_cls, {k: _from_json(v, hints[k]) for k, v in values.items()})


def _from_json(value, tp):
    """Lists back to tuples, recursively, where the field type says tuple."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return value if value is None or len(args) != 1 else _from_json(value, args[0])
    if origin is tuple and isinstance(value, list):
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_from_json(v, args[0]) for v in value)
        return tuple(_from_json(v, a) for v, a in zip(value, args)) if args else tuple(value)
    return value


def convert(text: str, tp) -> Any:
    """Convert one command-line string to type `tp`; ValueError says what was expected."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if type(None) in args and text.lower() in _NONE:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return convert(text, arg)
            except ValueError as e:
                errors.append(str(e))
        raise ValueError("; ".join(errors))
    if origin is Literal:
        choices = typing.get_args(tp)
        for choice in choices:
            try:
                if convert(text, type(choice)) == choice:
                    return choice
            except ValueError:
                pass
        raise ValueError(f"expected one of {', '.join(map(str, choices))}")
    if origin is tuple:
        args = typing.get_args(tp)
        inner = text.strip("()[] ")
        parts = [p.strip() for p in inner.split(",")] if inner else []
        if parts and parts[-1] == "":  # allow a trailing comma: "8,"
            parts.pop()
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(convert(p, args[0]) for p in parts)
        if len(parts) != len(args):
            raise ValueError(f"expected {len(args)} comma-separated values, got {len(parts)}")
        return tuple(convert(p, a) for p, a in zip(parts, args))
    if tp is bool:
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise ValueError(f"expected a boolean (true/false), got {text!r}")
    if tp is int:
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"expected an integer, got {text!r}") from None
    if tp is float:
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value):
            raise ValueError(f"expected a finite number, got {text!r}")
        return value
    if tp is str:
        return text
    raise ValueError(f"fields of type {tp} cannot be set from the command line")
