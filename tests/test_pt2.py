"""pt2 (``torch.export``, MLflow 3's default serialization) against pickle, on a real sqlite
tracking store: the same weights logged both ways load as an exported program and as the
module, and give the same probabilities, Grad-CAM, HiResCAM, feature maps, sanity check and run
metrics; static batch sizes, programs exported in training mode, models without our metadata,
and what a user can get wrong, each in one line."""

from __future__ import annotations

import uuid
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch

from heimer_mlflow import registry
from heimer_mlflow.engine import GradCam3d, run_engine
from heimer_mlflow.engine.exported import ExportedModel
from heimer_mlflow.engine.gradcam import conv_layers
from heimer_mlflow.errors import HeimerError
from heimer_mlflow.meta import ModelMeta

from .helpers.cohorts import SYNTHETIC_INPUT_SHAPE, good_rows, write_manifest
from .helpers.models import TinyCNN, densenet, make, resnet
from .helpers.subjects import InMemorySubjects
from .helpers.tracking import cli_evaluate, experiment_runs, heimer_tags

TOLERANCE = 1e-5
EXPERIMENT = "pt2-evaluations"


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def demo_cnn(head: str):
    def factory(n_outputs):
        from heimer_mlflow.demo.nets import DemoCNN

        net = DemoCNN(width=4, n_outputs=n_outputs, head=head)
        return net, net.gradcam_layer

    return factory


def densenet121(n_outputs):
    from monai.networks.nets import DenseNet121

    return DenseNet121(spatial_dims=3, in_channels=1, out_channels=n_outputs), "features.denseblock4.denselayer16.layers.conv2"


