"""ensemble=seeds: pneumo-train trains the members as a sweep and averages them at its end."""

import pytest

from pneumo.callbacks.ensemble_sweep import build_sweep_ensemble
from pneumo.model.network import Ensemble
from pneumo.serving.ensemble import BEST, make_ensemble
from pneumo.serving.loading import load_model
from tests.helpers import FAST, SAMPLE, run_cli

# 1 epoch: the members only need to exist, and be two different networks
TINY = ["pneumo.cli.train", "ensemble=seeds", *FAST, f"data.root={SAMPLE}", "trainer.max_epochs=1"]


def no_ensemble_lines(output: str) -> list[str]:
    """The lines in which the end of the sweep says it built no ensemble."""
    return [line for line in output.splitlines() if "no ensemble built" in line]


@pytest.mark.slow
def test_one_command_trains_the_seeds_and_writes_their_ensemble(tmp_path):
    # without -m and in the default sweep folder (named with microseconds at composition: the
    # end of the sweep must find the same folder as its jobs)
    result = run_cli("-m", *TINY, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    (sweep,) = (tmp_path / "outputs" / "train" / "multiruns").iterdir()
    members = sorted(sweep.glob(f"*/{BEST}"))
    # each job knows it is one of a sweep: pneumo-train refuses DDP members in one process by it
    assert "mode: MULTIRUN" in (members[0].parents[1] / ".hydra" / "hydra.yaml").read_text()
    assert [m.parents[1].name.split("_")[0] for m in members] == ["0", "1"]
    # seeds 1 and 2, one validation split
    configs = [load_model(m).meta.config for m in members]
    assert [(c["seed"], c["data"]["seed"]) for c in configs] == [(1, 42), (2, 42)]
    ensemble = load_model(sweep / "ensemble.ckpt")
    assert isinstance(ensemble.net, Ensemble) and len(ensemble.net.members) == 2
    recorded = [(tmp_path / m["file"]).resolve() for m in ensemble.meta.ensemble["members"]]
    assert recorded == [m.resolve() for m in members]
    # what pneumo-ensemble computes on the same members, read afresh
    assert ensemble.threshold == make_ensemble(members, tmp_path / "again.ckpt")["ensemble"]["threshold"]
    assert "member 2:" in result.stdout and "ensemble" in result.stdout
    assert "(2 members, threshold" in result.stdout


@pytest.mark.slow
def test_a_job_without_best_ckpt_leaves_one_line_and_its_members(tmp_path):
    # one seed, two jobs: a real training and a wiring check that keeps no checkpoint
    result = run_cli(
        "-m", *TINY, "seed=1", "+trainer.fast_dev_run=false,true", f"hydra.sweep.dir={tmp_path}", cwd=tmp_path
    )
    # the command's product is missing: a script chaining on it must stop
    assert result.returncode == 1, result.stderr[-2000:]
    output = result.stdout + result.stderr
    (line,) = no_ensemble_lines(output)
    assert "it needs two members or more, and 1 of the 2 jobs" in line
    assert "stay usable with pneumo-ensemble" in line
    assert "Traceback" not in output and not (tmp_path / "ensemble.ckpt").exists()
    trained, checked = sorted(d for d in tmp_path.iterdir() if d.is_dir() and not d.name.startswith("."))
    assert (trained / BEST).is_file() and "fast_dev_run=True" in checked.name
    assert f"({checked.name} did not)" in line
    # said before any training: the sweep varies more than the seed
    assert "averages every job of this sweep, and it also sweeps trainer.fast_dev_run" in output


@pytest.mark.slow
def test_members_that_cannot_be_averaged_leave_one_line(tmp_path):
    # the validation split following each member's seed (what ensemble=seeds's data.seed prevents)
    result = run_cli("-m", *TINY, "data.seed=${seed}", f"hydra.sweep.dir={tmp_path}", cwd=tmp_path)
    assert result.returncode == 1, result.stderr[-2000:]
    output = result.stdout + result.stderr
    (line,) = no_ensemble_lines(output)
    assert "val_files" in line and "ensemble members must share it" in line
    assert "Traceback" not in output and not (tmp_path / "ensemble.ckpt").exists()
    assert len(list(tmp_path.glob(f"*/{BEST}"))) == 2


@pytest.mark.slow
@pytest.mark.parametrize("swept", [False, True], ids=["one", "swept"])
def test_a_resume_is_refused_before_any_training(tmp_path, swept):
    # every job would resume the one checkpoint: refused in one line saying how to finish a member
    member = tmp_path / "sweep" / "0_seed_1" / "checkpoints" / "last.ckpt"
    member.parent.mkdir(parents=True)
    member.write_bytes(b"not read: refused before")
    value = f"{member},{member}" if swept else str(member)  # a swept value is not in the sweep's config
    sweep = tmp_path / "new_sweep"
    result = run_cli("-m", *TINY, f"ckpt_path={value}", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    (line,) = [line for line in result.stderr.splitlines() if line.strip()]
    assert line.startswith(f"error: ensemble=seeds trains new members and cannot resume ckpt_path={value}:")
    assert "without ensemble=seeds" in line and "pneumo-ensemble SWEEP_DIR" in line
    assert not sweep.exists()


@pytest.mark.slow
def test_a_wiring_check_builds_no_ensemble_and_exits_0(tmp_path):
    result = run_cli("-m", *TINY, "debug=fast_dev_run", f"hydra.sweep.dir={tmp_path}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    output = result.stdout + result.stderr
    assert "no ensemble built: trainer.fast_dev_run checks the wiring" in output
    assert "Traceback" not in output and not (tmp_path / "ensemble.ckpt").exists()


def _job(sweep, name: str, fast_dev_run: object) -> None:
    """A finished sweep job as Hydra leaves it, without a checkpoint."""
    (sweep / name / ".hydra").mkdir(parents=True)
    (sweep / name / ".hydra" / "config.yaml").write_text(f"trainer:\n  fast_dev_run: {fast_dev_run}\n")


def test_a_sweep_of_wiring_checks_is_no_failure_but_missing_members_are(tmp_path, caplog):
    # every job a wiring check (fast_dev_run true or a number of batches): nothing to average
    _job(tmp_path / "checks", "0_seed=1", "true")
    _job(tmp_path / "checks", "1_seed=2", 5)
    assert build_sweep_ensemble(tmp_path / "checks")
    # a real job that kept no best.ckpt beside a wiring check: the command's product is missing
    _job(tmp_path / "mixed", "0_seed=1", "false")
    _job(tmp_path / "mixed", "1_seed=2", "true")
    assert not build_sweep_ensemble(tmp_path / "mixed")
    assert "0 of the 2 jobs" in caplog.text and not (tmp_path / "mixed" / "ensemble.ckpt").exists()
