"""PyTorchBackend: the same numbers as the module, batches split at max_batch, CUDA graphs on a GPU."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from lipsync.client import contract
from lipsync.client.backends.base import BackendError
from lipsync.client.backends.pytorch import PyTorchBackend, graph_buckets
from lipsync.client.networks.checkpoints import save_checkpoint
from lipsync.client.networks.wav2lip import Wav2Lip, Wav2LipConfig

pytestmark = pytest.mark.unit

CONFIG = Wav2LipConfig(width=0.25)


def batch(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    mel = rng.uniform(-4, 4, contract.MEL_INPUT.batched_shape(n)).astype(np.float32)
    faces = rng.uniform(0, 1, contract.FACE_INPUT.batched_shape(n)).astype(np.float32)
    return mel, faces


def reference(model: Wav2Lip, mel: np.ndarray, faces: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return model(torch.from_numpy(mel), torch.from_numpy(faces)).numpy()


class RecordingBackend(PyTorchBackend):
    """Records the batch sizes that reach `_infer_batch`."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.seen: list[int] = []

    def _infer_batch(self, mel: np.ndarray, faces: np.ndarray) -> np.ndarray:
        self.seen.append(mel.shape[0])
        return super()._infer_batch(mel, faces)


@pytest.fixture(scope="module")
def model() -> Wav2Lip:
    torch.manual_seed(0)
    return Wav2Lip(CONFIG).eval()


def test_output_equals_the_module(model):
    backend = PyTorchBackend(model=model)
    assert backend.name == "pytorch"
    mel, faces = batch(5)
    out = backend.infer(mel, faces)
    assert out.dtype == np.float32 and out.shape == (5, 3, 96, 96)
    np.testing.assert_allclose(out, reference(model, mel, faces), atol=1e-6, rtol=0)


def test_batches_above_max_batch_are_split(model):
    backend = RecordingBackend(model=model, max_batch=3)
    mel, faces = batch(8, seed=1)
    out = backend.infer(mel, faces)
    assert backend.seen == [3, 3, 2]
    np.testing.assert_allclose(out, reference(model, mel, faces), atol=1e-5, rtol=0)
    # Each chunk lands in its own rows: chunk k equals running that chunk alone.
    np.testing.assert_allclose(out[6:], reference(model, mel[6:], faces[6:]), atol=1e-6, rtol=0)


def test_loads_a_checkpoint(tmp_path, model):
    path = save_checkpoint(tmp_path / "g.pt", model=model, config=CONFIG, step=7)
    backend = PyTorchBackend(path)
    assert backend.model is not None and backend.model.config == CONFIG
    mel, faces = batch(2, seed=2)
    np.testing.assert_allclose(backend.infer(mel, faces), reference(model, mel, faces), atol=1e-6, rtol=0)


async def test_infer_async(model):
    backend = PyTorchBackend(model=model)
    mel, faces = batch(2, seed=3)
    out = await backend.infer_async(mel, faces)
    np.testing.assert_allclose(out, reference(model, mel, faces), atol=1e-6, rtol=0)


def test_bad_arguments_and_inputs(model):
    with pytest.raises(ValueError, match="exactly one"):
        PyTorchBackend()
    with pytest.raises(ValueError, match="exactly one"):
        PyTorchBackend("g.pt", model=model)
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        PyTorchBackend(model=model, fp16=True)
    with pytest.raises(ValueError, match="cuda_graphs needs a CUDA device"):
        PyTorchBackend(model=model, cuda_graphs=True)
    with pytest.raises(ValueError, match="max_batch"):
        PyTorchBackend(model=model, max_batch=0)
    backend = PyTorchBackend(model=model)
    mel, faces = batch(2)
    with pytest.raises(ValueError, match=contract.FACE_INPUT.name):
        backend.infer(mel, faces[:, :3])
    backend.close()
    with pytest.raises(BackendError, match="closed"):
        backend.infer(mel, faces)


def test_graph_buckets():
    assert graph_buckets(32) == (1, 2, 4, 8, 16, 32)
    assert graph_buckets(1) == (1,)
    assert graph_buckets(12) == (1, 2, 4, 8, 12)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_graphs_fp16_match_eager():
    torch.manual_seed(0)
    full = Wav2Lip().eval()  # full width: the model the GPU fast path is for
    eager = PyTorchBackend(model=copy.deepcopy(full), device="cuda", fp16=True)
    graphs = RecordingBackend(model=copy.deepcopy(full), device="cuda", fp16=True, cuda_graphs=True, max_batch=16)
    assert graphs.uses_cuda_graphs and sorted(graphs._graphs) == [1, 2, 4, 8, 16]
    assert not eager.uses_cuda_graphs

    # 8 then 3: the 3 rows are padded to the 4-bucket whose 4th row still holds older inputs.
    for n, seed in [(1, 0), (8, 1), (3, 2), (16, 3), (21, 4)]:
        mel, faces = batch(n, seed)
        out = graphs.infer(mel, faces)
        assert out.shape == (n, 3, 96, 96) and out.dtype == np.float32
        np.testing.assert_allclose(out, eager.infer(mel, faces), atol=2e-3, rtol=0)
        np.testing.assert_allclose(out, reference(full, mel, faces), atol=3e-2, rtol=0)
    assert graphs.seen == [1, 8, 3, 16, 16, 5]
    graphs.close()
    eager.close()
