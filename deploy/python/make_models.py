#!/usr/bin/env python3
"""Generates the end-to-end test models as a Triton model repository (no downloads: weights are fixed by seeds).

* ``classifier``: a small image classifier (conv -> relu -> global average pool -> linear -> softmax) whose last
  layer matches prototypes of four synthetic pictures, so a picture of a mug is classified as ``COFFEE MUG``.
* ``classifier_large`` (with ``--large-mb N``): the same network with an extra N-MiB linear layer, to exercise
  streaming a large model through the mount.

Two layouts:

* ``--layout python`` (default): each model is served by Triton's Python backend, whose ``1/model.py`` runs
  onnxruntime on ``1/model.onnx`` read from the repository (the FUSE mount in the tests).
* ``--layout seed``: a standard Triton repository like NVIDIA's ``densenet_onnx`` example: ``platform:
  "onnxruntime_onnx"``, ``max_batch_size: 0``, an input of dims [3, 64, 64] and an output of dims [4], both with a
  ``reshape`` to the ONNX model's [1, 3, 64, 64] and [1, 4], a ``label_filename``, and no ``model.py`` (served by
  Triton's onnxruntime backend, or by ``onnxruntime_backend.py`` installed as a Python-based backend).

``--broken NAME`` adds a model NAME (in the same layout) whose ``1/model.onnx`` is not an ONNX file, so Triton
marks it UNAVAILABLE. Usage: make_models.py OUT_DIR [--layout python|seed] [--large-mb 512] [--broken NAME]
[--input-npy FILE] [--input-json FILE]
"""
import argparse
import json
import os
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

LABELS = ["TEAPOT", "COFFEE MUG", "BANANA", "LAPTOP"]
SIZE = 64  # input pictures are 3 x 64 x 64
FEATURES = 32


