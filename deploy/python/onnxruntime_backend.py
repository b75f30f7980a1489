"""A Triton "onnxruntime" backend written in Python, for the ``tritonserver`` bundled in PyPI's nvidia-pytriton.

That server ships only the Python backend, so a standard model repository whose models say
``platform: "onnxruntime_onnx"`` (or ``backend: "onnxruntime"``) and have no ``model.py`` would not load
("unable to find backend library for backend 'onnxruntime'"). Installed as ``<backend-directory>/onnxruntime/model.py``,
this file is a Triton *Python-based backend*: Triton finds no ``libtriton_onnxruntime.so``, falls back to this
``model.py`` (``runtime: "model.py"``) and runs it in the Python backend's stub, once per model instance, with
``args["model_repository"]`` = the model's directory. The repository itself is served unchanged.

What it does, like the real ONNX Runtime backend for the usual cases:

* loads ``<model dir>/<version>/<default_model_filename or model.onnx>`` (a directory of that name: its
  ``model.onnx``) into an onnxruntime CPU session; ``parameters`` ``intra_op_thread_count`` (default 1) and
  ``inter_op_thread_count`` set its thread pools;
* checks at load that every configured input/output exists in the ONNX graph with the same data type and a
  compatible rank, and that every ONNX input is configured (there is no auto-complete of missing inputs/outputs);
* per request: feeds the configured inputs, runs the session for the requested outputs (all configured outputs if
  none were requested) and returns them with the configured data types; a failing request gets an error response
  naming the model, the other requests are unaffected.

``reshape`` needs nothing here: Triton's core applies it on both sides for every backend (checked with this server).
A backend receives an input in its ``reshape`` shape (the batch dim kept, ``-1`` filled from the request's variable
dims in order) and its outputs, in the ``reshape`` shape the ONNX model produces, are reported to the client with
the configured ``dims``. So ``reshape`` (else ``dims``), plus the batch dim when ``max_batch_size > 0``, is what the
ONNX model sees, and that is what the load-time check compares with the graph.

Requests are run one by one (no merging of dynamically batched requests into one session call); data types are
those numpy and onnxruntime share (no BF16); STRING tensors are UTF-8 text.
"""
import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

# onnxruntime's element types -> Triton's.
ORT_TO_TRITON = {
    "tensor(float)": "TYPE_FP32",
    "tensor(float16)": "TYPE_FP16",
    "tensor(double)": "TYPE_FP64",
    "tensor(int8)": "TYPE_INT8",
    "tensor(int16)": "TYPE_INT16",
    "tensor(int32)": "TYPE_INT32",
    "tensor(int64)": "TYPE_INT64",
    "tensor(uint8)": "TYPE_UINT8",
    "tensor(uint16)": "TYPE_UINT16",
    "tensor(uint32)": "TYPE_UINT32",
    "tensor(uint64)": "TYPE_UINT64",
    "tensor(bool)": "TYPE_BOOL",
    "tensor(string)": "TYPE_STRING",
}


class _Tensor:
    """One configured input or output: name, Triton and numpy data type, and the dims the ONNX model sees (its
    ``reshape``, else its ``dims``; without the batch dim)."""

    def __init__(self, cfg, kind):
        self.name = cfg["name"]
        self.kind = kind
        self.optional = bool(cfg.get("optional", False))
        self.triton_type = cfg["data_type"]
        if self.triton_type not in pb_utils.TRITON_STRING_TO_NUMPY:
            raise ValueError(f"{kind} '{self.name}': data type {self.triton_type} is not supported by this backend")
        self.dtype = pb_utils.triton_string_to_numpy(self.triton_type)
        self.reshaped = "reshape" in cfg
        self.onnx_dims = [int(d) for d in (cfg["reshape"].get("shape", []) if self.reshaped else cfg.get("dims", []))]

    def check(self, node, batched):
        """Raises if the ONNX graph's ``node`` (NodeArg) does not match this configuration."""
        want = ORT_TO_TRITON.get(node.type)
        if want != self.triton_type:
            raise ValueError(
                f"{self.kind} '{self.name}': config data type {self.triton_type} but the ONNX model has {node.type}"
                f" ({want or 'unsupported'})"
            )
        rank = len(self.onnx_dims) + (1 if batched else 0)
        if node.shape is not None and len(node.shape) != rank:
            where = "reshape" if self.reshaped else "dims"
            raise ValueError(
                f"{self.kind} '{self.name}': the ONNX model's shape {node.shape} has rank {len(node.shape)}, the"
                f" config's {where}{' plus the batch dim' if batched else ''} rank {rank}"
            )


