"""Multi-objective bilevel optimisation: WC-MHGD (weighted-Chebyshev multi-hyper-gradient descent) and baselines.

Problem: ``min_x Φ(x) = [Φ_1 … Φ_S](x)``, ``Φ_s(x) = f_s(x, y*(x))``, ``y*(x) = argmin_y g(x, y)``; a preference
``r`` on the strictly positive simplex says which trade-off to reach. Reconstruction: ``shared/papers/wave2-specs.md``
§8 (the paper's method text was not readable; the λ-program follows the code-verified predecessor WC-MGDA), notes in
docs/bilevel.md.

One iteration, with ``x : [n]``, ``y : [m]``:

1. **Lower level**: ``D`` gradient steps on ``g(x, ·)`` from the previous ``y`` (warm start), step ``ll_lr``.
2. **Hypergradients** ``h_s : [n]`` of every objective (``estimator``):

   * ``cg`` (exact for a strongly convex lower level): ``h_s = ∇_x f_s − ∇²_{xy} g · v_s`` with
     ``∇²_{yy} g · v_s = ∇_y f_s`` solved by ``cg_steps`` conjugate-gradient steps on Hessian-vector products
     (``torch.autograd.grad`` twice); ``neumann``: ``v_s = η Σ_{q<Q} (I − η ∇²_{yy} g)^q ∇_y f_s``;
   * ``finite_difference``: ``∇²_{xy} g · v`` replaced by ``(∇_x g(x, y + εv) − ∇_x g(x, y − εv)) / 2ε`` with
     ``v`` from CG (the DARTS-style estimate, for models whose mixed second derivatives are expensive);
   * ``first_order``: ``h_s = ∇_x f_s`` (the implicit term dropped) — the cheap choice for deep, non-convex lower
     levels, outside the theory.

3. **Direction** ``d = Σ_s λ_s r_s h_s`` with ``λ`` on the simplex (``method``):

   * ``wc`` (WC-MHGD): ``λ = argmin_{λ∈Δ} ½ ‖G̃^{1/2} λ‖² − u · λᵀ w``, with ``w_s = r_s (Φ_s − z_s)`` (``z``: the
     ideal point, 0 for losses), ``G̃`` the Gram matrix of ``{r_s h_s}`` divided by its largest diagonal entry (scale
     free), solved by ``qp_steps`` projected-gradient steps (step 1/L). ``u → 0`` is MGDA on the preference-weighted
     hypergradients (Pareto stationarity); large ``u`` puts all weight on the worst weighted objective (the Chebyshev
     subgradient, steering toward ``r``);
   * ``mgda``: ``u = 0`` and ``r = 1/S``; ``linear``: ``λ = 1`` (the linear scalarisation ``Σ r_s Φ_s``).

4. **Update** ``x ← x − α d``.

Everything is plain torch on small tensors; a :class:`BilevelProblem` supplies ``g`` and the ``f_s`` as functions of
``(x, y)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch

Estimator = Literal["cg", "neumann", "finite_difference", "first_order"]
Method = Literal["wc", "mgda", "linear"]


@dataclass
class BilevelProblem:
    """``g(x, y) -> scalar`` (lower level) and ``objectives[s](x, y) -> scalar`` (upper level)."""

    g: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    objectives: Sequence[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]


@dataclass
class BilevelConfig:
    method: Method = "wc"
    estimator: Estimator = "cg"
    u: float = 10.0
    iterations: int = 200
    lr: float = 0.05             # α, upper level
    ll_steps: int = 10           # D
    ll_lr: float = 0.5
    cg_steps: int = 20           # Q
    neumann_steps: int = 20
    neumann_lr: float = 0.5      # η
    fd_eps: float = 0.01
    qp_steps: int = 50
    ideal: Sequence[float] | None = None   # z (default 0 for every objective)

    def __post_init__(self):
        if self.method not in ("wc", "mgda", "linear"):
            raise ValueError(f"method must be wc, mgda or linear, got {self.method!r}")
        if self.estimator not in ("cg", "neumann", "finite_difference", "first_order"):
            raise ValueError(f"estimator must be cg, neumann, finite_difference or first_order, got "
                             f"{self.estimator!r}")
        if self.u < 0:
            raise ValueError("u must be >= 0")


@dataclass
class BilevelResult:
    x: torch.Tensor
    y: torch.Tensor
    values: np.ndarray                     # [S] final Φ
    history: list[np.ndarray] = field(default_factory=list)   # Φ per iteration
    lambdas: np.ndarray | None = None      # final λ
    stationarity: float = float("nan")     # ‖Σ λ_s r_s h_s‖ at the end
    hypergradient_evaluations: int = 0


# ------------------------------------------------------------------------------------------------ pieces
def solve_lower(g, x: torch.Tensor, y: torch.Tensor, steps: int, lr: float) -> torch.Tensor:
    """``steps`` gradient steps on ``g(x, ·)`` from ``y`` (``x`` held fixed)."""
    y = y.detach().clone()
    xd = x.detach()
    for _ in range(steps):
        y.requires_grad_(True)
        (gy,) = torch.autograd.grad(g(xd, y), y)
        y = (y - lr * gy).detach()
    return y


def _hvp_yy(g, x, y, v):
    y = y.detach().requires_grad_(True)
    (gy,) = torch.autograd.grad(g(x.detach(), y), y, create_graph=True)
    (h,) = torch.autograd.grad(gy, y, grad_outputs=v)
    return h


def _cg(g, x, y, b, steps):
    """Solve ``∇²_{yy} g · v = b`` by conjugate gradients."""
    v = torch.zeros_like(b)
    r = b.clone()
    p = r.clone()
    rs = r @ r
    for _ in range(steps):
        if rs.sqrt() < 1e-10:
            break
        hp = _hvp_yy(g, x, y, p)
        a = rs / (p @ hp).clamp_min(1e-30)
        v = v + a * p
        r = r - a * hp
        rs_new = r @ r
        p = r + (rs_new / rs) * p
        rs = rs_new
    return v


def _neumann(g, x, y, b, steps, eta):
    v = b.clone()
    term = b.clone()
    for _ in range(steps):
        term = term - eta * _hvp_yy(g, x, y, term)
        v = v + term
    return eta * v


def _cross(g, x, y, v, estimator, eps):
    """``∇²_{xy} g · v : [n]`` (exact or by central differences)."""
    if estimator == "finite_difference":
        xs = x.detach().requires_grad_(True)
        (gp,) = torch.autograd.grad(g(xs, y + eps * v), xs)
        xs = x.detach().requires_grad_(True)
        (gm,) = torch.autograd.grad(g(xs, y - eps * v), xs)
        return (gp - gm) / (2 * eps)
    xs = x.detach().requires_grad_(True)
    ys = y.detach().requires_grad_(True)
    (gy,) = torch.autograd.grad(g(xs, ys), ys, create_graph=True)
    (cross,) = torch.autograd.grad(gy, xs, grad_outputs=v, allow_unused=True)
    return torch.zeros_like(x) if cross is None else cross


def hypergradients(problem: BilevelProblem, x: torch.Tensor, y: torch.Tensor, cfg: BilevelConfig
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(H : [S, n] hypergradients, Φ : [S] values)`` at ``(x, y)`` (``y`` ≈ ``y*(x)``)."""
    hs, vals = [], []
    for f in problem.objectives:
        xs = x.detach().requires_grad_(True)
        ys = y.detach().requires_grad_(True)
        val = f(xs, ys)
        fx, fy = torch.autograd.grad(val, (xs, ys), allow_unused=True)
        fx = torch.zeros_like(x) if fx is None else fx
        fy = torch.zeros_like(y) if fy is None else fy
        if cfg.estimator == "first_order":
            h = fx
        else:
            v = _neumann(problem.g, x, y, fy, cfg.neumann_steps, cfg.neumann_lr) if cfg.estimator == "neumann" \
                else _cg(problem.g, x, y, fy, cfg.cg_steps)
            h = fx - _cross(problem.g, x, y, v, cfg.estimator, cfg.fd_eps)
        hs.append(h.detach())
        vals.append(float(val.detach()))
    return torch.stack(hs), torch.tensor(vals, dtype=x.dtype)


