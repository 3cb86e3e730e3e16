"""Converts a SavedModel's serving function to the other runtimes' formats: TFLite and ONNX.

Both conversions start from the same frozen graph: the serving function with its variables
folded into constants. Converting the SavedModel itself (`TFLiteConverter.from_saved_model`)
keeps the variables as READ_VARIABLE ops, and TF 2.21's TFLite runtime then reads garbage
(341 thousand, or 1e31, for every house size); a frozen graph has nothing left to read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import tensorflow as tf
import tf2onnx
from tensorflow.python.framework.convert_to_constants import (
    convert_variables_to_constants_v2,
)
from tensorflow.python.util import deprecation

from serving.errors import RepositoryError

__all__ = ["ONNX_OPSET", "to_onnx", "to_tflite"]

ONNX_OPSET = 17


@dataclass(frozen=True, slots=True)
class _Frozen:
    """The serving function without variables, and the protocol's names for its tensors."""

    function: Any  # a ConcreteFunction taking one tensor and returning a list of one
    input_name: str
    input_spec: tf.TensorSpec
    output_name: str


def _freeze(function: Any) -> _Frozen:
    """`function` is a SavedModel's serving signature; the caller keeps the loaded SavedModel
    alive while this runs (the function holds its variables weakly)."""
    _, inputs = function.structured_input_signature
    outputs = function.structured_outputs
    if len(inputs) != 1 or len(outputs) != 1:
        raise RepositoryError(
            f"the serving signature has {len(inputs)} inputs and {len(outputs)} outputs; "
            "exports take exactly one of each"
        )
    ((input_name, input_spec),) = inputs.items()
    (output_name,) = outputs
    return _Frozen(convert_variables_to_constants_v2(function), input_name, input_spec, output_name)


def to_tflite(function: Any) -> bytes:
    """A TFLite flatbuffer whose `serving_default` signature has the same input and output
    names as `function`, with a dynamic batch dimension."""
    frozen = _freeze(function)

    def serve(x: tf.Tensor) -> dict[str, tf.Tensor]:
        # The frozen function answers a list; a dict makes the output name the TFLite
        # signature's output key (otherwise it is `output_0`).
        return {frozen.output_name: frozen.function(x)[0]}

    module = tf.Module()
    spec = tf.TensorSpec(frozen.input_spec.shape, frozen.input_spec.dtype, name=frozen.input_name)
    module.serve = tf.function(serve, input_signature=[spec])
    # Passing the module (`trackable_obj`) takes the converter's current path, which keeps the
    # signature; without it TF logs that the path it falls back to is deprecated.
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [module.serve.get_concrete_function()], module
    )
    content: bytes = converter.convert()
    return content


def to_onnx(function: Any) -> bytes:
    """A serialised ONNX model (opset ONNX_OPSET) with one input and one output named as in
    `function`'s signature, batch dimension dynamic."""
    frozen = _freeze(function)
    graph = frozen.function.graph
    (input_tensor,) = frozen.function.inputs
    (output_tensor,) = frozen.function.outputs
    # tf2onnx calls TF1 graph utilities (convert_variables_to_constants, extract_sub_graph)
    # that log a deprecation notice through TensorFlow's logger on first use: nothing the
    # operator can act on. `silence` only turns those notices off, for this call.
    with deprecation.silence():
        model, _ = tf2onnx.convert.from_graph_def(
            graph.as_graph_def(),
            input_names=[input_tensor.name],
            output_names=[output_tensor.name],
            opset=ONNX_OPSET,
            # `size_sqft:0` and `Identity:0` become the protocol's names; the core matches
            # by position anyway, but other ONNX consumers see the signature's names.
            tensors_to_rename={
                input_tensor.name: frozen.input_name,
                output_tensor.name: frozen.output_name,
            },
        )
    serialised: bytes = model.SerializeToString()
    return serialised
