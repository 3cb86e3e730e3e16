"""TFBackend on SavedModels our training code did not write (issue 15): `describe` reads
their `serving_default` signature as Triton's auto-complete would, and `load_file` serves
them by a declared signature, answering what TensorFlow computes in process. The models are
built here, once per module: a Keras functional model (`model.export`), and `tf.Module`s for
strings and for every datatype the protocol has."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from serving.backend import Model, ModelFile
from serving.errors import InvalidInput, ModelNotReady, RepositoryError
from serving.types import Signature, TensorSpec

pytest.importorskip("tensorflow")

# Imported only once TensorFlow is known to be installed.
import keras
import tensorflow as tf

from tf_service import TFBackend

pytestmark = pytest.mark.framework

# Every datatype the protocol has, as TensorFlow names it.
DTYPES = {
    "BOOL": tf.bool,
    "INT8": tf.int8,
    "INT16": tf.int16,
    "INT32": tf.int32,
    "INT64": tf.int64,
    "UINT8": tf.uint8,
    "UINT16": tf.uint16,
    "UINT32": tf.uint32,
    "UINT64": tf.uint64,
    "FP16": tf.float16,
    "FP32": tf.float32,
    "FP64": tf.float64,
    "BF16": tf.bfloat16,
    "BYTES": tf.string,
}


def _save(module: tf.Module, path: Path, **signatures: Any) -> Path:
    tf.saved_model.save(module, str(path), signatures=signatures)
    return path


@pytest.fixture(scope="module")
def backend() -> TFBackend:
    return TFBackend()


@pytest.fixture(scope="module")
def keras_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[keras.Model, Path]:
    """Two inputs (token ids into an Embedding, float features), two outputs (a score and
    class probabilities), exported the Keras 3 way."""
    keras.utils.set_random_seed(0)
    ids = keras.Input((4,), dtype="int64", name="ids")
    features = keras.Input((3,), dtype="float32", name="features")
    embedded = keras.layers.Flatten()(keras.layers.Embedding(10, 2)(ids))
    hidden = keras.layers.Dense(8, activation="relu")(
        keras.layers.Concatenate()([embedded, features])
    )
    model = keras.Model(
        {"ids": ids, "features": features},
        {
            "score": keras.layers.Dense(1, name="score")(hidden),
            "probs": keras.layers.Dense(3, activation="softmax", name="probs")(hidden),
        },
    )
    path = tmp_path_factory.mktemp("keras") / "model.savedmodel"
    model.export(str(path), verbose=False)
    return model, path


def _keras_inputs(batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "ids": rng.integers(0, 10, size=(batch, 4), dtype=np.int64),
        "features": rng.normal(size=(batch, 3)).astype(np.float32),
    }


@pytest.fixture(scope="module")
def keras_served(backend: TFBackend, keras_model: tuple[keras.Model, Path]) -> Iterator[Model]:
    _, path = keras_model
    model = backend.load_file(ModelFile(path, backend.describe(path)))
    yield model
    model.close()


class _Strings(tf.Module):  # type: ignore[misc]
    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
    def serve(self, text: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"length": tf.strings.length(text), "upper": tf.strings.upper(text)}


@pytest.fixture(scope="module")
def strings(tmp_path_factory: pytest.TempPathFactory) -> tuple[_Strings, Path]:
    module = _Strings()
    # Any directory name: Triton's `default_model_filename` may name another.
    path = tmp_path_factory.mktemp("strings") / "text.savedmodel"
    return module, _save(module, path, serving_default=module.serve.get_concrete_function())


def _op(dtype: tf.DType, x: tf.Tensor) -> tf.Tensor:
    if dtype == tf.bool:
        return tf.logical_not(x)
    if dtype == tf.string:
        return tf.strings.join([x, x])
    if dtype.is_floating:
        return x * x + x
    return x + x  # integers wrap as TensorFlow's do


class _EveryDtype(tf.Module):  # type: ignore[misc]
    """One input per datatype (`in_<datatype>`), each with its own output (`out_...`)."""

    def __init__(self) -> None:
        super().__init__()
        specs = [tf.TensorSpec([None, 3], dtype, name=f"in_{k}") for k, dtype in DTYPES.items()]

        def serve(*tensors: tf.Tensor) -> dict[str, tf.Tensor]:
            return {
                f"out_{name}": _op(dtype, x)
                for (name, dtype), x in zip(DTYPES.items(), tensors, strict=True)
            }

        self.serve = tf.function(serve, input_signature=specs)


def _every_dtype_inputs() -> dict[str, np.ndarray]:
    """What the protocol's codec hands a model for each datatype (BF16 widened to float32)."""
    ints = np.array([[0, 1, 100]])
    inputs = {
        "in_BOOL": np.array([[True, False, True]]),
        "in_FP16": np.array([[0.5, -1.25, 3.0]], np.float16),
        "in_FP32": np.array([[0.5, -1.25, 3.0]], np.float32),
        "in_FP64": np.array([[0.5, -1.25, 1e100]], np.float64),
        "in_BF16": np.array([[0.5, -1.25, 3.0]], np.float32),  # exact in bfloat16
        "in_BYTES": np.array([[b"a", b"", b"\xff\x00"]], dtype=object),
    }
    for name in ("INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"):
        inputs[f"in_{name}"] = ints.astype(DTYPES[name].as_numpy_dtype)
    return inputs


