"""Evaluation: exact counts over a split, Monte-Carlo averaging for stochastic models.

    result = evaluate(model, split, batch_size=256, mc_samples=10)
    # digit task:    {"test_samples", "test_accuracy", "test_error", "test_accuracy_mc", ...}
    # sequence task: {"test_samples", "test_sequence_accuracy", "test_sequence_error",
    #                 "test_digit_accuracy", "test_length_accuracy", ..._mc}

The model's task decodes its outputs and counts what is right (`tasks.py`); the evaluator only
adds up integer counts, so every figure is exact over the split's samples whatever the batch
size. A stochastic model (RAM, DRAM: sampled glimpse locations) is also evaluated at its policy
means (`_det`, the Torch reference implementation's evaluation) and with Monte-Carlo averaging
(`_mc`): each image is run `mc_samples` times (the batch tiled, one vectorised pass) and the
heads' probabilities (or log-probabilities, per the model's `mc_average`) are averaged before
decoding.
"""

from __future__ import annotations

import contextlib

import keras
import numpy as np

from visatt_models.data import Batches, Split
from visatt_models.tasks import Task, decode_numpy, head_log_probs


def outputs_numpy(model, images) -> dict[str, np.ndarray]:
    """The model's outputs on one batch, as numpy arrays (compiled predict function)."""
    return {k: np.asarray(keras.ops.convert_to_numpy(v)) for k, v in model.predict_on_batch(images).items()}


def predictions(model, images) -> np.ndarray:
    """Decoded predictions of one pass: (B,) digits or (B, P) padded sequences."""
    task: Task = model.task
    return decode_numpy(task, head_log_probs(task, outputs_numpy(model, images)))


def mc_log_probs(model, images, samples: int) -> dict[str, np.ndarray]:
    """Monte-Carlo log-probabilities of every head, averaged over `samples` passes.

    The batch is tiled `samples` times (sample-major) and run as one batch, so the draws of a
    batch are one vectorised pass. `model.mc_average == "probabilities"` averages the
    probabilities (RAM); "log_probabilities" averages the log-probabilities (DRAM, Ba et al.
    2015 Sec. 4). Returns float64 arrays shaped like the heads of one pass.
    """
    images = np.asarray(images)
    n = len(images)
    tiled = np.tile(images, (samples,) + (1,) * (images.ndim - 1))  # (M * n, ...)
    log_probs = head_log_probs(model.task, outputs_numpy(model, tiled))
    averaged = {}
    for name, lp in log_probs.items():
        lp = lp.reshape(samples, n, *lp.shape[1:])  # (M, n, ...)
        if model.mc_average == "log_probabilities":
            averaged[name] = lp.mean(axis=0)
        else:
            averaged[name] = np.log(np.maximum(np.exp(lp).mean(axis=0), 1e-300))
    return averaged


@contextlib.contextmanager
def deterministic_policy(model):
    """Within: a stochastic model glimpses at its policy means (its `sampling` scale set to 0)."""
    before = keras.ops.convert_to_numpy(model.sampling)
    model.sampling.assign(0.0)
    try:
        yield model
    finally:
        model.sampling.assign(before)


def evaluate(model, split: Split, *, batch_size: int = 256, mc_samples: int = 0, crop=None, prefix: str = "test") -> dict:
    """Every figure of the model's task over all samples of `split` (centre-cropped to `crop`).

    For a stochastic model, also the figures of a deterministic pass at the policy means
    (suffix `_det`) and, when mc_samples > 0, with Monte-Carlo averaging (suffix `_mc`, and
    `mc_samples`). The plain figures are one sampled pass. Each pass goes over the whole split
    before the next starts (sampled, then Monte-Carlo, then deterministic, which draws
    nothing), so the sampled figures do not depend on `mc_samples`.
    """
    task: Task = model.task
    batches = Batches(split, batch_size, shuffle=False, crop=crop)
    passes = {"": lambda x: head_log_probs(task, outputs_numpy(model, x))}
    if model.stochastic and mc_samples > 0:
        passes["_mc"] = lambda x: mc_log_probs(model, x, mc_samples)
    if model.stochastic:
        passes["_det"] = lambda x: _deterministic_log_probs(model, x)
    result = {}
    for suffix, log_probs in passes.items():
        counts = {}
        for i in range(len(batches)):
            images, labels = batches[i]
            _add(counts, task.count(decode_numpy(task, log_probs(images)), labels))
        result.setdefault(f"{prefix}_samples", counts["samples"])
        result.update({f"{prefix}_{k}{suffix}": v for k, v in task.summarise(counts).items()})
    if "_mc" in passes:
        result["mc_samples"] = mc_samples
    return result


