"""Every backend's exports, each checked by the core at training time and here against the
native model on held-out inputs: parity, batch sizes, threads, files, and refusals."""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest

from serving.backend import Backend
from serving.engine.onnx_model import ONNX_FILE
from serving.engine.repository import RuntimeStatus
from serving.errors import InvalidInput, ModelNotReady, RepositoryError, Unsupported
from tests.framework.backends import (
    FRAMEWORKS,
    SUBJECTS,
    TRAINERS,
    Subject,
    Version,
    Versions,
    cases,
    dataset,
    runtime_cases,
    sizes,
)

pytestmark = pytest.mark.framework


# --- exports --------------------------------------------------------------------------------


@pytest.mark.parametrize(("framework", "architecture"), cases())
def test_the_core_accepts_every_export(
    backend: Backend, version: Version, record_property: Callable[[str, object], None]
) -> None:
    """Training ran the core's own check (`serving.engine.runtimes`): every runtime the
    trainer registers passed it, and the service serving the version offers each of its own."""
    records = version.meta.runtimes
    assert {name: record.status for name, record in records.items()} == dict.fromkeys(
        version.export_files.keys() | {"native"}, RuntimeStatus.OK
    )
    trainer = SUBJECTS[version.meta.framework]
    assert {name: record.platform for name, record in records.items()} == trainer.platforms
    for runtime in backend.runtimes:
        assert runtime in version.meta.usable_runtimes()
    for runtime, seconds in version.export_seconds.items():
        record_property(f"{runtime}_export_seconds", seconds)
        record_property(f"{runtime}_max_abs_diff", records[runtime].max_abs_diff)


@pytest.mark.parametrize(("framework", "runtime"), runtime_cases(exported=True))
def test_an_export_writes_its_files_and_overwrites_an_earlier_one(
    backend: Backend, linear: Version, runtime: str, tmp_path: Path
) -> None:
    files = linear.export_files[runtime]
    assert files, f"the {runtime} export wrote nothing"
    copy = replace(linear, root=tmp_path)
    shutil.copytree(linear.path, copy.path)
    for name in files:
        (copy.path / name).write_bytes(b"stale")  # a half-written earlier export
    backend.export(copy.path, "linear", runtime)
    every_file = [
        *linear.native_files,
        *(n for names in linear.export_files.values() for n in names),
    ]
    assert sorted(p.name for p in copy.path.iterdir()) == sorted(every_file)
    assert copy.answers(backend, runtime, sizes([1800.0]))[0, 0] == pytest.approx(360.0, abs=1.0)


@pytest.mark.parametrize(("framework", "architecture"), cases(trains=True))
def test_the_onnx_export_has_the_signature_names_and_a_dynamic_batch(version: Version) -> None:
    graph = onnx.load(str(version.path / ONNX_FILE)).graph
    assert [i.name for i in graph.input] == [version.spec.input_name]
    assert [o.name for o in graph.output] == [version.spec.output_name]
    for tensor in (graph.input[0], graph.output[0]):
        batch = tensor.type.tensor_type.shape.dim[0]
        assert batch.dim_param and not batch.HasField("dim_value")  # symbolic, not a number
    rest = [d.dim_value for d in graph.input[0].type.tensor_type.shape.dim[1:]]
    assert rest == list(version.spec.x.shape[1:])


@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize("runtime", ["tensorrt", "native", ""])
def test_an_unknown_export_runtime_is_refused(
    subject: Subject, backend: Backend, linear: Version, runtime: str, tmp_path: Path
) -> None:
    version_dir = tmp_path / "1"
    shutil.copytree(linear.path, version_dir)
    # A backend that does not train exports nothing at all (UNIMPLEMENTED).
    with pytest.raises(InvalidInput if subject.trains else Unsupported) as raised:
        backend.export(version_dir, "linear", runtime)
    for exported in subject.platforms.keys() - {"native"}:
        assert exported in str(raised.value)  # says what it does export
    assert sorted(p.name for p in version_dir.iterdir()) == sorted(
        p.name for p in linear.path.iterdir()
    )


@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize("runtime", ["tensorrt", "onnx"])
def test_an_unknown_load_runtime_is_invalid_input(
    backend: Backend, linear: Version, runtime: str
) -> None:
    """The core loads ONNX exports itself, so no backend loads a runtime named "onnx" (the
    ONNX service's ONNX files are its "native")."""
    with pytest.raises(InvalidInput, match="native"):  # says what it does load
        backend.load(linear.path, "linear", runtime)


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_an_empty_version_directory_is_a_repository_error(
    subject: Subject, backend: Backend, tmp_path: Path
) -> None:
    with pytest.raises(RepositoryError, match=re.escape(subject.native_file)):
        backend.load(tmp_path, "linear")


