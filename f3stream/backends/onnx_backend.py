"""ONNX export of the streaming steps, and an ONNX Runtime engine that runs them.

Each stateful step is exported with its state tensors as explicit named inputs (the torch state
keys) and outputs (``next.<key>``), and with dynamic batch and time axes, so one graph serves a
1-frame stream step and a whole-block offline pass alike. ``full.onnx`` is a stateless
whole-sequence graph (waveform -> latents, representations, reconstruction) for batch jobs.

Exports land in a cache directory keyed by a hash of the weights, config and torch version (or
in a directory you name); every file is written atomically and the manifest last, so an
interrupted export is never mistaken for a complete one.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..alignment import align_decoded
from ..errors import F3StreamError
from ..fileio import atomic_path, atomic_write_bytes
from ..model import F3Model
from .base import NumpyStateEngine, State

FORMAT = "f3stream-onnx"
FORMAT_VERSION = 3  # 2: float64 spectral features in the encoder graphs; 3: level feature
OPSET = 17
GRAPHS = ("encode_step", "represent_step", "decode_step", "full")


def default_cache_dir() -> Path:
    """``$F3STREAM_CACHE_DIR/onnx`` or ``~/.cache/f3stream/onnx``."""
    root = os.environ.get("F3STREAM_CACHE_DIR")
    base = Path(root) if root else Path(os.environ.get("XDG_CACHE_HOME",
                                                       Path.home() / ".cache")) / "f3stream"
    return base / "onnx"


def model_key(model: F3Model, exporter: str = "torchscript") -> str:
    """Identifies an export: same weights + config + torch + exporter -> same graphs."""
    h = hashlib.sha256()
    h.update(json.dumps(model.cfg.to_dict(), sort_keys=True).encode())
    h.update(f"{torch.__version__}|{exporter}|{OPSET}|{FORMAT_VERSION}".encode())
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().float().contiguous().numpy().tobytes())
    return h.hexdigest()[:20]


# -- export wrappers: dict states <-> positional tensors -----------------------------------
class _EncodeStep(nn.Module):
    def __init__(self, model: F3Model, keys: list[str]):
        super().__init__()
        self.model, self.keys = model, keys

    def forward(self, wav, *state):
        z, s = self.model.encoder.step(wav, dict(zip(self.keys, state)))
        z = self.model.bottleneck(z, perturb=False)
        return (z, *[s[k] for k in self.keys])


class _RepresentStep(nn.Module):
    def __init__(self, model: F3Model, keys: list[str]):
        super().__init__()
        self.model, self.keys = model, keys

    def forward(self, z, *state):
        r, s = self.model.representation.step(z, dict(zip(self.keys, state)))
        return (r, *[s[k] for k in self.keys])


class _DecodeStep(nn.Module):
    def __init__(self, model: F3Model, keys: list[str]):
        super().__init__()
        self.model, self.keys = model, keys

    def forward(self, z, *state):
        y, s = self.model.decoder.step(z, dict(zip(self.keys, state)))
        return (y, *[s[k] for k in self.keys])


class _Full(nn.Module):
    """Whole clip from a fresh state: the decoder tail is appended and the overlap-add delay
    removed, so ``audio`` is aligned with ``wav``."""

    def __init__(self, model: F3Model):
        super().__init__()
        self.model = model

    def forward(self, wav):
        m = self.model
        b = wav.shape[0]
        z, r, _ = m.encode_step(wav, m.init_encode_state(b, True, wav.device))
        dec = m.init_decode_state(b, wav.device)
        y, dec = m.decode_step(z, dec)
        return z, r, align_decoded(y, m.decode_tail(dec), m.cfg.autoencoder.decoder_delay)


def _export_one(module: nn.Module, args: tuple, path: Path, inputs: list[str],
                outputs: list[str], dynamic: dict[str, dict[int, str]], exporter: str) -> None:
    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "torchscript":
            torch.onnx.export(module, args, str(tmp), input_names=inputs, output_names=outputs,
                              dynamic_axes=dynamic, opset_version=OPSET, dynamo=False)
        elif exporter == "dynamo":
            dims: dict[str, Any] = {}

            def dim(name):
                return dims.setdefault(name, torch.export.Dim(name.replace(".", "_"),
                                                              max=1 << 20))
            specs = [{ax: dim(n) for ax, n in dynamic.get(i, {}).items()} for i in inputs]
            shapes = (specs[0], tuple(specs[1:])) if len(inputs) > 1 else (specs[0],)
            prog = torch.onnx.export(module, args, input_names=inputs, output_names=outputs,
                                     dynamic_shapes=shapes, dynamo=True, verbose=False)
            prog.save(str(tmp))
        else:
            raise F3StreamError(f"unknown ONNX exporter {exporter!r}: use 'torchscript' or "
                                "'dynamo'")


def export_onnx(model: F3Model, out_dir: str | os.PathLike, exporter: str = "torchscript"
                ) -> Path:
    """Writes the step graphs, ``full.onnx`` and ``manifest.json`` into ``out_dir``."""
    out = Path(out_dir)
    if next(model.parameters()).device.type != "cpu":
        raise F3StreamError("export_onnx needs the model on the CPU")
    was_training = model.training
    try:
        return _export_all(model.eval(), out, exporter)
    finally:
        model.train(was_training)  # the exporter toggles modes; leave the caller's model as is


def _export_all(model: F3Model, out: Path, exporter: str) -> Path:
    for pkg in ("onnx",) + (("onnxscript",) if exporter == "dynamo" else ()):
        try:
            __import__(pkg)
        except ImportError as e:
            from . import missing_package
            raise missing_package("onnx", pkg, e) from None
    ae = model.cfg.autoencoder
    hop = ae.hop_length
    graphs: dict[str, Any] = {}
    specs = [
        ("encode_step", _EncodeStep, model.encoder.init_state(1), "wav",
         torch.zeros(1, 2 * hop), "latents", {1: "samples"}, {1: "frames"}),
        ("represent_step", _RepresentStep, model.representation.init_state(1), "latents",
         torch.zeros(1, 2, ae.latent_dim), "representations", {1: "frames"}, {1: "frames"}),
        ("decode_step", _DecodeStep, model.decoder.init_state(1), "latents",
         torch.zeros(1, 2, ae.latent_dim), "audio", {1: "frames"}, {1: "samples"}),
    ]
    with torch.no_grad():
        for name, wrapper, state, in_name, example, out_name, in_ax, out_ax in specs:
            keys = list(state)
            outputs = [out_name] + [f"next.{k}" for k in keys]
            dyn = {in_name: {0: "batch", **in_ax}, out_name: {0: "batch", **out_ax}}
            dyn.update({k: {0: "batch"} for k in keys})
            dyn.update({f"next.{k}": {0: "batch"} for k in keys})
            _export_one(wrapper(model, keys).eval(), (example, *state.values()), out / f"{name}.onnx",
                        [in_name] + keys, outputs, dyn, exporter)
            graphs[name] = {"file": f"{name}.onnx", "input": in_name, "output": out_name,
                            "state": keys}
        _export_one(_Full(model).eval(), (torch.zeros(1, 3 * hop),), out / "full.onnx", ["wav"],
                    ["latents", "representations", "audio"],
                    {"wav": {0: "batch", 1: "samples"}, "latents": {0: "batch", 1: "frames"},
                     "representations": {0: "batch", 1: "frames"},
                     "audio": {0: "batch", 1: "samples"}}, exporter)
        graphs["full"] = {"file": "full.onnx", "input": "wav",
                          "output": ["latents", "representations", "audio"], "state": []}
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "opset": OPSET,
                "exporter": exporter, "key": model_key(model, exporter),
                "torch": torch.__version__, "config": model.cfg.to_dict(), "graphs": graphs}
    atomic_write_bytes(out / "manifest.json", (json.dumps(manifest, indent=2) + "\n").encode())
    return out


def _step_modules(model: F3Model) -> dict[str, nn.Module]:
    """The module each step graph runs, whose declared state layout is the graph's state."""
    return {"encode_step": model.encoder, "represent_step": model.representation,
            "decode_step": model.decoder}


