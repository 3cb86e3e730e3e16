"""PyTorch architectures, keyed by the architecture names both frameworks share.

Every module here is rebuilt from `ARCHITECTURES[name](**kwargs)` and then filled from a
`state_dict`, so anything a trained model needs at inference (normalisation statistics
included) must be a parameter or a registered buffer, never a plain attribute.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ARCHITECTURES", "LinearRegressor"]


class LinearRegressor(nn.Module):
    """y = linear((x - x_mean) / x_std) * y_std + y_mean, one feature in, one value out.

    Training happens in the normalised space (see `forward_normalized`): raw house sizes in
    the thousands would make one learning rate wrong for both the slope and the bias.
    """

    x_mean: torch.Tensor
    x_std: torch.Tensor
    y_mean: torch.Tensor
    y_std: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        # Identity statistics until `set_statistics`; buffers so they travel in state_dict.
        self.register_buffer("x_mean", torch.zeros(1))
        self.register_buffer("x_std", torch.ones(1))
        self.register_buffer("y_mean", torch.zeros(1))
        self.register_buffer("y_std", torch.ones(1))
        self.linear = nn.Linear(1, 1)

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        # glorot_uniform / zeros: Keras's Dense defaults, so both frameworks start alike.
        nn.init.xavier_uniform_(self.linear.weight, generator=generator)
        nn.init.zeros_(self.linear.bias)

    @torch.no_grad()
    def set_statistics(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Stores column mean and std of the training inputs and targets."""
        for name, values in (("x", x), ("y", y)):
            std = values.std(dim=0, unbiased=False)
            # A constant column would divide by zero; leave it unscaled instead.
            std = torch.where(std > 0, std, torch.ones_like(std))
            getattr(self, f"{name}_mean").copy_(values.mean(dim=0))
            getattr(self, f"{name}_std").copy_(std)

    def normalize_target(self, y: torch.Tensor) -> torch.Tensor:
        return (y - self.y_mean) / self.y_std

    def forward_normalized(self, x: torch.Tensor) -> torch.Tensor:
        """The prediction in the normalised target space, where the loss is taken."""
        out: torch.Tensor = self.linear((x - self.x_mean) / self.x_std)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_normalized(x) * self.y_std + self.y_mean

    def slope(self) -> float:
        """d output / d input end to end, in the caller's units."""
        return float((self.linear.weight * self.y_std / self.x_std).item())


ARCHITECTURES: dict[str, type[nn.Module]] = {
    "linear": LinearRegressor,
}
