"""Every backend the conformance suite runs (`tests/framework/conformance/`), and what each
must show, with its model versions trained once per session through the core's own path
(`serving.training.trainer.train_version`: train, evaluate, export every runtime, check each
export against the native model, write `model.json`).

A new backend joins the suite with one `Subject` here.
"""

from __future__ import annotations

import functools
import importlib
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from serving.backend import Backend, Model, TrainResult, TrainSpec
from serving.backend.architectures import get
from serving.backend.fake import AffineBackend
from serving.engine.repository import ModelRepository, VersionMeta
from serving.engine.runtimes import load_runtime
from serving.training.datasets import Dataset, load_builtin, validation_split
from serving.training.trainer import train_version

__all__ = [
    "CLASSIFIERS",
    "FRAMEWORKS",
    "SUBJECTS",
    "TRAINERS",
    "Subject",
    "Version",
    "Versions",
    "cases",
    "dataset",
    "runtime_cases",
    "sizes",
    "spec_for",
]

DATASETS = {"linear": "house_price", "mlp": "house_features", "cnn": "digits"}


@dataclass(frozen=True)
class Subject:
    """A backend under test. `platforms` is what it must register (its runtimes, native
    first). A backend that does not train (`trained_by`) serves the versions that backend
    trained into its repository. `measures`: whether its reported losses are measured (the
    fake's are made up, so bars on their values do not apply)."""

    framework: str
    factory: str  # "module:Class", imported only when the subject runs
    architectures: tuple[str, ...]
    platforms: Mapping[str, str]
    native_file: str  # what its refusal of an empty version directory names
    requires: str = ""  # a module whose absence skips the subject
    trained_by: str = ""
    measures: bool = True

    @property
    def trains(self) -> bool:
        return not self.trained_by

    def make(self) -> Backend:
        if self.requires:
            pytest.importorskip(self.requires)
        module, name = self.factory.split(":")
        backend: Backend = getattr(importlib.import_module(module), name)()
        return backend


_ALL = ("linear", "mlp", "cnn")
SUBJECTS: dict[str, Subject] = {
    subject.framework: subject
    for subject in (
        Subject(
            "fake",
            f"{AffineBackend.__module__}:AffineBackend",
            ("linear", "mlp"),
            {"native": "numpy_affine", "onnx": "onnxruntime_onnx"},
            "affine.json",
            measures=False,
        ),
        Subject(
            "tensorflow",
            "tf_service:TFBackend",
            _ALL,
            {
                "native": "tensorflow_savedmodel",
                "tflite": "tensorflow_lite",
                "onnx": "onnxruntime_onnx",
            },
            "saved_model.pb",
            requires="tensorflow",
        ),
        Subject(
            "pytorch",
            "torch_service:TorchBackend",
            _ALL,
            {
                "native": "pytorch_eager",
                "torchscript": "pytorch_torchscript",
                "onnx": "onnxruntime_onnx",
            },
            "torch_config.json",
            requires="torch",
        ),
        Subject(
            "onnx",
            "onnx_service:OnnxBackend",
            _ALL,
            {"native": "onnxruntime_onnx"},
            "model.json",
            requires="torch",  # its versions are PyTorch's exports
            trained_by="pytorch",
        ),
    )
}


@functools.cache
def dataset(architecture: str) -> Dataset:
    return load_builtin(DATASETS[architecture])


def spec_for(architecture: str, **overrides: Any) -> TrainSpec:
    """The architecture's defaults on its dataset, 20 % of the training rows for validation."""
    data, defaults = dataset(architecture), get(architecture)
    x, y, x_val, y_val = validation_split(data.x_train, data.y_train, 0.2, seed=0)
    spec = TrainSpec(
        architecture,
        x,
        y,
        x_val,
        y_val,
        input_name=data.input_name,
        output_name=data.output_name,
        task=data.task,
        num_classes=data.num_classes,
        epochs=defaults.epochs,
        batch_size=defaults.batch_size,
        learning_rate=defaults.learning_rate,
    )
    return replace(spec, **overrides)


