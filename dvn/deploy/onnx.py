"""Levels of a unit file as ONNX models, checked with ONNX Runtime before they are written.

    info = dvn.deploy.onnx.export_level("deploy.safetensors", task=1, level=2, out="t1l2.onnx")
    manifest = dvn.deploy.onnx.export_all("deploy.safetensors", "onnx/")   # every (task, level)

A level is loaded alone (``load_level``, batch norms that follow a convolution folded into it),
exported with ``torch.onnx.export(..., dynamo=True)`` with a dynamic batch axis, and run in
ONNX Runtime against the unfolded level on random inputs: a model whose outputs differ is never
written. Files are written atomically; their metadata (``dvn.*`` properties) name the task,
level, opset and the unit file's version, so a cached session knows when it is stale.

onnx, onnxscript and onnxruntime are the optional extra ``pip install -e .[deploy]``; without
them these functions raise ``MissingExtra`` saying what to install.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import warnings
from typing import Optional, Union

import torch
import torch.nn as nn

from .unitfile import PathLike, UnitFile

#: the manifest format ``export_all`` writes
MANIFEST_FORMAT = "dvn-onnx-1"
MANIFEST = "manifest.json"
#: the packages of the ``deploy`` extra
EXTRA = ("onnx", "onnxscript", "onnxruntime")


class MissingExtra(ValueError):
    """The ONNX commands need the optional ``deploy`` extra (onnx, onnxscript, onnxruntime)."""


def require(*names: str) -> None:
    """Raises ``MissingExtra`` naming what to install when any of ``names`` (default: the
    whole extra) cannot be imported."""
    import importlib.util
    missing = [n for n in (names or EXTRA) if importlib.util.find_spec(n) is None]
    if missing:
        raise MissingExtra(f"onnx: this needs {', '.join(missing)}, the optional 'deploy' "
                           "extra: pip install -e '.[deploy]' (or pip install onnx onnxscript "
                           "onnxruntime)")


def available() -> bool:
    """Whether the ``deploy`` extra is installed."""
    try:
        require()
    except MissingExtra:
        return False
    return True


def session_options(threads: Optional[int] = None):
    """ONNX Runtime options for one level: ``threads`` intra-op threads (default torch's
    count, so that runtimes compare on the same cores), one inter-op thread, no spinning
    (spinning threads steal the cores of everything else on a shared machine), all graph
    optimisations."""
    require("onnxruntime")
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = int(threads or torch.get_num_threads())
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    so.log_severity_level = 3
    return so


def providers(device: Union[str, torch.device] = "cpu") -> list[str]:
    """The execution providers for ``device``: CPU, or CUDA where this onnxruntime has it."""
    require("onnxruntime")
    import onnxruntime as ort
    device = torch.device(device)
    if device.type == "cpu":
        return ["CPUExecutionProvider"]
    if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    raise ValueError(f"device: this onnxruntime cannot run on {device} (providers: "
                     f"{', '.join(ort.get_available_providers())}); use --device cpu or "
                     "another runtime")


def session(model: Union[bytes, str], *, threads: Optional[int] = None,
            device: Union[str, torch.device] = "cpu"):
    """An ``onnxruntime.InferenceSession`` on a model (bytes or a path) with
    ``session_options(threads)``."""
    import onnxruntime as ort
    return ort.InferenceSession(model, session_options(threads), providers=providers(device))


def run_session(sess, x: torch.Tensor, input_name: Optional[str] = None) -> torch.Tensor:
    """Runs a one-input session on a torch tensor; the output as a torch tensor on x's device.
    ``input_name``: the session's input, when the caller has looked it up once."""
    inp = input_name or sess.get_inputs()[0].name
    device = x.device
    if x.device.type != "cpu" or x.dtype != torch.float32 or x.requires_grad \
            or not x.is_contiguous():
        x = x.detach().to("cpu", torch.float32).contiguous()
    y = torch.from_numpy(sess.run(None, {inp: x.numpy()})[0])
    return y if device.type == "cpu" else y.to(device)


def to_onnx(model: nn.Module, example: torch.Tensor, *, opset: Optional[int] = None,
            metadata: Optional[dict[str, str]] = None):
    """``model`` as an ONNX ``ModelProto`` through ``torch.onnx.export(..., dynamo=True)``, its
    first axis dynamic (``batch``), optimised (constant folding), with ``metadata`` as
    properties. The exporter's progress lines are kept off the terminal."""
    require()
    import onnx
    kw = {} if opset is None else {"opset_version": opset}
    out, err = io.StringIO(), io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(out), \
            contextlib.redirect_stderr(err), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(model, (example,), dynamo=True, verbose=False,
                                    input_names=["x"], output_names=["logits"],
                                    dynamic_shapes={"x": {0: torch.export.Dim("batch")}}, **kw)
        program.optimize()
    proto = program.model_proto
    props = {"dvn.opset": str(opset_of(proto)), "dvn.torch": torch.__version__,
             **(metadata or {})}
    onnx.helper.set_model_props(proto, props)
    return proto


def opset_of(proto) -> int:
    """The default-domain opset an ONNX model imports."""
    return next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))


