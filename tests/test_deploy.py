"""dvn.deploy: unit files, one level loaded alone, growing and shrinking in place, several tasks
from one copy of their blocks, threads, budgets, bad input (tiny models, k = 2 and 4)."""

import json
import os
import struct
import threading

import pytest
import torch

import dvn
import dvn.deploy as dd
from dvn.deploy.shared import row_groups

pytestmark = pytest.mark.usefixtures("one_thread")

K4 = dict(units=4, num_classes=[5, 6, 7, 8], image_channels=[3, 1, 3, 3])


def randomized(model):
    """Batch norms with non-trivial statistics and affine parameters: a level that read
    another configuration's would differ."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            for t, lo, hi in ((m.running_mean, -0.5, 0.5), (m.running_var, 0.5, 2.0),
                              (m.weight.data, 0.5, 1.5), (m.bias.data, -0.3, 0.3)):
                t.copy_(torch.rand(t.shape, generator=g) * (hi - lo) + lo)
    return model.eval()


@pytest.fixture(scope="module")
def k4(tmp_path_factory):
    """WRN-8-1 with 4 units and 4 tasks (task 2 grey), saved as a unit file."""
    torch.manual_seed(0)
    model = randomized(dvn.wrn(8, 1, **K4))
    path = str(tmp_path_factory.mktemp("k4") / "model.safetensors")
    dd.save(model, path)
    return model, path


def image(model, task, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, model.image_channels[task - 1], 16, 16, generator=g)


def level_bytes(path, task, level):
    with dd.UnitFile(path) as f:
        params, buffers = f.config_keys(task, level)
        return f.nbytes(params), f.nbytes(buffers)


def rchar():
    """(bytes this process read through read()/pread() before this call, bytes this call
    reads): the Linux I/O counters."""
    with open("/proc/self/io", "rb", buffering=0) as f:
        text = f.read()
    return int(text.split(b"rchar:")[1].split()[0]), len(text)


def bytes_read(fn):
    """Bytes ``fn()`` reads through read()/pread(), measured by the process's I/O counters."""
    before, own = rchar()
    fn()
    return rchar()[0] - before - own


linux_io = pytest.mark.skipif(not os.path.exists("/proc/self/io"), reason="needs /proc/self/io")


def test_unit_file_is_plain_safetensors_of_blocks(k4):
    from safetensors.torch import load_file
    model, path = k4
    tensors = load_file(path)   # any safetensors reader opens it; no pickle anywhere
    conv = model.blocks[1].conv1
    rows = [torch.cat([tensors[dd.block_key("blocks.1.conv1", a, b)] for b in range(1, 5)], 1)
            for a in range(1, 5)]
    assert torch.equal(torch.cat(rows), conv.weight.detach())
    assert torch.equal(torch.cat([tensors[dd.block_key("stems.t2", a, None)] for a in range(1, 5)]),
                       model.stems.t2.weight.detach())
    key = "blocks.0.bn1.norms.t3_l2.running_var"
    assert torch.equal(tensors[key], model.state_dict()[key])
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        meta = json.loads(f.read(n))["__metadata__"]
    assert meta["format"] == dd.FORMAT and json.loads(meta["spec"]) == model.spec


def test_load_level_equals_the_trained_model_at_every_config(k4):
    model, path = k4
    for task, level in model.networks.configs():
        x = image(model, task)
        loaded = dd.load_level(path, task, level)
        with torch.no_grad():
            y = loaded(x)
            assert torch.equal(y, dvn.to_static(model, task, level).eval()(x)), (task, level)
            torch.testing.assert_close(y, model(x, task=task, level=level), atol=1e-5, rtol=1e-5)
        params = list(loaded.parameters())
        count = dvn.count_parameters(model, task, level)
        assert sum(p.numel() for p in params) == count
        # held memory, measured on the storages: exactly the level's parameters, no view of
        # a larger tensor
        assert dd.storage_bytes(params) == 4 * count
        assert not any(p.requires_grad for p in params) and not loaded.training


