"""Comments, docstrings and docs name only files and modules that exist.

A comment that points a reader at ``dvn_kernels/ops.py`` or ``csrc/segments.cpp`` when neither
exists sends the next engineer looking for nothing; this test reads every source and document
of the repository and checks each repository path and each dotted ``dvn``/``dvn_kernels``
module name it mentions.
"""

from __future__ import annotations

import importlib
import os
import re
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCES = (".py", ".cpp", ".h", ".cu", ".cuh", ".sh", ".md", ".txt", ".toml", ".cfg", "")
TOP = ("dvn", "dvn_kernels", "csrc", "bench", "scripts", "tests", "results", ".ci")
# A repository path: a top-level folder, then path parts, ending in a file name with an
# extension or a folder's slash.
PATH = re.compile(r"(?<![\w./-])((?:%s)/[\w./-]*[\w/])" % "|".join(re.escape(t) for t in TOP))
MODULE = re.compile(r"(?<![\w./-])((?:dvn|dvn_kernels)(?:\.[A-Za-z_]\w*)+)")
# Dotted names that are not modules: the ONNX exports' metadata keys (dvn/deploy/onnx.py) and
# the README's example file name.
NOT_MODULES = {"dvn.task", "dvn.level", "dvn.opset", "dvn.source", "dvn.source_id",
               "dvn.torch", "dvn.pt"}
GENERATED = ("results/", "bench/results/")
SELF = "tests/test_source_references.py"  # its docstring quotes absent paths as examples  # measured outputs quote the paths of their day


def tracked_files() -> list[str]:
    out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout.split()
    return [f for f in out if os.path.splitext(f)[1] in SOURCES and not f.startswith(GENERATED)
            and os.path.isfile(os.path.join(ROOT, f)) and f != SELF]


def mentions(pattern: re.Pattern) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for name in tracked_files():
        with open(os.path.join(ROOT, name), encoding="utf-8", errors="replace") as f:
            text = f.read()
        for match in pattern.finditer(text):
            if re.match(r"[\w.-]*[{<*$]", text[match.end():match.end() + 80]):
                continue  # a pattern such as f"bench/results/cpu-{machine}.json"
            found.setdefault(match.group(1).rstrip("."), set()).add(name)
    return found


def _exists(path: str) -> bool:
    if os.path.exists(os.path.join(ROOT, path)):
        return True
    if os.path.exists(os.path.join(ROOT, "csrc", path)):  # an #include relative to csrc/
        return True
    # Patterns and placeholders (`bench/results/gpu-<gpu>.json`, `dvn_kernels/_C*.so`) and
    # build outputs are not claims that one file exists.
    return any(c in path for c in "<>*{}$") or "/_C" in path or path.startswith(".ci/")


def test_every_mentioned_path_exists():
    missing = {p: sorted(files) for p, files in mentions(PATH).items() if not _exists(p)}
    assert not missing, "paths mentioned but absent (path: files that mention it):\n" + \
        "\n".join(f"  {p}: {', '.join(f)}" for p, f in sorted(missing.items()))


def _resolves(dotted: str) -> bool:
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        except ImportError:  # an optional extra (onnx, fastapi) is not installed here
            return True
        for attr in parts[cut:]:
            if not hasattr(obj, attr):
                return False
            obj = getattr(obj, attr)
        return True
    return False


def test_every_mentioned_module_exists():
    # dvn_kernels._C_torch<version>: the extension, named per torch build.
    missing = {m: sorted(files) for m, files in mentions(MODULE).items()
               if m not in NOT_MODULES and not m.startswith("dvn_kernels._C") and not _resolves(m)}
    assert not missing, "modules mentioned but absent (name: files that mention it):\n" + \
        "\n".join(f"  {m}: {', '.join(f)}" for m, f in sorted(missing.items()))
