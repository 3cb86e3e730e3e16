"""MLServer's custom runtime with the house-price model (loaded by `mlserver start`)."""

import numpy as np
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse


# MLModel is untyped here (mlserver lives in another environment).
class HousePrice(MLModel):  # type: ignore[misc]
    async def load(self) -> bool:
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        sizes = NumpyCodec.decode_input(payload.inputs[0])
        prices = (sizes * 0.2).astype(np.float32)
        return InferenceResponse(
            model_name=self.name,
            id=payload.id,
            outputs=[NumpyCodec.encode_output(name="price_k", payload=prices)],
        )
