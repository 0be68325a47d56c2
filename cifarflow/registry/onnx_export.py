"""A version's `model.onnx`: its SavedModel's `serve` endpoint converted by tf2onnx (uint8 `pixels` [N, S, S, 3] →
float32 `probabilities` [N, classes]), scored by onnxruntime alone in a fresh process that never imports TensorFlow
(`python -m cifarflow.registry.onnx_export MODEL.onnx CANARY.npz OUT.npy`), as the smoke test runs it.

    session = onnxruntime.InferenceSession(path)  # path: the version folder's model.onnx
    probabilities = session.run(None, {"pixels": pixels_uint8})[0]
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from cifarflow.files import atomic_path

FILE = "model.onnx"  # in the version folder, beside export/
OPSET = 17


def export_onnx(export_dir: Path, out_path: Path) -> Path:
    """Write `out_path`: the ONNX (opset OPSET) of the SavedModel in `export_dir`, input `pixels`, output
    `probabilities`; tf2onnx's or TensorFlow's errors when it cannot be converted. The network computes in float32
    (training returns it so: `cifarflow.training.airbench_loop.in_float32`)."""
    import tensorflow as tf
    import tf2onnx

    from cifarflow.registry.saved_model import load_export

    exported = load_export(export_dir)
    side = exported.image_size
    with atomic_path(out_path) as partial:
        tf2onnx.convert.from_function(
            tf.function(lambda pixels: exported.endpoint(pixels)),
            input_signature=[tf.TensorSpec([None, side, side, 3], tf.uint8, name="pixels")],
            opset=OPSET,
            custom_op_handlers={"Erfc": (_erfc, [])},
            output_path=str(partial),
        )
    return Path(out_path)


def _erfc(ctx, node, name, args):
    """TF's Erfc (Keras' exact GELU) as 1 − Erf(x): ONNX has Erf, not Erfc."""
    from tf2onnx.utils import make_name

    node.type = "Erf"
    one = ctx.make_const(make_name("one"), np.array(1, np.float32))
    ctx.insert_new_node_on_output("Sub", node.output[0], inputs=[one.output[0], node.output[0]], name=make_name("erfc"))
    return node


def onnx_probabilities(model_path: Path, pixels: np.ndarray) -> np.ndarray:
    """uint8 (N, S, S, 3) → float32 (N, classes) through `model_path` with onnxruntime on the CPU."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    return session.run(["probabilities"], {"pixels": np.asarray(pixels, np.uint8)})[0]


if __name__ == "__main__":
    model_file, canary_path, out_path = sys.argv[1:]
    np.save(out_path, onnx_probabilities(Path(model_file), np.load(canary_path)["pixels"]))