def project_simplex(v: torch.Tensor) -> torch.Tensor:
    """Euclidean projection onto the probability simplex (sort-based)."""
    u, _ = torch.sort(v, descending=True)
    css = torch.cumsum(u, 0) - 1
    k = torch.arange(1, len(v) + 1, dtype=v.dtype)
    rho = int(torch.nonzero(u - css / k > 0).max())
    theta = css[rho] / (rho + 1)
    return (v - theta).clamp_min(0)


def wc_weights(H: torch.Tensor, r: torch.Tensor, values: torch.Tensor, ideal: torch.Tensor, u: float,
               steps: int = 50) -> torch.Tensor:
    """λ of the WC-MHGD program (module docstring) by projected gradient on the simplex."""
    S = H.shape[0]
    R = r.unsqueeze(1) * H                                   # rows r_s h_s
    G = R @ R.t()
    scale = G.diagonal().max().clamp_min(1e-30)
    G = G / scale
    w = r * (values - ideal)
    w = w / w.abs().max().clamp_min(1e-30)                   # scale free in the objectives' units too
    lam = torch.full((S,), 1.0 / S, dtype=H.dtype)
    L = float(torch.linalg.eigvalsh(G).max().clamp_min(1e-6))
    for _ in range(steps):
        grad = G @ lam - u * w
        lam = project_simplex(lam - grad / L)
    return lam


