"""Memory-efficient deployment of several tasks from unit-addressable weights.

* ``save(model, path)``: a trained backbone as a unit file (``dvn-units-2``: safetensors; one
  tensor per (layer, output unit, input unit) block, with digests), so any (task, level) reads
  only its own blocks. ``dvn.save`` writes the other format (``dvn-checkpoint-2``, the whole
  model in one file); ``runs.unit_file`` turns either, or a run folder, into a unit file.
* ``load_level(path, task, level)``: that level alone as a static network.
* ``Deployment(path, {task: level, ...})``: several tasks served from one copy of the blocks
  they share, from several threads; ``set_level`` grows or shrinks a task in place.
* ``profile(path)`` / ``choose_level`` / ``Deployment.set_budget``: latency and memory of every
  (task, level), and the highest level within a budget.
"""

from .budget import memory_profile, memory_rows, profile
from .deployment import Deployment, load_level, storage_bytes
from .images import TaskInput, image_files, read_images
from .profiles import BudgetError, Profile, choose_level
from .shared import LAYOUTS
from .unitfile import FORMAT, UnitFile, block_key, save

__all__ = [
    "BudgetError", "Deployment", "FORMAT", "LAYOUTS", "Profile", "TaskInput", "UnitFile", "block_key",
    "choose_level", "image_files", "load_level", "memory_profile", "memory_rows", "profile",
    "read_images", "save", "storage_bytes",
]