class Subjects(InMemorySubjects):
    """Ten noise volumes with a planted bright block in the 'AD' ones (odd indices)."""

    def __init__(self, spatial, n=10, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.images = torch.randn((n, 1, *spatial), generator=g)
        self.labels = torch.arange(n) % 2
        d, h, w = (s // 4 for s in spatial)
        self.images[self.labels == 1, :, d : 2 * d, h : 2 * h, w : 2 * w] += 1.5
        self.mask = torch.zeros(spatial, dtype=torch.bool)
        self.mask[1:-1, 1:-1, 1:-1] = True

    def brain_mask(self, i):
        return self.mask


def log_both_ways(model, layer: str, input_shape, n_outputs: int) -> dict[str, registry.LoadedModel]:
    """``model`` logged with heimer_mlflow.log_model as pt2 and as pickle, registered and loaded back."""
    loaded = {}
    for serialization in ("pt2", "pickle"):
        name = _unique(f"parity-{serialization}")
        with mlflow.start_run():
            info = registry.log_model(model, "model", input_shape=input_shape, target_layer=layer,
                                      registered_model_name=name, pip_requirements=["torch"],
                                      serialization_format=serialization)  # fmt: skip
        loaded[serialization] = registry.load(f"models:/{name}/{info.registered_model_version}")
        assert loaded[serialization].serialization == serialization
    assert isinstance(loaded["pt2"].module, ExportedModel) and not isinstance(loaded["pickle"].module, ExportedModel)
    assert loaded["pt2"].module.batch_size is None  # log_model exports a dynamic batch axis
    return loaded


def engine_pass(loaded: registry.LoadedModel, spatial, feature_layers=(), batch_size=4):
    meta = ModelMeta(class_names=["CN", "AD"], positive_class="AD", input_shape=[1, *spatial],
                     target_layer=loaded.meta.target_layer)  # fmt: skip
    data = torch.utils.data.DataLoader(Subjects(spatial), batch_size=batch_size)
    return run_engine(loaded.module, data, meta, device="cpu", progress=False, gallery_k=2, sanity_subjects=3,
                      feature_layers=feature_layers)  # fmt: skip


def assert_same_engine_results(pt2, pickled, rtol=0.0):
    """Every per-subject column, group map and the sanity check, within TOLERANCE (and ``rtol``)."""
    for column, values in pickled.subjects.items():
        if values.dtype == object:
            assert list(pt2.subjects[column]) == list(values), column
        else:
            np.testing.assert_allclose(pt2.subjects[column], values, atol=TOLERANCE, rtol=rtol, err_msg=column)
    assert pickled.maps.keys() == pt2.maps.keys() and {"input", "cam"} < pickled.maps.keys()
    for name, maps in pickled.maps.items():
        assert pt2.maps[name].count == maps.count and maps.mean.keys() == pt2.maps[name].mean.keys()
        arrays = {"diff": (pt2.maps[name].diff, maps.diff), "t": (pt2.maps[name].t, maps.t),
                  **{f"mean {group}": (pt2.maps[name].mean[group], mean) for group, mean in maps.mean.items()}}
        for field, (a, b) in arrays.items():
            np.testing.assert_allclose(a, b, atol=TOLERANCE, rtol=rtol, err_msg=f"{name} {field}")
    np.testing.assert_allclose(pt2.sanity.spearman, pickled.sanity.spearman, atol=TOLERANCE, rtol=rtol)


ARCHITECTURES = [
    pytest.param(demo_cnn("max"), 2, (24, 28, 24), id="demo-max"),
    pytest.param(demo_cnn("evidence"), 2, (24, 28, 24), id="demo-evidence"),
    pytest.param(demo_cnn("avg"), 2, (24, 28, 24), id="demo-avg"),
    pytest.param(densenet, 1, (16, 16, 16), id="densenet-1"),
    pytest.param(densenet, 2, (16, 16, 16), id="densenet-2"),
    pytest.param(resnet, 1, (12, 12, 12), id="resnet-1"),
    pytest.param(resnet, 2, (12, 12, 12), id="resnet-2"),
    pytest.param(densenet121, 1, (32, 32, 32), id="densenet121-1", marks=pytest.mark.slow),
    pytest.param(densenet121, 2, (32, 32, 32), id="densenet121-2", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("factory, n_outputs, spatial", ARCHITECTURES)
def test_pt2_and_pickle_give_the_same_maps_and_numbers(tracking, factory, n_outputs, spatial):
    model, layer = make(factory, n_outputs)
    loaded = log_both_ways(model, layer, [1, *spatial], n_outputs)
    # raw maps and activations, straight from GradCam3d
    x = Subjects(spatial).images[:5]
    column = n_outputs - 1
    first_conv = registry.default_target_layer(model) if layer != registry.default_target_layer(model) else None
    extra = (first_conv,) if first_conv else ()
    got = {s: GradCam3d(lm.module, layer, extra).attribute(x, column) for s, lm in loaded.items()}
    torch.testing.assert_close(got["pt2"].logits, got["pickle"].logits, atol=TOLERANCE, rtol=0)
    for method in ("gradcam", "hirescam"):
        assert got["pickle"].layer_maps[method].abs().max() > 0, method  # a map to compare, not zeros
        torch.testing.assert_close(got["pt2"].upsampled(method), got["pickle"].upsampled(method), atol=TOLERANCE, rtol=0)
    for path, activation in got["pickle"].activations.items():
        torch.testing.assert_close(got["pt2"].activations[path], activation, atol=TOLERANCE, rtol=0)
    # the engine's whole pass: probabilities, shares, group maps, feature maps, the sanity check
    features = tuple(p for p in conv_layers(loaded["pickle"].module)[:1] if p != layer)
    results = {s: engine_pass(lm, spatial, features) for s, lm in loaded.items()}
    assert_same_engine_results(results["pt2"], results["pickle"])


def test_mlflow_defaults_static_batch_and_training_mode(tracking):
    """A model logged as MLflow 3 logs it by default (pt2 from a one-subject example, here still
    in training mode): the batch axis is static (1), the program does batch norm and dropout in
    training mode; the evaluator feeds it one subject at a time and rewrites it to eval mode, and
    the numbers equal the pickled module's in eval mode."""
    from heimer_mlflow.demo.nets import DemoCNN

    spatial = (24, 28, 24)
    torch.manual_seed(4)
    model = DemoCNN(width=4)  # training mode, as a training loop leaves it
    with torch.no_grad():  # running statistics unlike a fresh model's, so eval mode matters
        model.train()(Subjects(spatial).images * 3 + 1)
    name = _unique("mlflow-defaults")
    with mlflow.start_run():
        info = mlflow.pytorch.log_model(model, name="model", input_example=np.zeros((1, 1, *spatial), np.float32),
                                        registered_model_name=name, pip_requirements=["torch"])  # fmt: skip
    assert model.training
    pt2 = registry.load(f"models:/{name}/{info.registered_model_version}", given={"intensity": "none"})
    assert pt2.serialization == "pt2" and pt2.module.batch_size == 1
    assert pt2.module.eval_rewrites and any("training mode" in note for note in pt2.notes)
    assert any("one subject at a time" in note for note in pt2.notes)
    assert pt2.meta.input_shape == [1, *spatial]  # from the signature MLflow inferred
    pickled = registry.LoadedModel(uri="-", module=model.eval(), meta=pt2.meta, name=None, version=None, aliases=[],
                                   source_run_id=None, model_id=None, description=None, tags={})  # fmt: skip
    results = {s: engine_pass(lm, spatial, batch_size=4) for s, lm in (("pt2", pt2), ("pickle", pickled))}
    # one subject at a time against four: float32 convolutions round differently by batch size, so
    # the Welch t-maps (values up to about 10) agree to 1e-5 relative, the rest to 1e-5 absolute
    assert_same_engine_results(results["pt2"], results["pickle"], rtol=TOLERANCE)


def test_static_batch_of_three_pads_the_remainder(tracking):
    """A program exported for batches of exactly 3 gets 10 subjects in batches of 4: 3 + 1 padded,
    and so on; the padding changes nothing."""
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    spatial = (8, 10, 8)
    torch.manual_seed(0)
    model = TinyCNN().eval()
    signature = ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.float32), (3, 1, *spatial), "mri")]))
    name = _unique("static-three")
    with mlflow.start_run():
        info = mlflow.pytorch.log_model(model, name="model", input_example=(np.zeros((3, 1, *spatial), np.float32),),
                                        signature=signature, registered_model_name=name, pip_requirements=["torch"])  # fmt: skip
    pt2 = registry.load(f"models:/{name}/{info.registered_model_version}")
    assert pt2.module.batch_size == 3
    x = Subjects(spatial).images
    with torch.no_grad():
        torch.testing.assert_close(pt2.module(x), model(x), atol=TOLERANCE, rtol=0)
    a, b = GradCam3d(pt2.module, "body.2").attribute(x[:4], 1), GradCam3d(model, "body.2").attribute(x[:4], 1)
    torch.testing.assert_close(a.layer_maps["hirescam"], b.layer_maps["hirescam"], atol=TOLERANCE, rtol=0)
    assert a.logits.shape == (4, 2)


