"""The statistics a clinical reader asks of an evaluation: how sure each figure is, whether two
models differ on the same films, and what acting on the model would gain.

- ``wilson``: the Wilson score interval of a proportion (``k`` of ``n``), films counted as
  independent;
- ``PatientBootstrap``: a percentile bootstrap that resamples **patients**, not films, within
  each class: a child with three films is drawn (or not) once per draw with all three. Every
  figure (the confusion-matrix ratios at any threshold, AUROC, the paired difference of two
  models' AUROC) is computed on all draws at once from a ``draws x films`` matrix of how often
  each film is drawn, so 2000 draws over the 624 films of Kermany's test split take well under
  a second;
- ``mcnemar``: the exact McNemar test (a binomial test on the discordant pairs);
- ``decision_curve``: net benefit against treat-all and treat-none (Vickers and Elkin 2006).

A figure with nothing to count is NaN, as in ``metrics``; an interval of such a figure is
``[nan, nan]``. A bootstrap interval is read off the draws where its figure is defined (a draw
may hold no film called positive, for precision); their number stands beside it
(``bootstrap_draws``). Each proportion names the interval to quote (``quote``, see
``interval_to_quote``). Library code: no printing, no files.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy.stats import binomtest

from pneumo.model.metrics import ratios
from pneumo.model.threshold import is_positive

LEVEL = 0.95
DRAWS = 2000
SEED = 0
# The figures metrics.json reports at a threshold, with an interval each.
REPORTED = ("acc", "sensitivity", "specificity", "precision", "npv", "f1")
# Those that are a proportion k / n of films, as (numerator, denominator) of [tp, fp, tn, fn]
# indices; F1 is a ratio of sums, not a proportion, and gets the bootstrap interval only.
_TP, _FP, _TN, _FN = range(4)
PROPORTIONS: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    "acc": ((_TP, _TN), (_TP, _FP, _TN, _FN)),
    "sensitivity": ((_TP,), (_TP, _FN)),
    "specificity": ((_TN,), (_TN, _FP)),
    "precision": ((_TP,), (_TP, _FP)),
    "npv": ((_TN,), (_TN, _FN)),
}
# Draws are processed in blocks of this many, so memory stays near
# ``block x films x 8 bytes`` a matrix whatever the number of draws.
_BLOCK = 500
# This many patients or fewer in the class a figure counts, and the percentile bootstrap of
# patients covers less than it claims (30 single-film patients at sensitivity 0.95: 79 % of
# its 95 % intervals held the true value, Wilson's 94 %; docs/evaluation.md): Wilson is quoted.
FEW_PATIENTS = 30

Interval = list[float]
NAN_INTERVAL: Interval = [math.nan, math.nan]


def wilson(k: int, n: int, level: float = LEVEL) -> Interval:
    """The Wilson score interval of ``k`` successes in ``n`` trials (``[nan, nan]`` for ``n = 0``).

    ``scipy.stats.binomtest(k, n).proportion_ci(method="wilson")``: unlike the Wald interval it
    stays inside [0, 1] and keeps its coverage near 0 and 1, where a good model's
    sensitivity and specificity lie.
    """
    if n == 0:
        return list(NAN_INTERVAL)
    ci = binomtest(int(k), int(n)).proportion_ci(confidence_level=level, method="wilson")
    return [float(ci.low), float(ci.high)]


def proportion_counts(tp: int, fp: int, tn: int, fn: int) -> dict[str, tuple[int, int]]:
    """``(k, n)`` of every proportion among ``REPORTED`` at these confusion counts."""
    counts = (tp, fp, tn, fn)
    return {
        name: (sum(counts[i] for i in top), sum(counts[i] for i in bottom))
        for name, (top, bottom) in PROPORTIONS.items()
    }


def percentile_interval(values: np.ndarray, level: float = LEVEL) -> Interval:
    """The central ``level`` percentile interval of the draws where a figure is defined."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return list(NAN_INTERVAL)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(finite, [tail, 100 - tail])
    return [float(low), float(high)]


def usable_draws(values: np.ndarray) -> int:
    """How many bootstrap draws define a figure (are finite): those its interval is read off."""
    return int(np.isfinite(values).sum())


def interval_to_quote(k: int | None, n: int | None, patients: int) -> str:
    """``"wilson"`` or ``"bootstrap"``: the interval to quote for a figure of ``k`` of ``n``
    films whose class (the films it counts) holds ``patients`` patients.

    Wilson where the patient bootstrap cannot be trusted: ``k`` is 0 or ``n`` (every draw
    gives the same 0 or 1, so the bootstrap interval has no width), or the class holds
    ``FEW_PATIENTS`` patients or fewer (the bootstrap under-covers). The patient bootstrap
    otherwise: it keeps a child's films together, where Wilson counts them as independent. A
    figure that is not a proportion (F1, AUROC) has only the bootstrap.
    """
    if k is None or n is None:
        return "bootstrap"
    return "wilson" if k in (0, n) or patients <= FEW_PATIENTS else "bootstrap"


