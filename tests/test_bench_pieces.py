"""The bench's new pieces, checked against real references: the device probes, XLA's FLOP counts
against a hand count, the torch.func meta-gradient against the twin's, the unroll argument, and
the rows that cannot run on a CPU (skipped with their reason, never faked).

No timing assertions (speed targets live in the bench).
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from parity import bench
from parity.bench import Setting
from parity.config import SEED_ALPHA, SEED_MAML, Config
from parity.init import init_alpha, init_params
from parity.tasks import sample_batch, sample_batches

TINY = Setting("seed-alpha", T=2, B=3, width=8)


def test_probes_on_the_cpu_return_positive_finite_rates():
    from jax_impl import bench as jax_bench

    mm = jax_bench.matmul_probe("cpu", n=128, repeats=2)
    cp = jax_bench.copy_probe("cpu", mb=4, iterations=2, repeats=2)
    assert math.isfinite(mm["flop_per_s"]) and mm["flop_per_s"] > 0 and mm["n"] == 128
    assert mm["flop_per_s"] == pytest.approx(2 * 128**3 / mm["seconds"])
    assert math.isfinite(cp["bytes_per_s"]) and cp["bytes_per_s"] > 0
    assert cp["bytes_per_s"] == pytest.approx(2 * 4 * 2**20 * 2 / cp["seconds"])  # read + write, 2 passes


def _forward_flops(setting: Setting, points: int) -> int:
    """Hand count of one task's MLP forward on ``points`` points: 2·in·out per weight, 1 per bias add."""
    sizes = (1, *setting.cfg().hidden, 1)
    layers = list(itertools.pairwise(sizes))
    return points * sum(2 * n_in * n_out + n_out for n_in, n_out in layers)


def test_cost_analysis_counts_the_forward_pass_like_the_hand_count():
    """XLA's FLOPs of the twin's MLP forward = the hand count (dots 2·M·N·K, bias adds), tanh aside."""
    import jax

    from jax_impl.model import mlp, to_arrays

    setting = Setting("seed-alpha", T=1, B=1, width=32)
    cfg = setting.cfg()
    params = to_arrays(init_params(cfg), "float32")
    x = to_arrays(np.linspace(-1, 1, 10, dtype=np.float32).reshape(10, 1), "float32")
    compiled = jax.jit(lambda p, x: mlp(p, x, cfg.model)).lower(params, x).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    # tanh is counted as a transcendental, not a flop; nothing else is left to count.
    assert cost["flops"] == pytest.approx(_forward_flops(setting, 10), rel=0.02)


def _exact(setting: Setting, device: str = "cpu") -> dict[str, float]:
    """The counts of the twin that offers them (capability cost_analysis)."""
    from parity.twins import COST_ANALYSIS, load

    twin = load("jax")
    assert COST_ANALYSIS in twin.capabilities
    return dict(twin.step_cost_exact(setting, device))


@pytest.mark.slow
def test_cost_analysis_of_a_meta_step_against_the_hand_count():
    """One second-order outer step ≈ B·(9·T·F_K + 3·F_Q) FLOPs, F = one forward's hand count.

    Reverse mode costs about twice its forward in matmuls (dW and dX per layer). An inner step is
    a forward and its gradient (3 F_K); the outer backward differentiates that again (about twice
    as much: 6 F_K), so 9 F_K per inner step; the query loss is a forward and its backward (3 F_Q).
    The matmuls dominate at width 32; bias adds, tanh' products, the loss and the optimisers add
    some 10-30%, and the first layer's input gradient (never needed) may be skipped: hence
    [0.8, 1.6]. A count off by a factor T, B or 2 (a rolled loop counted once, a missed backward)
    falls outside.
    """
    for setting in (Setting("seed-alpha", T=1, B=4, width=32), Setting("seed-alpha", T=3, B=2, width=32)):
        cfg = setting.cfg()
        f_k, f_q = _forward_flops(setting, cfg.k_support), _forward_flops(setting, cfg.k_query)
        hand = setting.B * (9 * setting.T * f_k + 3 * f_q)
        ratio = _exact(setting)["flops"] / hand
        assert 0.8 <= ratio <= 1.6, (setting.label, ratio)


