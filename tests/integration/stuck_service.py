"""`python -m tests.integration.stuck_service`: a real fake-backend service whose training
epochs each take STUCK_EPOCH_S seconds, for tests of stopping it mid-epoch."""

import os

from serving.app.main import run
from serving.backend.fake import AffineBackend

if __name__ == "__main__":
    delay = float(os.environ["STUCK_EPOCH_S"])
    run(
        lambda settings: AffineBackend(epoch_delay=delay),
        prog="python -m tests.integration.stuck_service",
    )
