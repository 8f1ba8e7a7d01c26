"""`visatt-train`, `visatt-eval` and `visatt-predict`: parse options and call the library.

    visatt-train --store data.zarr --model cnn --preset modern --epochs 20 --out runs/cnn-modern
    visatt-train --out runs/cnn-modern --resume --epochs 30      # continue (and extend) a run
    visatt-eval --run runs/cnn-modern --store other.zarr         # refuses another dataset
    visatt-predict --run runs/cnn-modern house.png door.png      # the predicted number per image

Every option is documented in docs/models.md.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import math
import os
import sys

import click

# TensorFlow's C++ start-up chatter (CUDA probing, oneDNN notices) hides the training log and
# errors; set TF_CPP_MIN_LOG_LEVEL yourself (e.g. 0) to see it.
_SHOW_TF_LOGS = "TF_CPP_MIN_LOG_LEVEL" in os.environ
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from pipelines.affine import MAX_ROTATE, MAX_SHEAR
from visatt_models.config import HEADS, PRECISIONS, ConfigError, TrainConfig  # plain Python: --help stays fast
from visatt_models.registry import MODEL_NAMES, presets_help

_DEFAULTS = TrainConfig()
EMPTY_READING = "-"  # visatt-predict's line for a sequence model that reads no digit ("" in --json)


def _given(ctx: click.Context, names) -> dict:
    """Options the user typed (not click defaults): a resumed run takes the rest from run.json."""
    return {
        n: ctx.params[n]
        for n in names
        if ctx.get_parameter_source(n) not in (click.core.ParameterSource.DEFAULT, None)
    }


def _fail(e: Exception):
    if isinstance(e, OSError):
        from pipelines.cli import os_error_line

        raise click.ClickException(os_error_line(e)) from None
    raise click.ClickException(str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__) from None


@contextlib.contextmanager
def _quiet_native_startup():
    """Keep what native code writes to the stderr file descriptor while Keras and its backend are
    imported (TensorFlow's CUDA probing prints before its log level applies) out of the user's
    way; it is shown if the import fails, or always when TF_CPP_MIN_LOG_LEVEL is set."""
    if _SHOW_TF_LOGS:
        yield
        return
    import tempfile

    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            captured.seek(0)
            sys.stderr.write(captured.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def _import_training():
    with _quiet_native_startup():
        import keras  # (the backend's import is what prints)

        if keras.backend.backend() != "tensorflow" and importlib.util.find_spec("tensorflow"):
            # keras.utils.set_random_seed (training, evaluation, prediction) seeds TensorFlow
            # whenever it imports, importing it after this context under the JAX backend
            with contextlib.suppress(ImportError):  # Keras then leaves it alone, and so do we
                import tensorflow  # noqa: F401

        from visatt_models import train as training
    return training


class Finite(click.FloatRange):
    """click.FloatRange that refuses nan and inf (which pass its bounds) as a usage error."""

    def convert(self, value, param, ctx):
        value = super().convert(value, param, ctx)
        if not math.isfinite(value):
            self.fail(f"{value} is not a finite number", param, ctx)
        return value


class CropType(click.ParamType):
    """`54` (square) or `54,48` (height, width)."""

    name = "H[,W]"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        try:
            sizes = tuple(int(v) for v in str(value).split(","))
        except ValueError:
            self.fail(f"{value!r} is not N or H,W", param, ctx)
        if len(sizes) not in (1, 2) or min(sizes) < 1:
            self.fail(f"{value!r} is not N or H,W with positive sizes", param, ctx)
        return sizes * 2 if len(sizes) == 1 else sizes


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--store", metavar="LOCATION",
              help="The store to train on (required for a new run): a folder from `visatt-data build`, a packed "
                   "file, a URL of either, or NAME[@VERSION][:SOURCE] in the local cache. Its content is checked "
                   "against its recorded digests before training.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Run folder: checkpoints, log.csv, metrics.json, PNGs.")
@click.option("--model", type=click.Choice(MODEL_NAMES), default="cnn", show_default=True, help="Model to train.")
@click.option("--preset", help=f"Named model config ({presets_help()}); docs/models.md describes each.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override one model config field (repeatable), e.g. --set glimpses=6.")
@click.option("--epochs", type=click.IntRange(1), default=_DEFAULTS.epochs, show_default=True, help="Total epochs (may be raised on --resume).")
@click.option("--batch-size", type=click.IntRange(1), default=_DEFAULTS.batch_size, show_default=True)
@click.option("--lr", type=Finite(0, min_open=True), default=_DEFAULTS.lr, show_default=True, help="Learning rate.")
@click.option("--optimizer", type=click.Choice(["adam", "sgd"]), default=_DEFAULTS.optimizer, show_default=True)
@click.option("--momentum", type=Finite(0, 1), default=_DEFAULTS.momentum, show_default=True, help="SGD momentum.")
@click.option("--clipnorm", type=Finite(0, min_open=True), default=None, help="Clip each variable's gradient to this norm.")
@click.option("--global-clipnorm", type=Finite(0, min_open=True), default=None,
              help="Scale all gradients together to at most this global norm (excludes --clipnorm).")
@click.option("--weight-decay", type=Finite(0, 1, max_open=True), default=_DEFAULTS.weight_decay, show_default=True,
              help="Decoupled weight decay (AdamW-style): each step also scales every trainable variable by "
                   "(1 - weight_decay x lr). 0: none.")
@click.option("--schedule", type=click.Choice(["constant", "cosine", "step"]), default=_DEFAULTS.schedule, show_default=True,
              help="Learning rate per step: constant; cosine (warm-up from 0 over --warmup-epochs, then a cosine down to "
                   "--final-lr-fraction x lr at the last epoch; raising --epochs on --resume re-plans it over the new "
                   "total); step (lr x --step-factor every --step-epochs epochs).")
@click.option("--warmup-epochs", type=Finite(0), default=_DEFAULTS.warmup_epochs, show_default=True, help="Cosine warm-up length (may be fractional).")
@click.option("--final-lr-fraction", type=Finite(0, 1), default=_DEFAULTS.final_lr_fraction, show_default=True, help="Cosine: the last step's lr as a fraction of --lr.")
@click.option("--step-epochs", type=click.IntRange(1), default=_DEFAULTS.step_epochs, show_default=True, help="Step schedule: epochs between decays.")
@click.option("--step-factor", type=Finite(0, 1, min_open=True), default=_DEFAULTS.step_factor, show_default=True, help="Step schedule: lr factor per decay.")
@click.option("--seed", type=click.IntRange(0), default=_DEFAULTS.seed, show_default=True, help="Run seed: weights, data order, sampling.")
@click.option("--limit", type=click.IntRange(1), default=None, help="Use only the first N samples of each split (quick runs).")
@click.option("--mc", "mc_samples", type=click.IntRange(0), default=_DEFAULTS.mc_samples, show_default=True, help="Stochastic models (RAM, DRAM): Monte-Carlo location samples at test time (0: none).")
@click.option("--head", type=click.Choice(HEADS), default=None,
              help="Sequence stores: 'independent' (default; a softmax over the digits and the blank per position, the "
                   "seed article's SVHN baseline), 'length' (Goodfellow et al. 2013: a length softmax and digit softmaxes) "
                   "or 'ctc' (a softmax per frame, left to right, with the CTC loss; needs a CNN or STN with "
                   "pool=columns, e.g. cnn --preset modern-seq-ctc).")
@click.option("--reverse", is_flag=True, help="Sequence stores: train a right-to-left reader on reversed labels (DRAM's "
              "backward model; combine it with a left-to-right run in visatt-eval --backward).")
@click.option("--crop", type=CropType(), default=None, help="Train on random H x W crops (per seed, epoch and sample), "
              "test on the centre crop, e.g. --crop 54 on svhn-64 (Goodfellow et al.). Default: whole images.")
@click.option("--shift", type=click.IntRange(0), default=_DEFAULTS.shift, show_default=True,
              help="Translate each training image (after --crop) by up to this many pixels in each direction, drawn "
                   "per seed, epoch and sample, zero-filled (augmentation against overfitting a frozen training set; "
                   "evaluation sees the images as they are). 0: none.")
@click.option("--keep-ink", "shift_keep_ink", is_flag=True,
              help="With --shift: draw each image's shift only among those that keep all its non-zero pixels "
                   "inside, so no digit is cut and a large --shift moves small numbers far (digits on a black "
                   "background without clutter, which counts as ink: mnist-sequences, mnist-pairs).")
@click.option("--shift-floor", "shift_floor", type=click.IntRange(0), default=_DEFAULTS.shift_floor, show_default=True,
              help="With --keep-ink: let every image still move by up to this many pixels each way, even where that "
                   "cuts ink, so that numbers filling the width are shifted too (at most --shift).")
@click.option("--reposition", is_flag=True,
              help="mnist-pairs: take each training image's two digits apart and paste them at new positions drawn "
                   "as the builder draws them (not overlapping), labels back in reading order, per seed, epoch and "
                   "sample (for a given --limit): new pairs of the same digits every epoch (before --crop and --shift).")
@click.option("--permute", is_flag=True,
              help="mnist-sequences: give each training image's digits a new order among their cells (the store's "
                   "boxes), labels with them, per seed, epoch and sample (for a given --limit): other numbers of the "
                   "same digits in the same layout every epoch (before --crop and --shift).")
@click.option("--rotate", type=Finite(0, MAX_ROTATE), metavar="D", default=_DEFAULTS.rotate,
              show_default=True,
              help="Turn each training image about its centre by an angle drawn from -D..D degrees (at most 30), per "
                   "seed, epoch and sample (bilinear, zero-filled; before --crop and --shift). 0: none.")
@click.option("--shear", type=Finite(0, MAX_SHEAR), metavar="S", default=_DEFAULTS.shear, show_default=True,
              help="Slant each training image about its centre: each row moves sideways by k times its distance from "
                   "the centre row (rightwards below it for k > 0), the slant k drawn from -S..S (at most 0.5), per "
                   "seed, epoch and sample (with --rotate: slanted, then turned). 0: none.")
@click.option("--precision", type=click.Choice(PRECISIONS), default=_DEFAULTS.precision, show_default=True,
              help="cnn and stn: mixed_bfloat16 computes in bfloat16 on float32 weights (the heads' logits and STN's "
                   "sampling grid stay float32), faster where bfloat16 is (CPUs with AMX: docs/models.md). The run "
                   "records it; evaluation and prediction use it too.")
@click.option("--memory-limit-mb", type=click.IntRange(1), default=_DEFAULTS.memory_limit // 2**20, show_default=True, help="Splits larger than this are streamed by chunks.")
@click.option("--time-limit", "time_limit_min", type=Finite(0, min_open=True), default=None,
              help="Stop after the last epoch expected to end within this many minutes, test the best checkpoint, "
                   "and leave the rest to --resume (not part of the run's definition).")
@click.option("--devices", type=click.IntRange(1), default=None,
              help="JAX: split each batch over this many devices (data parallel; default: all present).")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last completed epoch.")
@click.option("--overwrite", is_flag=True, help="Delete the run in --out and start a new one.")
@click.option("--plots/--no-plots", default=True, show_default=True, help="Write PNGs into the run folder.")
@click.option("--no-verify", is_flag=True,
              help="Skip checking the store against the lock and its splits against their digests (saves one pass "
                   "over a streamed split; a damaged store then trains silently).")
@click.option("--verbose", type=click.IntRange(0, 2), default=None,
              help="Keras fit verbosity: 0 silent, 1 a progress bar, 2 a line per epoch (default: 1 on a terminal, "
                   "2 when the output goes to a file or a pipe).")
@click.pass_context
def train_main(ctx, store, out, model, preset, overrides, head, reverse, resume, overwrite, plots, no_verify, verbose,
               memory_limit_mb, time_limit_min, devices, **options):
    """Train a model on a store's train split, keep the best val checkpoint, test it once.

    The store decides the task: one digit per image, or a sequence of up to 5 digits (svhn,
    mnist-sequences, mnist-pairs), where the best checkpoint is the one with the best val
    sequence accuracy. Writes OUT/metrics.json (test figures, throughput, dataset, config,
    machine).
    A folder that holds a run is continued only with --resume and replaced only with
    --overwrite.
    """
    training = _import_training()  # imports Keras (seconds)
    from visatt_models.data import StoreError

    if resume and overwrite:
        raise click.UsageError("--resume and --overwrite exclude each other")
    try:
        if resume:
            given = _given(ctx, [*options, "memory_limit_mb"])
            if "memory_limit_mb" in given:
                given["memory_limit"] = given.pop("memory_limit_mb") * 2**20
            spec = training.resume_run_spec(
                out, store=store, model=model if _given(ctx, ["model"]) else None, preset=preset, overrides=overrides,
                head=head, reverse=reverse, **given
            )
        else:
            if store is None:
                raise click.UsageError("--store is required for a new run")
            spec = training.make_run_spec(
                store, model, preset=preset, overrides=overrides, head=head, reverse=reverse,
                memory_limit=memory_limit_mb * 2**20, **options
            )
        metrics = training.train(spec, out, mode="resume" if resume else "overwrite" if overwrite else "new", plots=plots,
                                 verbose=(1 if sys.stdout.isatty() else 2) if verbose is None else verbose, time_limit_s=None if time_limit_min is None else 60 * time_limit_min,
                                 devices=devices, verify=not no_verify)
    except (ConfigError, StoreError, training.RunError, OSError) as e:
        _fail(e)
    summary = {k: v for k, v in metrics.items() if k.startswith("test_") or k == "train_images_per_s"}
    click.echo(json.dumps(summary))


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--run", "run_dir", required=True, type=click.Path(exists=True, file_okay=False), help="Run folder written by visatt-train.")
@click.option("--store", metavar="LOCATION", help="Store to test on (default: the one trained on): a folder, packed file, URL or cached NAME.")
@click.option("--mc", "mc_samples", type=click.IntRange(0), default=None, help="Stochastic models (RAM, DRAM): Monte-Carlo samples (default: the run's).")
@click.option("--limit", type=click.IntRange(1), default=None, help="Test on the first N samples (default: the run's --limit).")
@click.option("--batch-size", type=click.IntRange(1), default=None, help="Default: the run's.")
@click.option("--force", is_flag=True, help="Evaluate even on a store holding another dataset (name or recipe digest).")
@click.option("--backward", "backward", type=click.Path(exists=True, file_okay=False),
              help="A right-to-left run (visatt-train --reverse) of the same dataset: also report the forward-backward "
                   "reading of both (DRAM's best SVHN setting).")
@click.option("--no-verify", is_flag=True, help="Skip checking the store against the lock and the test split against its digests.")
def eval_main(run_dir, store, mc_samples, limit, batch_size, force, backward, no_verify):
    """Re-evaluate a run's best checkpoint on a store's test split.

    Prints the result as JSON and writes it to RUN/eval-<UTC time>.json. A store whose
    dataset name or recipe digest differs from the one trained on is refused unless --force;
    a store of another task (single digits vs sequences) always. To predict on image files,
    use visatt-predict.
    """
    training = _import_training()
    from visatt_models.data import StoreError

    try:
        result = training.evaluate_run(run_dir, store=store, mc_samples=mc_samples, limit=limit, force=force,
                                       batch_size=batch_size, backward=backward, verify=not no_verify)
    except (ConfigError, StoreError, training.RunError, OSError) as e:
        _fail(e)
    click.echo(json.dumps({k: v for k, v in result.items() if k != "machine"}, indent=2))


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--run", "run_dir", required=True, type=click.Path(exists=True, file_okay=False), help="Run folder written by visatt-train.")
@click.argument("images", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--mc", "mc_samples", type=click.IntRange(0), default=None, help="Stochastic models (RAM, DRAM): Monte-Carlo samples (default: the run's; 0: one pass).")
@click.option("--checkpoint", type=click.Choice(["best", "last"]), default="best", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print {image: prediction} as JSON.")
def predict_main(run_dir, images, mc_samples, checkpoint, as_json):
    """Print the label (or number) a trained run predicts for each image file.

    One line per image, IMAGE<TAB>PREDICTION; a sequence model that reads no digit prints '-'.

    Each image is converted as the run's store was made: grayscale (RGB for a colour store),
    resized to the store's size, centre-cropped when the run trained on crops.
    """
    _import_training()
    from visatt_models import inference
    from visatt_models.runs import RunError

    try:
        predicted = inference.predict(run_dir, list(images), mc_samples=mc_samples, checkpoint=checkpoint)
    except (ConfigError, RunError, OSError) as e:
        _fail(e)
    if as_json:
        click.echo(json.dumps(dict(zip(images, predicted)), indent=2))
    else:
        for image, number in zip(images, predicted):
            click.echo(f"{image}\t{number or EMPTY_READING}")