@pytest.mark.slow
def test_extrapolated_cost_equals_the_directly_compiled_one():
    """step_cost's extrapolation in T and B against a compile at that T and B."""
    setting = Setting("seed-alpha", T=5, B=7, width=8)
    direct = _exact(setting)
    estimate = bench.step_cost(setting, "cpu", _exact, "xla")
    assert estimate["flops"] == pytest.approx(direct["flops"], rel=5e-3)  # T = 2 → 3 → 4 differ by ~0.5%
    assert estimate["bytes"] == pytest.approx(direct["bytes"], rel=0.05)


CASES = {
    "seed-alpha": SEED_ALPHA.replace(inner_steps=3, meta_batch=4, hidden=(8, 8)),
    "first-order": SEED_ALPHA.replace(inner_steps=2, meta_batch=3, hidden=(8, 8), first_order=True),
    "per-parameter": SEED_ALPHA.replace(inner_steps=2, meta_batch=3, hidden=(8, 8), alpha_mode="per_parameter"),
    "seed-maml-mse-relu": SEED_MAML.replace(inner_steps=2, meta_batch=2, loss="mse", activation="relu"),
}


@pytest.mark.parametrize("cfg", CASES.values(), ids=CASES.keys())
def test_torch_func_meta_gradient_equals_the_twin(cfg):
    """torch.func's functional_call + grad + vmap formulation = torch_impl.meta, to 1e-12 in float64."""
    from torch_impl import func_meta, meta
    from torch_impl.model import to_arrays

    cfg = cfg.replace(dtype="float64")
    params, alpha = to_arrays(init_params(cfg), "float64"), to_arrays(init_alpha(cfg), "float64")
    tasks = to_arrays(tuple(sample_batch(cfg, 0)[:4]), "float64")
    (loss, inner), (grads, grad_alpha) = meta.meta_value_and_grad(params, alpha, tasks, cfg)
    (f_loss, f_inner), (f_grads, f_grad_alpha) = func_meta.meta_value_and_grad(params, alpha, tasks, cfg)
    assert abs(float(loss - f_loss)) <= 1e-12 and float((inner - f_inner).abs().max()) <= 1e-12
    assert sorted(grads) == sorted(f_grads)
    for name in grads:
        assert float((grads[name] - f_grads[name]).abs().max()) <= 1e-12, name
    pairs = [(grad_alpha[k], f_grad_alpha[k]) for k in grad_alpha] if cfg.alpha_mode == "per_parameter" else []
    pairs = pairs or [(grad_alpha, f_grad_alpha)]
    for a, b in pairs:
        assert float((a - b).abs().max()) <= 1e-12
    # The comparison is not of two zeros: the gradients are there.
    assert max(float(g.abs().max()) for g in grads.values()) > 1e-3


# Classification episodes (synthetic images) for the conv net, small enough for the non-slow suite.
CONV = Config(family="classification", model="conv", dataset="synthetic").replace(
    depth=2, width=3, n_way=3, k_support=2, k_query=2, image_size=8, meta_batch=2, alpha_init=0.1
)
CONV_CASES = {
    "max-pool-all": CONV,
    "stride-2-steps": CONV.replace(pool="stride", inner_steps=2, meta_batch=3),
    "head-only": CONV.replace(adapt="head"),
    "no-bn-first-order": CONV.replace(adapt="no_bn", first_order=True),
    "per-parameter": CONV.replace(alpha_mode="per_parameter", bn_eps=1e-5),
}


