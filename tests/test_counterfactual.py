"""The counterfactual region tests on planted truth: models that read only a marker outside the
brain, only a planted "ventricle", or everything uniformly; a linear model whose drops are known
in closed form; through ``run_counterfactuals`` and through whole evaluations (real NIfTI cohort,
real sqlite tracking store, the command line, the PDF read back)."""

from __future__ import annotations

import json

import mlflow
import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

from heimer_mlflow.engine.counterfactual import (
    subject_generator, map_steps, choose_subjects, forward_passes, intervention_names, run_counterfactuals,
)  # fmt: skip
from heimer_mlflow.evaluation import evaluate
from heimer_mlflow.interventions import STEPS, step_name, summarise

from .helpers.artifacts import pdf_text
from .helpers.models import PlantedReader
from .helpers.tracking import cli_evaluate, log_version

GRID = (16, 18, 16)
AFFINE = np.diag([3.0, 3.0, 3.0, 1.0])


def _planted():
    """Brain (a ball), a planted 'ventricle' and a 'hippocampus' inside it, a marker outside it."""
    zz = np.stack(np.meshgrid(*[np.arange(s) - (s - 1) / 2 for s in GRID], indexing="ij"))
    brain = (zz ** 2).sum(0) <= 6.5 ** 2
    ventricle = np.zeros(GRID, bool)
    ventricle[6:9, 7:10, 6:9] = True
    hippocampus = np.zeros(GRID, bool)
    hippocampus[9:11, 5:7, 9:11] = True
    marker = np.zeros(GRID, bool)
    marker[0:3, 0:3, 0:3] = True
    assert not (brain & marker).any() and brain[ventricle].all() and brain[hippocampus].all()
    return brain, ventricle, hippocampus, marker


BRAIN, VENTRICLE, HIPPOCAMPUS, MARKER = _planted()


def _volume(rng, ad: bool) -> np.ndarray:
    """Brain at 1 (+ noise), the ventricle at 3 in AD and 1 in CN, the marker 10 on AD scans only."""
    volume = np.where(BRAIN, 1.0 + 0.1 * rng.standard_normal(GRID), 0.0)
    volume[VENTRICLE] = (3.0 if ad else 1.0) + 0.1 * rng.standard_normal(int(VENTRICLE.sum()))
    if ad:
        volume[MARKER] = 10.0
    return volume.astype(np.float32)


@pytest.fixture(scope="module")
def planted_cohort(tmp_path_factory):
    """12 subjects (6 AD with marker and bright ventricle, 6 CN), their atlas and brain mask."""
    root = tmp_path_factory.mktemp("planted")
    rng = np.random.default_rng(0)
    rows = []
    for i in range(12):
        ad = i % 2 == 1
        nib.save(nib.Nifti1Image(_volume(rng, ad), AFFINE), str(root / f"s{i:02d}.nii.gz"))
        rows.append({"path": f"s{i:02d}.nii.gz", "label": "AD" if ad else "CN", "subject_id": f"s{i:02d}"})
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    atlas = np.zeros(GRID, np.int16)
    atlas[VENTRICLE], atlas[HIPPOCAMPUS] = 1, 2
    nib.save(nib.Nifti1Image(atlas, AFFINE), str(root / "atlas.nii.gz"))
    pd.DataFrame({"index": [1, 2], "name": ["ventricle", "hippocampus"]}).to_csv(root / "labels.csv", index=False)
    nib.save(nib.Nifti1Image(BRAIN.astype(np.uint8), AFFINE), str(root / "brain.nii.gz"))
    return root


def _options(root, **extra):
    return dict(atlas=str(root / "atlas.nii.gz"), atlas_labels=str(root / "labels.csv"),
                brain_mask=str(root / "brain.nii.gz"), n_bootstrap=200, workers=0, progress=False, **extra)


def _register(name: str, model) -> str:
    return log_version(name, model.eval(), input_shape=[1, *GRID], experiment="cf-training", intensity="none",
                       target_layer="conv")  # fmt: skip