def test_randomised_weights_are_the_pickled_modules(tracking):
    """The sanity check's copy: the same seed re-initialises the program's parameters and buffers
    exactly as reset_parameters does on the module, so both give the same randomised outputs."""
    from heimer_mlflow.engine.agreement import randomised_copy

    model, layer = make(resnet, 2)
    loaded = log_both_ways(model, layer, [1, 12, 12, 12], 2)
    x = Subjects((12, 12, 12)).images[:3]
    with torch.no_grad():
        outputs = {s: randomised_copy(lm.module, 7)(x) for s, lm in loaded.items()}
        trained = loaded["pt2"].module(x)
    torch.testing.assert_close(outputs["pt2"], outputs["pickle"], atol=TOLERANCE, rtol=0)
    assert (outputs["pt2"] - trained).abs().max() > 1e-3  # the copy really is another model


def test_copying_a_program_warns_nothing():
    """Copying an exported program (the sanity check's randomised copy) trips torch's own pytree
    deprecation notice inside torch; ExportedModel keeps it from users, the CLI's and the
    library's alike, and lets every other warning through."""
    import copy
    import warnings

    torch.manual_seed(0)
    program = torch.export.export(TinyCNN().eval(), (torch.zeros(1, 1, 8, 10, 8),)).module()
    model = ExportedModel(program)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        copied = copy.deepcopy(model)
        warnings.warn("still heard", FutureWarning)
    assert [str(w.message) for w in caught if issubclass(w.category, FutureWarning)] == ["still heard"]
    x = torch.randn(2, 1, 8, 10, 8)
    torch.testing.assert_close(copied(x), model(x), atol=0, rtol=0)