@pytest.mark.parametrize("cfg", CONV_CASES.values(), ids=CONV_CASES.keys())
def test_torch_func_conv_meta_gradient_equals_the_twin(cfg):
    """The conv net in torch.func (functional_call + grad + vmap, batch statistics) = torch_impl.meta,
    to 1e-10 of the gradient's scale in float64 (second order through batch norm's γ, β included)."""
    from torch_impl import func_meta, meta
    from torch_impl.model import to_arrays

    cfg = cfg.replace(dtype="float64")
    params, alpha = to_arrays(init_params(cfg), "float64"), to_arrays(init_alpha(cfg), "float64")
    tasks = to_arrays(tuple(sample_batch(cfg, 0)[:4]), "float64")
    (loss, inner), (grads, grad_alpha) = meta.meta_value_and_grad(params, alpha, tasks, cfg)
    (f_loss, f_inner), (f_grads, f_grad_alpha) = func_meta.meta_value_and_grad(params, alpha, tasks, cfg)
    assert float(abs(loss - f_loss)) <= 1e-10 * float(abs(loss))
    assert float((inner - f_inner).abs().max()) <= 1e-10 * float(inner.abs().max())
    assert sorted(grads) == sorted(f_grads)
    scale = max(float(g.abs().max()) for g in grads.values())
    assert scale > 1e-3  # the comparison is not of two zeros
    for name in grads:
        assert float((grads[name] - f_grads[name]).abs().max()) <= 1e-10 * scale, name
    pairs = [(grad_alpha[k], f_grad_alpha[k]) for k in grad_alpha] if cfg.alpha_mode == "per_parameter" else []
    for a, b in pairs or [(grad_alpha, f_grad_alpha)]:
        assert float((a - b).abs().max()) <= 1e-10 * max(float(a.abs().max()), 1e-12)


def test_torch_func_refuses_what_it_does_not_build():
    from torch_impl import func_meta

    assert func_meta.supports(SEED_ALPHA) is None
    assert func_meta.supports(CONV) is None
    assert "rematerialisation" in (func_meta.supports(SEED_ALPHA.replace(remat=True)) or "")
    assert "'adam'" in (func_meta.supports(CONV.replace(inner_optimizer="adam")) or "")
    assert "multi-step" in (func_meta.supports(CONV.replace(alpha_mode="per_layer_step")) or "")


@pytest.mark.slow
def test_jax_unroll_is_an_argument_with_the_same_result():
    """train_chunk(..., unroll=T) = unroll=0 in float64, and no module global is left to patch."""
    from jax_impl import meta
    from parity.twins import load

    assert not hasattr(meta, "UNROLL_UP_TO")
    cfg = SEED_ALPHA.replace(inner_steps=3, meta_batch=2, hidden=(8, 8), dtype="float64")
    twin = load("jax", "float64")
    to = twin.model.to_arrays
    state = twin.train.init_state(to(init_params(cfg), "float64"), to(init_alpha(cfg), "float64"), cfg)
    tasks = to(tuple(sample_batches(cfg, 0, 2)[:4]), "float64")
    rolled, m_rolled = twin.train.train_chunk(state, tasks, cfg)
    straight, m_straight = twin.train.train_chunk(state, tasks, cfg, unroll=3)
    for name in rolled.params:
        np.testing.assert_allclose(np.asarray(straight.params[name]), np.asarray(rolled.params[name]), atol=1e-13)
    np.testing.assert_allclose(np.asarray(m_straight["outer_loss"]), np.asarray(m_rolled["outer_loss"]), atol=1e-13)
    assert not np.array_equal(np.asarray(rolled.params["w0"]), np.asarray(state.params["w0"]))


def test_gpu_rows_on_a_cpu_are_skipped_with_their_reason():
    result = bench.run_bench(settings=[(TINY, ["torch-graph"])], repeats=1, pin=False, flops=False)
    assert result["rows"] == []
    assert result["skipped"] == [{"impl": "torch-graph", "setting": TINY.label, "reason": "CUDA graphs need a GPU"}]