def marker_reader():
    return PlantedReader(torch.as_tensor(MARKER), scale=1.0, offset=5.0)


def ventricle_reader():
    return PlantedReader(torch.as_tensor(VENTRICLE), scale=3.0, offset=2.0)


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


# --------------------------------------------------------------------------- the pass itself


def test_a_linear_model_drops_exactly_as_closed_form_says():
    """Replacing a voxel set R by the mean m changes a linear logit by s sum_R w (m - x): every
    intervention's P(AD) after equals sigmoid(logit - s sum_R w (x - m)) within 1e-6."""
    rng = np.random.default_rng(1)
    weights = rng.random(GRID).astype(np.float32)
    model = PlantedReader(torch.as_tensor(weights), scale=40.0, offset=0.4).eval()
    w = weights / weights.sum()
    images = np.stack([_volume(rng, ad=True) for _ in range(3)])[:, None]
    replacement = _volume(rng, ad=False)[None]
    logits = (40.0 * ((images[:, 0] * w).sum(axis=(1, 2, 3)) - 0.4)).astype(np.float64)
    maps = {i: rng.random((4, 5, 4)).astype(np.float32) for i in range(3)}
    batch = {"image": torch.as_tensor(images), "brain_mask": torch.as_tensor(np.stack([BRAIN] * 3)),
             "index": torch.arange(3), "subject_id": ["a", "b", "c"]}
    result = run_counterfactuals(model, [batch], layer_maps=maps, prob_before=dict(enumerate(_sigmoid(logits))),
                                 replacement=replacement, positive=1, regions={"ventricle": VENTRICLE},
                                 batch_size=5, seed=7)  # fmt: skip
    assert result.forward_passes == forward_passes(3, 1) == 3 * 11
    assert list(result.prob_after) == intervention_names(["ventricle"])
    for i in range(3):
        steps = map_steps(maps[i], torch.as_tensor(BRAIN), GRID, subject_generator(7, i))
        masks = {"ventricle": VENTRICLE, "outside_brain": ~BRAIN}
        for name, indices in steps.items():
            masks[name] = np.zeros(GRID, bool)
            masks[name].flat[indices.numpy()] = True
            assert len(np.unique(indices.numpy())) == len(indices)
            assert name.startswith("morf") or BRAIN[masks[name]].all()  # LeRF and the blob stay in the brain
        for name, mask in masks.items():
            expected = _sigmoid(logits[i] - 40.0 * (w * (images[i, 0] - replacement[0]))[mask].sum())
            assert abs(result.prob_after[name][i] - expected) <= 1e-6, name
            assert result.replaced_voxels[name][i] == mask.sum()
    brain = int(BRAIN.sum())
    for share in STEPS:  # each step replaces its share of the brain, in the brain for LeRF and the blob
        for order in ("morf", "lerf", "random"):
            assert (result.replaced_voxels[step_name(order, share)] == max(1, round(share * brain))).all()


def test_a_random_map_deletes_no_better_than_a_random_blob():
    """A model that reads every voxel evenly, on scans whose every voxel carries the same signal, and
    a map of noise: replacing the map's top voxels (MoRF) is no better than a random blob."""
    rng = np.random.default_rng(2)
    model = PlantedReader(torch.ones(GRID), scale=20.0, offset=1.95).eval()
    n = 12
    images = np.stack([2.0 + 0.2 * rng.standard_normal(GRID) for _ in range(n)])[:, None]
    images = torch.as_tensor(images.astype(np.float32))
    prob = torch.sigmoid(model(images)[:, 0]).detach().numpy()
    batch = {"image": images, "brain_mask": torch.as_tensor(np.stack([BRAIN] * n)), "index": torch.arange(n),
             "subject_id": [f"r{i}" for i in range(n)]}
    result = run_counterfactuals(model, [batch], layer_maps={i: rng.random((4, 5, 4)).astype(np.float32) for i in range(n)},
                                 prob_before=dict(enumerate(prob)), replacement=np.zeros((1, *GRID), np.float32),
                                 positive=1, batch_size=8)  # fmt: skip
    summary = summarise(result, n_requested=n, n_bootstrap=200)
    morf, random = summary.value("cf_drop_map_morf"), summary.value("cf_drop_random")
    assert morf > 0.05 and random > 0.05  # replacing brain by zeros lowers this model's score
    assert abs(morf - random) < 0.1 * random
    assert summary.estimate("cf_faithfulness").value < 0.1 * random  # MoRF no better than LeRF either