@linux_io
def test_load_level_reads_only_its_blocks(k4, tmp_path):
    """Bytes read, measured by the process's I/O counters: the header once, then exactly the
    level's tensors. The header (names, shapes and digests of every tensor) is a fixed cost:
    82 kB here beside a 22 kB level 1 of this toy, 9% of level 1 on ResNet-10."""
    model, path = k4
    dd.load_level(path, 1, 1)  # warm: imports and first-use caches read files too
    r10 = str(tmp_path / "r10.safetensors")
    dd.save(dvn.resnet(10, units=4, input_sizes=16), r10)
    for file, task, level in [(path, 1, 1), (path, 3, 2), (path, 4, 3), (path, 2, 4),
                              (r10, 1, 1), (r10, 3, 2), (r10, 4, 4)]:
        params, buffers = level_bytes(file, task, level)
        with open(file, "rb") as f:
            header = 8 + struct.unpack("<Q", f.read(8))[0]
        deps = []
        read = bytes_read(lambda: deps.append(dd.Deployment(file, [(task, level)])))
        dep, = deps
        assert dep.bytes_read == read == header + params + buffers, (file, task, level)
        if file == r10:
            assert read <= 1.1 * (params + buffers), (task, level)
        dep.close()


def test_grow_reads_only_the_added_blocks_and_equals_a_direct_load(k4):
    model, path = k4
    for task in (1, 3):   # task 3's order is 3, 2, 4, 1: levels that are not one range
        dep = dd.Deployment(path, {task: 1})
        prev = 1
        for level in (2, 3, 4, 3, 2, 1):
            before = dep.bytes_read
            dep.set_level(task, level)
            blocks, private = split_bytes(path, task, level)
            added = blocks - split_bytes(path, task, prev)[0] if level > prev else 0
            # the new unit's rows and columns, and the new level's batch norms and head
            assert dep.bytes_read - before == added + private, (task, level)
            assert dep.bytes_held() == sum(level_bytes(path, task, level))  # the rest freed
            x = image(model, task)
            with torch.no_grad():
                assert torch.equal(dep(x, task), dd.load_level(path, task, level)(x))
            prev = level
        dep.close()


def split_bytes(path, task, level):
    """(bytes of a configuration's conv blocks, bytes of its own batch norms and head)."""
    with dd.UnitFile(path) as f:
        params, buffers = f.config_keys(task, level)
        blocks = [k for k in params if "@" in k]
        return f.nbytes(blocks), f.nbytes(params + buffers) - f.nbytes(blocks)


def blocks_in_use(model, configs):
    """Parameters of the blocks any configuration uses, each once, counted from the model's
    layouts (independently of the deployment's row groups), plus private modules."""
    total = 0
    for name, m in model.named_modules():
        if isinstance(m, dvn.SlicedConv2d):
            used = set()
            for t, lv in configs:
                if name.startswith("stems.") and name != f"stems.t{t}":
                    continue
                units = model.networks.active(t, lv).unit_set
                ins = units if m.in_layout.split else (None,)
                used |= {(a, b) for a in units for b in ins}
            k = m.weight[0, 0].numel()
            total += sum(m.out_layout.sizes[a - 1] * (m.in_channels if b is None else
                                                      m.in_layout.sizes[b - 1]) * k
                         for a, b in used)
    for t, lv in configs:
        key = model.networks.active(t, lv).key
        total += sum(p.numel() for n, p in model.named_parameters() if f".{key}." in n)
    return total


