"""Multi-objective bilevel optimisation: hypergradient estimators against the closed form, the WC-MHGD λ-program,
preference sweeps that move along the front, and the named errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rankcraft.search.bilevel import (
    BilevelConfig,
    hypergradients,
    inverted_generational_distance,
    preference_alignment,
    project_simplex,
    quadratic_problem,
    run_bilevel,
    simplex_grid,
    solve_lower,
    wc_weights,
)

TARGETS = [[1.0, 0.0], [0.0, 1.0]]


def test_hypergradients_match_the_closed_form():
    mu = 0.3
    prob, _ = quadratic_problem(TARGETS, mu=mu)
    x = torch.tensor([0.4, -0.2], dtype=torch.float64)
    y = solve_lower(prob.g, x, torch.zeros(2, dtype=torch.float64), 200, 0.5)
    torch.testing.assert_close(y, x / (1 + mu))

    def phi(xx, c):  # Φ_s(x) with y*(x) substituted
        return 0.5 * ((xx / (1 + mu) - torch.tensor(c, dtype=torch.float64)) ** 2).sum() + 0.1 * torch.sin(xx).sum()

    exact = torch.stack([torch.autograd.functional.jacobian(lambda xx: phi(xx, c), x) for c in TARGETS])
    for est in ("cg", "neumann", "finite_difference"):
        H, vals = hypergradients(prob, x, y, BilevelConfig(estimator=est, neumann_steps=60))
        torch.testing.assert_close(H, exact, atol=1e-4, rtol=1e-4, msg=est)
    H1, _ = hypergradients(prob, x, y, BilevelConfig(estimator="first_order"))
    assert (H1 - exact).abs().max() > 0.1  # the implicit term is not negligible here


def test_simplex_projection_and_the_wc_program():
    p = project_simplex(torch.tensor([0.5, 2.0, -1.0], dtype=torch.float64))
    assert p.sum().item() == pytest.approx(1.0) and (p >= 0).all()
    H = torch.tensor([[1.0, 0.0], [-1.0, 0.0]], dtype=torch.float64)   # opposite hypergradients
    r = torch.tensor([0.5, 0.5], dtype=torch.float64)
    lam0 = wc_weights(H, r, torch.tensor([1.0, 1.0], dtype=torch.float64), torch.zeros(2, dtype=torch.float64), 0.0)
    torch.testing.assert_close(lam0, torch.tensor([0.5, 0.5], dtype=torch.float64), atol=1e-6, rtol=0)  # MGDA
    lam = wc_weights(H, r, torch.tensor([1.0, 3.0], dtype=torch.float64), torch.zeros(2, dtype=torch.float64), 10.0)
    assert lam[1] > 0.99  # large u: all weight on the worst weighted objective


def test_a_preference_sweep_moves_along_the_front():
    prob, phi = quadratic_problem(TARGETS)
    x0, y0 = torch.zeros(2, dtype=torch.float64), torch.zeros(2, dtype=torch.float64)
    cfg = BilevelConfig(iterations=150, lr=0.1, u=10.0)
    prefs = simplex_grid(5)
    vals = np.array([run_bilevel(prob, x0, y0, r, cfg).values for r in prefs])
    # the grid raises r_1: more weight on objective 1 → a lower Φ_1 and a higher Φ_2, monotonically
    assert np.all(np.diff(vals[:, 0]) < 0) and np.all(np.diff(vals[:, 1]) > 0)
    res = run_bilevel(prob, x0, y0, (0.5, 0.5), cfg)
    assert res.hypergradient_evaluations == 151 and res.stationarity < 0.05
    assert preference_alignment(res.values, (0.5, 0.5)) > 0.99
    grid = np.stack(np.meshgrid(np.linspace(-0.5, 1.5, 81), np.linspace(-0.5, 1.5, 81)), -1).reshape(-1, 2)
    from rankcraft.search.pareto import pareto_front_nd

    allv = phi(grid)
    front = allv[pareto_front_nd(allv)]
    # the sweep's points lie on the true front (within the grid's resolution), unlike the start point
    dist = np.sqrt(((vals[:, None, :] - front[None]) ** 2).sum(-1)).min(1)
    assert dist.max() < 0.02
    start = phi(np.zeros((1, 2)))
    assert np.sqrt(((start[:, None, :] - front[None]) ** 2).sum(-1)).min() > 0.1
    assert inverted_generational_distance(front, vals) < inverted_generational_distance(front, start)


def test_errors():
    prob, _ = quadratic_problem(TARGETS)
    z = torch.zeros(2, dtype=torch.float64)
    with pytest.raises(ValueError, match="strictly positive"):
        run_bilevel(prob, z, z, (1.0, 0.0), BilevelConfig(iterations=1))
    with pytest.raises(ValueError, match="2 objectives"):
        run_bilevel(prob, z, z, (0.3, 0.3, 0.4), BilevelConfig(iterations=1))
    with pytest.raises(ValueError, match="method"):
        BilevelConfig(method="pareto")
    with pytest.raises(ValueError, match="estimator"):
        BilevelConfig(estimator="magic")
