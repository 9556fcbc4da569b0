"""scripts/operating_point.py on a real run: its table and JSON against figures computed here,
by hand, from the checkpoint's own network on the validation films it recorded."""

import json

import pytest
import torch

from pneumo.data.preprocess import load_image, to_model_input
from pneumo.serving.loading import load_model
from tests.helpers import REPO, SAMPLE, run_cli


def _validation_probabilities(ckpt) -> tuple[torch.Tensor, torch.Tensor]:
    """Calibrated P(pneumonia) of the recorded validation films, and which are pneumonia."""
    meta = torch.load(ckpt, weights_only=True)["pneumo"]
    model = load_model(ckpt)
    files = [(SAMPLE / path, label) for path, label in meta["val_files"]]
    images = torch.stack([load_image(path, meta["preprocessing"]["image_size"]) for path, _ in files])
    with torch.inference_mode():
        logits = model.net(to_model_input(images, model.mean, model.std))
    temperature = meta["calibration"]["temperature"]  # fitted on these films when the run validated
    p = (logits / temperature).softmax(dim=1)[:, meta["classes"].index("PNEUMONIA")]
    positive = torch.tensor([label == "PNEUMONIA" for _, label in files])
    return p.double(), positive


def _figures(p: torch.Tensor, positive: torch.Tensor, cut: float) -> tuple[float, float]:
    """Sensitivity and specificity at ``cut``: a film is called pneumonia at P >= cut."""
    called = p >= cut
    return float(called[positive].double().mean()), float((~called[~positive]).double().mean())


@pytest.mark.slow  # a child interpreter scores the films and their stressed copies
def test_table_and_json_match_figures_computed_from_the_checkpoint(tmp_path, trained_ckpt):
    out = tmp_path / "op.json"
    run_dir = trained_ckpt.parent.parent
    result = run_cli(
        str(REPO / "scripts" / "operating_point.py"),
        str(run_dir),
        *("--data-root", str(SAMPLE), "--draws", "2", "--json", str(out)),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (report,) = json.loads(out.read_text())
    meta = torch.load(trained_ckpt, weights_only=True)["pneumo"]
    p, positive = _validation_probabilities(trained_ckpt)
    assert report["checkpoint"] == str(trained_ckpt) and report["films"] == len(p) == 4
    assert report["stored_threshold"] == pytest.approx(meta["threshold"])
    assert report["normal_q50_q90_q97_max"]["clean"][-1] == pytest.approx(float(p[~positive].max()), abs=1e-4)
    assert report["pneumonia_q50_q90_q97_max"]["clean"][-1] == pytest.approx(
        float(p[positive].max()), abs=1e-4
    )
    rules = report["rules"]

    # fixed 0.5: the figures at one half
    fixed = rules["fixed 0.5"]
    assert fixed["threshold"] == 0.5 and fixed["logit"] == pytest.approx(0.0)
    sens, spec = _figures(p, positive, 0.5)
    assert fixed["clean"]["sensitivity"] == pytest.approx(sens) and fixed["clean"][
        "specificity"
    ] == pytest.approx(spec)

    # a sensitivity of 0.95 of two pneumonia films needs both: the cut-off is the lower one's P,
    # stored 1e-4 below it (pneumo.model.threshold.CUT_OFF_MARGIN, so that the film stays in)
    lowest = float(p[positive].min())
    for name in ("sensitivity 0.95", "sensitivity 0.97"):
        assert rules[name]["threshold"] == pytest.approx(lowest - 1e-4, abs=1e-6), name
        assert rules[name]["clean"]["sensitivity"] == 1.0
        assert rules[name]["clean"]["specificity"] == pytest.approx(_figures(p, positive, lowest - 1e-4)[1])

    # Youden's J: the best sensitivity + specificity over every cut-off the films offer
    best_j = max(sum(_figures(p, positive, float(cut))) for cut in [*p.tolist(), 1.1])
    youden = rules["youden"]
    assert youden["clean"]["sensitivity"] + youden["clean"]["specificity"] == pytest.approx(best_j)

    # every rule's figures, as the script computed them, are those at its threshold
    for name, rule in rules.items():
        sens, spec = _figures(p, positive, rule["threshold"])
        assert rule["clean"]["sensitivity"] == pytest.approx(sens, abs=1e-6), name
        assert rule["clean"]["specificity"] == pytest.approx(spec, abs=1e-6), name

    # the table prints the same figures, one row a rule
    rows = [line for line in result.stdout.splitlines() if line.startswith("| 1 | ")]
    assert len(rows) == len(rules)
    fixed_row = next(r for r in rows if r.startswith("| 1 | fixed 0.5 |"))
    sens, spec = _figures(p, positive, 0.5)
    assert fixed_row.startswith(f"| 1 | fixed 0.5 | 0.500 | +0.00 | {sens:.3f} | {spec:.3f} |")
