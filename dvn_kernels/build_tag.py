"""The module name of the compiled extension, one per torch build.

setup.py names the extension after the torch it is compiled against (``_C_torch2_14_1_cu130``
for torch 2.14.1+cu130), and ``dvn_kernels.extension`` imports the one of the running torch.
So builds for several torch stacks (CI tests two) sit side by side in one editable tree, and a
torch upgrade gives a clear "not built for this torch" instead of an undefined-symbol error.
This module imports nothing, so setup.py can load it before the package is importable.
"""

from __future__ import annotations

import re


def extension_name(torch_version: str) -> str:
    """The extension's module name (without the package) for torch ``torch_version``."""
    return "_C_torch" + re.sub(r"[^0-9A-Za-z]+", "_", torch_version).strip("_")
