"""ONNX form of the actor, written directly with ``onnx.helper`` (Gemm + Tanh per layer).

Building the graph by hand keeps it independent of the torch exporter (which in recent torch
versions needs extra packages) and makes it exactly the float actor: y = tanh(x W^T + b) per
layer, float32, dynamic batch dimension.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 13
INPUT_NAME = "observation"
OUTPUT_NAME = "action"


def build_onnx(weights: list[np.ndarray], biases: list[np.ndarray], *,
               metadata: dict[str, str] | None = None) -> onnx.ModelProto:
    nodes, inits = [], []
    x = INPUT_NAME
    for i, (w, b) in enumerate(zip(weights, biases)):
        wn, bn, zn = f"layer{i}.weight", f"layer{i}.bias", f"layer{i}.linear"
        yn = OUTPUT_NAME if i == len(weights) - 1 else f"layer{i}.tanh"
        inits += [numpy_helper.from_array(np.asarray(w, np.float32), wn),
                  numpy_helper.from_array(np.asarray(b, np.float32), bn)]
        nodes += [helper.make_node("Gemm", [x, wn, bn], [zn], name=f"gemm{i}", transB=1),
                  helper.make_node("Tanh", [zn], [yn], name=f"tanh{i}")]
        x = yn
    n_in, n_out = int(weights[0].shape[1]), int(weights[-1].shape[0])
    graph = helper.make_graph(
        nodes, "nanofly_actor",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["batch", n_in])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch", n_out])],
        initializer=inits)
    model = helper.make_model(graph, producer_name="nanofly",
                              opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8  # readable by onnxruntime >= 1.14
    for key, value in (metadata or {}).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, str(value)
    onnx.checker.check_model(model, full_check=True)
    return model


class OnnxRunner:
    """onnxruntime session on one CPU thread: ``runner(obs) -> actions``."""

    def __init__(self, path_or_bytes):
        import onnxruntime as ort
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        src = str(path_or_bytes) if not isinstance(path_or_bytes, (bytes, bytearray)) \
            else bytes(path_or_bytes)
        self.session = ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        obs = np.ascontiguousarray(obs, dtype=np.float32)
        return self.session.run([OUTPUT_NAME], {INPUT_NAME: obs})[0]
