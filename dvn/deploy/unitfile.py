"""Unit-addressable weights on disk: a safetensors file whose tensors are the unit blocks.

Each sliced convolution's weight ``(C_out, C_in, kh, kw)`` is stored as one tensor per
(output unit, input unit) block, ``<layer>.weight@o<a>i<b>`` (``<layer>.weight@o<a>`` when the
input is not split, as in the stems), and its bias per output unit, ``<layer>.bias@o<a>``.
Every other state_dict entry (the batch norms and heads of each (task, level)) keeps its own
name. A block is one contiguous byte range, so a (task, level) reads exactly its blocks: with
safetensors' ``pread`` backend each tensor costs one read of its own bytes, whereas a slice of a
full tensor reads the whole tensor (``pread``) or whole pages of its rows (``mmap``); see
``bench/deploy.py``. The header's metadata holds the format tag, the backbone's spec (rebuilt
on the meta device, holding no memory) and, optionally, each task's input description, all as
JSON. Nothing in the file is code: loading parses JSON and copies bytes.

Digests (format ``dvn-units-2``): the metadata holds a digest of every tensor's bytes (the
first 128 bits of their SHA-256, base64, in the order of the sorted tensor names: 22 bytes of
header per tensor) and the SHA-256 of the header's contents (spec, tasks, those digests, each
tensor's dtype and shape).
Opening a file checks the header's; reading a tensor checks its own, so a level that reads
only its blocks checks only those bytes, and a damaged byte is reported (ValueError naming the
file and the tensor) where a plain safetensors read would return wrong weights. Files of
``dvn-units-1`` (before digests) are read without the checks.

This is the deployment format; the training format, one file of the whole model with one
digest (``dvn.save``, ``dvn-checkpoint-2``), is :mod:`dvn.checkpoint`. ``dvn infer``,
``dvn profile`` and ``dvn serve`` take either (:func:`dvn.deploy.runs.unit_file`).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import threading
from collections.abc import Iterable, Sequence
from typing import Optional, Union

import torch
import torch.nn as nn

from dvn_kernels.files import atomic_write

from ..model.backbones import build
from ..model.conv import SlicedConv2d
from ..model.heads import LevelHeads
from ..model.norm import SlicedBatchNorm2d
from .images import TaskInput

FORMAT = "dvn-units-2"            # with digests of its header and of every tensor
_UNCHECKED = "dvn-units-1"        # written before the digests existed: read without them
PathLike = Union[str, os.PathLike]

#: safetensors dtype codes this format writes and reads
DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16,
          "BF16": torch.bfloat16, "I64": torch.int64}
_DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
_DIGEST_CHARS = 22   # 128 bits in base64, without its padding


def block_key(layer: str, out_unit: int, in_unit: Optional[int], what: str = "weight") -> str:
    """Name of one block of a sliced convolution (``in_unit`` None: input not split)."""
    tail = "" if in_unit is None else f"i{in_unit}"
    return f"{layer}.{what}@o{out_unit}{tail}"


def sliced_convs(model: nn.Module) -> dict[str, SlicedConv2d]:
    """The model's sliced convolutions by name; raises for layouts this format cannot split."""
    convs = {name: m for name, m in model.named_modules() if isinstance(m, SlicedConv2d)}
    for name, conv in convs.items():
        if not conv.out_layout.split:
            raise ValueError(f"model: layer {name} does not split its output channels into "
                             "units; dvn.deploy stores dvn backbones (dvn.wrn, dvn.resnet)")
    return convs


def stem_tasks(model: nn.Module) -> dict[str, int]:
    """Layers used by one task only (the task-specific input stems): name -> task."""
    stems = getattr(model, "stems", None)
    return {} if stems is None else {f"stems.{key}": int(key[1:]) for key in stems}


def private_prefixes(model: nn.Module) -> dict[str, nn.ModuleDict]:
    """The per-(task, level) module dicts (batch norms, heads) by state_dict prefix; their
    entries are named by ``Active.key`` (``t<task>_l<level>``)."""
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, SlicedBatchNorm2d):
            out[f"{name}.norms"] = m.norms
        elif isinstance(m, LevelHeads):
            out[f"{name}.heads"] = m.heads
    return out


def unit_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """The file's tensors: every conv weight (and bias) cut into unit blocks, everything else
    of the state_dict as is; contiguous copies, as safetensors needs."""
    convs = sliced_convs(model)
    state = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    for name, conv in convs.items():
        state.pop(f"{name}.weight")
        bias = state.pop(f"{name}.bias", None)
        o_off = _offsets(conv.out_layout.sizes)
        i_off = _offsets(conv.in_layout.sizes) if conv.in_layout.split else None
        for a, (o0, o1) in o_off.items():
            rows = conv.weight.detach()[o0:o1]
            if i_off is None:
                out[block_key(name, a, None)] = rows.contiguous().clone()
            else:
                for b, (i0, i1) in i_off.items():
                    out[block_key(name, a, b)] = rows[:, i0:i1].contiguous().clone()
            if bias is not None:
                out[block_key(name, a, None, "bias")] = bias.detach()[o0:o1].contiguous().clone()
    for key, value in state.items():
        out[key] = value.detach().contiguous().clone()
    return out


