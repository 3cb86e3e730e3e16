"""Users' own TorchScript files (Triton's `model.pt`), which our training did not write: each
is scripted here, saved, loaded back with `TorchBackend.load_file` under a declared
signature, and must answer exactly what the module computes in process, with its inputs
and outputs mapped as Triton's PyTorch backend maps them (`torch_service.torchscript`)."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from serving.backend import ModelFile
from serving.errors import InvalidInput, ModelNotReady, RepositoryError
from serving.types import Signature, TensorSpec

pytest.importorskip("torch")

# Imported only once PyTorch is known to be installed.
import torch
from torch import Tensor, nn

from torch_service import TorchBackend
from torch_service.torchscript import TorchScriptModel

pytestmark = pytest.mark.framework


class Ranker(nn.Module):
    """Two inputs of two dtypes and ranks, two outputs of two dtypes: a mapping that mixes
    up the inputs fails inside forward, one that mixes up the outputs fails their check."""

    def __init__(self) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.embedding = nn.Embedding(20, 3)
        self.head = nn.Linear(3, 2)
        with torch.no_grad():
            for parameter in self.parameters():
                parameter.copy_(torch.randn(parameter.shape, generator=generator))

    def forward(self, ids: Tensor, features: Tensor) -> tuple[Tensor, Tensor]:
        scores = self.head(self.embedding(ids).mean(dim=1) + features)
        return scores, scores.argmax(dim=1)


class Summary(nn.Module):
    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return {"mean": x.mean(dim=1), "max": x.amax(dim=1), "ignored": x}


class Mixer(nn.Module):
    """Triton's other input form: a single Dict[str, Tensor] of every input, by name."""

    def forward(self, inputs: dict[str, Tensor]) -> Tensor:
        return inputs["a"] * 2 + inputs["b"]


class EveryType(nn.Module):
    """One input and one output per datatype. The unsigned types past 8 bits are copied
    only: torch has few operators for them."""

    # One argument per input is the form under test, however many that makes.
    def forward(  # noqa: PLR0917
        self,
        b: Tensor,
        i8: Tensor,
        i16: Tensor,
        i32: Tensor,
        i64: Tensor,
        u8: Tensor,
        u16: Tensor,
        u32: Tensor,
        u64: Tensor,
        f16: Tensor,
        f32: Tensor,
        f64: Tensor,
        bf16: Tensor,
    ) -> tuple[
        Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor,
        Tensor, Tensor, Tensor, Tensor, Tensor, Tensor,
    ]:  # fmt: skip
        return (
            ~b,
            i8 - 1,
            i16 * 3,
            i32 + 7,
            i64 * -2,
            u8 + 1,
            u16.clone(),
            u32.clone(),
            u64.clone(),
            f16 * 2,
            f32 / 4,
            f64 - 0.5,
            bf16 * 3,
        )


# datatype -> (forward argument, the array the codec would hand over).
_VALUES = {
    "BOOL": ("b", np.array([[True, False, True]])),
    "INT8": ("i8", np.array([[-128, 0, 127]], np.int8)),
    "INT16": ("i16", np.array([[-3, 0, 1000]], np.int16)),
    "INT32": ("i32", np.array([[-(2**30), 5, 2**30]], np.int32)),
    "INT64": ("i64", np.array([[-(2**40), 0, 2**40]], np.int64)),
    "UINT8": ("u8", np.array([[0, 100, 254]], np.uint8)),
    "UINT16": ("u16", np.array([[0, 1, 2**16 - 1]], np.uint16)),
    "UINT32": ("u32", np.array([[0, 1, 2**32 - 1]], np.uint32)),
    "UINT64": ("u64", np.array([[0, 1, 2**64 - 1]], np.uint64)),
    "FP16": ("f16", np.array([[-1.5, 0.1, 1000.0]], np.float16)),
    "FP32": ("f32", np.array([[-1.5, 0.1, 3e30]], np.float32)),
    "FP64": ("f64", np.array([[-1.5, 0.1, 1e300]], np.float64)),
    # Widened to float32, as BF16 arrives; 1.1 is not a bfloat16, so the cast shows.
    "BF16": ("bf16", np.array([[-1.5, 1.1, 256.0]], np.float32)),
}


def _script(module: nn.Module, path: Path) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():  # torch 2.13 deprecates torch.jit for torch.export
        warnings.simplefilter("ignore", DeprecationWarning)
        scripted: torch.jit.ScriptModule = torch.jit.script(module.eval())
        scripted.save(str(path))
    return scripted


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("user_models")


@pytest.fixture(scope="module")
def ranker(files: Path) -> torch.jit.ScriptModule:
    return _script(Ranker(), files / "ranker.pt")