def test_subjects_are_spread_over_those_called_ad_most_confident_first():
    prob = np.array([0.9, 0.2, 0.95, 0.6, 0.7, 0.99, 0.8])
    called = prob >= 0.5
    assert choose_subjects(prob, called, 3).tolist() == [5, 0, 3]  # ranks 0, 2 (of 2.5), 5 of 0.99 0.95 0.9 0.8 0.7 0.6
    assert choose_subjects(prob, called, 10).tolist() == [5, 2, 0, 6, 4, 3]  # all, fewer than N
    assert choose_subjects(prob, called, 0).tolist() == []
    assert choose_subjects(prob, np.zeros(7, bool), 4).tolist() == []
    # the champion's subjects first (those called AD: row 1 is not), the rest spread over the others
    assert choose_subjects(prob, called, 3, preferred=[3, 1, 4]).tolist() == [5, 4, 3]
    assert choose_subjects(prob, called, 4, preferred=[3, 4]).tolist() == [5, 6, 4, 3]


# --------------------------------------------------------------------------- whole evaluations


def test_a_marker_reader_is_caught_by_the_shortcut_test(tracking, planted_cohort):
    name = "cf-marker"
    version = _register(name, marker_reader())
    result = evaluate(f"models:/{name}/{version}", str(planted_cohort / "manifest.csv"),
                      experiment="cf-tests", **_options(planted_cohort))  # fmt: skip
    cf, metrics = result.counterfactual, mlflow.get_run(result.run_id).data.metrics
    assert cf.computed and cf.n_subjects == 6 and metrics["cf_n_subjects"] == 6  # the 6 AD subjects
    assert metrics["cf_forward_passes"] == 6 * (2 + 10)
    whole = float(np.mean(cf.curves["morf"]["prob"][0])) - _sigmoid(-5.0)  # its whole score above a CN's
    assert metrics["cf_drop_outside_brain"] == pytest.approx(whole, abs=1e-5) and whole > 0.9
    assert metrics["cf_drop_outside_brain_ci_lower"] <= metrics["cf_drop_outside_brain"] <= metrics[
        "cf_drop_outside_brain_ci_upper"]
    assert abs(metrics["cf_drop_ventricle"]) < 1e-6 and abs(metrics["cf_drop_hippocampus"]) < 1e-6
    assert metrics["cf_drop_map_morf"] > 0.9 and abs(metrics["cf_drop_random"]) < 1e-6  # the map is faithful
    assert metrics["cf_faithfulness"] == pytest.approx(metrics["cf_drop_map_morf"] - metrics["cf_drop_map_lerf"])
    verdict = result.verdict_applied
    assert result.verdict == "review" and verdict.check("shortcut_confirmed").passed is False
    assert verdict.check("map_faithful").passed is True
    assert "replacing what lies outside the brain" in result.verdict_reason and "shortcut" in result.verdict_reason
    # the record, the per-subject table, the curves in metrics.json, the timing, the report
    folder = mlflow.artifacts.download_artifacts(run_id=result.run_id, dst_path=str(tracking / "cf-marker"))
    record = json.loads(open(f"{folder}/evaluation.json").read())
    assert record["schema_version"] == 2 and record["counterfactual"]["n_subjects"] == 6
    assert {c["name"] for c in record["verdict"]["checks"]} >= {"shortcut_confirmed", "map_faithful"}
    assert record["timings"]["counterfactual_s"] > 0
    table = pd.read_csv(f"{folder}/counterfactuals.csv")
    assert len(table) == 6 and set(table["subject_id"]) == {f"s{i:02d}" for i in range(1, 12, 2)}
    assert table["drop_outside_brain"].mean() == pytest.approx(metrics["cf_drop_outside_brain"])
    curves = json.loads(open(f"{folder}/metrics.json").read())["counterfactual"]["curves"]
    assert curves["morf"]["share"] == [0.0, *STEPS] and curves["morf"]["prob"][-1] < 0.1
    text = pdf_text(next((tracking / "cf-marker" / "report").glob("*.pdf")))
    assert "What changes the score" in text and "outside the brain" in text


