"""dvn.compile_configs: one compiled graph per (task, level), equal to eager, no recompiles."""

import pytest
import torch
import torch.nn as nn
from torch._dynamo.testing import CompileCounter

import dvn
import dvn_kernels
from dvn import VirtualNetworks, compile_configs, convert_to_sliced


def tiny_wrn(units: int) -> torch.nn.Module:
    torch.manual_seed(0)
    return dvn.wrn(8, 1, units=units, num_classes=5, input_sizes=16)


def test_switching_among_all_configurations_never_recompiles():
    """k = 4: 16 configurations, called twice in an interleaved order: 16 compiles in all,
    each output equal to eager (torch.compile alone would hit its recompile limit of 8)."""
    model = tiny_wrn(4).eval()
    counter = CompileCounter()
    runner = compile_configs(model, backend=counter)
    x = torch.randn(2, 3, 16, 16)
    configs = list(model.networks.configs())
    with torch.no_grad():
        for _ in range(2):
            for task, level in configs:
                torch.testing.assert_close(runner(x, task, level), model(x, task=task, level=level),
                                           rtol=0, atol=0)
    assert counter.frame_count == len(configs) == 16
    assert torch._dynamo.config.recompile_limit <= 8  # what one shared code object would meet


def test_training_step_equals_eager():
    model = tiny_wrn(2).train()
    runner = compile_configs(model, backend="aot_eager")
    x = torch.randn(4, 3, 16, 16)
    labels = torch.randint(0, 5, (4,))
    for task, level in [(1, 1), (2, 2), (1, 2)]:
        grads = []
        for fn in (runner, lambda x, t, lv: model(x, task=t, level=lv)):
            model.zero_grad(set_to_none=True)
            loss = nn.functional.cross_entropy(fn(x, task, level), labels)
            loss.backward()
            grads.append({n: p.grad.clone() for n, p in model.named_parameters()
                          if p.grad is not None})
        assert grads[0].keys() == grads[1].keys() and grads[0]
        for name in grads[0]:
            torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-5, atol=1e-6,
                                       msg=lambda m: f"{name}: {m}")


def test_inductor_inference_equals_eager():
    model = tiny_wrn(2).eval()
    runner = compile_configs(model)  # inductor, the default
    x = torch.randn(1, 3, 16, 16)
    runner.warmup(x, configs=[(1, 1), (2, 2)])
    with torch.no_grad():
        for task, level in [(1, 1), (2, 2)]:
            torch.testing.assert_close(runner(x, task, level), model(x, task=task, level=level),
                                       rtol=1e-4, atol=1e-5)