def test_time_budget_skips_the_settings_it_cannot_start():
    settings = [(TINY, ["torch"]), (Setting("seed-alpha", T=1, B=2, width=8), ["torch"])]
    result = bench.run_bench(settings=settings, repeats=1, pin=False, flops=False, time_budget_s=1e-9)
    assert result["rows"] == [] and len(result["skipped"]) == 2
    assert all("time budget" in s["reason"] for s in result["skipped"])


def test_gpu_plan():
    quick = bench.plan(quick=True, device="gpu")
    everything = ["seed-loop", "jax", "jax-unrolled", "jax-cpu", "torch", "torch-graph", "torch-func"]
    assert [row.name for row in bench.table()] == everything
    assert quick[0] == (bench.SEED_ALPHA_POINT, everything)
    assert quick[1:] == [
        (bench.LONG_POINT, ["jax", "torch", "torch-func"]),
        (bench.BIG_BATCH_POINT, ["jax", "torch", "torch-func"]),
    ]
    full = bench.plan(quick=False, device="gpu")
    assert [s for s, _ in full[:3]] == [s for s, _ in quick]  # the goals' settings first
    assert len({s for s, _ in full}) == len(full) == 16
    for s, impls in full:
        assert s.T <= 100 and s.B <= 65_536 and s.width in (32, 128)
        assert ("seed-loop" in impls) == (s.B == 1 and s.T <= 100)
        assert ("torch-graph" in impls) == (s.B <= 256)
        assert ("jax-cpu" in impls) == (s == bench.SEED_ALPHA_POINT)


@pytest.mark.parametrize("remat", [False, True], ids=["plain", "remat"])
def test_single_task_fast_path_equals_the_batched_form(remat):
    """The PyTorch twin's unbatched path for B = 1 = the batched form on the same task twice (float64).

    Two copies of one task have the mean of two equal values: the batched result must equal the
    one-task result (to rounding); shapes keep the task axis.
    """
    import torch

    from torch_impl import meta
    from torch_impl.model import to_arrays

    cfg = SEED_ALPHA.replace(inner_steps=3, dtype="float64", remat=remat)
    params, alpha = to_arrays(init_params(cfg), "float64"), to_arrays(init_alpha(cfg), "float64")
    one = to_arrays(tuple(sample_batch(cfg, 0)[:4]), "float64")
    assert one[0].shape[0] == 1
    two = tuple(torch.cat([t, t]) for t in one)
    (loss1, inner1), (g1, ga1) = meta.meta_value_and_grad(params, alpha, one, cfg)
    (loss2, inner2), (g2, ga2) = meta.meta_value_and_grad(params, alpha, two, cfg)
    assert abs(float(loss1 - loss2)) <= 1e-14 and float((inner1 - inner2).abs().max()) <= 1e-14
    for name in g1:
        assert float((g1[name] - g2[name]).abs().max()) <= 1e-14, name
    assert abs(float(ga1 - ga2)) <= 1e-14 and abs(float(ga1)) > 1e-3
    adapted, losses = meta.adapt(params, alpha, one[0], one[1], cfg)
    assert losses.shape == (1, 3) and all(adapted[k].shape == (1, *params[k].shape) for k in params)


def test_a_failing_row_is_skipped_with_its_error_and_the_others_are_measured(monkeypatch):
    from torch_impl import bench as torch_bench

    def prepare(*args, **kwargs):
        raise RuntimeError("Expected all tensors to be on the same device\nsecond line")

    monkeypatch.setattr(torch_bench, "prepare", prepare)  # the torch row's prepare, looked up when it runs
    result = bench.run_bench(settings=[(TINY, ["seed-loop", "torch"])], repeats=1, pin=False, flops=False)
    assert [r["impl"] for r in result["rows"]] == ["seed-loop"]
    assert result["skipped"] == [
        {
            "impl": "torch",
            "setting": TINY.label,
            "reason": "failed: RuntimeError: Expected all tensors to be on the same device",
        }
    ]
