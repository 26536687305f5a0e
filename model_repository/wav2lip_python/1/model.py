"""Triton Python-backend model: the Wav2Lip generator behind the tensors of client/contract.py.

On a CPU it runs the path the `precision` parameter names: model.onnx with ONNX Runtime (fp32),
model_int8.onnx (int8), model.pt in PyTorch bf16 (bf16), or the fastest of them measured at initialize
(auto); with a CUDA GPU and PyTorch it runs model.pt in FP16 with CUDA graphs. Every request of one
execute() call goes through one inference, so the batches Triton's dynamic batcher forms are the
batches the network sees.
"""

import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

# The stub runs Python in isolated mode (PYTHONPATH is ignored): the project must be installed in the
# environment whose `python3` is first on PATH (lipsync-server arranges that) or named by EXECUTION_ENV_PATH.
try:
    from lipsync.client import contract
    from lipsync.client import model_repository as layout
    from lipsync.client.backends import cpu_paths
except ImportError as exc:  # pragma: no cover - only inside a misconfigured Triton stub
    raise ImportError(
        f"the lipsync package is not importable by the Triton Python stub ({exc}); install the project "
        "(`make setup`) into the environment the stub runs in and start tritonserver with `lipsync-server`"
    ) from exc


def _error(message, code=None):
    error = pb_utils.TritonError(message) if code is None else pb_utils.TritonError(message, code)
    return pb_utils.InferenceResponse(output_tensors=[], error=error)


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {key: value["string_value"] for key, value in config.get("parameters", {}).items()}
        version_dir = Path(args["model_repository"]) / args["model_version"]
        self.max_batch = int(config["max_batch_size"])
        self.backend = self._load_backend(params, version_dir, int(args.get("model_instance_device_id", 0)))
        pb_utils.Logger.log_info(f"{args['model_name']}: {self.description}")

    def _load_backend(self, params, version_dir, device_id):
        device = params.get("device", "auto")
        if device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"parameter device must be auto, cpu or cuda, got {device!r}")
        # Checked on every host, so a bad value fails where it is written, not only on the CPU hosts.
        try:
            precision = cpu_paths.check_precision(params.get("precision", "fp32"))
        except ValueError as exc:
            raise ValueError(f"parameter precision: {exc}") from exc
        if device != "cpu" and _cuda_available():
            checkpoint = version_dir / params.get("checkpoint", layout.CHECKPOINT_FILE)
            if not checkpoint.is_file():
                raise FileNotFoundError(f"GPU path needs the checkpoint {checkpoint}; create it with lipsync-export")
            from lipsync.client.backends.pytorch import PyTorchBackend

            self.description = f"PyTorch FP16 with CUDA graphs on cuda:{device_id} from {checkpoint}"
            return PyTorchBackend(
                checkpoint, device=f"cuda:{device_id}", fp16=True, max_batch=self.max_batch, cuda_graphs=True
            )
        if device == "cuda":
            raise RuntimeError("parameter device is 'cuda' but no CUDA device (or no PyTorch) is available")
        artifacts = cpu_paths.CpuArtifacts(
            onnx_fp32=version_dir / params.get("onnx_file", layout.ONNX_FILE),
            onnx_int8=version_dir / params.get("int8_onnx_file", cpu_paths.INT8_ONNX_FILE),
            checkpoint=version_dir / params.get("checkpoint", layout.CHECKPOINT_FILE),
        )
        threads = int(params.get("intra_op_threads", "0")) or None
        # auto measures every path here, with the threads and batch limit it will serve with (about 1 s).
        choice = cpu_paths.choose(precision, artifacts, threads=threads, max_batch=self.max_batch)
        self.description = f"precision {precision}: {choice.describe()}"
        return choice.backend

    def execute(self, requests):
        responses = [None] * len(requests)
        accepted, mels, faces = [], [], []
        for i, request in enumerate(requests):
            if request.is_cancelled():
                responses[i] = _error("request cancelled", pb_utils.TritonError.CANCELLED)
                continue
            try:
                mel = pb_utils.get_input_tensor_by_name(request, contract.MEL_INPUT.name).as_numpy()
                face = pb_utils.get_input_tensor_by_name(request, contract.FACE_INPUT.name).as_numpy()
                contract.check_batch(mel, face)
                if not (np.isfinite(mel).all() and np.isfinite(face).all()):
                    raise ValueError("inputs contain NaN or infinity")
            except Exception as exc:  # a malformed request fails alone, never the whole batch
                responses[i] = _error(f"bad request: {exc}", pb_utils.TritonError.INVALID_ARG)
                continue
            accepted.append(i)
            mels.append(mel)
            faces.append(face)
        if not accepted:
            return responses
        try:
            out = self.backend.infer(np.concatenate(mels), np.concatenate(faces))
        except Exception as exc:
            for i in accepted:
                responses[i] = _error(f"inference failed: {exc}")
            return responses
        splits = np.cumsum([m.shape[0] for m in mels])[:-1]
        for i, part in zip(accepted, np.split(out, splits), strict=True):
            if requests[i].is_cancelled():
                responses[i] = _error("request cancelled", pb_utils.TritonError.CANCELLED)
            else:
                tensor = pb_utils.Tensor(contract.FACE_OUTPUT.name, np.ascontiguousarray(part, dtype=np.float32))
                responses[i] = pb_utils.InferenceResponse(output_tensors=[tensor])
        return responses

    def finalize(self):
        self.backend.close()


def _cuda_available():
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()