def test_log_model_writes_pt2_without_the_example_and_falls_back_to_pickle(tracking, recwarn):
    class Unexportable(TinyCNN):
        def forward(self, x):
            if float(x.sum()) > 1e30:  # a branch on a tensor's value: torch.export cannot trace it
                return x
            return super().forward(x)

    spatial = [1, 8, 10, 8]
    with mlflow.start_run():
        info = registry.log_model(TinyCNN(), "model", input_shape=spatial, pip_requirements=["torch"])
        fallback = registry.log_model(Unexportable(), "other", input_shape=spatial, pip_requirements=["torch"])
    local = Path(mlflow.artifacts.download_artifacts(info.model_uri))
    assert (local / "data" / "model.pt2").is_file()
    assert not list(local.glob("*input_example*"))  # the example volumes are not stored in the model
    assert "python_function" in info.flavors  # mlflow.models.evaluate can load it
    messages = [str(w.message) for w in recwarn if "does not export" in str(w.message)]
    assert len(messages) == 1 and "serialization_format='pickle' instead" in messages[0] and "\n" not in messages[0]
    assert (Path(mlflow.artifacts.download_artifacts(fallback.model_uri)) / "data" / "model.pth").is_file()


def test_pickle_is_refused_before_loading_where_not_allowed(tracking, monkeypatch):
    name = _unique("pickled")
    with mlflow.start_run():
        registry.log_model(TinyCNN(), "model", input_shape=[1, 8, 10, 8], registered_model_name=name,
                           pip_requirements=["torch"], serialization_format="pickle")  # fmt: skip
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("unpickled a refused model"))
    with pytest.raises(HeimerError) as caught:
        registry.load(f"models:/{name}/1", allow_pickle=False)
    message = str(caught.value)
    assert "pickled model" in message and "--allow-pickle" in message and "pt2" in message and "\n" not in message


# --------------------------------------------------------------------------- through the command line


def raw_pt2(name: str, model, spatial) -> str:
    """``model`` logged as MLflow 3 does by default (pt2, a one-subject example, no heimer metadata)."""
    with mlflow.start_run():
        info = mlflow.pytorch.log_model(model, name="model", input_example=np.zeros((1, 1, *spatial), np.float32),
                                        registered_model_name=name, pip_requirements=["torch"])  # fmt: skip
    return f"models:/{name}/{info.registered_model_version}"


def test_a_model_without_our_metadata_evaluates_with_given_values(tracking, synthetic_cohort, capsys):
    """MLflow's defaults and no heimer metadata, outputs in the order AD, CN: --class-names,
    --positive-class and --intensity fill what the model lacks; the run says which values were
    given; without --intensity the evaluation says on stderr that it assumed none."""
    from heimer_mlflow.demo.nets import DemoCNN

    torch.manual_seed(1)
    uri = raw_pt2(_unique("no-metadata"), DemoCNN(width=4).eval(), SYNTHETIC_INPUT_SHAPE[1:])
    code, lines, _ = cli_evaluate(capsys, uri, "--data", str(synthetic_cohort), "--class-names", "AD,CN",
                                  "--positive-class", "AD", experiment=EXPERIMENT)  # fmt: skip
    assert code == 0, lines
    run = experiment_runs(EXPERIMENT)[0]
    assert run.info.status == "FINISHED"
    assert any("declares no intensity normalisation" in line and "--intensity" in line for line in lines), lines
    params = run.data.params
    assert params["heimer.serialization"] == "pt2"
    assert params["heimer.class_names"] == "AD,CN" and params["heimer.class_names_source"] == "given"
    assert params["heimer.positive_class_source"] == "given" and params["heimer.intensity_source"] == "default"
    record = _record(run)
    assert record["model"]["serialization"] == "pt2" and record["model"]["given"] == ["class_names", "positive_class"]
    assert any("no intensity normalisation" in note for note in record["model"]["notes"])
    assert any("one subject at a time" in note for note in record["model"]["notes"])
    # AD is output column 0 here: read in the default order (CN, AD), P(AD) is the other column's
    code, lines, _ = cli_evaluate(capsys, uri, "--data", str(synthetic_cohort), "--intensity", "none",
                                  experiment=EXPERIMENT)  # fmt: skip
    assert code == 0 and not any("intensity" in line for line in lines), lines
    default_order = experiment_runs(EXPERIMENT)[0]
    assert default_order.data.params["heimer.class_names_source"] == "default"
    assert default_order.data.params["heimer.intensity_source"] == "given"
    given, default = _predictions(run), _predictions(default_order)
    np.testing.assert_allclose(given["prob_AD"], 1 - default["prob_AD"], atol=1e-6)


