"""Resource usage and memory-instruction counts read from ptxas logs, PTX and SASS text.

Without a GPU a kernel's registers and spills are only visible in what ptxas reports
(``ptxas -v``), and the width of its global loads only in its PTX (or SASS). These parsers
serve both the Triton compile check and the CUDA kernels' report (bench.compile_report);
they read text only, so they need neither Triton nor a toolkit.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Bytes of one element of a PTX load type (.b16, .f32, ...).
_TYPE_BYTES = {"8": 1, "16": 2, "32": 4, "64": 8, "128": 16}


@dataclass(frozen=True)
class Resources:
    """What ptxas reports for one kernel: registers per thread, spill bytes, stack frame and
    static shared memory (dynamic shared memory is a launch argument, not in the log)."""

    registers: int
    spill_stores: int
    spill_loads: int
    stack_frame: int
    static_shared: int


def parse_ptxas_log(log: str) -> dict[str, Resources]:
    """``ptxas -v`` output (alone or inside nvcc's) -> Resources per (mangled) entry name."""
    found: dict[str, Resources] = {}
    name = None
    props: tuple[int, int, int] | None = None
    for line in log.splitlines():
        m = re.search(r"Function properties for (\S+)", line)
        if m:
            name, props = m.group(1), None
            continue
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads",
                      line)
        if m and name is not None:
            props = (int(m.group(1)), int(m.group(2)), int(m.group(3)))
            continue
        m = re.search(r"Used (\d+) registers", line)
        if m and name is not None:
            smem = re.search(r"(\d+) bytes smem", line)
            stack, stores, loads = props or (0, 0, 0)
            found[name] = Resources(int(m.group(1)), stores, loads, stack,
                                    int(smem.group(1)) if smem else 0)
            name = None
    return found


@dataclass(frozen=True)
class GlobalLoads:
    """Static counts of global-memory load instructions by bytes per thread: ``wide`` moves
    16 bytes (ld.global.v4.b32, cp.async ... 16), ``narrow`` fewer, ``tma`` are bulk tensor
    copies (cp.async.bulk.tensor)."""

    wide: int
    narrow: int
    tma: int


def count_ptx_loads(ptx: str) -> GlobalLoads:
    """Counts the global loads of a PTX listing by width (a static count: one per instruction
    in the listing, not per execution)."""
    wide = narrow = tma = 0
    for line in ptx.splitlines():
        if "cp.async.bulk.tensor" in line and ".global" in line:
            tma += 1
            continue
        m = re.search(r"\bcp\.async\.c[ag]\.shared(?:::cta)?\.global\S*\s*\[[^\]]*\],\s*\[[^\]]*\],"
                      r"\s*(0x[0-9a-fA-F]+|\d+)", line)
        if m:
            size = int(m.group(1), 0)
        else:
            m = re.search(r"\bld\.global\S*?(?:\.v(\d))?\.[bfsu](\d+)\s", line)
            if not m:
                continue
            size = int(m.group(1) or 1) * _TYPE_BYTES.get(m.group(2), 0)
        if size >= 16:
            wide += 1
        else:
            narrow += 1
    return GlobalLoads(wide, narrow, tma)


def count_sass_loads(sass: str) -> GlobalLoads:
    """Counts the global loads of a SASS listing (cuobjdump -sass): LDG and LDGSTS (cp.async)
    with a .128 suffix are 16-byte; UTMALDG are TMA copies."""
    wide = narrow = tma = 0
    for line in sass.splitlines():
        m = re.search(r"\b(LDG|LDGSTS|UTMALDG)(\.[A-Z0-9_.]+)?\s", line)
        if not m:
            continue
        if m.group(1) == "UTMALDG":
            tma += 1
        elif ".128" in (m.group(2) or ""):
            wide += 1
        else:
            narrow += 1
    return GlobalLoads(wide, narrow, tma)


def mma_kind(ptx: str) -> str:
    """Which tensor-core instruction a PTX listing uses: wgmma (Hopper), mma.sync, or none."""
    if "wgmma.mma_async" in ptx:
        return "wgmma"
    if "mma.sync" in ptx:
        return "mma.sync"
    return "none"
