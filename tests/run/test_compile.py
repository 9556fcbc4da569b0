"""The faster model paths: model.compile trains like eager and leaves ordinary checkpoints; under
bf16 autocast validation still scores films in float32, as serving does.

The compiled runs here use the ``aot_eager`` backend: the same graph capture and autograd tracing as
inductor without its C++ code generation, which takes about a minute on a 2-core CPU.
"""

import lightning as L
import pytest
import torch
from torch._dynamo.utils import counters

from pneumo.data.datamodule import XrayDataModule
from pneumo.errors import PneumoError
from pneumo.model.module import XrayClassifier
from pneumo.model.network import positive_probability, resnet18_classifier
from pneumo.serving.export import export
from pneumo.serving.loading import load_model
from pneumo.training.fit import train
from pneumo.training.settings import check_train_config
from tests.helpers import FAST, SAMPLE, make_cfg, sample_files

RUN = [*FAST, f"data.root={SAMPLE}", "callbacks.early_stopping=null"]


@pytest.mark.slow
def test_compiled_run_matches_eager_and_its_checkpoints_save_load_export_and_resume(tmp_path):
    eager = train(make_cfg(tmp_path / "eager", RUN))
    compiled_dir = tmp_path / "compiled"
    graphs = counters["stats"]["unique_graphs"]
    compiled = train(make_cfg(compiled_dir, [*RUN, "model.compile=aot_eager"]))
    assert counters["stats"]["unique_graphs"] > graphs  # the network did run compiled
    assert compiled["val/auroc"] == pytest.approx(eager["val/auroc"], abs=1e-3)
    assert compiled["val/loss"] == pytest.approx(eager["val/loss"], abs=1e-4)

    last = compiled_dir / "checkpoints" / "last.ckpt"
    keys = set(torch.load(last, weights_only=True)["state_dict"])
    assert not [k for k in keys if "_orig_mod" in k]
    assert {f"net.{k}" for k in load_model(last).net.state_dict()} <= keys
    _, difference = export(last, "torchscript", tmp_path / "export", sample_files("NORMAL")[:2])
    assert difference <= 1e-4

    resume = [*RUN, "model.compile=aot_eager", "trainer.max_epochs=3", f"ckpt_path={last}"]
    resumed = train(make_cfg(compiled_dir, resume))
    assert torch.load(last, weights_only=True)["epoch"] == 2
    # the resumed epoch trained and validated: its figures are new, not the checkpoint's
    assert resumed["val/loss"] != pytest.approx(compiled["val/loss"], abs=1e-7)


def test_unknown_compile_backend_is_one_line_naming_the_key(tmp_path):
    with pytest.raises(PneumoError, match=r"model.compile='fastest' is not valid"):
        check_train_config(make_cfg(tmp_path, [*RUN, "model.compile=fastest"]))


def test_bf16_validation_scores_films_as_serving_does(tiny_root):
    # the threshold is chosen on these probabilities: under trainer.precision=bf16-mixed they
    # must still be the float32 ones that pneumo-eval, pneumo-predict and the exports compute
    torch.manual_seed(0)
    classifier = XrayClassifier(resnet18_classifier())
    datamodule = XrayDataModule(str(tiny_root), image_size=32, batch_size=4, val_fraction=0.25)
    trainer = L.Trainer(
        precision="bf16-mixed",
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.validate(classifier, datamodule=datamodule, verbose=False)
    validated, _ = classifier.val_predictions
    classifier.eval()
    # the batches as validation received them (grey films become 3 normalised channels there)
    batches = [datamodule.on_after_batch_transfer(batch, 0)[0] for batch in datamodule.val_dataloader()]
    with torch.no_grad():
        # in float32, calibrated by the temperature validation fitted (predict against validation
        # itself, BatchNorm folded: tests/unit/test_inference.py)
        served = torch.cat([positive_probability(classifier(x), 1, classifier.temperature) for x in batches])
        with torch.autocast("cpu", dtype=torch.bfloat16):  # what validation computed before
            half = torch.cat(
                [positive_probability(classifier(x).float(), 1, classifier.temperature) for x in batches]
            )
    assert torch.allclose(validated, served, rtol=0, atol=1e-6)
    assert not torch.allclose(half, served, rtol=0, atol=1e-6)  # the test can tell the two apart


@torch._dynamo.register_backend
def _no_compiler(graph, example_inputs):
    """A backend that fails as inductor does on a machine without a C++ compiler."""
    raise RuntimeError("no C++ compiler found (g++)\nmore compiler output")


def test_a_failing_compile_is_one_line_naming_model_compile(tmp_path):
    with pytest.raises(PneumoError) as caught:
        train(make_cfg(tmp_path, [*RUN, "model.compile=_no_compiler"]))
    message = str(caught.value)
    assert "model.compile='_no_compiler': compiling the network failed" in message
    assert "no C++ compiler found (g++)" in message and "\n" not in message