@pytest.fixture(scope="module")
def every_dtype(tmp_path_factory: pytest.TempPathFactory) -> tuple[_EveryDtype, Path]:
    module = _EveryDtype()
    path = tmp_path_factory.mktemp("dtypes") / "model.savedmodel"
    return module, _save(module, path, serving_default=module.serve.get_concrete_function())


def _by_name(specs: tuple[TensorSpec, ...]) -> dict[str, TensorSpec]:
    return {spec.name: spec for spec in specs}


# --- 1. A Keras functional model ------------------------------------------------------------


def test_describe_reads_the_keras_export(
    backend: TFBackend, keras_model: tuple[keras.Model, Path]
) -> None:
    signature = backend.describe(keras_model[1])
    assert _by_name(signature.inputs) == {
        "ids": TensorSpec("ids", "INT64", (-1, 4)),
        "features": TensorSpec("features", "FP32", (-1, 3)),
    }
    assert _by_name(signature.outputs) == {
        "score": TensorSpec("score", "FP32", (-1, 1)),
        "probs": TensorSpec("probs", "FP32", (-1, 3)),
    }


@pytest.mark.parametrize("batch", [1, 5])
def test_keras_predictions_are_the_models(
    keras_served: Model, keras_model: tuple[keras.Model, Path], batch: int
) -> None:
    inputs = _keras_inputs(batch, seed=batch)
    expected = {name: np.asarray(t) for name, t in keras_model[0](inputs).items()}
    out = keras_served.predict(inputs)
    assert sorted(out) == ["probs", "score"]
    for name, want in expected.items():
        assert out[name].dtype == np.float32
        assert out[name].shape == want.shape == (batch, 1 if name == "score" else 3)
        np.testing.assert_allclose(out[name], want, rtol=1e-5, atol=1e-6)


def test_keras_model_answers_from_many_threads(
    keras_served: Model, keras_model: tuple[keras.Model, Path]
) -> None:
    requests = [_keras_inputs(3, seed=seed) for seed in range(16)]
    answers: list[dict[str, np.ndarray]] = [{} for _ in requests]

    def call(i: int) -> None:
        answers[i] = keras_served.predict(requests[i])

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(requests))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for request, answer in zip(requests, answers, strict=True):
        want = keras_model[0](request)["probs"]
        np.testing.assert_allclose(answer["probs"], np.asarray(want), rtol=1e-5, atol=1e-6)


def test_a_declared_subset_of_outputs_and_a_fixed_batch(
    backend: TFBackend, keras_model: tuple[keras.Model, Path]
) -> None:
    # Triton lets a config name some outputs only, and fix what the file leaves open.
    path = keras_model[1]
    described = backend.describe(path)
    signature = Signature(
        inputs=tuple(replace(spec, shape=(2, *spec.shape[1:])) for spec in described.inputs),
        outputs=(TensorSpec("score", "FP32", (-1, 1)),),
    )
    model = backend.load_file(ModelFile(path, signature))
    try:
        out = model.predict(_keras_inputs(2))
        assert list(out) == ["score"]
        assert out["score"].shape == (2, 1)
        with pytest.raises(InvalidInput, match=r"input '(ids|features)' has shape \[3, "):
            model.predict(_keras_inputs(3))
    finally:
        model.close()


# --- 2. Strings ------------------------------------------------------------------------------


def test_strings_are_bytes(backend: TFBackend, strings: tuple[_Strings, Path]) -> None:
    module, path = strings
    signature = backend.describe(path)
    assert signature.inputs == (TensorSpec("text", "BYTES", (-1,)),)
    assert _by_name(signature.outputs) == {
        "length": TensorSpec("length", "INT32", (-1,)),
        "upper": TensorSpec("upper", "BYTES", (-1,)),
    }
    text = np.array([b"abc", b"", "d\u00e9j\u00e0".encode(), b"x y"], dtype=object)
    text.flags.writeable = False  # requests arrive as read-only views
    expected = module.serve(tf.constant(text))
    model = backend.load_file(ModelFile(path, signature))
    try:
        out = model.predict({"text": text})
    finally:
        model.close()
    np.testing.assert_array_equal(out["length"], expected["length"].numpy())
    assert out["length"].dtype == np.int32
    assert out["upper"].dtype == object
    assert list(out["upper"]) == list(expected["upper"].numpy())
    assert out["upper"][0] == b"ABC"