def test_tasks_share_their_blocks_once(k4):
    model, path = k4
    x = {t: image(model, t, seed=t) for t in range(1, 5)}
    dep = dd.Deployment(path, {1: 1})
    for level in range(1, 5):
        configs = [(t, level) for t in range(1, 5)]
        dep.deploy(configs)
        held = dep.parameters_held()
        assert held == blocks_in_use(model, configs)
        exports = sum(dvn.count_parameters(model, t, level) for t in range(1, 5))
        assert held <= exports and (held < exports or level == 1)
        for t in range(1, 5):
            with torch.no_grad():
                torch.testing.assert_close(dep(x[t], t), model(x[t], task=t, level=level),
                                           atol=1e-5, rtol=1e-5)
                torch.testing.assert_close(dep.export(t)(x[t]), dep(x[t], t), atol=1e-5,
                                           rtol=1e-5)
    # several levels of a task, and tasks at different levels; both layouts
    mixed = [(1, 1), (1, 3), (3, 2), (4, 2), (2, 1)]
    dep.deploy(mixed)
    union = dd.Deployment(path, mixed, layout="union")
    assert dep.parameters_held() == blocks_in_use(model, mixed) < union.parameters_held()
    for t, lv in mixed:
        with torch.no_grad():
            for d in (dep, union):
                torch.testing.assert_close(d(x[t], t, lv), model(x[t], task=t, level=lv),
                                           atol=1e-5, rtol=1e-5)
    # level 1 of every task in one tensor per layer: all 16 blocks, 4x those in use
    union.deploy({t: 1 for t in range(1, 5)})
    dep.deploy({t: 1 for t in range(1, 5)})
    conv = lambda d: sum(t.numel() for layer in d._convs.values() for t in layer.tensors()
                         if not layer.name.startswith("stems."))  # noqa: E731
    assert conv(union) == 4 * conv(dep)
    with pytest.raises(ValueError, match="layout: expected one of blocks, union"):
        dd.Deployment(path, mixed, layout="rows")
    with pytest.raises(ValueError, match="backend: unknown backend 'gpu'"):
        dd.Deployment(path, mixed, backend="gpu")
    # deployments opened on one file each hold their own blocks
    with dd.UnitFile(path) as f:
        a, b = dd.Deployment(f, {1: 1}), dd.Deployment(f, {2: 2})
        with torch.no_grad():
            torch.testing.assert_close(b(x[2], 2), model(x[2], task=2, level=2), atol=1e-5,
                                       rtol=1e-5)
        assert a.parameters_held() < b.parameters_held()
    dep.close()
    union.close()


def test_row_groups_hold_exactly_the_union_of_squares():
    # k = 4, every task at level 2 (paper's rule): {1,2}, {1,2}, {2,3}, {3,4}
    groups = row_groups([(1, 2), (2, 3), (3, 4)])
    assert groups == [((1,), (1, 2)), ((2,), (1, 2, 3)), ((3,), (2, 3, 4)), ((4,), (3, 4))]
    assert row_groups([(1,), (1, 2), (1, 2, 3)]) == [((1, 2, 3), (1, 2, 3))]   # nested: one
    assert row_groups([(2, 3)], in_split=False) == [((2, 3), None)]


def test_threads_calling_different_configs_get_single_threaded_outputs(k4):
    model, path = k4
    configs = [(1, 1), (1, 4), (2, 2), (3, 3), (3, 1), (4, 2)]
    dep = dd.Deployment(path, configs)
    inputs = {c: image(model, c[0], batch=3, seed=10 * c[0] + c[1]) for c in configs}
    expected = {c: dep(inputs[c], *c) for c in configs}
    errors, barrier = [], threading.Barrier(8)

    def worker(i):
        try:
            barrier.wait()
            for n in range(12):
                c = configs[(i + n) % len(configs)]
                if not torch.equal(dep(inputs[c], *c), expected[c]):
                    errors.append(f"thread {i}: {c} differs")
        except Exception as e:  # a failure in a thread fails the test
            errors.append(f"thread {i}: {e!r}")

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def test_levels_change_while_threads_call(k4):
    """A change of levels waits for running calls; calls see a whole state: the right output
    for a deployed configuration, or a clear error for one that is not deployed."""
    model, path = k4
    dep = dd.Deployment(path, {1: 2, 2: 1})
    x = image(model, 1)
    want = {lv: dd.load_level(path, 1, lv)(x) for lv in range(1, 5)}
    errors, stop = [], threading.Event()

    def caller():
        while not stop.is_set():
            try:
                for lv in range(1, 5):
                    try:
                        y = dep(x, 1, lv)
                    except ValueError as e:
                        assert "not deployed" in str(e)
                        continue
                    if not torch.equal(y, want[lv]):
                        errors.append(f"level {lv} differs")
            except Exception as e:
                errors.append(repr(e))

    threads = [threading.Thread(target=caller) for _ in range(3)]
    for t in threads:
        t.start()
    for lv in (3, 4, 1, 2, 4):
        dep.set_level(1, lv)
    stop.set()
    for t in threads:
        t.join()
    assert not errors and dep.level(1) == 4