def check(proto_bytes: bytes, reference: nn.Module, example: torch.Tensor, *,
          rtol: float = 1e-3, atol: float = 1e-4) -> float:
    """Runs the serialized model in ONNX Runtime at the example's batch and at batch 1 against
    ``reference``; returns the largest absolute difference, raises ValueError when any output
    differs by more than ``atol + rtol * |reference|``."""
    sess = session(proto_bytes, threads=1)
    worst = 0.0
    for x in (example, example[:1]):
        with torch.no_grad():
            want = reference(x).float().cpu()
        got = run_session(sess, x).cpu()
        if got.shape != want.shape:
            raise ValueError(f"export: onnxruntime's output has shape {tuple(got.shape)}, the "
                             f"model's {tuple(want.shape)}")
        diff = (got - want).abs()
        worst = max(worst, float(diff.max()))
        if not bool((diff <= atol + rtol * want.abs()).all()):
            raise ValueError(f"export: onnxruntime's output differs from the model's by up to "
                             f"{float(diff.max()):.3g}; nothing written")
    return worst


def export_level(path: PathLike, task: int, level: int, out: PathLike, *,
                 opset: Optional[int] = None, check_batch: int = 3, seed: int = 0,
                 extra_metadata: Optional[dict[str, str]] = None) -> dict:
    """Task ``task`` at level ``level`` of a unit file as an ONNX file at ``out`` (batch norms
    that follow a convolution folded, dynamic batch axis), checked in ONNX Runtime against the
    level before it is written (atomically). Returns what the manifest records of it."""
    from dvn_kernels.files import atomic_write
    from .deployment import load_level
    from .profiles import file_id
    require()
    with UnitFile(path) as file:
        model = file.skeleton
        model.networks.check(task, level)
        size, channels = model.input_sizes[task - 1], model.image_channels[task - 1]
        described = file.tasks[task - 1] if file.tasks else None
    plain = load_level(path, task, level)
    folded = load_level(path, task, level, fold_bn=True)
    g = torch.Generator().manual_seed(seed)
    example = torch.randn(check_batch, channels, size, size, generator=g)
    meta = {"dvn.task": str(task), "dvn.level": str(level), "dvn.source": os.path.basename(
        os.fspath(path)), "dvn.source_id": file_id(path), **(extra_metadata or {})}
    proto = to_onnx(folded, example, opset=opset, metadata=meta)
    data = proto.SerializeToString()
    error = check(data, plain, example)
    atomic_write(out, lambda f: f.write(data))
    info = {"task": task, "level": level,
            "parameters": sum(p.numel() for p in plain.parameters()),
            "file": os.path.basename(os.fspath(out)), "bytes": len(data),
            "opset": opset_of(proto), "input": {"name": "x", "shape": ["batch", channels,
                                                                        size, size]},
            "output": {"name": "logits"}, "max_abs_error": error}
    if described is not None:
        info["task_name"] = described.name
        info["normalisation"] = {"mean": list(described.mean), "std": list(described.std),
                                 "native_size": list(described.native_size),
                                 "native_channels": described.native_channels,
                                 "scale": "pixels / 255, then (v - mean) / std"}
        info["labels"] = list(described.classes) if described.classes else None
    return info


def export_all(path: PathLike, out: PathLike, *, opset: Optional[int] = None,
               progress=None) -> dict:
    """Every (task, level) of a unit file as ``out/t<task>_l<level>.onnx``, then
    ``out/manifest.json`` (task, level, parameters, file, input size, normalisation, labels,
    opset); returns the manifest."""
    from dvn_kernels.files import atomic_write
    from .profiles import file_id
    require()
    with UnitFile(path) as file:
        configs = list(file.skeleton.networks.configs())
    os.makedirs(out, exist_ok=True)
    models = []
    for task, level in configs:
        if progress:
            progress(f"task {task} level {level}")
        models.append(export_level(path, task, level, os.path.join(out, level_name(task, level)),
                                   opset=opset))
    manifest = {"format": MANIFEST_FORMAT, "source": os.path.basename(os.fspath(path)),
                "source_id": file_id(path), "torch": torch.__version__,
                "opset": models[0]["opset"], "dtype": "float32", "models": models}
    text = json.dumps(manifest, indent=1) + "\n"
    atomic_write(os.path.join(out, MANIFEST), lambda f: f.write(text.encode()))
    return manifest


def level_name(task: int, level: int) -> str:
    """The file name of one level's export."""
    return f"t{task}_l{level}.onnx"


def cache_path(path: PathLike, task: int, level: int) -> str:
    """Where the ONNX Runtime session of a unit file's level is cached: a folder beside the
    unit file, ``<name>.onnx/t<task>_l<level>.onnx``."""
    path = os.path.abspath(os.fspath(path))
    stem = os.path.splitext(os.path.basename(path))[0]
    return os.path.join(os.path.dirname(path), f"{stem}.onnx", level_name(task, level))


def cached_session(path: PathLike, task: int, level: int, *, threads: Optional[int] = None,
                   device: Union[str, torch.device] = "cpu"):
    """An ONNX Runtime session on a level of a unit file: from its cached export when that was
    made from this version of the file (size and modification time), else exported (and
    checked) again first. Returns (session, whether it was exported now)."""
    from .profiles import file_id
    require()
    where = cache_path(path, task, level)
    if os.path.isfile(where):
        try:
            sess = session(where, threads=threads, device=device)
            if sess.get_modelmeta().custom_metadata_map.get("dvn.source_id") == file_id(path):
                return sess, False
        except Exception:  # noqa: BLE001 - a damaged cache entry is simply made again
            pass
    export_level(path, task, level, where)
    return session(where, threads=threads, device=device), True