def test_converted_model_sets_its_selection_outside_the_graph():
    """A VirtualModel hands its selection to the layers through a context variable, which
    torch.compile cannot set: the runner sets it around the compiled call."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.Conv2d(8, 8, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(8, 4))
    vm = convert_to_sliced(net, VirtualNetworks(2)).eval()
    counter = CompileCounter()
    runner = compile_configs(vm, backend=counter)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        for _ in range(2):
            for task, level in vm.networks.configs():
                torch.testing.assert_close(runner(x, task, level), vm(x, task=task, level=level),
                                           rtol=0, atol=0)
    assert counter.frame_count == 4


def test_the_runner_excludes_its_weights_from_kernel_caches():
    """compile_configs excludes the model's weights from the Triton op's weight cache (copies
    made in a CUDA graph's warm-up would stay in its pool), again after reset()."""
    from dvn_kernels.weight_cache import weight_cache_allowed
    model = tiny_wrn(2).eval()
    runner = compile_configs(model, backend="eager")
    assert not any(weight_cache_allowed(p) for p in model.parameters())
    for p in model.parameters():
        p.data = p.data.clone()  # new storage
    assert all(weight_cache_allowed(p) for p in model.parameters())
    runner.reset()
    assert not any(weight_cache_allowed(p) for p in model.parameters())


def test_bad_model_and_configuration():
    with pytest.raises(TypeError, match="model: expected a dvn model"):
        compile_configs(nn.Linear(2, 2))
    runner = compile_configs(tiny_wrn(2), backend=CompileCounter())
    with pytest.raises(ValueError, match="level: 3 does not exist"):
        runner(torch.randn(1, 3, 16, 16), 1, 3)


def test_other_backends_get_the_triton_ops_whole():
    """A non-Inductor backend compiles with functorch's Triton-op decomposition off (the
    switch that keeps a triton_op one node: torch 2.11's "cudagraphs" failed on the
    decomposed kernel-wrapper nodes); Inductor keeps it on, to see into the kernels."""
    seen = []

    def probe(gm, example_inputs):
        seen.append(torch._functorch.config.decompose_custom_triton_ops)
        return gm.forward
    torch._dynamo.register_backend(probe, name="dvn_test_probe")
    model = tiny_wrn(2).eval()
    runner = compile_configs(model, backend="dvn_test_probe")
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(runner(x, 1, 1), model(x, task=1, level=1))
    assert seen == [False]
    assert torch._functorch.config.decompose_custom_triton_ops  # restored after compiling
    assert compile_configs(model)._compile_args["backend"] == "inductor"


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton", "auto"])
def test_cudagraphs_backend_replays_the_triton_op(backend):
    """backend="cudagraphs" (seconds to compile, unlike Inductor) over the Triton op: every
    configuration replays a CUDA graph equal to eager, inference and a training step."""
    torch.manual_seed(0)
    model = dvn.wrn(8, 1, units=2, num_classes=5, input_sizes=16, backend=backend).cuda()
    runner = compile_configs(model.eval(), backend="cudagraphs")
    x = torch.randn(2, 3, 16, 16, device="cuda")
    with torch.no_grad():
        for _ in range(2):
            for task, level in model.networks.configs():
                got = runner(x, task, level).clone()
                torch.testing.assert_close(got, model(x, task=task, level=level), rtol=1e-3,
                                           atol=1e-3)
    model.train()
    runner(x, 1, 1).sum().backward()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.gpu
def test_cuda_graphs_replay_every_configuration():
    """On a GPU the default mode is reduce-overhead: each configuration replays a CUDA graph
    and equals eager. (Two of the four configurations: Inductor takes ~10 s per graph on the
    GPU machine, and the cudagraphs test above replays all four.)"""
    model = tiny_wrn(2).cuda().eval()
    runner = compile_configs(model)
    assert runner._compile_args["mode"] == "reduce-overhead"
    x = torch.randn(1, 3, 16, 16, device="cuda")
    with torch.no_grad():
        for _ in range(3):
            for task, level in [(1, 1), (2, 2)]:
                got = runner(x, task, level).clone()
                torch.testing.assert_close(got, model(x, task=task, level=level), rtol=1e-3,
                                           atol=1e-3)


@pytest.mark.gpu
def test_a_compiled_training_step_runs_each_pass_on_its_graph_choice():
    """``auto`` under torch.compile trains with the backward's own graph choice, not the
    forward backend's backward (on the H200 Triton's grad-weight pass then made level 1's
    captured step slower than level 2's). Choices set by hand: Triton forward, slice + cuDNN
    backward; the compiled step launches Triton's forward kernels and none of its backward
    ones, and its gradients equal eager's."""
    from dvn_kernels import backends
    from dvn_kernels.choice import Choice
    from dvn_kernels.triton import configs

    chooser = backends.gpu_chooser()
    saved = (dict(chooser._forward), dict(chooser._backward), chooser.measure)
    torch.manual_seed(0)
    model = dvn.wrn(8, 1, units=2, num_classes=5, input_sizes=16, backend="auto").cuda().train()
    x = torch.randn(2, 3, 16, 16, device="cuda")
    try:
        dvn_kernels.set_auto_measure(False)  # the fixed order, remembered per convolution
        model(x, task=1, level=1).sum().backward()
        want = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        for key in chooser._forward:
            if "triton" in chooser.candidates(key[0], x):
                chooser._forward[key] = Choice("triton", "triton")
        for key in chooser._backward:
            chooser._backward[key] = Choice("reference", "reference")
        model.zero_grad(set_to_none=True)
        runner = compile_configs(model, backend="cudagraphs")
        with configs.record_launches() as launches:
            runner(x, 1, 1).sum().backward()
        kernels = {launch.kernel for launch in launches}
        assert "_fwd_kernel" in kernels, kernels
        assert not {k for k in kernels if "grad" in k}, kernels
        for name, grad in want.items():
            torch.testing.assert_close(dict(model.named_parameters())[name].grad, grad,
                                       rtol=2e-2, atol=2e-2)
    finally:
        chooser._forward.clear()
        chooser._forward.update(saved[0])
        chooser._backward.clear()
        chooser._backward.update(saved[1])
        chooser.measure = saved[2]


@pytest.mark.gpu
def test_inference_configs_measure_auto_before_they_compile():
    """A trace cannot measure: the first call of an inference configuration on a GPU runs it
    eagerly once, so that the graph runs ``auto``'s measured graph choices."""
    from dvn_kernels import backends

    chooser = backends.gpu_chooser()
    torch.manual_seed(0)
    model = dvn.wrn(8, 1, units=2, num_classes=5, input_sizes=16, backend="auto").cuda().eval()
    runner = compile_configs(model, backend="cudagraphs")
    x = torch.randn(3, 3, 16, 16, device="cuda")  # a batch size no other test uses
    seen = {key for key in chooser._forward if key[1][0] == 3}
    with torch.no_grad():
        got = runner(x, 1, 1).clone()
        torch.testing.assert_close(got, model(x, task=1, level=1), rtol=1e-3, atol=1e-3)
    measured = {key for key in chooser._forward if key[1][0] == 3} - seen
    assert measured and all(key[4].type == "cuda" for key in measured)