def test_budgets_with_a_given_table_grow_and_shrink(k4):
    model, path = k4
    table = dd.Profile.from_rows(
        [{"task": t, "level": lv, "latency_ms_b1": float(lv), "memory_mb": 0.1 * lv}
         for t in (1, 2) for lv in range(1, 5)])
    assert dd.choose_level(table, 1, ms=2.5) == 2
    assert dd.choose_level(table, 1, mb=0.35) == 3
    assert dd.choose_level(table, 1, ms=2.5, mb=0.15) == 1
    assert dd.choose_level(table, 1, ms=100) == 4
    with pytest.raises(dd.BudgetError, match=r"no level of task 2 fits 0.5 ms; the smallest, "
                                             r"level 1, needs 1 ms at batch 1"):
        dd.choose_level(table, 2, ms=0.5)
    with pytest.raises(ValueError, match="no row for task 3"):
        dd.choose_level(table, 3, ms=1)
    with pytest.raises(ValueError, match="ms must be a positive number"):
        dd.choose_level(table, 1, ms=-1)
    dep = dd.Deployment(path, {1: 1, 2: 1})
    assert dep.set_budget(table, ms=3.5) == {1: 3, 2: 3}
    held = dep.bytes_held()
    before = dep.bytes_read
    assert dep.set_budget(table, ms=1.5) == {1: 1, 2: 1}   # shrink: reads only private modules
    assert dep.bytes_read - before == sum(split_bytes(path, t, 1)[1] for t in (1, 2))
    assert dep.bytes_held() < held / 4
    x = image(model, 2)
    with torch.no_grad():
        torch.testing.assert_close(dep(x, 2), model(x, task=2, level=1), atol=1e-5, rtol=1e-5)


def test_measured_profile_and_header_memory_agree(k4, tmp_path):
    model, path = k4
    table = dd.profile(path, batch=4, repeats=2, configs=[(1, 1), (1, 2), (4, 4)])
    assert [(r["task"], r["level"]) for r in table.rows] == [(1, 1), (1, 2), (4, 4)]
    for r in table.rows:
        assert r["memory_mb"] == pytest.approx(r["header_memory_mb"], rel=1e-12)
        assert r["parameters"] == dvn.count_parameters(model, r["task"], r["level"])
        assert r["latency_ms_b1"] > 0 and r["latency_ms_b4"] > 0
    header = {(r["task"], r["level"]): r for r in dd.memory_rows(dd.UnitFile(path))}
    assert header[(4, 4)]["parameters"] == dvn.count_parameters(model, 4, 4)
    paths = table.save(str(tmp_path))
    again = dd.Profile.load(paths["json"])
    assert again.rows == table.rows and "| 4 | 4 |" in open(paths["markdown"]).read()
    level = dd.choose_level(again, 1, ms=1e6, mb=table.rows[0]["memory_mb"] * 1.01)
    assert level == 1


def test_bad_files_raise_clear_errors(k4, tmp_path):
    model, path = k4
    with pytest.raises(FileNotFoundError, match="no unit file at"):
        dd.UnitFile(str(tmp_path / "missing.safetensors"))
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(os.urandom(64))
    with pytest.raises(ValueError, match="junk.safetensors is not a"):
        dd.UnitFile(str(junk))
    data = open(path, "rb").read()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[:len(data) // 2])
    with pytest.raises(ValueError, match="cut.safetensors is not a valid safetensors file"):
        dd.UnitFile(str(cut))
    from safetensors.torch import save_file, load_file
    tensors = load_file(path)
    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(plain))
    with pytest.raises(ValueError, match="not a dvn unit file"):
        dd.UnitFile(str(plain))
    meta = {"format": dd.FORMAT, "spec": json.dumps(model.spec)}
    partial = tmp_path / "partial.safetensors"
    save_file({k: v for k, v in tensors.items() if "blocks.1.conv2" not in k}, str(partial),
              metadata=meta)
    with pytest.raises(ValueError, match="lacks 16 tensors of its model"):
        dd.UnitFile(str(partial))
    shaped = dict(tensors)
    shaped[dd.block_key("blocks.0.conv1", 1, 1)] = torch.zeros(1, 1, 3, 3)
    wrong = tmp_path / "wrong.safetensors"
    save_file(shaped, str(wrong), metadata=meta)
    with pytest.raises(ValueError, match=r"blocks.0.conv1.weight@o1i1' has shape \[1, 1, 3, 3\]"):
        dd.UnitFile(str(wrong))
    halved = dict(tensors)
    halved["final_bn.norms.t1_l1.weight"] = halved["final_bn.norms.t1_l1.weight"].half()
    save_file(halved, str(wrong), metadata=meta)
    with pytest.raises(ValueError, match="t1_l1.weight' is torch.float16, its model needs "
                                         "torch.float32"):
        dd.UnitFile(str(wrong))
    # the spec names only a known builder; anything else is refused, nothing is run
    for spec in ({"arch": "os.system", "depth": 8}, {"arch": "wrn", "depth": 7}, [1]):
        bad = tmp_path / "spec.safetensors"
        save_file({"w": torch.zeros(2)}, str(bad),
                  metadata={"format": dd.FORMAT, "spec": json.dumps(spec)})
        with pytest.raises(ValueError, match="does not describe a dvn backbone"):
            dd.UnitFile(str(bad))


