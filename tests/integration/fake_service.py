"""`python -m tests.integration.fake_service [serve|seed]`: a real service process on the NumPy
fake backend, for tests that need processes (scraped by Prometheus) but no framework."""

from serving.fake import AffineBackend
from serving.main import run

if __name__ == "__main__":
    run(lambda settings: AffineBackend(), prog="python -m tests.integration.fake_service")