def _record(run) -> dict:
    import json

    path = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="evaluation.json")
    return json.loads(Path(path).read_text())


def _predictions(run):
    import pandas as pd

    return pd.read_csv(mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="predictions.csv"))


def test_bad_pt2_models_end_in_one_line(tracking, tmp_path, capsys):
    """A pt2 file that does not load, a program whose input shape does not fit the cohort, a
    target layer the graph does not have, a model with 3 outputs: one line each, exit 2, no run
    FINISHED, no version tags."""
    data = write_manifest(tmp_path, good_rows(tmp_path))  # 8x10x8 heads
    torch.manual_seed(0)
    good = raw_pt2(_unique("pt2-good"), TinyCNN().eval(), (8, 10, 8))
    other_grid = raw_pt2(_unique("pt2-grid"), TinyCNN().eval(), (8, 12, 8))
    three = raw_pt2(_unique("pt2-three"), TinyCNN(n_outputs=3).eval(), (8, 10, 8))
    broken = raw_pt2(_unique("pt2-broken"), TinyCNN().eval(), (8, 10, 8))
    version = mlflow.MlflowClient().get_model_version(*broken[len("models:/"):].split("/"))
    program = Path(mlflow.artifacts.download_artifacts(version.source)) / "data" / "model.pt2"
    stored = Path(mlflow.get_logged_model(version.source[len("models:/"):]).artifact_location.removeprefix("file://"))
    (stored / "data" / "model.pt2").write_bytes(b"not a zip archive")
    assert program.exists()
    cases = [
        (broken, [], "cannot load the model at"),
        (other_grid, [], "12"),
        (good, ["--target-layer", "body.9"], "Conv3d layers to choose from: body.0, body.2"),
        (three, [], "model outputs 3 logits"),
    ]
    before = {r.info.run_id for r in experiment_runs(EXPERIMENT)}
    capsys.readouterr()
    for uri, extra, words in cases:
        code, lines, _ = cli_evaluate(capsys, uri, "--data", str(data), "--intensity", "none", *extra,
                                      experiment=EXPERIMENT)  # fmt: skip
        assert code == 2 and len(lines) == 1 and words in lines[0], (uri, lines)
        assert "Traceback" not in lines[0]
        name, number = uri[len("models:/"):].split("/")
        assert heimer_tags(name, number) == {}
    new = [r for r in experiment_runs(EXPERIMENT) if r.info.run_id not in before]
    assert all(r.info.status != "FINISHED" for r in new), [(r.info.status) for r in new]


# --------------------------------------------------------------------------- every interface


@pytest.mark.slow
def test_every_run_metric_agrees_between_pt2_and_pickle(tracking, synthetic_cohort):
    """The whole evaluation (Python API) of the same weights logged both ways: every run metric,
    the verdict and each subject's probability agree."""
    from heimer_mlflow import evaluate
    from heimer_mlflow.demo.nets import DemoCNN

    torch.manual_seed(2)
    model = DemoCNN(width=4).eval()
    uris = {}
    for serialization in ("pt2", "pickle"):
        name = _unique(f"metrics-{serialization}")
        with mlflow.start_run():
            info = registry.log_model(model, "model", input_shape=SYNTHETIC_INPUT_SHAPE, intensity="zscore",
                                      registered_model_name=name, pip_requirements=["torch"],
                                      serialization_format=serialization)  # fmt: skip
        uris[serialization] = f"models:/{name}/{info.registered_model_version}"
    atlas = synthetic_cohort / "atlas"
    results = {s: evaluate(uri, synthetic_cohort, experiment=EXPERIMENT, n_bootstrap=200, workers=0, progress=False,
                           atlas=str(atlas / "atlas.nii.gz"), atlas_labels=str(atlas / "labels.csv"))
               for s, uri in uris.items()}  # fmt: skip
    pt2, pickled = results["pt2"].run_metrics, results["pickle"].run_metrics
    assert pt2.keys() == pickled.keys() and len(pt2) > 30
    for name, value in pickled.items():
        assert pt2[name] == pytest.approx(value, abs=TOLERANCE, nan_ok=True), name
    assert results["pt2"].verdict == results["pickle"].verdict
    np.testing.assert_allclose(results["pt2"].engine.subjects["prob"], results["pickle"].engine.subjects["prob"],
                               atol=TOLERANCE, rtol=0)  # fmt: skip
    assert mlflow.get_run(results["pt2"].run_id).data.params["heimer.serialization"] == "pt2"