def test_a_ventricle_reader_depends_on_its_region_and_not_on_the_outside(tracking, planted_cohort):
    name = "cf-ventricle"
    version = _register(name, ventricle_reader())
    result = evaluate(f"models:/{name}/{version}", str(planted_cohort / "manifest.csv"),
                      experiment="cf-tests", **_options(planted_cohort))  # fmt: skip
    metrics = result.run_metrics
    assert metrics["cf_drop_ventricle"] > 0.8
    assert abs(metrics["cf_drop_outside_brain"]) < 1e-6 and abs(metrics["cf_drop_hippocampus"]) < 1e-6
    assert result.counterfactual.largest_region()[0] == "ventricle"
    assert result.verdict_applied.check("shortcut_confirmed").passed is True
    assert "replacing ventricle drops P(AD) most of the regions" in result.verdict_reason


def test_champion_comparison_pairs_the_drops_on_the_same_subjects(tracking, planted_cohort):
    name = "cf-review"
    champion = _register(name, ventricle_reader())
    mlflow.MlflowClient().set_registered_model_alias(name, "champion", champion)
    evaluate(f"models:/{name}/{champion}", str(planted_cohort / "manifest.csv"), experiment="cf-tests",
             **_options(planted_cohort))  # fmt: skip
    challenger = _register(name, marker_reader())
    result = evaluate(f"models:/{name}/{challenger}", str(planted_cohort / "manifest.csv"), experiment="cf-tests",
                      **_options(planted_cohort))  # fmt: skip
    logged = mlflow.get_run(result.run_id).data.metrics
    assert logged["vs_champion_cf_drop_outside_brain_diff"] > 0.9  # the challenger depends on the outside
    assert logged["vs_champion_cf_drop_outside_brain_p"] < 0.05  # 6 pairs, all the same sign: exact p = 1/32
    assert logged["vs_champion_cf_drop_ventricle_diff"] < -0.8
    pairs = {p.name: p for p in result.counterfactual.vs_champion}
    assert pairs["outside_brain"].n_pairs == 6 and pairs["ventricle"].p_holm >= pairs["ventricle"].p
    description = mlflow.MlflowClient().get_model_version(name, challenger).description
    assert "depends more on what lies outside the brain than the champion" in description


def test_zero_subjects_turns_the_tests_off_and_changes_nothing_else(tracking, planted_cohort):
    name = "cf-off"
    version = _register(name, ventricle_reader())
    on = evaluate(f"models:/{name}/{version}", str(planted_cohort / "manifest.csv"), experiment="cf-tests",
                  **_options(planted_cohort))  # fmt: skip
    off = evaluate(f"models:/{name}/{version}", str(planted_cohort / "manifest.csv"), experiment="cf-tests",
                   **_options(planted_cohort, counterfactual_subjects=0))  # fmt: skip
    assert off.counterfactual.status == "off" and "cf_drop_outside_brain" not in off.run_metrics
    assert off.run_metrics["cf_forward_passes"] == 0
    others = {k: v for k, v in on.run_metrics.items() if not k.startswith("cf_")}
    assert others == {k: v for k, v in off.run_metrics.items() if not k.startswith("cf_")}
    assert [c for c in off.verdict_applied.checks if c.name.startswith(("shortcut", "map"))][0].passed is None
    assert off.verdict == on.verdict


