"""Recalibration on a site's own labelled films: a new temperature and threshold, the network
unchanged.

A model's operating point is chosen on its own validation films; another hospital's machines,
protocols and patients move its probabilities. ``recalibrate`` fits the temperature and the
checkpoint's own threshold rule on a site's films (a class-folder tree) and writes a new
checkpoint that records where its operating point came from: the folder, the films and
patients of each class, the rule, and the sensitivity and specificity the sample supports with
their Wilson intervals. The original checkpoint is left as it was.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from pneumo.artifacts.checkpoint import AtomicCheckpointIO, read_checkpoint
from pneumo.data.dataset import scan_split
from pneumo.data.split import patient_id
from pneumo.errors import PneumoError
from pneumo.evaluation.flow import film_sha256
from pneumo.evaluation.statistics import wilson
from pneumo.model.calibration import apply_temperature, fit_temperature
from pneumo.model.metrics import confusion_counts
from pneumo.serving.ensemble import rule_parameters, threshold_by_rule
from pneumo.serving.loading import load_model
from pneumo.serving.margins import film_margins

# The fewest patients of each class a site must give. At 20 a proportion's Wilson 95 % interval
# still spans up to 0.2 either side (10 of 20: 0.30 to 0.70; 19 of 20: 0.76 to 0.99): fewer
# patients cannot tell one operating point from another, and one child would move it.
MIN_PATIENTS_PER_CLASS = 20


def _operating_point(
    probs: torch.Tensor, positive: torch.Tensor, threshold: float
) -> dict[str, dict[str, Any]]:
    """Sensitivity and specificity at ``threshold``: estimate, ``k`` of ``n``, Wilson interval."""
    tp, fp, tn, fn = confusion_counts(probs, positive, threshold).tolist()
    figures = {}
    for name, k, n in (("sensitivity", tp, tp + fn), ("specificity", tn, tn + fp)):
        figures[name] = {"estimate": k / n if n else float("nan"), "k": k, "n": n, "wilson": wilson(k, n)}
    return figures


def recalibrate(ckpt: str | Path, data: str | Path, out: str | Path) -> dict[str, Any]:
    """Fit the temperature and the threshold of ``ckpt`` (its own rule) on the labelled films
    under ``data`` (``DATA/CLASS/*``) and write the result to the new checkpoint ``out``.

    A sample with fewer than ``MIN_PATIENTS_PER_CLASS`` patients (read from the file names, as
    ``split.patient_id`` reads them) in either class is refused. Returns the record written into
    the new checkpoint's calibration (``recalibration``): where the operating point came from,
    and the figures before and after on these films.
    """
    ckpt, data, out = Path(ckpt), Path(data), Path(out)
    if out.exists() and out.resolve() == ckpt.resolve():
        raise PneumoError(f"--out {out} is the checkpoint itself; write the recalibrated one to a new file")
    if not data.is_dir():
        raise PneumoError(f"--data {data} is not a folder; give a folder of class folders (DATA/NORMAL, ...)")
    model = load_model(ckpt)
    samples = scan_split(data, model.classes)
    patients: dict[str, set[str]] = defaultdict(set)
    films: dict[str, int] = defaultdict(int)
    for sample in samples:
        patients[model.classes[sample.label]].add(patient_id(sample.path))
        films[model.classes[sample.label]] += 1
    counts = {name: len(patients[name]) for name in model.classes}
    if min(counts.values()) < MIN_PATIENTS_PER_CLASS:
        held = " and ".join(f"{n} {name}" for name, n in counts.items())
        raise PneumoError(
            f"{data} holds films of {held} patients: recalibration needs at least {MIN_PATIENTS_PER_CLASS} "
            "patients of each class (with fewer, a sensitivity or specificity is known only to within about "
            "0.2 either side, too wide to set an operating point); add labelled films"
        )
    margins = film_margins(model, [s.path for s in samples]).double()
    positive = torch.tensor([int(s.label == model.positive_index) for s in samples])
    temperature, refitted = fit_temperature(margins, positive), "refitted"
    if temperature == 1.0:  # fit_temperature's answer when the films do not pin a temperature down
        temperature = model.meta.temperature
        refitted = (
            "not refitted: the site's films do not pin a temperature down (the classes do not overlap, "
            "or the fit sharpens to its bound); the source's is kept"
        )
    probs = apply_temperature(margins, temperature)
    threshold = threshold_by_rule(model.meta, probs, positive)
    before = apply_temperature(margins, model.meta.temperature)
    record = {
        "site": str(data.resolve()),
        "date": dt.date.today().isoformat(),
        "source": str(ckpt),
        "films": len(samples),
        "films_by_class": dict(films),
        # each film's SHA-256, sorted: pneumo-eval warns when it scores any of them (in-sample)
        "films_sha256": sorted({film_sha256(s.path) or "" for s in samples} - {""}),
        "patients_by_class": counts,
        "rule": rule_parameters(model.meta),
        "temperature": {"before": model.meta.temperature, "after": temperature, "fit": refitted},
        "threshold": {"before": model.threshold, "after": threshold},
        "before": _operating_point(before, positive, model.threshold),
        "after": _operating_point(probs, positive, threshold),
        "note": "chosen on these films: the figures after are optimistic for them",
    }
    calibration = {
        "method": "temperature",
        "temperature": temperature,
        "fitted_on": "site",
        "films": len(samples),
        "recalibration": record,
    }
    checkpoint = read_checkpoint(ckpt)
    # trackers None: the new checkpoint must not log into the source's training run
    meta = replace(model.meta, threshold=threshold, calibration=calibration, trackers=None)
    checkpoint["pneumo"] = meta.as_dict()
    AtomicCheckpointIO().save_checkpoint(checkpoint, out)
    return record