def _add(total: dict, counts: dict) -> None:
    for k, v in counts.items():
        total[k] = total.get(k, 0) + v


# ---------------------------------------------------------------- forward-backward (DRAM)


def sequence_log_prob(task: Task, digit_log_probs: np.ndarray, sequences: np.ndarray) -> np.ndarray:
    """log P(sequence) (B,) under a model with one softmax over digits and blank per emission
    (`digit_log_probs` (B, P, K + 1)): the sum over its P emissions of the log-probability of
    the sequence's class there, in the model's reading order (reversed for a `reverse` task),
    blanks after the last digit. A sequence longer than P has probability 0 (-inf)."""
    sequences = np.asarray(sequences, np.int64)
    p = digit_log_probs.shape[1]
    too_long = (sequences[:, p:] != task.blank).any(axis=1)  # (B,) digits beyond the emissions
    read = np.asarray(keras.ops.convert_to_numpy(task.labels_for(sequences, p)), np.int64)  # (B, P) model order
    score = np.take_along_axis(digit_log_probs, read[..., None], axis=-1)[..., 0].sum(axis=1)
    return np.where(too_long, -np.inf, score)


def combine_forward_backward(forward: Task, forward_lp: dict, backward: Task, backward_lp: dict) -> np.ndarray:
    """A forward-backward reading: each model proposes its decoded sequence, and the proposal with
    the larger joint log-probability log P_fwd(s) + log P_bwd(s) wins (ties: the forward one).
    Ba et al. 2015 combine a left-to-right and a right-to-left DRAM for their best SVHN result
    without spelling out the rule; this is ours. Returns padded sequences in reading order."""
    proposals = [decode_numpy(forward, forward_lp), decode_numpy(backward, backward_lp)]
    width = max(p.shape[1] for p in proposals)
    proposals = [np.pad(p, ((0, 0), (0, width - p.shape[1])), constant_values=forward.blank) for p in proposals]
    scores = [sequence_log_prob(forward, forward_lp["digit_logits"], s) + sequence_log_prob(backward, backward_lp["digit_logits"], s)
              for s in proposals]
    return np.where((scores[0] >= scores[1])[:, None], proposals[0], proposals[1])


def evaluate_forward_backward(forward, backward, split: Split, *, batch_size: int = 256, mc_samples: int = 0, crop=None,
                              prefix: str = "test") -> dict:
    """The combined reading of a left-to-right and a right-to-left model over all of `split`:
    one sampled pass, the deterministic pass and (mc_samples > 0) Monte-Carlo averages, each
    model's log-probabilities combined by `combine_forward_backward`. Keys as `evaluate`'s."""
    ft, bt = forward.task, backward.task
    if ft.kind != "sequence" or bt.kind != "sequence" or ft.reverse or not bt.reverse:
        raise ValueError("forward-backward needs a left-to-right and a right-to-left (--reverse) sequence model")
    if (ft.head, bt.head) != ("independent", "independent"):
        raise ValueError("forward-backward combines models with one softmax per emission (the 'independent' head)")
    batches = Batches(split, batch_size, shuffle=False, crop=crop)
    passes = {"": lambda m, x: head_log_probs(m.task, outputs_numpy(m, x))}
    if forward.stochastic and backward.stochastic:
        passes["_det"] = lambda m, x: _deterministic_log_probs(m, x)
        if mc_samples > 0:
            passes["_mc"] = lambda m, x: mc_log_probs(m, x, mc_samples)
    counts = {suffix: {} for suffix in passes}
    for i in range(len(batches)):
        images, labels = batches[i]
        for suffix, log_probs in passes.items():
            combined = combine_forward_backward(ft, log_probs(forward, images), bt, log_probs(backward, images))
            _add(counts[suffix], ft.count(combined, labels))
    result = {f"{prefix}_samples": counts[""]["samples"]}
    for suffix, c in counts.items():
        result.update({f"{prefix}_{k}{suffix}": v for k, v in ft.summarise(c).items()})
    if "_mc" in passes:
        result["mc_samples"] = mc_samples
    return result


def _deterministic_log_probs(model, images):
    with deterministic_policy(model):
        return head_log_probs(model.task, outputs_numpy(model, images))