# ------------------------------------------------------------------------------------------------ the loop
def run_bilevel(problem: BilevelProblem, x0: torch.Tensor, y0: torch.Tensor, r: Sequence[float],
                cfg: BilevelConfig) -> BilevelResult:
    """Optimise ``x`` for preference ``r`` (module docstring)."""
    S = len(problem.objectives)
    if len(r) != S:
        raise ValueError(f"preference has {len(r)} entries for {S} objectives")
    r_t = torch.tensor(r, dtype=x0.dtype)
    if (r_t <= 0).any():
        raise ValueError(f"a preference must be strictly positive, got {list(r)}")
    r_t = r_t / r_t.sum()
    if cfg.method == "mgda":
        r_t = torch.full((S,), 1.0 / S, dtype=x0.dtype)
    ideal = torch.tensor(cfg.ideal if cfg.ideal is not None else [0.0] * S, dtype=x0.dtype)
    x, y = x0.detach().clone(), y0.detach().clone()
    history, lam, H = [], None, None
    evals = 0
    for _ in range(cfg.iterations):
        y = solve_lower(problem.g, x, y, cfg.ll_steps, cfg.ll_lr)
        H, vals = hypergradients(problem, x, y, cfg)
        evals += 1
        history.append(vals.numpy().copy())
        if cfg.method == "linear":
            lam = torch.ones(S, dtype=x.dtype)
        else:
            lam = wc_weights(H, r_t, vals, ideal, 0.0 if cfg.method == "mgda" else cfg.u, cfg.qp_steps)
        d = (lam * r_t) @ H
        x = (x - cfg.lr * d).detach()
    y = solve_lower(problem.g, x, y, cfg.ll_steps, cfg.ll_lr)
    H, vals = hypergradients(problem, x, y, cfg)
    lam_np = lam.numpy() if lam is not None else None
    stat = float(((lam * r_t) @ H).norm()) if lam is not None else float("nan")
    return BilevelResult(x, y, vals.numpy(), history, lam_np, stat, evals + 1)


def simplex_grid(points: int, S: int = 2, low: float = 0.05) -> list[tuple[float, ...]]:
    """Preferences on a grid of the strictly positive simplex (``points`` per edge; 2 and 3 objectives)."""
    if S == 2:
        return [(float(a), float(1 - a)) for a in np.linspace(low, 1 - low, points)]
    if S == 3:
        out = []
        for i in range(points):
            for j in range(points - i):
                a = low + (1 - 3 * low) * i / max(points - 1, 1)
                b = low + (1 - 3 * low) * j / max(points - 1, 1)
                c = 1 - a - b
                if c >= low - 1e-9:
                    out.append((a, b, c))
        return out
    raise ValueError("simplex_grid supports 2 or 3 objectives")


def inverted_generational_distance(front: np.ndarray, found: np.ndarray) -> float:
    """Mean over the true front's points of the distance to the nearest found point (lower is better)."""
    front, found = np.asarray(front, dtype=float), np.asarray(found, dtype=float)
    d = np.sqrt(((front[:, None, :] - found[None, :, :]) ** 2).sum(-1))
    return float(d.min(1).mean())


def preference_alignment(values: np.ndarray, r: Sequence[float], ideal: Sequence[float] | None = None) -> float:
    """Cosine between ``r ⊙ (Φ − z)`` and the all-ones vector (1: the weighted gaps are equal, as a Chebyshev
    solution for ``r`` has them)."""
    v = np.asarray(r, dtype=float) * (np.asarray(values, dtype=float) - np.asarray(ideal or [0.0] * len(r)))
    return float(v.sum() / (np.linalg.norm(v) * np.sqrt(len(v)) + 1e-30))


# ------------------------------------------------------------------------------------------------ a problem with a known front
def quadratic_problem(targets: Sequence[Sequence[float]], *, mu: float = 0.1, wave: float = 0.1
                      ) -> tuple[BilevelProblem, Callable[[np.ndarray], np.ndarray]]:
    """The synthetic test of ``wave2-specs.md`` §8(d): ``g = ½‖y − x‖² + (μ/2)‖y‖²`` (so ``y*(x) = x / (1 + μ)``),
    ``f_s = ½‖y − c_s‖² + wave · Σ sin(x)`` for the targets ``c_s``. Returns the problem and ``Φ(X) : [N, S]`` of
    a batch of points ``X : [N, n]`` in closed form (for the true front on a grid)."""
    C = [torch.tensor(c, dtype=torch.float64) for c in targets]

    def g(x, y):
        return 0.5 * ((y - x) ** 2).sum() + 0.5 * mu * (y ** 2).sum()

    def make(c):
        return lambda x, y: 0.5 * ((y - c) ** 2).sum() + wave * torch.sin(x).sum()

    def phi(X: np.ndarray) -> np.ndarray:
        Y = X / (1 + mu)
        return np.stack([0.5 * ((Y - np.asarray(c)) ** 2).sum(1) + wave * np.sin(X).sum(1) for c in targets], 1)

    return BilevelProblem(g, [make(c) for c in C]), phi
