"""PyTorch architectures, keyed by the names in `serving.backend.architectures`, layer for layer.

Every module here is rebuilt from `ARCHITECTURES[name](**kwargs)` and then filled from a
`state_dict`, so anything a trained model needs at inference (normalisation statistics
included) must be a parameter or a registered buffer, never a plain attribute.

Each module has two outputs: `forward_train`, where the training objective is taken (the
normalised target, or logits), and `forward`, what the served model returns (raw target
units, or softmax probabilities). Keeping both on one module means the saved `state_dict`
is the same whichever way the module is used.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = [
    "ARCHITECTURES",
    "ConvClassifier",
    "LinearRegressor",
    "MLPRegressor",
    "TrainableModule",
]


class TrainableModule(nn.Module):
    """What the backend's training loop needs from an architecture."""

    @classmethod
    def kwargs_for(cls, x_shape: tuple[int, ...], num_classes: int) -> dict[str, int]:
        """Constructor arguments that fit training inputs of `x_shape` (batch first)."""
        raise NotImplementedError

    def input_shape(self) -> tuple[int, ...]:
        """The shape of one input row (the batch dimension left out): the inverse of
        `kwargs_for`, so an exporter can build example inputs from a rebuilt module."""
        raise NotImplementedError

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        # glorot_uniform / zeros: Keras's defaults for Dense and Conv2D (the fans agree:
        # torch's [out, in, kh, kw] and Keras's [kh, kw, in, out] give the same two products).
        for layer in self.modules():
            if isinstance(layer, nn.Linear | nn.Conv2d):
                nn.init.xavier_uniform_(layer.weight, generator=generator)
                if layer.bias is not None:
                    nn.init.zeros_(layer.bias)

    def fit_statistics(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Takes whatever the module learns from the training rows before the first step."""

    def target(self, y: torch.Tensor) -> torch.Tensor:
        """`y` in the space of `forward_train`."""
        return y

    def forward_train(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def objective(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The training loss, averaged over rows, of `forward_train` against `target(y)`."""
        raise NotImplementedError

    def metric(self, x: torch.Tensor, y: torch.Tensor) -> float:
        """The validation metric of EPOCH_METRICS on raw `x` and `y`."""
        raise NotImplementedError


class _Regressor(TrainableModule):
    """y = body((x - x_mean) / x_std) * y_std + y_mean.

    Training happens in the normalised space: raw house sizes in the thousands would make
    one learning rate wrong for both the weights and the biases.
    """

    x_mean: torch.Tensor
    x_std: torch.Tensor
    y_mean: torch.Tensor
    y_std: torch.Tensor

    def __init__(self, features: int, body: nn.Module) -> None:
        super().__init__()
        # Identity statistics until `fit_statistics`; buffers so they travel in state_dict.
        self.register_buffer("x_mean", torch.zeros(features))
        self.register_buffer("x_std", torch.ones(features))
        self.register_buffer("y_mean", torch.zeros(1))
        self.register_buffer("y_std", torch.ones(1))
        self.body = body

    @classmethod
    def kwargs_for(cls, x_shape: tuple[int, ...], num_classes: int) -> dict[str, int]:
        return {"features": x_shape[1]}

    def input_shape(self) -> tuple[int, ...]:
        return (self.x_mean.shape[0],)

    @torch.no_grad()
    def fit_statistics(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Stores the column mean and (population) std of the training inputs and targets."""
        for name, values in (("x", x), ("y", y)):
            std = values.std(dim=0, unbiased=False)
            # A constant column would divide by zero; leave it unscaled instead.
            std = torch.where(std > 0, std, torch.ones_like(std))
            getattr(self, f"{name}_mean").copy_(values.mean(dim=0))
            getattr(self, f"{name}_std").copy_(std)

    def target(self, y: torch.Tensor) -> torch.Tensor:
        return (y - self.y_mean) / self.y_std

    def forward_train(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.body((x - self.x_mean) / self.x_std)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_train(x) * self.y_std + self.y_mean

    def objective(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return nn.functional.mse_loss(output, target)

    @torch.no_grad()
    def metric(self, x: torch.Tensor, y: torch.Tensor) -> float:
        """RMSE in target units."""
        return math.sqrt(float(nn.functional.mse_loss(self(x), y)))


class LinearRegressor(_Regressor):
    """`linear`: Dense(1) on the normalised inputs."""

    def __init__(self, features: int = 1) -> None:  # the default loads configs without kwargs
        super().__init__(features, nn.Linear(features, 1))


class MLPRegressor(_Regressor):
    """`mlp`: Dense(64, relu) -> Dense(64, relu) -> Dense(1) on the normalised inputs."""

    def __init__(self, features: int) -> None:
        body = nn.Sequential(
            nn.Linear(features, 64),
            nn.ReLU(),
            nn.Linear(64, 64),
            nn.ReLU(),
            nn.Linear(64, 1),
        )
        super().__init__(features, body)


class ConvClassifier(TrainableModule):
    """`cnn`: Conv(16, 3x3, same, relu) -> MaxPool(2) -> Conv(32, 3x3, same, relu) -> MaxPool(2)
    -> Flatten -> Dense(64, relu) -> Dense(classes), trained on logits, served as softmax.

    Inputs arrive NHWC, the protocol's (and TensorFlow's) layout, and are permuted to NCHW
    here. Flatten therefore runs over (C, H, W) rather than Keras's (H, W, C): the same layer,
    its weights in another order.
    """

    def __init__(self, height: int, width: int, channels: int, classes: int) -> None:
        super().__init__()
        self._input_shape = (height, width, channels)
        self.body = nn.Sequential(
            nn.Conv2d(channels, 16, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(32 * (height // 4) * (width // 4), 64),
            nn.ReLU(),
            nn.Linear(64, classes),
        )

    @classmethod
    def kwargs_for(cls, x_shape: tuple[int, ...], num_classes: int) -> dict[str, int]:
        _, height, width, channels = x_shape
        return {"height": height, "width": width, "channels": channels, "classes": num_classes}

    def input_shape(self) -> tuple[int, ...]:
        return self._input_shape

    def forward_train(self, x: torch.Tensor) -> torch.Tensor:
        """Logits [N, classes] of NHWC images."""
        out: torch.Tensor = self.body(x.permute(0, 3, 1, 2))
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class probabilities [N, classes]."""
        return torch.softmax(self.forward_train(x), dim=1)

    def objective(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(output, target)

    @torch.no_grad()
    def metric(self, x: torch.Tensor, y: torch.Tensor) -> float:
        """Accuracy in [0, 1]."""
        return float((self.forward_train(x).argmax(dim=1) == y).float().mean())


ARCHITECTURES: dict[str, type[TrainableModule]] = {
    "linear": LinearRegressor,
    "mlp": MLPRegressor,
    "cnn": ConvClassifier,
}