def _state_layout_matches(manifest: dict, model: F3Model) -> bool:
    """Whether an export's state inputs are the layout the model's modules declare now (an
    export made by code with another layout is re-made, not fed the wrong keys)."""
    return all(manifest["graphs"][g]["state"] == list(m.state_spec())
               for g, m in _step_modules(model).items())


def _read_manifest(path: Path) -> dict | None:
    try:
        data = json.loads((path / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        return None
    if not all((path / data["graphs"][g]["file"]).is_file() for g in GRAPHS):
        return None
    return data


class OnnxEngine(NumpyStateEngine):
    """ONNX Runtime engine over exported step graphs (exported on first use, then cached).

    Options: ``export_dir`` (use/write this directory instead of the cache), ``cache_dir``,
    ``exporter`` ("torchscript" or "dynamo"), ``threads`` (ORT intra-op threads; default:
    ``torch.get_num_threads()``), ``providers`` (ORT execution providers).
    """

    name = "onnx"

    def __init__(self, model: F3Model, device: torch.device | None = None, *,
                 export_dir: str | os.PathLike | None = None,
                 cache_dir: str | os.PathLike | None = None, exporter: str = "torchscript",
                 threads: int | None = None, providers: list[str] | None = None):
        import onnxruntime as ort

        super().__init__(model)
        if next(model.parameters()).device.type != "cpu":
            model = copy.deepcopy(model).cpu()  # export from a CPU copy; ORT picks the device
        key = model_key(model, exporter)
        path = Path(export_dir) if export_dir else Path(cache_dir or default_cache_dir()) / key
        manifest = _read_manifest(path)
        if (manifest is None or manifest.get("key") != key
                or not _state_layout_matches(manifest, model)):
            export_onnx(model, path, exporter)
            manifest = _read_manifest(path)
        self.export_dir = path
        self.manifest = manifest
        if providers is None:
            available = ort.get_available_providers()
            if device is not None and torch.device(device).type == "cuda":
                if "CUDAExecutionProvider" not in available:
                    raise F3StreamError("the onnx backend on CUDA needs onnxruntime-gpu "
                                        "(CUDAExecutionProvider is not available); use "
                                        "device='cpu' or pip install onnxruntime-gpu")
                providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
            else:
                providers = ["CPUExecutionProvider"]
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or torch.get_num_threads()
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        self.sessions = {g: ort.InferenceSession(str(path / manifest["graphs"][g]["file"]),
                                                 opts, providers=providers)
                         for g in GRAPHS}
        self.providers = providers
        self._keys = {g: manifest["graphs"][g]["state"] for g in GRAPHS}
        self._latent_dim = model.cfg.autoencoder.latent_dim
        self._rep_dim = model.cfg.representation.output_dim

    def _run(self, graph: str, x: np.ndarray, state: State, prefix: str = ""
             ) -> tuple[np.ndarray, State]:
        g = self.manifest["graphs"][graph]
        keys = self._keys[graph]
        feeds = {g["input"]: np.ascontiguousarray(x, dtype=np.float32)}
        feeds.update({k: state[prefix + k] for k in keys})
        outs = self.sessions[graph].run(None, feeds)
        new = dict(state)
        new.update({prefix + k: v for k, v in zip(keys, outs[1:])})
        return outs[0], new

    def encode_step(self, wav, state):
        wav = np.asarray(wav, dtype=np.float32)
        bsz = wav.shape[0]
        with_reps = self.has_representations(state)
        if wav.shape[1] == 0:
            return (np.zeros((bsz, 0, self._latent_dim), np.float32),
                    np.zeros((bsz, 0, self._rep_dim), np.float32) if with_reps else None, state)
        z, state = self._run("encode_step", wav, state, F3Model.ENCODER_STATE + ".")
        reps = None
        if with_reps:
            reps, state = self._run("represent_step", z, state,
                                    F3Model.REPRESENTATION_STATE + ".")
        return z, reps, state

    def represent_step(self, z, state):
        z = np.asarray(z, dtype=np.float32)
        if z.shape[1] == 0:
            return np.zeros((z.shape[0], 0, self._rep_dim), np.float32), state
        return self._run("represent_step", z, state)

    def decode_step(self, z, state):
        z = np.asarray(z, dtype=np.float32)
        if z.shape[1] == 0:
            return np.zeros((z.shape[0], 0), np.float32), state
        return self._run("decode_step", z, state)

    def run_full(self, wav: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Whole clips ``[B, T*hop]`` -> (latents, representations, aligned audio)."""
        z, r, y = self.sessions["full"].run(None, {"wav": np.ascontiguousarray(wav, np.float32)})
        return z, r, y
