"""The model contract against a real sqlite tracking store: log_model -> every URI form -> the
same module and metadata; unknown names end in one clear HeimerError. pt2 (MLflow 3's default and
``log_model``'s) and pickled models: tests/test_pt2.py."""

from __future__ import annotations

import uuid

import mlflow
import numpy as np
import pytest
import torch
from mlflow.exceptions import MlflowException

from heimer_mlflow import registry
from heimer_mlflow.errors import HeimerError
from heimer_mlflow.meta import ModelMeta

from .helpers.models import TinyCNN
from .helpers.tracking import CONTRACT_KEYS

SHAPE = [1, 8, 10, 8]


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def registered(tracking, tiny_cnn):
    name = _unique("reg")
    with mlflow.start_run() as run:
        info = registry.log_model(
            tiny_cnn, "model", class_names=["CN", "AD"], positive_class="AD", input_shape=SHAPE,
            intensity="zscore", registered_model_name=name,
            pip_requirements=["torch"],
        )
    mlflow.MlflowClient().set_registered_model_alias(name, "champion", info.registered_model_version)
    return name, info, run.info.run_id, tiny_cnn


def test_log_model_writes_every_design_key_and_a_tensor_signature(registered):
    name, info, run_id, _ = registered
    got = mlflow.models.get_model_info(f"models:/{name}@champion")
    heimer = got.metadata["heimer"]
    assert set(heimer) == CONTRACT_KEYS
    assert heimer == dict(class_names=["CN", "AD"], positive_class="AD", input_shape=SHAPE,
                          intensity="zscore", target_layer="body.2")
    assert list(got.signature.inputs.inputs[0].shape) == [-1, *SHAPE]
    assert list(got.signature.outputs.inputs[0].shape) == [-1, 2]


@pytest.mark.parametrize("form", ["version", "alias", "runs", "model_id", "latest"])
def test_every_uri_form_loads_the_same_module(registered, form):
    name, info, run_id, original = registered
    uri = {
        "version": f"models:/{name}/1",
        "alias": f"models:/{name}@champion",
        "runs": f"runs:/{run_id}/model",
        "model_id": f"models:/{info.model_id}",
        "latest": f"models:/{name}/latest",
    }[form]
    loaded = registry.load(uri)
    assert not loaded.module.training
    x = torch.randn(2, *SHAPE)
    with torch.no_grad():
        np.testing.assert_allclose(loaded.module(x).numpy(), original.eval()(x).numpy(), rtol=1e-6)
    assert loaded.meta.input_shape == SHAPE and loaded.meta.intensity == "zscore"
    assert loaded.meta.inferred == []
    assert loaded.source_run_id == run_id
    assert loaded.model_id == info.model_id
    if form != "runs":
        assert (loaded.name, loaded.version) == (name, "1")
        assert loaded.aliases == ["champion"]


def test_missing_metadata_is_inferred(tracking):
    name = _unique("bare")
    net = TinyCNN(n_outputs=1)
    sig = registry.tensor_signature(SHAPE, 1)
    with mlflow.start_run():
        mlflow.pytorch.log_model(net, name="model", serialization_format="pickle", signature=sig,
                                 registered_model_name=name, pip_requirements=["torch"])
    loaded = registry.load(f"models:/{name}/1")
    assert loaded.meta.class_names == ["CN", "AD"] and loaded.meta.positive_class == "AD"
    assert loaded.meta.input_shape == SHAPE  # from the signature's tensor spec
    assert loaded.meta.intensity == "none"
    assert loaded.meta.target_layer == "body.2"  # the last Conv3d
    assert set(loaded.meta.inferred) == CONTRACT_KEYS


@pytest.mark.parametrize(
    "suffix, expected",
    [("/7", "version '7'"), ("@nope", "alias 'nope'")],
)
def test_unknown_version_or_alias_names_what_exists(registered, suffix, expected):
    name = registered[0]
    with pytest.raises(HeimerError) as err:
        registry.load(f"models:/{name}{suffix}")
    msg = str(err.value)
    assert expected in msg and name in msg and "versions: 1" in msg and "champion" in msg
    assert "\n" not in msg


