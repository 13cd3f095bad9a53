"""Memory-efficient deployment of several tasks from unit-addressable weights.

* ``save(model, path)``: a trained backbone as a unit file (safetensors; one tensor per
  (layer, output unit, input unit) block), so any (task, level) reads only its own blocks.
* ``load_level(path, task, level)``: that level alone as a static network.
* ``Deployment(path, {task: level, ...})``: several tasks served from one copy of the blocks
  they share, from several threads; ``set_level`` grows or shrinks a task in place.
* ``profile(path)`` / ``choose_level`` / ``Deployment.set_budget``: latency and memory of every
  (task, level), and the highest level within a budget.
"""

from .budget import BudgetError, Profile, choose_level, memory_profile, memory_rows, profile
from .deployment import Deployment, load_level, storage_bytes
from .images import TaskInput, image_files, read_images
from .shared import LAYOUTS
from .unitfile import FORMAT, UnitFile, block_key, save

__all__ = [
    "BudgetError", "Deployment", "FORMAT", "LAYOUTS", "Profile", "TaskInput", "UnitFile", "block_key",
    "choose_level", "image_files", "load_level", "memory_profile", "memory_rows", "profile",
    "read_images", "save", "storage_bytes",
]
