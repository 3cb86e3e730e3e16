"""The fixtures every conformance test takes, from its `framework` (and `architecture`)
parameters: the subject, its backend, and its trained versions."""

from __future__ import annotations

import pytest

from serving.backend import Backend
from tests.framework.backends import SUBJECTS, Subject, Version, Versions


@pytest.fixture
def subject(framework: str) -> Subject:
    return SUBJECTS[framework]


@pytest.fixture
def backend(versions: Versions, framework: str) -> Backend:
    return versions.backend(framework)


@pytest.fixture
def version(versions: Versions, framework: str, architecture: str) -> Version:
    return versions.get(framework, architecture)


@pytest.fixture
def linear(versions: Versions, framework: str) -> Version:
    return versions.get(framework, "linear")
