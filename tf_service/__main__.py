"""`python -m tf_service [serve|seed]`: the TensorFlow service."""

from serving.app.main import run
from tf_service.backend import TFBackend


def main() -> None:
    run(
        lambda settings: TFBackend(
            intra_op_threads=settings.framework_threads,
            inter_op_threads=settings.inter_op_threads,
            device=settings.device,
        ),
        prog="python -m tf_service",
    )


if __name__ == "__main__":
    main()