def _offsets(sizes: Sequence[int]) -> dict[int, tuple[int, int]]:
    """1-based unit -> (first channel, one past its last channel)."""
    out, start = {}, 0
    for unit, size in enumerate(sizes, start=1):
        out[unit] = (start, start + size)
        start += size
    return out


def save(model: nn.Module, path: PathLike, *,
         tasks: Optional[Sequence[TaskInput]] = None) -> None:
    """Writes a dvn backbone as a unit file (safetensors, atomically: a temporary file beside
    ``path``, renamed over it). ``tasks``: one input description per task, which ``dvn infer``
    needs to read images for it."""
    from safetensors.torch import save as to_bytes
    spec = getattr(model, "spec", None)
    networks = getattr(model, "networks", None)
    if spec is None or networks is None:
        raise TypeError(f"model: {type(model).__name__} is not a dvn backbone with a spec "
                        "(dvn.wrn, dvn.resnet); a unit file must say how to rebuild it")
    if tasks is not None and len(tasks) != networks.tasks:
        raise ValueError(f"tasks: expected {networks.tasks} task descriptions, got {len(tasks)}")
    metadata = {"format": FORMAT, "spec": json.dumps(spec)}
    if tasks is not None:
        metadata["tasks"] = json.dumps([t.to_dict() for t in tasks])
    tensors = {k: v.cpu() for k, v in unit_tensors(model).items()}
    metadata["digests"] = "".join(tensor_digest(tensors[k]) for k in sorted(tensors))
    metadata["sha256"] = header_digest(metadata, {k: (_DTYPE_NAMES[v.dtype], list(v.shape))
                                                  for k, v in tensors.items()})
    data = to_bytes(tensors, metadata=metadata)
    atomic_write(path, lambda f: f.write(data))


def tensor_digest(t: torch.Tensor) -> str:
    """The first 128 bits of the SHA-256 of a tensor's bytes (as safetensors stores them:
    contiguous, little-endian), as 22 characters of URL-safe base64."""
    h = hashlib.sha256(t.detach().contiguous().reshape(-1).view(torch.uint8).numpy())
    return base64.urlsafe_b64encode(h.digest()[:16]).decode()[:_DIGEST_CHARS]


def header_digest(metadata: dict, entries: dict) -> str:
    """SHA-256 of what a header says: the spec, tasks and tensor digests of its metadata and
    each tensor's dtype and shape (``entries``: key -> (safetensors dtype code, shape))."""
    what = {"spec": metadata.get("spec"), "tasks": metadata.get("tasks"),
            "digests": metadata.get("digests"),
            "entries": {k: [d, [int(s) for s in shape]] for k, (d, shape) in entries.items()}}
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()