def test_unknown_model_name_lists_registered_models(registered):
    with pytest.raises(HeimerError) as err:
        registry.load("models:/no-such-model/1")
    # the store is shared by the whole session: the message lists the first names in order
    first = sorted(rm.name for rm in mlflow.MlflowClient().search_registered_models())[0]
    assert "no-such-model" in str(err.value) and first in str(err.value) and "\n" not in str(err.value)


def test_bad_uri_forms(tracking):
    with pytest.raises(HeimerError, match="not understood"):
        registry.load("s3://bucket/model")
    with pytest.raises(HeimerError, match="run 'deadbeef'"):
        registry.load("runs:/deadbeef/model")
    with pytest.raises(HeimerError, match="logged model"):
        registry.load("models:/m-0000000000000000")


def test_unknown_target_layer_lists_conv_layers(registered):
    with pytest.raises(HeimerError) as err:
        registry.load(f"models:/{registered[0]}/1", target_layer="body.9")
    assert "'body.9'" in str(err.value) and "body.0, body.2" in str(err.value)
    assert registry.load(f"models:/{registered[0]}/1", target_layer="body.0").meta.target_layer == "body.0"


def test_log_model_refuses_bad_contracts(tracking, tiny_cnn):
    with mlflow.start_run():
        with pytest.raises(HeimerError, match="positive_class='MCI'"):
            registry.log_model(tiny_cnn, "m", positive_class="MCI", input_shape=SHAPE)
        with pytest.raises(HeimerError, match="intensity='robust'"):
            registry.log_model(tiny_cnn, "m", intensity="robust", input_shape=SHAPE)
        with pytest.raises(HeimerError, match="3 values per subject"):
            registry.log_model(TinyCNN(n_outputs=3), "m", input_shape=SHAPE)
        with pytest.raises(HeimerError, match="no Conv3d"):
            registry.log_model(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(640, 2)), "m", input_shape=SHAPE)
        with pytest.raises(HeimerError, match="serialization_format='torchscript': use 'pt2'"):
            registry.log_model(tiny_cnn, "m", input_shape=SHAPE, serialization_format="torchscript")


def test_meta_round_trips_through_metadata():
    meta = ModelMeta(class_names=["AD", "CN"], positive_class="AD", input_shape=[1, 4, 4, 4],
                     intensity="minmax", target_layer="x")
    assert meta.positive_index == 0
    net = torch.nn.Module()
    net.x = torch.nn.Conv3d(1, 1, 1)
    back = registry.read_meta({"heimer": meta.to_metadata()}, net)
    assert back.to_metadata() == meta.to_metadata() and back.inferred == []


class FailsToUnpickle(TinyCNN):
    """Loads by raising ``error`` from unpickling, as a broken model class can; the class stays
    importable (this module), so the failure comes from inside mlflow.pytorch.load_model."""

    error: BaseException = RuntimeError()

    def __setstate__(self, state):
        raise type(self).error


def test_load_failures_without_a_message_end_in_one_line(tracking, monkeypatch):
    name = _unique("unpickles-badly")
    with mlflow.start_run():
        registry.log_model(FailsToUnpickle(), "model", class_names=["CN", "AD"], positive_class="AD", input_shape=SHAPE,
                           intensity="zscore", registered_model_name=name, pip_requirements=["torch"],
                           serialization_format="pickle")  # fmt: skip
    uri = f"models:/{name}/1"
    for error, expected in [
        (MlflowException(""), f"cannot load the model at {uri}: MlflowException"),
        (AttributeError(), "its class cannot be imported here (AttributeError); install"),
        (ValueError("\n\n"), f"cannot load the model at {uri} (pickle: ValueError); log it again"),
        (MlflowException("the store said no\ndetails"), f"cannot load the model at {uri}: the store said no"),
    ]:  # fmt: skip
        monkeypatch.setattr(FailsToUnpickle, "error", error)
        with pytest.raises(HeimerError) as err:
            registry.load(uri)
        message = str(err.value)
        assert expected in message and "\n" not in message, message