class _Recording:
    """A backend as the trainer sees it, noting what each export wrote and how long it took
    (the exports' own tests need the files; the timings go into the test report)."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.framework = backend.framework
        self.runtimes = backend.runtimes
        self.triton_platform = backend.triton_platform
        self.triton_backend = backend.triton_backend
        self.device = backend.device
        self.files: dict[str, list[str]] = {}
        self.seconds: dict[str, float] = {}
        self.result: TrainResult | None = None

    def device_stats(self) -> Mapping[str, float]:
        return self.backend.device_stats()

    def train(self, spec: TrainSpec, version_dir: Path) -> TrainResult:
        self.result = self.backend.train(spec, version_dir)
        return self.result

    def load(self, version_dir: Path, architecture: str, runtime: str = "native") -> Model:
        return self.backend.load(version_dir, architecture, runtime)

    def export(self, version_dir: Path, architecture: str, runtime: str) -> None:
        before = set(version_dir.iterdir())
        started = time.perf_counter()
        self.backend.export(version_dir, architecture, runtime)
        self.seconds[runtime] = time.perf_counter() - started
        self.files[runtime] = sorted(p.name for p in set(version_dir.iterdir()) - before)


@dataclass
class Version:
    """Version 1 of model `architecture` in `root`, a subject's repository."""

    architecture: str
    root: Path
    spec: TrainSpec
    result: TrainResult
    metrics: dict[str, float]  # what the trainer stored: the backend's and held-out ones
    reports: list[tuple[int, dict[str, float]]]
    export_files: dict[str, list[str]]  # runtime -> the files its export wrote
    export_seconds: dict[str, float]
    native_files: list[str] = field(default_factory=list)

    @property
    def path(self) -> Path:
        return self.root / self.architecture / "1"

    @property
    def meta(self) -> VersionMeta:
        return ModelRepository(self.root).read_meta(self.architecture, 1)

    def load(self, backend: Backend, runtime: str) -> Model:
        """As the core loads it (which runs ONNX exports itself)."""
        return load_runtime(backend, self.path, self.meta, runtime)

    def predict(self, model: Model, x: np.ndarray) -> np.ndarray:
        return model.predict({self.spec.input_name: x})[self.spec.output_name]

    def answers(self, backend: Backend, runtime: str, x: np.ndarray) -> np.ndarray:
        model = self.load(backend, runtime)
        try:
            return self.predict(model, x)
        finally:
            model.close()


class Versions:
    """One backend per framework and one trained version per framework and architecture,
    made on first use and kept for the session (training is what makes the suite slow)."""

    def __init__(self, tmp_path_factory: pytest.TempPathFactory) -> None:
        self._tmp = tmp_path_factory
        self._backends: dict[str, Backend] = {}
        self._versions: dict[tuple[str, str], Version] = {}

    def backend(self, framework: str) -> Backend:
        if framework not in self._backends:
            self._backends[framework] = SUBJECTS[framework].make()
        return self._backends[framework]

    def root(self, framework: str) -> Path:
        """The repository a framework's service serves."""
        subject = SUBJECTS[framework]
        trainer = subject.trained_by or framework
        for architecture in subject.architectures:
            self.get(trainer, architecture)
        return self._tmp.getbasetemp() / f"repository-{trainer}"

    def reference(self, framework: str, version: Version, x: np.ndarray) -> np.ndarray:
        """The native answers to `x` of whoever trained `version` (`framework` itself, or its
        trainer): what every runtime serving it must match."""
        trainer = SUBJECTS[framework].trained_by or framework
        return version.answers(self.backend(trainer), "native", x)

    def get(self, framework: str, architecture: str) -> Version:
        """The version `framework` serves for `architecture` (its trainer's, for a backend
        that does not train)."""
        trainer = SUBJECTS[framework].trained_by or framework
        if (trainer, architecture) not in self._versions:
            self._versions[trainer, architecture] = self._train(trainer, architecture)
        return self._versions[trainer, architecture]

    def _train(self, framework: str, architecture: str) -> Version:
        root = self._tmp.getbasetemp() / f"repository-{framework}"
        reports: list[tuple[int, dict[str, float]]] = []
        spec = spec_for(architecture, on_epoch=lambda e, m: reports.append((e, dict(m))))
        recording = _Recording(self.backend(framework))
        data = dataset(architecture)
        version, metrics = train_version(
            ModelRepository(root),
            recording,
            architecture,
            spec,
            data.name,
            test=(data.x_test, data.y_test),
        )
        assert version == 1 and recording.result is not None
        exported = {name for files in recording.files.values() for name in files}
        path = root / architecture / "1"
        native = sorted(p.name for p in path.iterdir() if p.name not in exported)
        return Version(
            architecture,
            root,
            spec,
            recording.result,
            metrics,
            reports,
            recording.files,
            recording.seconds,
            native,
        )


def cases(*, trains: bool = False) -> list[Any]:
    """(framework, architecture) cases; `trains`: only backends that train."""
    return [
        pytest.param(s.framework, a, id=f"{s.framework}-{a}")
        for s in SUBJECTS.values()
        for a in s.architectures
        if s.trains or not trains
    ]


def runtime_cases(*, exported: bool = False) -> list[Any]:
    """(framework, runtime) cases; `exported`: the runtimes a backend exports itself."""
    return [
        pytest.param(s.framework, r, id=f"{s.framework}-{r}")
        for s in SUBJECTS.values()
        for r in s.platforms
        if not exported or (s.trains and r != "native")
    ]


FRAMEWORKS = [pytest.param(s.framework, id=s.framework) for s in SUBJECTS.values()]
TRAINERS = [pytest.param(s.framework, id=s.framework) for s in SUBJECTS.values() if s.trains]
CLASSIFIERS = [
    pytest.param(s.framework, id=s.framework) for s in SUBJECTS.values() if "cnn" in s.architectures
]


def sizes(values: list[float]) -> np.ndarray:
    return np.array(values, dtype=np.float32).reshape(-1, 1)