# --- 3. Every datatype -----------------------------------------------------------------------


def test_describe_maps_every_datatype(
    backend: TFBackend, every_dtype: tuple[_EveryDtype, Path]
) -> None:
    signature = backend.describe(every_dtype[1])
    assert _by_name(signature.inputs) == {
        f"in_{k}": TensorSpec(f"in_{k}", k, (-1, 3)) for k in DTYPES
    }
    assert _by_name(signature.outputs) == {
        f"out_{k}": TensorSpec(f"out_{k}", k, (-1, 3)) for k in DTYPES
    }


def test_every_datatype_predicts_what_tensorflow_computes(
    backend: TFBackend, every_dtype: tuple[_EveryDtype, Path]
) -> None:
    module, path = every_dtype
    inputs = _every_dtype_inputs()
    tensors = [tf.constant(inputs[f"in_{k}"].astype(d.as_numpy_dtype)) for k, d in DTYPES.items()]
    expected = {name: t.numpy() for name, t in module.serve(*tensors).items()}
    model = backend.load_file(ModelFile(path, backend.describe(path)))
    try:
        out = model.predict(inputs)
    finally:
        model.close()
    assert sorted(out) == sorted(f"out_{k}" for k in DTYPES)
    for name, dtype in DTYPES.items():
        got, want = out[f"out_{name}"], expected[f"out_{name}"]
        # BF16 comes back as float32 (the codec's form for it); every other as itself.
        assert got.dtype == (np.float32 if name == "BF16" else want.dtype), name
        np.testing.assert_array_equal(got, want.astype(got.dtype), err_msg=name)
        assert got.shape == (1, 3)
        if dtype == tf.bfloat16:
            assert got.tolist() == [[0.75, 0.3125, 12.0]]


def test_a_dtype_the_protocol_lacks_is_not_served(backend: TFBackend, tmp_path: Path) -> None:
    module = tf.Module()
    module.serve = tf.function(
        lambda z: {"real": tf.math.real(z)},
        input_signature=[tf.TensorSpec([None], tf.complex64, name="z")],
    )
    path = _save(module, tmp_path / "model.savedmodel", serving_default=module.serve)
    with pytest.raises(RepositoryError, match="input 'z' is complex64, which is not served"):
        backend.describe(path)


def test_an_input_of_unknown_rank_must_be_declared(backend: TFBackend, tmp_path: Path) -> None:
    module = tf.Module()
    module.serve = tf.function(
        lambda x: {"y": x * 2.0}, input_signature=[tf.TensorSpec(None, tf.float32, name="x")]
    )
    path = _save(module, tmp_path / "model.savedmodel", serving_default=module.serve)
    with pytest.raises(RepositoryError, match=r"input 'x' .*declare its dims in config\.pbtxt"):
        backend.describe(path)
    # Declared, it is served by its declaration, which is then checked before TensorFlow.
    signature = Signature(
        inputs=(TensorSpec("x", "FP32", (-1, 2)),), outputs=(TensorSpec("y", "FP32", (-1, 2)),)
    )
    model = backend.load_file(ModelFile(path, signature))
    try:
        out = model.predict({"x": np.array([[1.0, 2.0]], np.float32)})
        np.testing.assert_array_equal(out["y"], [[2.0, 4.0]])
        with pytest.raises(InvalidInput, match=r"input 'x' has shape \[2\]"):
            model.predict({"x": np.ones(2, np.float32)})
    finally:
        model.close()


# --- 4. What is refused ----------------------------------------------------------------------


def test_a_directory_that_is_not_a_savedmodel(backend: TFBackend, tmp_path: Path) -> None:
    path = tmp_path / "model.savedmodel"
    path.mkdir()
    (path / "model.pt").write_bytes(b"not a SavedModel")
    with pytest.raises(RepositoryError, match="not a TensorFlow SavedModel") as caught:
        backend.describe(path)
    assert str(tmp_path) not in caught.value.message  # a client reads it
    with pytest.raises(RepositoryError, match="not a TensorFlow SavedModel"):
        backend.load_file(ModelFile(tmp_path / "missing.savedmodel", Signature((), ())))


def test_a_corrupt_savedmodel(backend: TFBackend, tmp_path: Path) -> None:
    path = tmp_path / "model.savedmodel"
    path.mkdir()
    (path / "saved_model.pb").write_bytes(b"not a protobuf")
    with pytest.raises(RepositoryError, match="cannot load the SavedModel") as caught:
        backend.describe(path)
    assert str(tmp_path) not in caught.value.message
    assert caught.value.__cause__ is not None  # what TensorFlow said, for the log