@pytest.mark.slow
def test_plugin_evaluates_a_pt2_model_without_our_metadata(tracking, synthetic_cohort):
    """mlflow.models.evaluate(..., evaluators="heimer") on a model logged with MLflow's defaults;
    evaluator_config gives what its metadata lacks."""
    import pandas as pd

    from heimer_mlflow.demo.nets import DemoCNN

    torch.manual_seed(1)
    uri = raw_pt2(_unique("plugin-pt2"), DemoCNN(width=4).eval(), SYNTHETIC_INPUT_SHAPE[1:])
    manifest = pd.read_csv(synthetic_cohort / "manifest.csv")
    manifest["path"] = [str(synthetic_cohort / p) for p in manifest["path"]]
    mlflow.set_experiment("plugin-pt2")
    with mlflow.start_run() as run:
        result = mlflow.models.evaluate(uri, data=manifest, targets="label", model_type="classifier",
                                        evaluators="heimer",
                                        evaluator_config={"class_names": "CN,AD", "intensity": "zscore",
                                                          "n_bootstrap": 100, "workers": 0})  # fmt: skip
    assert 0 <= result.metrics["roc_auc"] <= 1 and result.metrics["n_subjects"] == 12
    params = mlflow.get_run(run.info.run_id).data.params
    assert params["heimer.serialization"] == "pt2" and params["heimer.intensity"] == "zscore"
    assert params["heimer.intensity_source"] == params["heimer.class_names_source"] == "given"


def test_displays_take_an_exported_program(tracking):
    """GradCamDisplay and FeatureMapDisplay on what mlflow.pytorch.load_model returns for pt2:
    the same maps as on the module."""
    from heimer_mlflow import FeatureMapDisplay, GradCamDisplay

    spatial = (24, 28, 24)
    torch.manual_seed(0)
    model = TinyCNN().eval()
    uri = raw_pt2(_unique("display-pt2"), model, spatial)
    program = mlflow.pytorch.load_model(uri)
    volume = Subjects(spatial).images[1, 0].numpy()
    on_program = GradCamDisplay.from_model(program, volume, layer="body.0")
    on_module = GradCamDisplay.from_model(model, volume, layer="body.0")
    np.testing.assert_allclose(on_program.cam, on_module.cam, atol=TOLERANCE)
    assert on_program.probability == pytest.approx(on_module.probability, abs=1e-6)
    features = FeatureMapDisplay.from_model(program, volume, layer="body.2")
    np.testing.assert_allclose(features.feature_map, FeatureMapDisplay.from_model(model, volume, layer="body.2").feature_map,
                               atol=TOLERANCE)  # fmt: skip
    with pytest.raises(HeimerError, match="'body.9'.*body.0, body.2"):
        GradCamDisplay.from_model(program, volume, layer="body.9")


def test_a_loaded_program_travels_to_other_processes(tracking):
    """torchrun's rank 0 sends the loaded model to the other ranks by pickling it: a program
    goes as its .pt2 archive and comes back with the same taps and the same maps."""
    import pickle

    torch.manual_seed(0)
    model = TinyCNN().eval()
    loaded = log_both_ways(model, "body.2", [1, 8, 10, 8], 2)["pt2"]
    x = Subjects((8, 10, 8)).images[:3]
    before = GradCam3d(loaded.module, "body.2", ("body.0",)).attribute(x, 1)
    copy = pickle.loads(pickle.dumps(loaded))
    assert list(copy.module.taps) == list(loaded.module.taps)
    after = GradCam3d(copy.module, "body.2", ("body.0",)).attribute(x, 1)
    torch.testing.assert_close(after.layer_maps["hirescam"], before.layer_maps["hirescam"], atol=0, rtol=0)
    torch.testing.assert_close(after.activations["body.0"], before.activations["body.0"], atol=0, rtol=0)
