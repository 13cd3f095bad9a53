"""dvn: Deep Virtual Networks on top of dvn_kernels (model layer; filled by later work)."""

import dvn_kernels as kernels

__all__ = ["kernels"]
