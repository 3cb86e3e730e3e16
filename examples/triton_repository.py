"""Writes a small Triton model repository into DIR, one model per framework, each computing
the house-price model price_k = 0.2 * size_sqft (1800 -> 360), the way Triton users write
theirs:

    keras_price/1/model.savedmodel   Keras `model.export`; no config.pbtxt (auto-completed)
    torch_price/1/model.pt           `torch.jit.script`; config.pbtxt (TorchScript declares none)
    onnx_price/1/model.onnx          `torch.onnx.export`, dynamic batch; no config.pbtxt

    python examples/triton_repository.py /tmp/my-models && make run MODELS=/tmp/my-models

Needs both TensorFlow (keras 3) and PyTorch installed (`make venv` installs both).
"""

import sys
from pathlib import Path

import keras
import torch

TORCH_CONFIG = """platform: "pytorch_libtorch"
max_batch_size: 8
input [ { name: "size_sqft" data_type: TYPE_FP32 dims: [ 1 ] } ]
output [ { name: "price_k" data_type: TYPE_FP32 dims: [ 1 ] } ]
dynamic_batching { }
"""


class Price(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        # A fixed weight instead of a trained one: the answer is checkable (1800 -> 360).
        self.slope = torch.nn.Parameter(torch.tensor([[0.2]]))

    def forward(self, size_sqft: torch.Tensor) -> torch.Tensor:
        return size_sqft @ self.slope


def main(root: Path) -> None:
    # Keras: the input's name and the output dict's key name the served tensors.
    size = keras.Input(shape=(1,), name="size_sqft")
    price = keras.layers.Dense(1, kernel_initializer=keras.initializers.Constant(0.2))(size)
    keras_model = keras.Model(size, {"price_k": price})
    keras_model.export(str(root / "keras_price/1/model.savedmodel"), verbose=False)

    # TorchScript: inputs bind to forward's argument names, as in Triton.
    (root / "torch_price/1").mkdir(parents=True, exist_ok=True)
    (root / "torch_price/config.pbtxt").write_text(TORCH_CONFIG)
    torch.jit.save(torch.jit.script(Price().eval()), str(root / "torch_price/1/model.pt"))

    # ONNX: dynamic_axes leaves the batch dimension open (auto-completed max_batch_size).
    (root / "onnx_price/1").mkdir(parents=True, exist_ok=True)
    torch.onnx.export(
        Price().eval(),
        (torch.zeros(1, 1),),
        str(root / "onnx_price/1/model.onnx"),
        input_names=["size_sqft"],
        output_names=["price_k"],
        dynamic_axes={"size_sqft": {0: "batch"}, "price_k": {0: "batch"}},
        dynamo=False,  # the TorchScript-based exporter: the new one needs onnxscript
    )
    print(f"wrote keras_price, torch_price and onnx_price into {root}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python examples/triton_repository.py DIR")
    main(Path(sys.argv[1]))