class UnitFile:
    """An open unit file: its header (names, dtypes, shapes of every tensor), the backbone's
    skeleton on the meta device, and reads of chosen tensors that count their bytes.

    ``bytes_read`` counts every byte read from the file: the header once, at open, then each
    tensor's own bytes (one ``pread`` per tensor through safetensors). Thread-safe.
    """

    def __init__(self, path: PathLike) -> None:
        from safetensors import SafetensorError, safe_open
        self.path = os.fspath(path)
        if not os.path.isfile(self.path):
            raise FileNotFoundError(f"path: no unit file at {self.path}")
        self._lock = threading.Lock()
        header = self._read_header()
        self.bytes_read = 8 + len(header)
        try:
            self._file = safe_open(self.path, framework="pt", backend="pread")
        except SafetensorError as e:
            raise ValueError(f"path: {self.path} is not a valid safetensors file ({e})") from None
        try:
            entries = json.loads(header)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"path: {self.path} has an unreadable header ({e})") from None
        metadata = entries.pop("__metadata__", None) or {}
        if metadata.get("format") not in (FORMAT, _UNCHECKED):
            raise ValueError(f"path: {self.path} is not a dvn unit file (format "
                             f"{metadata.get('format')!r}, expected {FORMAT!r}); write one "
                             "with dvn.deploy.save")
        self.entries: dict[str, tuple[torch.dtype, tuple[int, ...]]] = {}
        codes = {}
        for key, entry in entries.items():
            dtype = DTYPES.get(entry.get("dtype") if isinstance(entry, dict) else None)
            if dtype is None:
                raise ValueError(f"path: {self.path}: tensor {key!r} has an unsupported dtype "
                                 f"{entry.get('dtype') if isinstance(entry, dict) else entry!r}")
            self.entries[key] = (dtype, tuple(entry["shape"]))
            codes[key] = (entry["dtype"], entry["shape"])
        self.spec = self._json(metadata, "spec")
        tasks = self._json(metadata, "tasks") if "tasks" in metadata else None
        try:
            with torch.device("meta"):
                self.skeleton = build(self.spec)
            self.tasks = None if tasks is None else [TaskInput.from_dict(t) for t in tasks]
        except (TypeError, ValueError, KeyError) as e:
            raise ValueError(f"path: {self.path}: its header does not describe a dvn backbone "
                             f"({e})") from None
        if self.tasks is not None and len(self.tasks) != self.skeleton.networks.tasks:
            raise ValueError(f"path: {self.path}: {len(self.tasks)} task descriptions for "
                             f"{self.skeleton.networks.tasks} tasks")
        self._check_tensors()
        self.digests: Optional[dict[str, str]] = None
        if metadata["format"] == FORMAT:
            given = metadata.get("digests", "")
            names = sorted(self.entries)
            if len(given) != _DIGEST_CHARS * len(names):
                raise ValueError(f"path: {self.path} is damaged (its header lacks the digests "
                                 f"of its tensors)")
            if metadata.get("sha256") != header_digest(metadata, codes):
                raise ValueError(f"path: {self.path} is damaged (its header does not match "
                                 "the digest written with it)")
            self.digests = {k: given[i * _DIGEST_CHARS:(i + 1) * _DIGEST_CHARS]
                            for i, k in enumerate(names)}

    def _read_header(self) -> bytes:
        fd = os.open(self.path, os.O_RDONLY)
        try:  # unbuffered: exactly the header's bytes are read
            size = os.fstat(fd).st_size
            head = os.pread(fd, 8, 0)
            n = int.from_bytes(head, "little") if len(head) == 8 else -1
            if n < 2 or 8 + n > size:
                raise ValueError(f"path: {self.path} is not a safetensors file (header length "
                                 f"{n} in a file of {size} bytes)")
            return os.pread(fd, n, 8)
        finally:
            os.close(fd)

    def _json(self, metadata: dict, name: str):
        try:
            return json.loads(metadata.get(name, ""))
        except json.JSONDecodeError as e:
            raise ValueError(f"path: {self.path}: metadata {name!r} is not JSON ({e})") from None

    def _check_tensors(self) -> None:
        """Every tensor the skeleton needs is in the file with its shape (so that a later read
        cannot fail half-way through a change of levels)."""
        expected = {k: (v.dtype, tuple(v.shape)) for k, v in unit_tensors(self.skeleton).items()}
        missing = sorted(set(expected) - set(self.entries))
        if missing:
            raise ValueError(f"path: {self.path} lacks {len(missing)} tensors of its model, "
                             f"e.g. {missing[0]!r}")
        for key, (dtype, shape) in expected.items():
            if self.entries[key][1] != shape:
                raise ValueError(f"path: {self.path}: tensor {key!r} has shape "
                                 f"{list(self.entries[key][1])}, its model needs {list(shape)}")
            if self.entries[key][0] != dtype:
                raise ValueError(f"path: {self.path}: tensor {key!r} is "
                                 f"{self.entries[key][0]}, its model needs {dtype}")

    def config_keys(self, task: int, level: int) -> tuple[list[str], list[str]]:
        """(parameter keys, buffer keys) of the tensors task ``task`` at level ``level``
        uses: its conv blocks, its stem's rows, its private batch norms and head."""
        active = self.skeleton.networks.active(task, level)
        stems = stem_tasks(self.skeleton)
        params: list[str] = []
        for name, conv in sliced_convs(self.skeleton).items():
            if stems.get(name, task) != task:
                continue
            ins = active.unit_set if conv.in_layout.split else (None,)
            for a in active.unit_set:
                params += [block_key(name, a, b) for b in ins]
                if conv.bias is not None:
                    params.append(block_key(name, a, None, "bias"))
        buffers: list[str] = []
        for prefix, modules in private_prefixes(self.skeleton).items():
            module = modules[active.key]
            params += [f"{prefix}.{active.key}.{n}" for n, _ in module.named_parameters()]
            buffers += [f"{prefix}.{active.key}.{n}" for n, _ in module.named_buffers()]
        return params, buffers

    def nbytes(self, keys: Iterable[str]) -> int:
        """Bytes of the given tensors in the file (read from the header, no data)."""
        total = 0
        for key in keys:
            dtype, shape = self.entries[key]
            n = dtype.itemsize
            for s in shape:
                n *= s
            total += n
        return total

    def read(self, keys: Iterable[str], device: Union[str, torch.device] = "cpu"
             ) -> dict[str, torch.Tensor]:
        """The given tensors, each read alone (one pread of its bytes), on ``device``."""
        device = torch.device(device)
        out = {}
        with self._lock:
            for key in keys:
                if key not in self.entries:
                    raise ValueError(f"path: {self.path} has no tensor {key!r}")
                if self._file is None:
                    raise ValueError(f"path: {self.path} is closed")
                t = self._file.get_tensor(key)
                self.bytes_read += t.nbytes
                if self.digests is not None and tensor_digest(t) != self.digests[key]:
                    raise ValueError(f"path: {self.path} is damaged (tensor {key!r} does not "
                                     "match the digest written with it)")
                out[key] = t if device.type == "cpu" else t.to(device)
        return out

    def close(self) -> None:
        with self._lock:
            file, self._file = self._file, None
        if file is not None:
            file.__exit__(None, None, None)

    def __enter__(self) -> UnitFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
