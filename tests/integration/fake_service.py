"""`python -m tests.integration.fake_service [serve|seed]`: a real service process on the NumPy
fake backend, for tests that need processes (scraped by Prometheus) but no framework.
`FAKE_FRAMEWORK=tensorflow` makes it name itself so, for tests where it stands in for one."""

import os

from serving.app.main import run
from serving.backend.fake import AffineBackend

if __name__ == "__main__":
    framework = os.environ.get("FAKE_FRAMEWORK", "fake")
    run(
        lambda settings: AffineBackend(framework=framework),
        prog="python -m tests.integration.fake_service",
    )
