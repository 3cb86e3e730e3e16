"""KServe's model server with the house-price model (run by a Python that has kserve)."""

import numpy as np
from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer


# Model is untyped here (kserve lives in another environment).
class HousePrice(Model):  # type: ignore[misc]
    def __init__(self) -> None:
        super().__init__("house_price")
        self.ready = True

    def predict(
        self, payload: InferRequest, headers: dict[str, str] | None = None
    ) -> InferResponse:
        sizes = payload.inputs[0].as_numpy()
        output = InferOutput(name="price_k", shape=list(sizes.shape), datatype="FP32")
        output.set_data_from_numpy((sizes * 0.2).astype(np.float32), binary_data=True)
        return InferResponse(model_name=self.name, infer_outputs=[output], response_id=payload.id)


if __name__ == "__main__":
    # Ports come as kserve's own flags (--grpc_port, --http_port), which ModelServer reads.
    ModelServer().start([HousePrice()])
