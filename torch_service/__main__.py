"""`python -m torch_service [serve|seed]`: the PyTorch service."""

from serving.app.main import run
from torch_service.backend import TorchBackend


def main() -> None:
    run(
        lambda settings: TorchBackend(device=settings.device, threads=settings.framework_threads),
        prog="python -m torch_service",
    )


if __name__ == "__main__":
    main()
