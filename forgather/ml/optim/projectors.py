"""Subspace projectors for low-rank gradient methods (APOLLO, GaLore-style optimizers).

A projector maps a 2-D gradient `G` (m x n) to a rank-`r` sketch along its smaller dimension and
back. With `d = min(m, n)` and the projector's matrix `P` (r x d):

- m <= n ("left"):  `project(G) = P @ G` (r x n),  `project_back(R) = P.T @ R` (m x n);
- m >  n ("right"): `project(G) = G @ P.T` (m x r), `project_back(R) = R @ P` (m x n).

So the sketch keeps the larger dimension: its "channels" (columns when left, rows when right) are
the channels of the gradient. `P` is refreshed by the first `project` call and then every
`update_interval` calls (a projector counts its calls; one call per optimizer step). The sketch is
computed in the gradient's dtype (the matrix is cast to it).

- `RandProjector`: Gaussian random projection, entries N(0, 1/r), so E[P.T @ P] = I and a sketch
  keeps norms in expectation (Johnson-Lindenstrauss). Refresh k draws `P` from a CPU generator
  seeded by (seed, k, shape), so a projector's whole state is (seed, steps): `load_state_dict`
  regenerates the current matrix bit for bit, on any device.
- `OnlinePCAProjector`: tracks the top-r subspace of the gradient with orthonormal rows in `P`.
  Its first refresh takes the exact top-r singular vectors (one SVD); each later refresh runs
  `power_iters` steps of subspace iteration warm-started from the current basis, `Y = X (X.T P.T)`
  then QR (X is G, or G.T when right), costing O(m n r) instead of an SVD. Row signs are aligned
  with the previous basis so the coordinates of a sketch stay comparable across refreshes. Its
  state is (steps, matrix).

Memory per projected (m x n) parameter: the r x min(m, n) matrix (RandProjector does not save it).
Subclass `Projector` and implement `_refresh(grad)` for another kind.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

_MIX = (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB, 0xD6E8FEB86659FD93)
_MASK = (1 << 64) - 1


def _check_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


class Projector:
    """Base class: a rank-`rank` projection along the smaller dimension of a 2-D gradient.

    Subclasses set `self.matrix` (rank x min(m, n)) in `_refresh(grad)`; the base class decides when
    to refresh (no matrix yet, a gradient of another shape, or every `update_interval` calls) and
    applies the matrix."""

    def __init__(self, rank: int, update_interval: int = 200):
        _check_positive_int("rank", rank)
        _check_positive_int("update_interval", update_interval)
        self.rank = rank
        self.update_interval = update_interval
        self.steps = 0  # project() calls so far
        self.matrix: Tensor | None = None
        self._left: bool | None = None

    @staticmethod
    def is_left(shape: torch.Size | tuple[int, ...]) -> bool:
        """True when a gradient of `shape` is projected from the left (rows <= columns)."""
        return shape[0] <= shape[1]

    def project(self, grad: Tensor) -> Tensor:
        """The rank-r sketch of `grad` (refreshing the matrix when due); counts one step."""
        if grad.ndim != 2:
            raise ValueError(f"a projector takes a 2-D gradient, got shape {tuple(grad.shape)}")
        if self.rank > min(grad.shape):
            raise ValueError(
                f"rank={self.rank} exceeds the smaller dimension of a gradient of shape "
                f"{tuple(grad.shape)}"
            )
        self._left = self.is_left(grad.shape)
        wrong_shape = self.matrix is None or self.matrix.shape != (self.rank, min(grad.shape))
        if wrong_shape or self.steps % self.update_interval == 0:
            self._refresh(grad)
        self.steps += 1
        matrix = self._matrix_like(grad)
        return matrix @ grad if self._left else grad @ matrix.T

    def project_back(self, low: Tensor) -> Tensor:
        """Map a sketch (r x n, or m x r) back to the last projected gradient's shape."""
        if self.matrix is None or self._left is None:
            raise RuntimeError("project_back before any project(): no matrix yet")
        matrix = self._matrix_like(low)
        return matrix.T @ low if self._left else low @ matrix

    def _matrix_like(self, like: Tensor) -> Tensor:
        assert self.matrix is not None
        return self.matrix.to(dtype=like.dtype, device=like.device)

    def _refresh(self, grad: Tensor) -> None:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """What resumes this projector exactly: `steps`, plus each subclass's own entries."""
        return {"steps": self.steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps = int(state["steps"])


class RandProjector(Projector):
    """Gaussian random projection (entries N(0, 1/rank)), redrawn every `update_interval` steps
    from a CPU generator seeded by (`seed`, refresh index, gradient shape)."""

    def __init__(self, rank: int, update_interval: int = 200, seed: int = 0):
        super().__init__(rank, update_interval)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed must be an integer, got {seed!r}")
        self.seed = seed

    @staticmethod
    def draw(seed: int, refresh: int, shape: tuple[int, ...], rank: int) -> Tensor:
        """The float32 CPU matrix (rank x min(shape)) of refresh number `refresh`."""
        mixed = 0
        for value, mult in zip((seed, refresh, shape[0], shape[1]), _MIX, strict=True):
            mixed = ((mixed ^ (value & _MASK)) * mult + 1) & _MASK
        generator = torch.Generator(device="cpu").manual_seed(mixed >> 1)
        matrix = torch.randn(rank, min(shape), generator=generator, dtype=torch.float32)
        return matrix.mul_(1.0 / math.sqrt(rank))

    def _refresh(self, grad: Tensor) -> None:
        refresh = self.steps // self.update_interval  # also right mid-interval, after a load
        matrix = self.draw(self.seed, refresh, tuple(grad.shape), self.rank)
        self.matrix = matrix.to(device=grad.device)

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "seed": self.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        steps, seed = int(state["steps"]), int(state.get("seed", self.seed))
        if (steps, seed) != (self.steps, self.seed):
            self.matrix = None  # redrawn (the current refresh's matrix) by the next project()
        self.steps, self.seed = steps, seed


class OnlinePCAProjector(Projector):
    """Tracks the top-`rank` subspace of the gradient: an SVD at the first refresh, then
    `power_iters` warm-started subspace-iteration steps + QR every `update_interval` steps."""

    def __init__(self, rank: int, update_interval: int = 200, power_iters: int = 1):
        super().__init__(rank, update_interval)
        _check_positive_int("power_iters", power_iters)
        self.power_iters = power_iters

    def _refresh(self, grad: Tensor) -> None:
        x = grad.detach()
        x = x if self._left else x.T  # d x k: the basis spans part of x's column space
        x = x.to(torch.float64 if x.dtype == torch.float64 else torch.float32)
        previous = self.matrix
        if previous is None or previous.shape != (self.rank, x.shape[0]):
            u, _, _ = torch.linalg.svd(x, full_matrices=False)
            basis = u[:, : self.rank].T
            dtype = grad.dtype
        else:
            basis = previous.to(x.dtype)
            dtype = previous.dtype
            for _ in range(self.power_iters):
                y = x @ (x.T @ basis.T)  # d x r
                if not bool(torch.isfinite(y).all()) or not bool(y.abs().amax() > 0):
                    break  # a zero or non-finite gradient: keep the current basis
                q, _ = torch.linalg.qr(y)
                signs = torch.sign((q.T * basis).sum(dim=1))  # align with the previous basis
                basis = q.T * torch.where(signs == 0, torch.ones_like(signs), signs)[:, None]
        self.matrix = basis.to(dtype=dtype, device=grad.device).contiguous()

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "matrix": self.matrix}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.matrix = state.get("matrix")


__all__ = ["OnlinePCAProjector", "Projector", "RandProjector"]
