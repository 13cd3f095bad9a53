"""Training under torchrun: two CPU processes (gloo) with DistributedDataParallel keep equal
parameters and lower the loss (tiny model, synthetic data)."""

import os
import subprocess
import sys
import textwrap

import torch

SCRIPT = textwrap.dedent("""
    import faulthandler, os, sys, torch
    faulthandler.dump_traceback_later(240, exit=True)  # a hang prints every thread's stack
    from dvn.training import TrainConfig, get_scenario, train
    out = sys.argv[1]
    s = get_scenario("fmnist-joint", "tiny", epochs=3, batch_size=32)
    summary = train(TrainConfig(s, "tiny", out, backend="cpu"), quiet=True)
    rank = os.environ["RANK"]
    torch.save({"state": summary["model"].state_dict(),
                "losses": [h["loss"] for h in summary["history"]],
                "world": summary["world_size"]}, f"{out}/rank{rank}.pt")
""")


def test_two_process_torchrun_keeps_ranks_equal(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    env = dict(os.environ, DVN_SYNTHETIC_DATA="1", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
           "--standalone", str(script), str(tmp_path / "run")]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    r0, r1 = (torch.load(tmp_path / "run" / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert r0["world"] == r1["world"] == 2
    for k, v in r0["state"].items():
        assert torch.equal(v, r1["state"][k]), k
    assert r0["losses"] == r1["losses"] and r0["losses"][-1] < r0["losses"][0]
    assert (tmp_path / "run" / "checkpoint.pt").is_file()