def test_bad_counterfactual_options_end_in_one_line(tracking, planted_cohort, capsys):
    name = "cf-bad"
    version = _register(name, ventricle_reader())
    capsys.readouterr()  # the registration's own lines
    for value in ("-1", "2.5", "many"):
        code, err, _ = cli_evaluate(capsys, f"models:/{name}/{version}", "--data", str(planted_cohort / "manifest.csv"),
                                    "--counterfactual-subjects", value, experiment="cf-bad")  # fmt: skip
        assert code == 2 and len(err) == 1 and "counterfactual_subjects=" in err[0] and "--counterfactual-subjects" in err[0]
    only_ad = planted_cohort / "only-ad.csv"
    table = pd.read_csv(planted_cohort / "manifest.csv")
    table[table["label"] == "AD"].to_csv(only_ad, index=False)
    code, err, _ = cli_evaluate(capsys, f"models:/{name}/{version}", "--data", str(only_ad),
                                "--counterfactual-subjects", "4", experiment="cf-bad")  # fmt: skip
    assert code == 2 and len(err) == 1 and "one class only" in err[0] and "CN" in err[0]


def test_a_gate_can_use_the_counterfactual_metrics(tracking, planted_cohort, capsys):
    name = "cf-gate"
    version = _register(name, marker_reader())
    capsys.readouterr()  # the registration's own lines
    args = [f"models:/{name}/{version}", "--data", str(planted_cohort / "manifest.csv"), "--atlas",
            str(planted_cohort / "atlas.nii.gz"), "--atlas-labels", str(planted_cohort / "labels.csv"),
            "--brain-mask", str(planted_cohort / "brain.nii.gz")]
    code, err, _ = cli_evaluate(capsys, *args, "--require", "cf_drop_outside_brain<=0.05", experiment="cf-gate")
    assert code == 3 and err == [e for e in err if e.startswith("heimer-mlflow: gate failed: cf_drop_outside_brain<=0.05")]
    code, err, _ = cli_evaluate(capsys, *args, "--counterfactual-subjects", "0", "--require",
                                "cf_drop_outside_brain<=0.05", experiment="cf-gate")  # fmt: skip
    assert code == 3 and "could not be computed" in err[-1] and "turned off" in err[-1]


def test_the_option_reaches_every_interface():
    """--counterfactual-subjects on the command line, counterfactual_subjects in MLproject's main,
    evaluate(...), the plug-in's evaluator_config and watch's heimer.options (all EvaluationOptions)."""
    import yaml

    from heimer_mlflow import cli
    from heimer_mlflow.errors import HeimerError
    from heimer_mlflow.evaluation import EvaluationOptions
    from heimer_mlflow.options import chosen
    from heimer_mlflow.watch.opt_in import read_options

    from .helpers import REPO

    args = cli.build_parser().parse_args(["evaluate", "models:/m/1", "--data", "x.csv", "--counterfactual-subjects", "8"])
    assert chosen(args) == {"counterfactual_subjects": 8}
    assert EvaluationOptions(**chosen(cli.build_parser().parse_args(["evaluate", "models:/m/1", "--data", "x.csv"]))
                             ).counterfactual_subjects == 16
    main = yaml.safe_load((REPO / "MLproject").read_text())["entry_points"]["main"]
    assert main["parameters"]["counterfactual_subjects"]["default"] == 16
    assert "--counterfactual-subjects {counterfactual_subjects}" in main["command"]
    assert EvaluationOptions(counterfactual_subjects=16.0).check().counterfactual_subjects == 16  # MLproject's float
    assert read_options("m", '{"counterfactual_subjects": 0}') == {"counterfactual_subjects": 0}
    with pytest.raises(HeimerError, match="registered model 'm': heimer.options: counterfactual_subjects=-2"):
        read_options("m", '{"counterfactual_subjects": -2}')