@pytest.fixture(scope="module")
def summary(files: Path) -> torch.jit.ScriptModule:
    return _script(Summary(), files / "summary.pt")


@pytest.fixture(scope="module")
def mixer(files: Path) -> torch.jit.ScriptModule:
    return _script(Mixer(), files / "mixer.pt")


@pytest.fixture(scope="module")
def every_type(files: Path) -> torch.jit.ScriptModule:
    return _script(EveryType(), files / "every_type.pt")


@pytest.fixture(scope="module")
def backend() -> TorchBackend:
    return TorchBackend()


def _spec(name: str, datatype: str, *shape: int) -> TensorSpec:
    return TensorSpec(name, datatype, shape)


def _read_only(array: np.ndarray) -> np.ndarray:
    """As the codec hands inputs over: read-only views of the request."""
    view = array.view()
    view.flags.writeable = False
    return view


def _load(
    backend: TorchBackend, path: Path, inputs: list[TensorSpec], outputs: list[TensorSpec]
) -> TorchScriptModel:
    return backend.load_file(ModelFile(path, Signature(tuple(inputs), tuple(outputs))))


def _ranker_inputs(rows: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(rows)
    ids = rng.integers(0, 20, (rows, 4), dtype=np.int64)
    return ids, rng.standard_normal((rows, 3)).astype(np.float32)


def _in_process(module: torch.jit.ScriptModule, *arrays: np.ndarray) -> Any:
    with torch.inference_mode():
        return module(*(torch.from_numpy(array) for array in arrays))


# --- which declared tensor is which argument and result ------------------------------------

# Declared signatures for Ranker: its roles (forward's ids and features, the tuple's scores
# and best) -> the declared names, in the declared order.
_IDS, _FEATURES, _SCORES, _BEST = "ids", "features", "scores", "best"
_NAMINGS: dict[str, tuple[dict[str, str], dict[str, str]]] = {
    # forward's own argument names, declared in the other order: mapped by name
    "argument names": ({_FEATURES: "features", _IDS: "ids"}, {_SCORES: "scores", _BEST: "best"}),
    # <name>__<index>, declared in the other order: mapped by index
    "__index names": (
        {_FEATURES: "FEATURES__1", _IDS: "IDS__0"},
        {_BEST: "BEST__1", _SCORES: "SCORES__0"},
    ),
    # anything else: the declared order
    "other names": ({_IDS: "token_ids", _FEATURES: "dense"}, {_SCORES: "logits", _BEST: "label"}),
    # not every name has an __index (Triton's all-or-nothing): the declared order again,
    # so "x__1" is argument 0 and "y__1" returned element 0
    "some __index names": ({_IDS: "x__1", _FEATURES: "dense"}, {_SCORES: "y__1", _BEST: "y__0x"}),
}
_SPECS = {
    _IDS: ("INT64", (-1, 4)),
    _FEATURES: ("FP32", (-1, 3)),
    _SCORES: ("FP32", (-1, 2)),
    _BEST: ("INT64", (-1,)),
}


def _declared(roles: Mapping[str, str]) -> list[TensorSpec]:
    return [TensorSpec(name, *_SPECS[role]) for role, name in roles.items()]


@pytest.mark.parametrize("naming", list(_NAMINGS))
@pytest.mark.parametrize("rows", [1, 5])
def test_two_inputs_and_a_tuple_map_as_in_triton(
    backend: TorchBackend,
    files: Path,
    ranker: torch.jit.ScriptModule,
    naming: str,
    rows: int,
) -> None:
    inputs, outputs = _NAMINGS[naming]
    model = _load(backend, files / "ranker.pt", _declared(inputs), _declared(outputs))
    ids, features = _ranker_inputs(rows)
    answers = model.predict(
        {inputs[_IDS]: _read_only(ids), inputs[_FEATURES]: _read_only(features)}
    )
    scores, best = _in_process(ranker, ids, features)
    assert sorted(answers) == sorted(outputs.values())
    np.testing.assert_array_equal(answers[outputs[_SCORES]], scores.numpy())
    np.testing.assert_array_equal(answers[outputs[_BEST]], best.numpy())
    assert answers[outputs[_SCORES]].dtype == np.float32
    assert answers[outputs[_BEST]].dtype == np.int64


def test_a_dict_result_maps_by_key(
    backend: TorchBackend, files: Path, summary: torch.jit.ScriptModule
) -> None:
    declared = [_spec("max", "FP32", -1), _spec("mean", "FP32", -1)]  # not the dict's order
    model = _load(backend, files / "summary.pt", [_spec("x", "FP32", -1, 6)], declared)
    x = np.random.default_rng(0).standard_normal((3, 6)).astype(np.float32)
    answers = model.predict({"x": _read_only(x)})
    expected = _in_process(summary, x)
    assert sorted(answers) == ["max", "mean"]
    for name in ("max", "mean"):
        np.testing.assert_array_equal(answers[name], expected[name].numpy())


def test_a_dict_result_without_a_declared_key_fails_the_first_call(
    backend: TorchBackend, files: Path, summary: torch.jit.ScriptModule
) -> None:
    inputs = [_spec("x", "FP32", -1, 6)]
    model = _load(backend, files / "summary.pt", inputs, [_spec("median", "FP32", -1)])
    with pytest.raises(RepositoryError, match=r"no 'median' \(its keys: ignored, max, mean\)"):
        model.predict({"x": np.zeros((1, 6), np.float32)})


def test_a_dict_argument_gets_every_input_by_name(
    backend: TorchBackend, files: Path, mixer: torch.jit.ScriptModule
) -> None:
    inputs = [_spec("b", "FP32", -1, 2), _spec("a", "FP32", -1, 2)]
    model = _load(backend, files / "mixer.pt", inputs, [_spec("mixed", "FP32", -1, 2)])
    a, b = np.arange(8, dtype=np.float32).reshape(2, 2, 2)
    answers = model.predict({"a": _read_only(a), "b": _read_only(b)})
    with torch.inference_mode():
        expected = mixer({"a": torch.from_numpy(a), "b": torch.from_numpy(b)})
    np.testing.assert_array_equal(answers["mixed"], expected.numpy())


def test_every_datatype_goes_in_and_comes_back(
    backend: TorchBackend, files: Path, every_type: torch.jit.ScriptModule
) -> None:
    inputs = [_spec(argument, datatype, -1, 3) for datatype, (argument, _) in _VALUES.items()]
    outputs = [_spec(f"{dt}__{i}", dt, -1, 3) for i, dt in enumerate(_VALUES)]
    model = _load(backend, files / "every_type.pt", inputs, outputs)
    answers = model.predict({argument: _read_only(array) for argument, array in _VALUES.values()})
    tensors = [torch.from_numpy(array) for _, array in _VALUES.values()]
    tensors[-1] = tensors[-1].to(torch.bfloat16)
    with torch.inference_mode():
        expected = every_type(*tensors)
    for spec, (_, array), want in zip(outputs, _VALUES.values(), expected, strict=True):
        answer = answers[spec.name]
        # BF16 goes back widened to float32, the dtype it came in as; every other as itself.
        assert answer.dtype == array.dtype, spec.name
        np.testing.assert_array_equal(
            answer, want.float().numpy() if spec.datatype == "BF16" else want.numpy()
        )
    assert answers["BF16__12"][0, 1] != np.float32(3.3)  # 1.1 was rounded to bfloat16 first


def test_a_model_serves_many_threads(
    backend: TorchBackend, files: Path, ranker: torch.jit.ScriptModule
) -> None:
    inputs, outputs = _NAMINGS["argument names"]
    model = _load(backend, files / "ranker.pt", _declared(inputs), _declared(outputs))
    batches = [_ranker_inputs(rows) for rows in range(1, 17)]

    def call(batch: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
        return model.predict({"ids": batch[0], "features": batch[1]})["scores"]

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(call, batches))
    for batch, answer in zip(batches, answers, strict=True):
        np.testing.assert_array_equal(answer, _in_process(ranker, *batch)[0].numpy())


# --- what is refused --------------------------------------------------------------------------


@pytest.mark.usefixtures("ranker")
def test_describe_finds_no_signature_in_a_torchscript_file(
    backend: TorchBackend, files: Path
) -> None:
    assert backend.describe(files / "ranker.pt") is None


@pytest.fixture(scope="module")
def not_torchscript(files: Path) -> Path:
    torch.save(Ranker().state_dict(), files / "weights.pt")
    (files / "noise.pt").write_bytes(np.random.default_rng(0).bytes(4096))
    return files


@pytest.mark.parametrize(
    ("file", "reason"),
    [
        ("weights.pt", r"'weights\.pt' is a torch\.save checkpoint .*, not TorchScript"),
        ("noise.pt", r"'noise\.pt' is not a TorchScript archive"),
        ("model.pt", r"the version has no model file 'model\.pt'"),
    ],
)
def test_a_file_that_is_not_torchscript_is_a_repository_error(
    backend: TorchBackend, not_torchscript: Path, file: str, reason: str
) -> None:
    with pytest.raises(RepositoryError, match=reason) as caught:
        _load(backend, not_torchscript / file, [_spec("x", "FP32", -1)], [_spec("y", "FP32", -1)])
    assert str(not_torchscript) not in caught.value.message  # a client reads it


_IDS_SPEC = _spec("ids", "INT64", -1, 4)
_FEATURES_SPEC = _spec("features", "FP32", -1, 3)
_OUTPUTS = [_spec("scores", "FP32", -1, 2), _spec("best", "INT64", -1)]


@pytest.mark.parametrize(
    ("inputs", "outputs", "reason"),
    [
        (
            [_IDS_SPEC],
            _OUTPUTS,
            r"forward takes 2 inputs \(ids, features\); the configuration declares 1 \(ids\)",
        ),
        (
            [_IDS_SPEC, _spec("text", "BYTES", -1)],
            _OUTPUTS,
            r"TorchScript takes no string tensors here: input 'text' is BYTES",
        ),
        (
            [_IDS_SPEC, _FEATURES_SPEC],
            [_spec("scores", "BYTES", -1)],
            r"TorchScript takes no string tensors here: output 'scores' is BYTES",
        ),
        (
            [_spec("ids__0", "INT64", -1, 4), _spec("features__0", "FP32", -1, 3)],
            _OUTPUTS,
            r"inputs 'ids__0' and 'features__0' both name forward's argument 0",
        ),
        (
            [_IDS_SPEC, _FEATURES_SPEC],
            [_spec("scores__0", "FP32", -1, 2), _spec("best__2", "INT64", -1)],
            r"output 'best__2' names forward's returned element 2, but there are 2",
        ),
    ],
)
@pytest.mark.usefixtures("ranker")
def test_a_signature_that_does_not_fit_is_refused_at_load(
    backend: TorchBackend,
    files: Path,
    inputs: list[TensorSpec],
    outputs: list[TensorSpec],
    reason: str,
) -> None:
    with pytest.raises(RepositoryError, match=reason):
        _load(backend, files / "ranker.pt", inputs, outputs)


@pytest.mark.usefixtures("mixer")
def test_one_returned_tensor_is_one_output(backend: TorchBackend, files: Path) -> None:
    inputs = [_spec("a", "FP32", -1, 2), _spec("b", "FP32", -1, 2)]
    outputs = [_spec("y", "FP32", -1, 2), _spec("z", "FP32", -1, 2)]
    with pytest.raises(RepositoryError, match=r"returns one Tensor; .* declares 2 outputs"):
        _load(backend, files / "mixer.pt", inputs, outputs)


@pytest.mark.parametrize(
    ("best", "reason"),
    [
        (_spec("best", "FP32", -1), r"output 'best' is declared FP32, but the model returns int64"),
        (_spec("best", "INT64", -1, 1), r"output 'best' is declared \[-1, 1\], but .* \[1\]"),
    ],
)
@pytest.mark.usefixtures("ranker")
def test_a_result_unlike_its_declaration_fails_the_first_call(
    backend: TorchBackend,
    files: Path,
    best: TensorSpec,
    reason: str,
) -> None:
    outputs = [_spec("scores", "FP32", -1, 2), best]
    model = _load(backend, files / "ranker.pt", [_IDS_SPEC, _FEATURES_SPEC], outputs)
    ids, features = _ranker_inputs(1)
    with pytest.raises(RepositoryError, match=reason):
        model.predict({"ids": ids, "features": features})


@pytest.mark.parametrize(
    ("ids", "reason"),
    [
        (np.zeros((2, 4), np.int32), r"input 'ids' must be INT64 \(int64\), got int32"),
        (np.zeros(4, np.int64), r"input 'ids' has shape \[4\], expected \[-1, 4\]"),
        (np.zeros((2, 5), np.int64), r"input 'ids' has shape \[2, 5\], expected \[-1, 4\]"),
    ],
)
@pytest.mark.usefixtures("ranker")
def test_an_input_unlike_its_declaration_is_invalid_input(
    backend: TorchBackend,
    files: Path,
    ids: np.ndarray,
    reason: str,
) -> None:
    model = _load(backend, files / "ranker.pt", [_IDS_SPEC, _FEATURES_SPEC], _OUTPUTS)
    with pytest.raises(InvalidInput, match=reason):
        model.predict({"ids": ids, "features": np.zeros((2, 3), np.float32)})


@pytest.mark.usefixtures("ranker")
def test_a_closed_model_is_not_ready(backend: TorchBackend, files: Path) -> None:
    model = _load(backend, files / "ranker.pt", [_IDS_SPEC, _FEATURES_SPEC], _OUTPUTS)
    ids, features = _ranker_inputs(2)
    model.predict({"ids": ids, "features": features})
    model.close()
    with pytest.raises(ModelNotReady):
        model.predict({"ids": ids, "features": features})