def test_a_savedmodel_without_serving_default_names_its_signatures(
    backend: TFBackend, tmp_path: Path
) -> None:
    module = _Strings()
    path = _save(module, tmp_path / "model.savedmodel", classify=module.serve)
    with pytest.raises(RepositoryError, match=r"no 'serving_default' .*\(it has: 'classify'\)"):
        backend.describe(path)


def _declared(signature: Signature, **changes: tuple[str, str, tuple[int, ...]]) -> Signature:
    """`signature` with the inputs or outputs named in `changes` replaced (new name,
    datatype, shape), as a config.pbtxt that does not fit the file would declare them."""

    def swap(specs: tuple[TensorSpec, ...]) -> tuple[TensorSpec, ...]:
        return tuple(TensorSpec(*changes[s.name]) if s.name in changes else s for s in specs)

    return Signature(swap(signature.inputs), swap(signature.outputs))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"ids": ("ids", "INT32", (-1, 4))},
            "input 'ids' is declared INT32 but the SavedModel takes int64",
        ),
        (
            {"score": ("score", "FP16", (-1, 1))},
            "output 'score' is declared FP16 but the SavedModel returns float32",
        ),
        ({"features": ("feature", "FP32", (-1, 3))}, "input 'feature' is declared but"),
        ({"probs": ("logits", "FP32", (-1, 3))}, "output 'logits' is declared but"),
        ({"ids": ("ids", "INT64", (-1, 5))}, r"input 'ids' is declared with dims \[-1, 5\]"),
        ({"ids": ("ids", "INT64", (-1, -1))}, r"input 'ids' is declared with dims \[-1, -1\]"),
        ({"ids": ("ids", "INT64", (-1,))}, r"input 'ids' is declared with dims \[-1\]"),
        ({"probs": ("probs", "FP32", (-1, 2))}, r"output 'probs' is declared with dims"),
    ],
    ids=[
        "input-datatype",
        "output-datatype",
        "input-name",
        "output-name",
        "fixed-dim",
        "open-dim",
        "rank",
        "output-dim",
    ],
)
def test_a_declaration_that_does_not_fit_the_file(
    backend: TFBackend,
    keras_model: tuple[keras.Model, Path],
    changes: dict[str, tuple[str, str, tuple[int, ...]]],
    message: str,
) -> None:
    path = keras_model[1]
    with pytest.raises(RepositoryError, match=message):
        backend.load_file(ModelFile(path, _declared(backend.describe(path), **changes)))


def test_every_input_must_be_declared(
    backend: TFBackend, keras_model: tuple[keras.Model, Path]
) -> None:
    path = keras_model[1]
    described = backend.describe(path)
    signature = Signature(tuple(s for s in described.inputs if s.name == "ids"), described.outputs)
    with pytest.raises(RepositoryError, match=r"input.* 'features' .*not declared"):
        backend.load_file(ModelFile(path, signature))


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({"ids": np.full((1, 4), b"1", dtype=object)}, "input 'ids' must be int64"),
        ({"ids": np.zeros((1, 4), np.float32)}, "input 'ids' must be int64"),
        ({"ids": np.zeros(4, np.int64)}, r"input 'ids' has shape \[4\]"),
        ({"ids": np.zeros((1, 4, 1), np.int64)}, r"input 'ids' has shape \[1, 4, 1\]"),
        ({"features": np.zeros((1, 2), np.float32)}, r"input 'features' has shape \[1, 2\]"),
        ({"features": None}, "missing model input"),
    ],
    ids=["bytes", "float", "rank1", "rank3", "dim", "missing"],
)
def test_requests_the_file_does_not_take_are_invalid(
    keras_served: Model, inputs: dict[str, np.ndarray | None], message: str
) -> None:
    request = {**_keras_inputs(1), **inputs}
    with pytest.raises(InvalidInput, match=message):
        keras_served.predict({k: v for k, v in request.items() if v is not None})
    assert keras_served.predict(_keras_inputs(2))["score"].shape == (2, 1)  # still serving


def test_numbers_into_a_string_input_are_invalid(
    backend: TFBackend, strings: tuple[_Strings, Path]
) -> None:
    path = strings[1]
    model = backend.load_file(ModelFile(path, backend.describe(path)))
    try:
        with pytest.raises(InvalidInput, match="input 'text' must be string"):
            model.predict({"text": np.zeros(2, np.float32)})
        with pytest.raises(InvalidInput, match="input 'text' must be string"):
            model.predict({"text": np.array([1, 2], dtype=object)})
    finally:
        model.close()


def test_predict_after_close_is_not_ready(
    backend: TFBackend, keras_model: tuple[keras.Model, Path]
) -> None:
    path = keras_model[1]
    model = backend.load_file(ModelFile(path, backend.describe(path)))
    model.close()
    with pytest.raises(ModelNotReady):
        model.predict(_keras_inputs(1))