class TritonPythonModel:
    """Serves one ONNX model with onnxruntime on CPU."""

    def initialize(self, args):
        cfg = json.loads(args["model_config"])
        self.model_name = args["model_name"]
        self.batched = int(cfg.get("max_batch_size", 0)) > 0
        path = os.path.join(
            args["model_repository"], args["model_version"], cfg.get("default_model_filename") or "model.onnx"
        )
        if os.path.isdir(path):
            path = os.path.join(path, "model.onnx")
        params = {k: v.get("string_value", "") for k, v in (cfg.get("parameters") or {}).items()}
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(params.get("intra_op_thread_count") or 1)
        opts.inter_op_num_threads = int(params.get("inter_op_thread_count") or 1)
        try:
            self.session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        except Exception as e:
            raise pb_utils.TritonModelException(f"onnxruntime cannot load {path}: {e}") from None

        self.inputs = [_Tensor(c, "input") for c in cfg.get("input", [])]
        self.outputs = {c["name"]: _Tensor(c, "output") for c in cfg.get("output", [])}
        onnx_in = {n.name: n for n in self.session.get_inputs()}
        onnx_out = {n.name: n for n in self.session.get_outputs()}
        try:
            for t in self.inputs:
                if t.name not in onnx_in:
                    raise ValueError(f"input '{t.name}' is not an input of the ONNX model (it has {sorted(onnx_in)})")
                t.check(onnx_in[t.name], self.batched)
            for t in self.outputs.values():
                if t.name not in onnx_out:
                    has = sorted(onnx_out)
                    raise ValueError(f"output '{t.name}' is not an output of the ONNX model (it has {has})")
                t.check(onnx_out[t.name], self.batched)
            missing = sorted(set(onnx_in) - {t.name for t in self.inputs})
            if missing:
                raise ValueError(f"the ONNX model's inputs {missing} are not in the config (no auto-complete)")
        except ValueError as e:
            raise pb_utils.TritonModelException(f"model '{self.model_name}' does not match {path}: {e}") from None

    def _run(self, request):
        feeds = {}
        for t in self.inputs:
            tensor = pb_utils.get_input_tensor_by_name(request, t.name)
            if tensor is None:
                if t.optional:
                    continue
                raise ValueError(f"input '{t.name}' is missing")
            arr = tensor.as_numpy()
            if t.triton_type == "TYPE_STRING":  # Triton gives bytes, onnxruntime wants str
                strs = [b.decode("utf-8") if isinstance(b, bytes) else str(b) for b in arr.flat]
                arr = np.array(strs, dtype=object).reshape(arr.shape)
            feeds[t.name] = arr
        names = [n for n in request.requested_output_names() if n in self.outputs] or list(self.outputs)
        results = self.session.run(names, feeds)
        out = []
        for name, arr in zip(names, results):
            arr = np.asarray(arr).astype(self.outputs[name].dtype, copy=False)
            out.append(pb_utils.Tensor(name, np.ascontiguousarray(arr)))
        return out

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                responses.append(pb_utils.InferenceResponse(output_tensors=self._run(request)))
            except Exception as e:  # noqa: BLE001 - every failure becomes this request's error response
                msg = f"onnxruntime backend, model '{self.model_name}': {type(e).__name__}: {e}"
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(msg)))
        return responses

    def finalize(self):
        self.session = None