@pytest.mark.parametrize("framework", TRAINERS)
def test_an_export_without_native_files_is_a_repository_error(
    subject: Subject, backend: Backend, tmp_path: Path
) -> None:
    for runtime in backend.runtimes.keys() - {"native"}:
        with pytest.raises(RepositoryError, match=re.escape(subject.native_file)):
            backend.export(tmp_path, "linear", runtime)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(("framework", "runtime"), runtime_cases(exported=True))
@pytest.mark.parametrize(
    "content", [None, b"", b"not a model", b"\x00" * 64, b"PK\x03\x04" + b"\x00" * 64]
)
def test_a_missing_or_corrupt_export_is_a_repository_error(
    backend: Backend, linear: Version, runtime: str, content: bytes | None, tmp_path: Path
) -> None:
    """None: the file is missing."""
    copy = replace(linear, root=tmp_path)
    shutil.copytree(linear.path, copy.path)
    (name,) = linear.export_files[runtime]
    if content is None:
        (copy.path / name).unlink()
    else:
        (copy.path / name).write_bytes(content)
    with pytest.raises(RepositoryError, match=re.escape(name)):
        copy.load(backend, runtime)


# --- parity of every runtime with the native model ------------------------------------------


def _reference(versions: Versions, framework: str, version: Version, x: np.ndarray) -> np.ndarray:
    """The native answers of whoever trained the version (itself, or its trainer)."""
    trainer = SUBJECTS[framework].trained_by or framework
    return version.answers(versions.backend(trainer), "native", x)


@pytest.mark.parametrize(("framework", "architecture"), cases())
def test_every_runtime_matches_native_on_held_out_inputs(
    versions: Versions,
    backend: Backend,
    framework: str,
    version: Version,
    record_property: Callable[[str, object], None],
) -> None:
    x = dataset(version.architecture).x_test
    native = versions.reference(framework, version, x)
    for runtime in backend.runtimes:
        answer = version.answers(backend, runtime, x)
        assert answer.shape == native.shape and answer.dtype == np.float32, runtime
        diff = float(np.max(np.abs(answer.astype(np.float64) - native)))
        record_property(f"{runtime}_max_abs_diff", diff)
        if version.spec.task == "classification":  # probabilities
            assert diff < 1e-4, runtime
            np.testing.assert_array_equal(answer.argmax(axis=1), native.argmax(axis=1))
        else:  # prices in thousands
            np.testing.assert_allclose(answer, native, rtol=1e-3, atol=1e-3, err_msg=runtime)


@pytest.mark.parametrize(("framework", "architecture"), cases())
def test_the_batch_size_changes_between_calls(
    versions: Versions, backend: Backend, framework: str, version: Version
) -> None:
    """Exports traced with one batch size serve any: no batch size is baked in, and a
    runtime that re-plans its buffers per size (TFLite) does so each time."""
    x = dataset(version.architecture).x_test
    batches = (x[:1], x[1:6], x[6:7], x[7:12])
    references = [versions.reference(framework, version, batch) for batch in batches]
    for runtime in backend.runtimes:
        model = version.load(backend, runtime)
        for batch, expected in zip(batches, references, strict=True):
            answer = version.predict(model, batch)
            assert answer.shape == expected.shape, runtime
            np.testing.assert_allclose(answer, expected, rtol=1e-4, atol=1e-4, err_msg=runtime)
        model.close()


@pytest.mark.parametrize(("framework", "runtime"), runtime_cases())
def test_a_runtime_serves_many_threads_and_read_only_inputs(
    backend: Backend, linear: Version, runtime: str
) -> None:
    model = linear.load(backend, runtime)
    # Batch sizes 1 and 3 interleave, so threads also race on resizing inputs (TFLite) and
    # on the graph executor's profiling (TorchScript).
    batches = [b for s in range(500, 2750, 50) for b in ([float(s)], [600.0, 1200.0, 2400.0])]
    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(lambda b: linear.predict(model, sizes(b))[:, 0], batches))
    for batch, answer in zip(batches, answers, strict=True):
        np.testing.assert_allclose(answer, [0.2 * s for s in batch], atol=1.0)
        # What one thread alone gets: no call saw another's buffers.
        alone = linear.predict(model, sizes(batch))[:, 0]
        np.testing.assert_allclose(answer, alone, rtol=1e-6, atol=1e-6)
    # The codec decodes raw contents with np.frombuffer, which is read-only (torch warns on
    # those, and warnings are errors here).
    frozen = np.frombuffer(np.float32(1800.0).tobytes(), dtype=np.float32).reshape(1, 1)
    assert linear.predict(model, frozen)[0, 0] == pytest.approx(360.0, abs=1.0)
    model.close()


@pytest.mark.parametrize(("framework", "runtime"), runtime_cases())
def test_a_closed_model_is_not_ready(backend: Backend, linear: Version, runtime: str) -> None:
    model = linear.load(backend, runtime)
    model.close()
    with pytest.raises(ModelNotReady):
        linear.predict(model, sizes([1800.0]))