def patient_strata(patients: Sequence[str], positive: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each film's patient as an index, and each patient's class for stratifying.

    A patient takes the class of most of their films, as ``data.split.patient_split`` assigns
    them; a tie (rare: a child with as many normal films as pneumonia films) counts as
    positive.
    """
    names, film_patient = np.unique(np.asarray(patients, dtype=object).astype(str), return_inverse=True)
    films = np.bincount(film_patient, minlength=names.size)
    positives = np.bincount(film_patient, weights=positive.astype(np.float64), minlength=names.size)
    return film_patient, (2 * positives >= films).astype(np.int8)


@dataclass(frozen=True)
class PatientBootstrap:
    """Bootstrap draws of patients, stratified by class, ready to weigh any per-film figure.

    ``counts[d, p]`` is how many times patient ``p`` is drawn in draw ``d``; each class's
    patients are drawn with replacement as many times as the class has patients. A film
    counts as often as its patient is drawn (``film_weights``).
    """

    counts: np.ndarray  # draws x patients, small integers
    film_patient: np.ndarray  # films -> patient index
    patients_by_class: tuple[int, int]  # (negative, positive) patients
    draws: int
    seed: int
    level: float

    @classmethod
    def draw(
        cls,
        patients: Sequence[str],
        positive: Sequence[int] | np.ndarray,
        draws: int = DRAWS,
        seed: int = SEED,
        level: float = LEVEL,
    ) -> PatientBootstrap:
        """``draws`` resamples of the patients of these films (``patients[i]`` is film ``i``'s)."""
        if draws < 1:
            raise ValueError(f"draws must be at least 1, got {draws}")
        if not 0 < level < 1:
            raise ValueError(f"level must be between 0 and 1, got {level}")
        labels = np.asarray(positive, dtype=np.int8)
        if len(patients) != labels.size:
            raise ValueError(f"{len(patients)} patients for {labels.size} films")
        film_patient, patient_class = patient_strata(patients, labels)
        rng = np.random.default_rng(seed)
        counts = np.zeros((draws, patient_class.size), dtype=np.int32)
        for stratum in (0, 1):  # in a fixed order: the same seed gives the same draws
            members = np.flatnonzero(patient_class == stratum)
            m = members.size
            if m == 0:
                continue
            picks = rng.integers(0, m, size=(draws, m))
            # a bincount per draw, all at once: draw d's picks land in [d * m, (d + 1) * m)
            offsets = picks + (np.arange(draws) * m)[:, None]
            counts[:, members] = np.bincount(offsets.ravel(), minlength=draws * m).reshape(draws, m)
        by_class = (int((patient_class == 0).sum()), int((patient_class == 1).sum()))
        return cls(counts, film_patient, by_class, draws, seed, level)

    def film_weights(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """``draws x films`` float64: how many times each film is drawn, for draws ``start:stop``."""
        return self.counts[start:stop][:, self.film_patient].astype(np.float64)

    def blocks(self) -> list[tuple[int, int]]:
        return [(s, min(s + _BLOCK, self.draws)) for s in range(0, self.draws, _BLOCK)]

    def confusion(self, predicted: np.ndarray, positive: np.ndarray) -> np.ndarray:
        """``draws x 4`` weighted ``[tp, fp, tn, fn]`` of 0/1 ``predicted`` against ``positive``."""
        pred, truth = np.asarray(predicted, bool), np.asarray(positive, bool)
        cells = np.stack([pred & truth, pred & ~truth, ~pred & ~truth, ~pred & truth], axis=1)
        return np.concatenate(
            [self.film_weights(a, b) @ cells.astype(np.float64) for a, b in self.blocks()], axis=0
        )

    def ratio_draws(self, predicted: np.ndarray, positive: np.ndarray) -> dict[str, np.ndarray]:
        """Every one of ``REPORTED`` on every draw (NaN where a draw has nothing to count)."""
        tp, fp, tn, fn = self.confusion(predicted, positive).T
        with np.errstate(invalid="ignore", divide="ignore"):
            return {
                "acc": (tp + tn) / (tp + fp + tn + fn),
                "sensitivity": tp / (tp + fn),
                "specificity": tn / (tn + fp),
                "precision": tp / (tp + fp),
                "npv": tn / (tn + fn),
                "f1": 2 * tp / (2 * tp + fp + fn),
            }

    def auroc_draws(self, scores: np.ndarray, positive: np.ndarray) -> np.ndarray:
        """AUROC of ``scores`` on every draw (``weighted_auroc``); NaN where a class is absent."""
        return np.concatenate(
            [weighted_auroc(self.film_weights(a, b), scores, positive) for a, b in self.blocks()]
        )

    def interval(self, values: np.ndarray) -> Interval:
        return percentile_interval(values, self.level)

    def describe(self) -> dict[str, Any]:
        """The method, level, draws and seed, for metrics.json beside the figures."""
        return {
            "method": "percentile bootstrap resampling patients, not films, within each class",
            "level": self.level,
            "draws": self.draws,
            "seed": self.seed,
            "patients": int(sum(self.patients_by_class)),
            "patients_negative": self.patients_by_class[0],
            "patients_positive": self.patients_by_class[1],
        }


def weighted_auroc(weights: np.ndarray, scores: np.ndarray, positive: np.ndarray) -> np.ndarray:
    """AUROC of ``scores`` against 0/1 ``positive`` with per-row film ``weights`` (``rows x films``).

    With integer weights this is the AUROC of the films repeated as often as they weigh:
    ``sum_i sum_j w_i w_j ([s_i > s_j] + [s_i = s_j] / 2) / (W_pos W_neg)`` over positive ``i``
    and negative ``j``, the Mann-Whitney statistic with ties counted half (as scikit-learn and
    torchmetrics count them). The films are sorted once; per row it is one cumulative sum over
    the groups of tied scores.
    """
    scores = np.asarray(scores, dtype=np.float64)
    truth = np.asarray(positive, dtype=bool)
    order = np.argsort(scores, kind="stable")
    sorted_scores = scores[order]
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    w = np.atleast_2d(weights)[:, order]
    pos_sorted = truth[order]
    neg_group = np.add.reduceat(w * ~pos_sorted, starts, axis=1)
    pos_group = np.add.reduceat(w * pos_sorted, starts, axis=1)
    neg_below = np.cumsum(neg_group, axis=1) - neg_group
    wins = (pos_group * (neg_below + neg_group / 2)).sum(axis=1)
    pairs = pos_group.sum(axis=1) * neg_group.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(pairs > 0, wins / np.where(pairs > 0, pairs, 1), np.nan)


def figures_with_intervals(
    probs: np.ndarray, positive: np.ndarray, threshold: float, bootstrap: PatientBootstrap
) -> dict[str, dict[str, Any]]:
    """Each of ``REPORTED`` at ``threshold``: the estimate, the Wilson interval (proportions;
    ``None`` for F1) with its ``k`` and ``n``, the patient-bootstrap interval with the number of
    draws it is read off, and the interval to quote (``interval_to_quote``)."""
    predicted = is_positive(_tensor(probs), threshold).numpy()
    truth = np.asarray(positive, bool)
    tp = int((predicted & truth).sum())
    fp = int((predicted & ~truth).sum())
    tn = int((~predicted & ~truth).sum())
    fn = int((~predicted & truth).sum())
    estimates = ratios(tp, fp, tn, fn)
    parts = proportion_counts(tp, fp, tn, fn)
    draws = bootstrap.ratio_draws(predicted, truth)
    negative, positive_patients = bootstrap.patients_by_class
    # the patients of the class a figure counts; both classes' fewer for the mixed ones
    counted = {"sensitivity": positive_patients, "specificity": negative}
    figures: dict[str, dict[str, Any]] = {}
    for name in REPORTED:
        k, n = parts.get(name, (None, None))
        patients = counted.get(name, min(negative, positive_patients))
        figures[name] = {
            "estimate": estimates[name],
            "k": k,
            "n": n,
            "wilson": wilson(k, n, bootstrap.level) if k is not None and n is not None else None,
            "bootstrap": bootstrap.interval(draws[name]),
            "bootstrap_draws": usable_draws(draws[name]),
            "quote": interval_to_quote(k, n, patients),
        }
    return figures


def auroc_with_interval(
    probs: np.ndarray, positive: np.ndarray, bootstrap: PatientBootstrap
) -> dict[str, Any]:
    """AUROC (ties counted half), its patient-bootstrap interval and the draws it is read off
    (a draw holding the films of one class only has no AUROC)."""
    truth = np.asarray(positive, bool)
    estimate = float(weighted_auroc(np.ones((1, truth.size)), probs, truth)[0])
    draws = bootstrap.auroc_draws(probs, truth)
    return {
        "estimate": estimate,
        "bootstrap": bootstrap.interval(draws),
        "bootstrap_draws": usable_draws(draws),
    }


def paired_auroc_difference(
    probs_a: np.ndarray, probs_b: np.ndarray, positive: np.ndarray, bootstrap: PatientBootstrap
) -> dict[str, Any]:
    """AUROC of model A minus that of model B on the same films, with a paired patient-bootstrap
    interval: both models are scored on the same draws, so what the films share cancels."""
    truth = np.asarray(positive, bool)
    ones = np.ones((1, truth.size))
    a = float(weighted_auroc(ones, probs_a, truth)[0])
    b = float(weighted_auroc(ones, probs_b, truth)[0])
    differences = bootstrap.auroc_draws(probs_a, truth) - bootstrap.auroc_draws(probs_b, truth)
    return {
        "auroc_a": a,
        "auroc_b": b,
        "difference": a - b,
        "bootstrap": bootstrap.interval(differences),
        "bootstrap_draws": usable_draws(differences),
    }


def mcnemar(a_correct: np.ndarray, b_correct: np.ndarray) -> dict[str, Any]:
    """The exact McNemar test of two classifiers on the same films.

    Only the discordant films count: ``a_only`` that A got right and B wrong, ``b_only`` the
    reverse. Under "no difference" each discordant film is a fair coin, so the two-sided
    p-value is ``binomtest(a_only, a_only + b_only, 0.5)``'s; 1.0 when no film is discordant.
    Films are counted as independent (no patient clustering).
    """
    a, b = np.asarray(a_correct, bool), np.asarray(b_correct, bool)
    a_only, b_only = int((a & ~b).sum()), int((~a & b).sum())
    discordant = a_only + b_only
    p_value = float(binomtest(a_only, discordant, 0.5).pvalue) if discordant else 1.0
    return {
        "films": int(a.size),
        "both_correct": int((a & b).sum()),
        "both_wrong": int((~a & ~b).sum()),
        "a_only": a_only,
        "b_only": b_only,
        "p_value": p_value,
        "test": "exact McNemar: two-sided binomial test of a_only among the discordant films, p = 0.5",
    }


DECISION_THRESHOLDS = tuple(round(0.05 * i, 2) for i in range(1, 20))  # 0.05 .. 0.95


def decision_curve(
    probs: np.ndarray, positive: np.ndarray, thresholds: Sequence[float] = DECISION_THRESHOLDS
) -> list[dict[str, float]]:
    """Net benefit of acting on the model at each threshold probability ``pt``, against acting
    on every film (treat-all) and on none (treat-none, 0).

    ``net benefit = TP / n - FP / n * pt / (1 - pt)``: true positives gained, less false
    positives weighed by the odds at which a reader would be indifferent between acting and
    not. Treat-all: ``prevalence - (1 - prevalence) * pt / (1 - pt)``. A film is called
    positive where ``p >= pt`` (``is_positive``).
    """
    truth = np.asarray(positive, bool)
    n = truth.size
    prevalence = truth.mean() if n else math.nan
    rows = []
    for pt in thresholds:
        if not 0 < pt < 1:
            raise ValueError(f"decision-curve thresholds lie strictly between 0 and 1, got {pt}")
        called = is_positive(_tensor(probs), pt).numpy()
        odds = pt / (1 - pt)
        tp, fp = int((called & truth).sum()), int((called & ~truth).sum())
        rows.append(
            {
                "threshold": float(pt),
                "model": tp / n - fp / n * odds if n else math.nan,
                "treat_all": float(prevalence - (1 - prevalence) * odds),
                "treat_none": 0.0,
                "true_positives": tp,
                "false_positives": fp,
            }
        )
    return rows


def _tensor(values: np.ndarray | Sequence[float]) -> torch.Tensor:
    """Probabilities as a float64 tensor, for ``is_positive`` (the one rule that decides)."""
    return torch.as_tensor(np.asarray(values, dtype=np.float64))


def group_intervals(
    probs: np.ndarray,
    positive: np.ndarray,
    patients: Sequence[str],
    groups: Sequence[str | None],
    threshold: float,
    draws: int = DRAWS,
    seed: int = SEED,
    level: float = LEVEL,
) -> dict[str, dict[str, Any]]:
    """Per group (None: no group): sensitivity, specificity and AUROC with their intervals,
    each group's patients resampled on their own (same seed for every group)."""
    out: dict[str, dict[str, Any]] = {}
    labels = np.asarray(positive, bool)
    names = np.asarray([g if g is not None else "" for g in groups], dtype=object)
    for group in sorted({g for g in groups if g is not None}):
        members = np.flatnonzero(names == group)
        boot = PatientBootstrap.draw([patients[int(i)] for i in members], labels[members], draws, seed, level)
        figures = figures_with_intervals(probs[members], labels[members], threshold, boot)
        out[group] = {
            "sensitivity": figures["sensitivity"],
            "specificity": figures["specificity"],
            "auroc": auroc_with_interval(probs[members], labels[members], boot),
            "patients": int(sum(boot.patients_by_class)),
        }
    return out
