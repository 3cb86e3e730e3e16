"""`python -m onnx_service [serve]`: the ONNX Runtime service, over another framework's
repository (`--model-repository models/pytorch`)."""

from onnx_service.backend import OnnxBackend
from serving.app.main import run


def main() -> None:
    run(
        lambda settings: OnnxBackend(device=settings.device, threads=settings.framework_threads),
        prog="python -m onnx_service",
        trains=False,
    )


if __name__ == "__main__":
    main()
