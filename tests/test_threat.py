"""ThreatModel: projections checked against independent references, sampling, validation."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from scipy.optimize import linprog

from fortify import ThreatModel
from fortify.errors import ConfigError, InputError, ThreatModelError

torch.set_default_dtype(torch.float32)


def _ref_l1_box(z, x, eps, lo=0.0, hi=1.0):
    """Reference: bisection on the soft-threshold level of the KKT conditions (independent of the
    sort-based implementation)."""
    dz = z - x
    cap = torch.where(dz >= 0, hi - x, x - lo)
    lam_lo = torch.zeros(z.shape[0], 1, dtype=z.dtype)
    lam_hi = torch.full((z.shape[0], 1), float(dz.abs().max()) + 1, dtype=z.dtype)
    for _ in range(200):
        mid = (lam_lo + lam_hi) / 2
        g = (dz.abs() - mid).clamp(min=0).minimum(cap).sum(1, keepdim=True)
        lam_lo = torch.where(g > eps, mid, lam_lo)
        lam_hi = torch.where(g > eps, lam_hi, mid)
    return x + dz.sign() * (dz.abs() - lam_hi).clamp(min=0).minimum(cap)


def _brute_force_l1_box(z, x, eps, grid=41):
    """Brute force on 2-D vectors: best feasible point of a fine grid, refined by the exact
    objective. Returns the minimal squared distance found."""
    best = float("inf")
    xs = torch.linspace(0, 1, grid, dtype=torch.float64)
    for a, b in itertools.product(xs, xs):
        p = torch.stack([a, b])
        if (p - x).abs().sum() <= eps + 1e-12:
            best = min(best, float(((p - z) ** 2).sum()))
    return best


@pytest.mark.parametrize("seed", range(5))
def test_l1_projection_matches_reference(seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(16, 1, 5, 5, generator=g, dtype=torch.float64)
    z = x + torch.randn(x.shape, generator=g, dtype=torch.float64) * 0.7
    for eps in (0.0, 0.3, 2.0, 50.0):
        tm = ThreatModel("l1", eps)
        p = tm.project(z, x)
        ref = _ref_l1_box(z.reshape(16, -1), x.reshape(16, -1), eps).reshape(x.shape)
        assert torch.allclose(p, ref, atol=1e-9)
        assert tm.contains(p, x).all()


def test_l1_projection_is_optimal_on_tiny_vectors_by_brute_force():
    g = torch.Generator().manual_seed(1)
    for _ in range(20):
        x = torch.rand(1, 2, generator=g, dtype=torch.float64)
        z = x + torch.randn(1, 2, generator=g, dtype=torch.float64)
        eps = float(torch.rand(1, generator=g)) * 0.8
        p = ThreatModel("l1", eps).project(z, x)
        ours = float(((p - z) ** 2).sum())
        # the grid only contains feasible points, so it can never beat the exact projection
        assert ours <= _brute_force_l1_box(z[0], x[0], eps) + 1e-9


def test_l1_projection_first_order_optimality_via_lp():
    """At the projection p, no feasible direction decreases ||p - z||^2: min_q <p - z, q - p> over
    the feasible set (an LP) must be >= 0."""
    g = torch.Generator().manual_seed(2)
    d = 6
    for _ in range(10):
        x = torch.rand(1, d, generator=g, dtype=torch.float64)
        z = x + torch.randn(1, d, generator=g, dtype=torch.float64)
        eps = 0.5
        p = ThreatModel("l1", eps).project(z, x)[0].numpy()
        c = (p - z[0].numpy())
        # variables q = x + u - v, u, v >= 0, sum(u + v) <= eps, 0 <= q <= 1
        x0 = x[0].numpy()
        import numpy as np

        cost = np.concatenate([c, -c])
        a_ub = [np.ones(2 * d)]
        b_ub = [eps]
        bounds = [(0, 1 - x0[i]) for i in range(d)] + [(0, x0[i]) for i in range(d)]
        res = linprog(cost, A_ub=np.array(a_ub), b_ub=b_ub, bounds=bounds)
        assert res.status == 0
        assert res.fun + float(c @ x0) - float(c @ p) >= -1e-7


@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
def test_projection_feasible_idempotent_and_closest(norm):
    g = torch.Generator().manual_seed(3)
    x = torch.rand(32, 1, 4, 4, generator=g, dtype=torch.float64)
    z = (x + torch.randn(x.shape, generator=g, dtype=torch.float64)).clamp(-1, 2)
    tm = ThreatModel(norm, {"linf": 0.1, "l2": 0.8, "l1": 2.0}[norm])
    p = tm.project(z, x)
    assert tm.contains(p, x).all()
    assert torch.allclose(tm.project(p, x), p, atol=1e-8)
    # any random feasible point is no closer to z than the projection
    for _ in range(20):
        q = tm.random_init(x, g)
        assert (((p - z) ** 2).flatten(1).sum(1) <= ((q - z) ** 2).flatten(1).sum(1) + 1e-9).all()


def test_linf_projection_is_exact_clamp():
    x = torch.tensor([[0.05, 0.5, 0.98]])
    z = torch.tensor([[-0.5, 0.9, 1.5]])
    p = ThreatModel("linf", 0.1).project(z, x)
    assert torch.allclose(p, torch.tensor([[0.0, 0.6, 1.0]]))


def test_l2_projection_analytic_when_box_inactive():
    x = torch.full((1, 4), 0.5, dtype=torch.float64)
    z = x + torch.tensor([[0.3, 0.4, 0.0, 0.0]], dtype=torch.float64)  # ||d|| = 0.5
    p = ThreatModel("l2", 0.25).project(z, x)
    assert torch.allclose(p - x, torch.tensor([[0.15, 0.2, 0.0, 0.0]], dtype=torch.float64), atol=1e-8)


@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
def test_random_init_inside_and_spread(norm):
    x = torch.full((256, 10), 0.5)
    tm = ThreatModel(norm, 0.3)
    g = torch.Generator().manual_seed(0)
    r = tm.random_init(x, g)
    assert tm.contains(r, x).all()
    assert (tm.distance(r, x) > 0).all()
    r2 = tm.random_init(x, torch.Generator().manual_seed(0))
    assert torch.equal(r, r2)  # seeded


def test_distance_values():
    a = torch.zeros(1, 3)
    b = torch.tensor([[0.3, -0.4, 0.0]])
    assert float(ThreatModel("linf", 1).distance(a, b)) == pytest.approx(0.4)
    assert float(ThreatModel("l2", 1).distance(a, b)) == pytest.approx(0.5)
    assert float(ThreatModel("l1", 1).distance(a, b)) == pytest.approx(0.7)


def test_contains_rejects_outside_ball_and_box():
    x = torch.full((2, 3), 0.5)
    tm = ThreatModel("linf", 0.1)
    assert tm.contains(x + 0.05, x).all()
    assert not tm.contains(x + 0.2, x).any()
    tm2 = ThreatModel("linf", 1.0)
    assert not tm2.contains(x + 0.6, x).any()  # ball allows it, box does not


@pytest.mark.parametrize(
    "args",
    [("linf", -0.1), ("l3", 0.1), ("linf", float("nan")), ("l2", "big"), ("linf", 0.1, (1.0, 0.0))],
)
def test_invalid_threat_models_raise_typed_errors(args):
    with pytest.raises(ThreatModelError):
        ThreatModel(*args)


@pytest.mark.parametrize(
    "eps",
    [True, False, "0.1", b"0.1", float("inf"), float("-inf"), float("nan"), None, [0.1], torch.tensor(True)],
    ids=repr,
)
def test_eps_must_be_a_finite_real_number_not_bool_or_str(eps):
    """``eps=True`` used to become 1.0 and ``eps="0.1"`` was accepted; both are mistakes."""
    with pytest.raises(ConfigError) as info:
        ThreatModel("linf", eps)
    assert isinstance(info.value, ThreatModelError) and "eps" in str(info.value)


@pytest.mark.parametrize("bounds", [(0, True), ("0", "1"), (0.0, float("inf")), (float("nan"), 1.0), "01", (0, 1, 2)],
                         ids=repr)
def test_bounds_must_be_a_pair_of_finite_numbers(bounds):
    with pytest.raises(ThreatModelError, match="bounds"):
        ThreatModel("linf", 0.1, bounds)


def test_numeric_eps_types_are_accepted_as_float():
    for eps in (np.float32(0.25), np.int64(2), torch.tensor(0.5), 3):
        tm = ThreatModel("l2", eps)
        assert type(tm.eps) is float and tm.eps == float(eps)
    assert ThreatModel("linf", 0.1, (np.float64(-1), 1)).bounds == (-1.0, 1.0)
    with pytest.raises(ThreatModelError):
        ThreatModel(None, 0.1)  # type: ignore[arg-type]
    for spec in ("linf:nan", "linf:inf"):
        with pytest.raises(ThreatModelError):
            ThreatModel.parse(spec)


def test_parse():
    assert ThreatModel.parse("linf:0.3") == ThreatModel("linf", 0.3)
    assert str(ThreatModel.parse("L2=2")) == "l2:2"
    for bad in ("linf", "linf:abc", "lp:0.3", "linf:-1"):
        with pytest.raises(ThreatModelError):
            ThreatModel.parse(bad)


def test_shape_mismatch_is_input_error():
    with pytest.raises(InputError):
        ThreatModel("l2", 1).project(torch.zeros(2, 3), torch.zeros(2, 4))


# ---------------------------------------------------------------------------------------------- coerce
def test_coerce_accepts_the_three_spellings():
    ref = ThreatModel("linf", 0.3)
    assert ThreatModel.coerce(ref) is ref
    assert ThreatModel.coerce("linf:0.3") == ref
    assert ThreatModel.coerce("L2=2") == ThreatModel("l2", 2.0)
    assert ThreatModel.coerce({"norm": "linf", "eps": 0.3}) == ref
    assert ThreatModel.coerce({"norm": "l1", "eps": 10, "bounds": [-1, 1]}) == ThreatModel("l1", 10.0, (-1.0, 1.0))


@pytest.mark.parametrize("bad", [None, 0.3, ["linf", 0.3], "linf", "linf:x", "lp:0.3", "linf:-1", {"norm": "linf"},
                                 {"norm": "linf", "eps": 0.3, "radius": 1}, {"norm": "linf", "eps": "0.3"},
                                 {"norm": "linf", "eps": 0.3, "bounds": [1, 0]}])
def test_coerce_refuses_with_a_threat_model_error_naming_where(bad):
    with pytest.raises(ThreatModelError) as info:
        ThreatModel.coerce(bad, where="task.args.threat")
    assert str(info.value).startswith("task.args.threat")
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------------------------------------- per-feature
def _per_feature(norm, eps, d=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    lo = torch.rand(d, generator=g, dtype=torch.float64) * 0.3
    hi = lo + 0.2 + torch.rand(d, generator=g, dtype=torch.float64) * 0.5
    mask = torch.ones(d, dtype=torch.bool)
    mask[1::4] = False
    scale = 0.05 + torch.rand(d, generator=g, dtype=torch.float64)
    return ThreatModel(norm, eps, (lo, hi), mask=mask, scale=scale), g


def _ref_weighted(z, x, t):
    """Independent reference: KKT by bisection on the multiplier (l1: soft threshold lam / s_i; l2:
    shrink 1 / (1 + mu / s_i^2)), 200 steps, with the box [lo, hi] and the mask as zero-width box."""
    lo, hi = t.bounds
    s, free = t.scale, t.mask
    dz = z - x
    a = torch.where(free, (lo - x).clamp(max=0), torch.zeros_like(x))
    b = torch.where(free, (hi - x).clamp(min=0), torch.zeros_like(x))

    def at(m):
        if t.norm == "l1":
            return dz.sign() * (dz.abs() - m / s).clamp(min=0).minimum(torch.where(dz >= 0, b, -a))
        return torch.maximum(torch.minimum(dz / (1 + m / s**2), b), a)

    def size(d):
        return (d / s).abs().sum(1, keepdim=True) if t.norm == "l1" else (d / s).norm(dim=1, keepdim=True)

    m_lo = torch.zeros(z.shape[0], 1, dtype=z.dtype)
    m_hi = torch.full_like(m_lo, 1e6)
    for _ in range(200):
        mid = (m_lo + m_hi) / 2
        big = size(at(mid)) > t.eps
        m_lo, m_hi = torch.where(big, mid, m_lo), torch.where(big, m_hi, mid)
    return x + torch.where(size(at(torch.zeros_like(m_lo))) > t.eps, at(m_hi), at(torch.zeros_like(m_lo)))


@pytest.mark.parametrize("norm,eps", [("l1", 0.5), ("l1", 4.0), ("l2", 0.7), ("l2", 3.0), ("linf", 0.8)])
def test_per_feature_projection_matches_kkt_reference(norm, eps):
    t, g = _per_feature(norm, eps)
    lo, hi = t.bounds
    x = lo + (hi - lo) * torch.rand(32, 10, generator=g, dtype=torch.float64)
    z = x + torch.randn(x.shape, generator=g, dtype=torch.float64) * 0.6
    p = t.project(z, x)
    assert t.contains(p, x).all()
    assert torch.equal(p[:, ~t.mask], x[:, ~t.mask])
    if norm == "linf":
        ref = torch.maximum(torch.minimum(z, torch.minimum(x + eps * t.scale, hi)), torch.maximum(x - eps * t.scale, lo))
        ref = torch.where(t.mask, ref, x)
    else:
        ref = _ref_weighted(z, x, t)
    assert torch.allclose(p, ref, atol=1e-7)
    assert torch.allclose(t.project(p, x), p, atol=1e-9)  # idempotent


@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
def test_per_feature_random_init_is_inside_and_keeps_immutable(norm):
    t, g = _per_feature(norm, 1.0)
    lo, hi = t.bounds
    x = (lo + (hi - lo) * torch.rand(50, 10, generator=g, dtype=torch.float64)).float()
    p = t.random_init(x, g)
    assert t.contains(p, x).all()
    assert torch.equal(p[:, ~t.mask], x[:, ~t.mask])
    assert bool((p[:, t.mask] != x[:, t.mask]).any())


def test_scalar_threat_is_unchanged_and_per_feature_fields_default_off():
    t = ThreatModel("l2", 0.5)
    assert not t.per_feature and t.mask is None and t.scale is None and t.bounds == (0.0, 1.0)
    full = ThreatModel("l2", 0.5, (torch.zeros(4), torch.ones(4)))
    x = torch.rand(6, 4, dtype=torch.float64)
    z = x + torch.randn(6, 4, dtype=torch.float64)
    assert full.per_feature
    assert torch.allclose(full.project(z, x), t.project(z, x), atol=1e-12)  # same set, same answer
    assert torch.equal(full.distance(z, x), t.distance(z, x))


def test_coerce_mapping_with_lists_round_trips_and_compares_by_value():
    spec = {"norm": "linf", "eps": 0.2, "bounds": [[0.0, 0.1, 0.0], [1.0, 0.5, 1.0]], "mask": [1, 0, 1],
            "scale": [0.5, 1.0, 2.0]}
    t = ThreatModel.coerce(spec)
    assert t.mask.dtype == torch.bool and t.mask.tolist() == [True, False, True]
    assert ThreatModel.coerce(t.to_spec()) == t and hash(ThreatModel.coerce(t.to_spec())) == hash(t)
    assert t != ThreatModel("linf", 0.2) and t.with_eps(0.3).mask.tolist() == [True, False, True]
    assert ThreatModel.coerce("linf:0.3") == ThreatModel("linf", 0.3)


@pytest.mark.parametrize("kwargs,match", [
    ({"bounds": ([0.0, 1.0], [1.0, 0.5])}, "lo < hi"),
    ({"bounds": ([0.0, 0.0], [1.0, 1.0, 1.0])}, "broadcast"),
    ({"mask": [0, 2]}, "boolean"),
    ({"scale": [1.0, 0.0]}, "> 0"),
    ({"scale": [1.0, float("nan")]}, "finite"),
    ({"bounds": ([0.0, 0.0], [1.0, 1.0]), "mask": [True, False, True]}, "broadcast"),
])
def test_bad_per_feature_fields_are_threat_model_errors(kwargs, match):
    with pytest.raises(ThreatModelError, match=match):
        ThreatModel("linf", 0.1, **kwargs)


def test_per_feature_shape_and_bounds_checked_against_the_input():
    from fortify.validation import check_images

    t = ThreatModel("linf", 0.1, ([0.0, 0.2, 0.0], [1.0, 0.6, 1.0]))
    with pytest.raises(InputError, match="feature 1 must be in \\[0.2, 0.6\\]"):
        check_images(torch.tensor([[0.5, 0.9, 0.5]]), t.bounds)
    with pytest.raises(InputError, match="do not fit"):
        check_images(torch.rand(2, 4), t.bounds)
    with pytest.raises(InputError, match="does not fit"):
        t.check_sample_shape(torch.rand(2, 5))
    assert check_images(torch.tensor([[0.5, 0.4, 0.5]]), t.bounds) is not None


def test_schema_mask_holds_categorical_groups_fixed():
    from fortify.data.files import TableSchema
    from fortify.threat import schema_mask

    schema = TableSchema("y", ("age", "income"), (0.0, 0.0), (1.0, 1.0), {"city": ("a", "b", "c")})
    assert schema_mask(schema).tolist() == [True, True, False, False, False]
    assert schema_mask(schema, ["age"]).tolist() == [False, True, False, False, False]
    assert schema_mask(schema, categorical_fixed=False).tolist() == [True] * 5
    assert schema_mask(schema, ["city"], categorical_fixed=False).tolist() == [True, True, False, False, False]
    with pytest.raises(ThreatModelError, match="not columns"):
        schema_mask(schema, ["height"])