def test_bad_configs_and_calls_raise_clear_errors(k4):
    model, path = k4
    with pytest.raises(ValueError, match="task: 5 does not exist"):
        dd.load_level(path, 5, 1)
    with pytest.raises(ValueError, match="level: 0 does not exist"):
        dd.Deployment(path, {1: 0})
    with pytest.raises(ValueError, match="at least one"):
        dd.Deployment(path, [])
    with pytest.raises(ValueError, match="expected .task, level. pairs"):
        dd.Deployment(path, [1, 2])
    dep = dd.Deployment(path, [(1, 1), (1, 2)])
    with pytest.raises(ValueError, match="task 1 is deployed at levels \\[1, 2\\]"):
        dep(image(model, 1), 1)
    with pytest.raises(ValueError, match="task 2 is not deployed"):
        dep(image(model, 2), 2)
    with pytest.raises(ValueError, match="task 1 at level 3 is not deployed"):
        dep(image(model, 1), 1, 3)
    with pytest.raises(ValueError, match="x: task 1 expects"):
        dep(torch.randn(1, 2, 16, 16), 1, 1)
    with pytest.raises(TypeError, match="not a dvn backbone"):
        dd.save(torch.nn.Conv2d(1, 1, 1), "x.safetensors")


def test_task_inputs_prepare_images_as_the_loader_does():
    from dvn.data import Split, loader
    g = torch.Generator().manual_seed(0)
    for dataset, shape, size, channels in [("fashion-mnist", (1, 28, 28), 32, 1),
                                           ("digits", (1, 8, 8), 28, 3),
                                           ("cifar10", (3, 32, 32), 64, 3)]:
        images = torch.randint(0, 256, (3, *shape), dtype=torch.uint8, generator=g)
        split = Split(images, torch.zeros(3, dtype=torch.int64), ("a",), "t", dataset)
        ld = loader(split, batch_size=3, train=False, size=size, channels=channels)
        c = shape[0]
        task = dd.TaskInput("t", c, shape[1:], size, channels, ld.mean[:c].tolist(),
                            ld.std[:c].tolist())
        assert torch.equal(task.prepare(images), ld.transform(images)), dataset
    with pytest.raises(ValueError, match="one value per native channel"):
        dd.TaskInput("t", 3, (8, 8), 8, 3, (0.5,), (0.5,))


def test_read_images_converts_resizes_and_names_bad_files(tmp_path):
    from PIL import Image
    g = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (40, 30, 3), dtype=torch.uint8, generator=g)
    Image.fromarray(pixels.numpy()).save(tmp_path / "a.png")
    Image.fromarray(pixels[:28, :28, 0].numpy()).save(tmp_path / "b.jpg")
    (tmp_path / "notes.txt").write_text("skipped: not an image suffix")
    task = dd.TaskInput("fmnist", 1, (28, 28), 32, 1, (0.286,), (0.353,))
    files = dd.image_files([str(tmp_path)])
    assert [os.path.basename(f) for f in files] == ["a.png", "b.jpg"]
    x = dd.read_images(files, task)
    assert x.shape == (2, 1, 32, 32) and x.dtype == torch.float32
    assert torch.all(x[:, :, :2] == x[0, 0, 0, 0])  # the 2-pixel zero margin, normalised
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="cannot read .*bad.png as an image"):
        dd.read_images([str(tmp_path / "bad.png")], task)
    with pytest.raises(FileNotFoundError, match="no such file or folder .*nope"):
        dd.image_files([str(tmp_path / "nope")])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="holds no .png/.jpg/.jpeg files"):
        dd.image_files([str(empty)])