def picture(kind: int) -> np.ndarray:
    """A deterministic synthetic 3x64x64 picture of class ``kind`` (values in [0, 1])."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32) / SIZE
    img = np.zeros((3, SIZE, SIZE), np.float32)
    if kind == 0:  # teapot: a wide ellipse with a spout
        img[0] = ((xx - 0.5) ** 2 / 0.12 + (yy - 0.6) ** 2 / 0.05 < 1) * 0.9
        img[1] = ((xx - 0.85) ** 2 + (yy - 0.45) ** 2 < 0.004) * 0.8
    elif kind == 1:  # mug: a tall box with a handle
        img[2] = ((abs(xx - 0.45) < 0.2) & (abs(yy - 0.55) < 0.3)) * 0.95
        img[1] = (abs(np.hypot(xx - 0.7, yy - 0.55) - 0.1) < 0.03) * 0.7
    elif kind == 2:  # banana: a yellow arc
        img[0] = img[1] = (abs(np.hypot(xx - 0.5, yy + 0.2) - 0.7) < 0.06) * 0.9
    else:  # laptop: a screen and a keyboard
        img[1] = ((abs(xx - 0.5) < 0.35) & (yy > 0.2) & (yy < 0.55)) * 0.6
        img[2] = ((abs(xx - 0.5) < 0.4) & (yy > 0.6) & (yy < 0.7)) * 0.8
    return img


def features(conv_w: np.ndarray, img: np.ndarray) -> np.ndarray:
    """What the network computes before its last layer (numpy reference, used to set the prototypes)."""
    k = conv_w.shape[-1]
    pad = np.pad(img, ((0, 0), (1, 1), (1, 1)))
    out = np.zeros((conv_w.shape[0], SIZE, SIZE), np.float32)
    for dy in range(k):
        for dx in range(k):
            patch = pad[:, dy : dy + SIZE, dx : dx + SIZE]
            out += np.einsum("oc,chw->ohw", conv_w[:, :, dy, dx], patch)
    return np.maximum(out, 0).mean(axis=(1, 2))


def build(large_mb: int) -> onnx.ModelProto:
    rng = np.random.default_rng(20261128)
    conv_w = rng.normal(0, 0.5, (FEATURES, 3, 3, 3)).astype(np.float32)
    protos = np.stack([features(conv_w, picture(k)) for k in range(len(LABELS))])
    protos = protos / np.linalg.norm(protos, axis=1, keepdims=True)
    fc_w = (protos.T * 50).astype(np.float32)  # FEATURES x classes: cosine-like template matching
    inits = [numpy_helper.from_array(conv_w, "conv_w"), numpy_helper.from_array(fc_w, "fc_w")]
    nodes = [
        helper.make_node("Conv", ["input", "conv_w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
    ]
    feat = "f"
    if large_mb:
        # An extra linear layer with large_mb MiB of weights whose output nudges the features by a tiny amount:
        # f2 = f + mean(f @ W), so every byte of the big tensor is read and used.
        hidden = large_mb * (1 << 20) // 4 // FEATURES
        big = (rng.standard_normal((FEATURES, hidden), dtype=np.float32) * 1e-4).astype(np.float32)
        inits.append(numpy_helper.from_array(big, "big_w"))
        nodes += [
            helper.make_node("MatMul", ["f", "big_w"], ["h"]),
            helper.make_node("ReduceMean", ["h"], ["hm"], axes=[1], keepdims=1),
            helper.make_node("Add", ["f", "hm"], ["f2"]),
        ]
        feat = "f2"
    nodes += [helper.make_node("MatMul", [feat, "fc_w"], ["logits"]), helper.make_node("Softmax", ["logits"], ["probs"])]
    graph = helper.make_graph(
        nodes,
        "classifier",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [None, len(LABELS)])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    if not large_mb:  # the checker refuses protos over 2 GiB only; skip the copy it makes of big ones
        onnx.checker.check_model(model)
    return model


CONFIG = """name: "{name}"
backend: "python"
max_batch_size: 0
input [ {{ name: "input", data_type: TYPE_FP32, dims: [ -1, 3, {size}, {size} ] }} ]
output [ {{ name: "probs", data_type: TYPE_FP32, dims: [ -1, {classes} ], label_filename: "labels.txt" }} ]
instance_group [ {{ kind: KIND_CPU, count: 1 }} ]
"""

SEED_CONFIG = """name: "{name}"
platform: "onnxruntime_onnx"
max_batch_size: 0
input [
  {{
    name: "input"
    data_type: TYPE_FP32
    format: FORMAT_NCHW
    dims: [ 3, {size}, {size} ]
    reshape {{ shape: [ 1, 3, {size}, {size} ] }}
  }}
]
output [
  {{
    name: "probs"
    data_type: TYPE_FP32
    dims: [ {classes} ]
    reshape {{ shape: [ 1, {classes} ] }}
    label_filename: "labels.txt"
  }}
]
"""

MODEL_PY = '''"""Triton Python backend: runs onnxruntime on the ONNX file next to this script (read from the mount)."""
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        self.session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])

    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "input").as_numpy()
            (probs,) = self.session.run(None, {"input": x.astype(np.float32)})
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("probs", probs.astype(np.float32))]))
        return responses
'''


def write_model(repo: str, name: str, large_mb: int, layout: str = "python", broken: bool = False) -> None:
    d = os.path.join(repo, name)
    os.makedirs(os.path.join(d, "1"), exist_ok=True)
    if broken:  # not an ONNX file: onnxruntime refuses it and Triton marks the model UNAVAILABLE
        with open(os.path.join(d, "1", "model.onnx"), "wb") as f:
            f.write(np.random.default_rng(7).bytes(4096))
    else:
        onnx.save(build(large_mb), os.path.join(d, "1", "model.onnx"))
    if layout == "python":
        with open(os.path.join(d, "1", "model.py"), "w") as f:
            f.write(MODEL_PY)
    with open(os.path.join(d, "config.pbtxt"), "w") as f:
        f.write((CONFIG if layout == "python" else SEED_CONFIG).format(name=name, size=SIZE, classes=len(LABELS)))
    with open(os.path.join(d, "labels.txt"), "w") as f:
        f.write("\n".join(LABELS) + "\n")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--large-mb", type=int, default=0, help="also write classifier_large with this many MiB of weights")
    ap.add_argument("--input-npy", help="write the test input (a mug picture, batch of 1) here")
    ap.add_argument("--input-json", help="write the same input as a KServe V2 JSON inference request (for curl)")
    ap.add_argument("--layout", choices=["python", "seed"], default="python", help="repository layout (see above)")
    ap.add_argument("--broken", metavar="NAME", help="also write a model NAME whose model.onnx is garbage")
    a = ap.parse_args()
    write_model(a.out, "classifier", 0, a.layout)
    if a.large_mb:
        write_model(a.out, "classifier_large", a.large_mb, a.layout)
    if a.broken:
        write_model(a.out, a.broken, 0, a.layout, broken=True)
    if a.input_npy:
        np.save(a.input_npy, picture(1)[None])
    if a.input_json:
        x = picture(1)[None] if a.layout == "python" else picture(1)  # the seed config's input has no batch dim
        req = {"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.flatten().tolist()}]}
        with open(a.input_json, "w") as f:
            json.dump(req, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
