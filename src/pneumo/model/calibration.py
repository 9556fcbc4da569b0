"""Probability calibration: temperature scaling of the margin, and how calibrated a model is.

The network gives each film a margin ``z = logit_positive - logit_negative``, and
``P(positive) = sigmoid(z)``. A ResNet trained to low training loss is usually over-confident:
its probabilities crowd at 0 and 1 more than the films' outcomes justify. Temperature scaling
(Guo et al. 2017) divides every margin by one number ``T`` fitted on validation films; it
changes how far probabilities lie from 0.5, never their order, so AUROC and every ROC
cut-off stay where they were (a probability threshold moves with the probabilities: carry
it over through ``margin_from_probability``).

The report measures calibration three ways: Brier score, ECE over equal-mass bins, and the
slope and intercept of a logistic recalibration. A figure that cannot be computed (no film,
one class only) is NaN, not an exception, as in ``metrics``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import torch
from scipy.optimize import minimize, minimize_scalar
from scipy.special import expit

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402

# The search range for T: a factor of 10 either way covers any model worth calibrating; a fit
# that lands on a bound says the films cannot pin T down (nearly separated classes), and
# sharpening probabilities further there would only claim a certainty nobody measured.
TEMPERATURE_BOUNDS = (0.1, 10.0)
# Fewer films of either class than this, and a temperature is not fitted (T = 1): a handful
# of films can pin it anywhere in its range.
MIN_FILMS_PER_CLASS = 10
# Probabilities are clipped this far from 0 and 1 before taking logits: a float32 probability
# saturates to exactly 1.0 from a margin of about 17, and logit(1.0) is infinite.
PROBABILITY_EPS = 1e-12


def _as_float64(values: torch.Tensor) -> np.ndarray:
    """A flat float64 copy on the CPU: the fits run in scipy, in double precision."""
    return values.detach().to("cpu", torch.float64).reshape(-1).numpy()


def _bernoulli_nll(scores: np.ndarray, labels: np.ndarray) -> float:
    """Mean binary cross-entropy of ``sigmoid(scores)`` against 0/1 ``labels``.

    Written as ``log(1 + e^s) - y s``, which never takes the log of a probability rounded to 0.
    """
    return float(np.mean(np.logaddexp(0.0, scores) - labels * scores))


def fit_temperature(margins: torch.Tensor, positive: torch.Tensor) -> float:
    """The temperature ``T > 0`` whose ``sigmoid(margins / T)`` has the least mean binary
    cross-entropy against ``positive`` (0/1 labels): temperature scaling on the binary margin.

    Dividing by ``T`` changes neither the ranking of the films nor which side of 0 a margin
    lies on: only how far the probabilities are from 0.5 (``T > 1``: closer, the usual case
    for an over-confident network). Films are counted as they are, unweighted, so the fit
    answers for the class balance of the films given.

    ``log T`` is searched (bounded, deterministic) within ``TEMPERATURE_BOUNDS``. With fewer
    than 2 films, one class only, a margin that is not finite, or classes that do not overlap
    at all (every positive above every negative: the loss would keep falling as ``T`` shrinks,
    making a model that has shown no error yet ever more confident), fewer than
    ``MIN_FILMS_PER_CLASS`` films of a class, or a fit that lands on the lower bound of
    ``TEMPERATURE_BOUNDS`` (sharpening as far as allowed), there is nothing reliable to fit and
    1.0 (no change) is returned; a fit on the upper bound softens as far as allowed.
    """
    z, y = _as_float64(margins), _as_float64(positive)
    if z.size < 2 or not np.isfinite(z).all() or np.unique(y).size < 2:
        return 1.0
    if z[y == 1].min() > z[y == 0].max() or min((y == 1).sum(), (y == 0).sum()) < MIN_FILMS_PER_CLASS:
        return 1.0
    low, high = (math.log(bound) for bound in TEMPERATURE_BOUNDS)
    result = minimize_scalar(
        lambda log_t: _bernoulli_nll(z / math.exp(log_t), y),
        bounds=(low, high),
        method="bounded",
        options={"xatol": 1e-8},
    )
    temperature = math.exp(float(result.x))
    if abs(result.x - low) < 1e-3:
        return 1.0  # on the sharpening bound: the films do not pin the temperature down
    return temperature  # on the softening bound: an over-confident model, softened as far as allowed


def apply_temperature(margins: torch.Tensor, temperature: float) -> torch.Tensor:
    """Calibrated ``P(positive) = sigmoid(margins / temperature)``, in the dtype of ``margins``.

    Computed in float64 (where the device has it) and rounded once at the end, so a float32
    margin loses nothing to the division.
    """
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    dtype = margins.dtype if margins.is_floating_point() else torch.get_default_dtype()
    wide = torch.float32 if margins.device.type == "mps" else torch.float64  # MPS has no float64
    return torch.sigmoid(margins.to(wide) / temperature).to(dtype)


def margin_from_probability(p: float | torch.Tensor) -> float | torch.Tensor:
    """The margin whose sigmoid is ``p``: ``logit(p)``, with ``p`` clipped to
    ``[PROBABILITY_EPS, 1 - PROBABILITY_EPS]`` so that 0 and 1 give finite margins.

    Converts a probability threshold to the margin scale: ``sigmoid`` is increasing, so
    ``sigmoid(z) >= t`` exactly where ``z >= logit(t)`` (up to rounding at the cut-off itself),
    and a threshold chosen on uncalibrated probabilities keeps its films under temperature
    ``T`` as ``sigmoid(margin_from_probability(t) / T)``. A float gives a float; a tensor gives
    a tensor of its own floating dtype.
    """
    if isinstance(p, torch.Tensor):
        dtype = p.dtype if p.is_floating_point() else torch.get_default_dtype()
        wide = torch.float32 if p.device.type == "mps" else torch.float64
        return torch.logit(p.to(wide).clamp(PROBABILITY_EPS, 1 - PROBABILITY_EPS)).to(dtype)
    q = min(max(float(p), PROBABILITY_EPS), 1 - PROBABILITY_EPS)
    return math.log(q) - math.log1p(-q)


def _recalibration_fit(probs: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """Slope ``b`` and intercept ``a`` of ``label ~ sigmoid(a + b * logit(p))``, by maximum
    likelihood; NaN for both where no maximum exists.

    No maximum exists with one class only, nor where the logits separate the classes (every
    positive film at or above every negative one, or the reverse): the likelihood then keeps
    rising as ``|b|`` grows. A small validation set from a good model can be separated, so
    this is a case to report, not an error.
    """
    nan = (float("nan"), float("nan"))
    x = np.log(np.clip(probs, PROBABILITY_EPS, 1 - PROBABILITY_EPS))
    x -= np.log1p(-np.clip(probs, PROBABILITY_EPS, 1 - PROBABILITY_EPS))
    positives, negatives = x[labels == 1], x[labels == 0]
    if positives.size == 0 or negatives.size == 0 or not np.isfinite(x).all():
        return nan
    if negatives.max() <= positives.min() or positives.max() <= negatives.min():
        return nan
    design = np.stack([np.ones_like(x), x], axis=1)

    def loss_and_gradient(params: np.ndarray) -> tuple[float, np.ndarray]:
        scores = design @ params
        residual = expit(scores) - labels
        return _bernoulli_nll(scores, labels), design.T @ residual / x.size

    def hessian(params: np.ndarray) -> np.ndarray:
        p = expit(design @ params)
        return (design * (p * (1 - p))[:, None]).T @ design / x.size

    # the loss is convex in (a, b): Newton steps in a trust region converge from (0, 1), the
    # values of a model that is already calibrated
    result = minimize(loss_and_gradient, np.array([0.0, 1.0]), jac=True, hess=hessian, method="trust-exact")
    if not result.success or not np.isfinite(result.x).all():
        return nan
    intercept, slope = (float(v) for v in result.x)
    return slope, intercept


def calibration_report(probs: torch.Tensor, positive: torch.Tensor, bins: int = 10) -> dict[str, Any]:
    """How well ``probs`` (of the positive class) match the 0/1 labels ``positive``.

    - ``brier``: mean squared difference between probability and label;
    - ``ece``: expected calibration error over equal-mass bins: films sorted by probability
      and split into ``bins`` groups as equal in size as possible (``numpy.array_split``);
      ``sum(n_bin / n * |observed fraction positive - mean probability|)``. Equal mass rather
      than equal width because a confident model leaves most equal-width bins nearly empty;
      films with the same probability may fall either side of a bin boundary;
    - ``calibration_slope`` and ``calibration_intercept``: the fit of
      ``label ~ sigmoid(a + b * logit(p))`` (slope ``b``, 1 ideal, below 1 over-confident;
      intercept ``a``, 0 ideal); NaN with one class only or where the classes are separated;
    - ``reliability``: per non-empty bin, ``{"p_mean", "observed", "n"}``, for
      ``plot_reliability``;
    - ``bins`` and ``binning`` (``"equal-mass"``), saying how the bins were made.
    With no film every figure is NaN and ``reliability`` is empty.
    """
    if bins < 1:
        raise ValueError(f"bins must be at least 1, got {bins}")
    p, y = _as_float64(probs), _as_float64(positive)
    if p.size != y.size:
        raise ValueError(f"{p.size} probabilities for {y.size} labels")
    report: dict[str, Any] = {"bins": bins, "binning": "equal-mass", "reliability": []}
    if p.size == 0:
        nan = float("nan")
        return {"brier": nan, "ece": nan, "calibration_slope": nan, "calibration_intercept": nan, **report}
    order = np.argsort(p, kind="stable")  # stable: ties split the same way on every run
    ece = 0.0
    for members in np.array_split(order, bins):
        if members.size == 0:  # fewer films than bins
            continue
        p_mean, observed = float(p[members].mean()), float(y[members].mean())
        ece += members.size / p.size * abs(observed - p_mean)
        report["reliability"].append({"p_mean": p_mean, "observed": observed, "n": int(members.size)})
    slope, intercept = _recalibration_fit(p, y)
    return {
        "brier": float(np.mean((p - y) ** 2)),
        "ece": ece,
        "calibration_slope": slope,
        "calibration_intercept": intercept,
        **report,
    }


def plot_reliability(reports: dict[str, dict[str, Any]], path: str | Path | None = None) -> plt.Figure:
    """Reliability diagram: per named ``calibration_report`` (``{"before": ..., "after": ...}``),
    observed fraction positive against mean predicted probability, one marked line per bin set,
    with the diagonal of perfect calibration and each curve's ECE in the legend.

    Saved to ``path`` when one is given; the figure is returned either way, for the caller to
    close.
    """
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.plot([0, 1], [0, 1], ":", color="grey", label="perfectly calibrated")
    for name, report in reports.items():
        points = report["reliability"]
        ax.plot(
            [point["p_mean"] for point in points],
            [point["observed"] for point in points],
            "o-",
            label=f"{name} (ECE {report['ece']:.3f})",
        )
    ax.set(
        xlim=(0, 1),
        ylim=(0, 1),
        xlabel="mean predicted P(positive)",
        ylabel="observed fraction positive",
        title="reliability (equal-mass bins)",
    )
    ax.set_aspect("equal")
    ax.legend(loc="upper left")
    fig.tight_layout()
    if path is not None:
        fig.savefig(path)
    return fig
