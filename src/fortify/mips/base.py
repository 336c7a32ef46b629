"""The MIPS index protocol: ``index = Index.build(V)``; ``index.search(U, k, budget) -> SearchResult``.

Maximum inner product search: for each query row ``u`` of ``U (q, d)`` return the ``k`` ids ``i`` with the
largest ``<v_i, u>`` over the rows of ``V (n, d)``. Exact search costs ``n`` inner products (``2 n d`` flops)
per query; every approximate index here screens candidates cheaply and reranks ``budget``-many of them with
exact inner products, so its cost is measured, not assumed.

* ``build(V, **options)``: a classmethod; ``V`` a float ``(n, d)`` array or tensor, finite, ``n >= 1``.
  The index keeps one float32 copy of ``V`` (possibly permuted or augmented, never a second copy).
* ``search(U, k=10, budget=None)``: ``U (q, d)`` finite, same ``d``; ``1 <= k <= n``; ``budget`` the
  index's own speed/recall knob (probes, pops, candidates, beam width; ``None``: its default). Returns
  :class:`SearchResult` with ``ids (q, k)`` int64 and ``scores (q, k)`` float32 (exact inner products,
  descending) and a :class:`SearchCost`: inner products per query (mean and per query), flops and wall time.
* ``full_budget``: the budget at which the index answers exactly (recall 1.0); ``budgets()``: an ascending
  ladder of budgets ending at ``full_budget`` (for sweeps and the selector).
* ``save(path)`` / ``load(path)``: one ``.npz`` file (``allow_pickle=False``), written atomically; a
  corrupt, truncated or foreign file is a :class:`fortify.errors.DataFileError`.

:class:`Index` is the template: ``build`` and ``search`` are final (validate, time, count) and subclasses
write ``_fit``, ``_search``, ``_arrays`` and ``_restore``. Typed errors (``fortify.errors``): dimension
mismatch, ``k > n``, NaN/inf vectors, an empty ``V`` and a bad ``budget`` are :class:`InputError` /
:class:`ConfigError`; an unknown name is :class:`UnknownNameError` (from the registry).
"""
from __future__ import annotations

import abc
import json
import os
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import numpy as np

from fortify.errors import ConfigError, DataFileError, InputError
from fortify.io import atomic_target
from fortify.registry import Registry

INDEXES: Registry = Registry("mips index")
FORMAT = "fortify-mips-index/1"
I = TypeVar("I", bound="Index")


@dataclass(frozen=True)
class SearchCost:
    """What a search cost: ``inner_products`` (mean per query of exact ``d``-dimensional inner products,
    screening included where it is one), ``per_query (q,)`` the same per query, ``flops`` (total, ``2 d`` per
    inner product plus screening work), ``seconds`` (wall time of the whole batch)."""

    inner_products: float
    per_query: np.ndarray
    flops: float
    seconds: float

    @property
    def queries_per_second(self) -> float:
        return float(len(self.per_query) / self.seconds) if self.seconds > 0 else float("inf")


@dataclass(frozen=True)
class SearchResult:
    """``ids (q, k)`` int64 rows of ``V``, ``scores (q, k)`` float32 exact inner products (descending), cost."""

    ids: np.ndarray
    scores: np.ndarray
    cost: SearchCost


def as_matrix(x: object, name: str) -> np.ndarray:
    """``x`` (array or tensor) as a C-contiguous float32 ``(rows, d)`` matrix, finite; InputError otherwise."""
    try:
        import torch

        if isinstance(x, torch.Tensor):
            x = x.detach().cpu().numpy()
    except ImportError:  # pragma: no cover
        pass
    if not isinstance(x, np.ndarray):
        raise InputError(f"{name} must be a numpy array or torch tensor (rows, d), got {type(x).__name__}")
    if x.ndim != 2:
        raise InputError(f"{name} must be 2-D (rows, d), got shape {tuple(x.shape)}")
    if not np.issubdtype(x.dtype, np.floating):
        raise InputError(f"{name} must be floating point, got dtype {x.dtype}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise InputError(f"{name} is empty (shape {tuple(x.shape)}): an index needs at least one vector of d >= 1")
    out = np.ascontiguousarray(x, dtype=np.float32)
    if not np.isfinite(out).all():
        bad = int(np.flatnonzero(~np.isfinite(out).all(axis=1))[0])
        raise InputError(f"{name} has NaN or inf values (first in row {bad})")
    return out


def topk_rows(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the ``k`` largest entries of ``scores (q, m)`` (``k <= m``): ``(positions, values)`` sorted
    descending, ties broken by the lower position (as a stable argsort). Cost ``O(q m)`` selection
    (``torch.topk``, 5-10x numpy's ``argpartition`` on one thread; numpy for dtypes torch lacks; a stable sort of
    the rare rows tied at the k-th value) plus ``O(q k log k)``."""
    m = scores.shape[1]
    k = min(k, m)
    if scores.dtype in (np.float32, np.float64) and scores.size:
        import torch

        if k == m:  # a full sort (introsort: stable sorts cost 5x); rows with tied values redone stably
            pos = np.argsort(-scores, axis=1)
            vals = np.take_along_axis(scores, pos, axis=1)
            tied = np.flatnonzero((vals[:, 1:] == vals[:, :-1]).any(axis=1))
            if tied.size:
                pos[tied] = np.argsort(-scores[tied], axis=1, kind="stable")
                vals[tied] = np.take_along_axis(scores[tied], pos[tied], axis=1)
            return pos, vals
        part = torch.topk(torch.from_numpy(np.ascontiguousarray(scores)), k, dim=1, sorted=False).indices.numpy()
    elif k < m:
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    else:
        part = np.broadcast_to(np.arange(m), scores.shape).copy()
    if k < m:
        kth = np.take_along_axis(scores, part, axis=1).min(axis=1)
        tied = np.flatnonzero((scores >= kth[:, None]).sum(axis=1) > k)  # ties at the k-th value: lower first
        if tied.size:
            part[tied] = np.argsort(-scores[tied], axis=1, kind="stable")[:, :k]
    vals = np.take_along_axis(scores, part, axis=1)
    order = np.lexsort((part, -vals), axis=1)
    pos = np.take_along_axis(part, order, axis=1)
    return pos, np.take_along_axis(vals, order, axis=1)


def rerank(V: np.ndarray, u: np.ndarray, cand: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` of one query ``u (d,)`` among candidate rows ``cand (m,)`` of ``V``; pads with id -1 and
    score -inf when ``m < k``. Cost ``m`` inner products."""
    ids = np.full(k, -1, dtype=np.int64)
    sc = np.full(k, -np.inf, dtype=np.float32)
    if cand.size == 0:
        return ids, sc
    s = V[cand] @ u
    kk = min(k, cand.size)
    pos, vals = topk_rows(s[None, :], kk)
    ids[:kk] = cand[pos[0]]
    sc[:kk] = vals[0]
    return ids, sc


class Index(abc.ABC):
    """Base class of every MIPS index (see the module docstring for the protocol)."""

    name: ClassVar[str] = ""
    #: True for an index whose every budget is exact (the reference)
    exact: ClassVar[bool] = False

    def __init__(self) -> None:
        self.n = 0
        self.d = 0

    # -- the template ------------------------------------------------------------------------------
    @classmethod
    def build(cls: type[I], V: object, **options: Any) -> I:
        """Validate ``V (n, d)`` and build the index with ``options`` (ConfigError for unknown ones)."""
        mat = as_matrix(V, "V")
        index = INDEXES.create(cls.name, **options) if cls.name else cls(**options)
        index.n, index.d = mat.shape
        index._fit(mat)
        return index  # type: ignore[no-any-return]

    def search(self, U: object, k: int = 10, budget: int | None = None) -> SearchResult:
        """The ``k`` largest inner products of each row of ``U (q, d)`` with ``V``, at ``budget``."""
        if self.n == 0:
            raise InputError(f"{self.name} index is empty: build it with {type(self).__name__}.build(V) first")
        q = as_matrix(U, "U")
        if q.shape[1] != self.d:
            raise InputError(f"U has dimension {q.shape[1]} but the {self.name} index holds d={self.d} vectors")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise InputError(f"k must be a positive integer, got {k!r}")
        if k > self.n:
            raise InputError(f"k={k} is larger than the number of indexed vectors n={self.n}")
        b = self.default_budget() if budget is None else budget
        if isinstance(b, bool) or not isinstance(b, (int, np.integer)) or b < 1:
            raise ConfigError(f"budget must be a positive integer, got {budget!r}")
        start = time.perf_counter()
        ids, scores, ips, extra_flops = self._search(q, int(k), int(b))
        seconds = time.perf_counter() - start
        per_q = np.asarray(ips, dtype=np.float64)
        cost = SearchCost(inner_products=float(per_q.mean()), per_query=per_q,
                          flops=float(2.0 * self.d * per_q.sum() + extra_flops), seconds=seconds)
        return SearchResult(ids=ids.astype(np.int64, copy=False), scores=scores.astype(np.float32, copy=False),
                            cost=cost)

    # -- what a method writes -----------------------------------------------------------------------
    @abc.abstractmethod
    def _fit(self, V: np.ndarray) -> None:
        """Build from validated float32 ``V (n, d)`` (``self.n``, ``self.d`` set)."""

    @abc.abstractmethod
    def _search(self, U: np.ndarray, k: int, budget: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
        """``(ids (q, k), scores (q, k), inner products per query (q,), extra flops)`` for validated input."""

    @abc.abstractmethod
    def _arrays(self) -> dict[str, np.ndarray]:
        """The arrays that define the built index (saved with :meth:`save`)."""

    @abc.abstractmethod
    def _restore(self, arrays: dict[str, np.ndarray]) -> None:
        """Rebuild the state from :meth:`_arrays`' output (set ``n``/``d``; KeyError/ValueError if malformed)."""

    def _options(self) -> dict[str, Any]:
        """Constructor options (JSON) saved with the index; default: public attributes named like parameters."""
        import inspect

        params = inspect.signature(type(self).__init__).parameters
        return {p: getattr(self, p) for p in params if p != "self" and hasattr(self, p)}

    @property
    def full_budget(self) -> int:
        """The budget at which this index returns the exact top-k (recall 1.0)."""
        return self.n

    def default_budget(self) -> int:
        return max(1, self.full_budget // 20)

    def budgets(self, steps: int = 8) -> list[int]:
        """An ascending ladder of ``steps`` budgets (geometric) ending at :attr:`full_budget`."""
        hi = self.full_budget
        lo = max(1, min(hi, self.default_budget() // 8))
        ladder = np.unique(np.geomspace(lo, hi, num=max(2, steps)).round().astype(int))
        return [int(b) for b in ladder]

    @property
    def nbytes(self) -> int:
        """Memory held by the index's arrays (``V`` included)."""
        return int(sum(a.nbytes for a in self._arrays().values()))

    # -- files -------------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the index to ``path`` (npz, no pickle) atomically; returns the path."""
        if self.n == 0:
            raise InputError("cannot save an empty index")
        meta = json.dumps({"format": FORMAT, "name": self.name, "options": self._options(), "n": self.n, "d": self.d})
        arrays = {f"a_{k}": np.ascontiguousarray(v) for k, v in self._arrays().items()}
        with atomic_target(path, what="MIPS index") as tmp:
            with open(tmp, "wb") as fh:
                arrays["__meta__"] = np.frombuffer(meta.encode("utf-8"), dtype=np.uint8)
                np.savez(fh, **arrays)  # type: ignore[arg-type]
        return Path(path)

    @staticmethod
    def load(path: str | os.PathLike[str]) -> "Index":
        """Read an index written by :meth:`save`; DataFileError for a missing, corrupt or foreign file."""
        p = Path(path)
        if not p.is_file():
            raise DataFileError(f"MIPS index file {str(p)!r} does not exist")
        try:
            with np.load(p, allow_pickle=False) as z:
                meta = json.loads(bytes(z["__meta__"]).decode("utf-8"))
                arrays = {name[2:]: z[name] for name in z.files if name.startswith("a_")}
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, UnicodeDecodeError) as exc:
            raise DataFileError(f"MIPS index file {str(p)!r} is corrupt or not an index: {exc}") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise DataFileError(f"MIPS index file {str(p)!r} is not a {FORMAT} file")
        cls = INDEXES.get(str(meta.get("name")))
        try:
            index = INDEXES.create(cls.name, **dict(meta.get("options") or {}))
            index._restore(arrays)
            if (index.n, index.d) != (meta.get("n"), meta.get("d")) or index.n < 1:
                raise ValueError("shape record does not match the arrays")
        except (KeyError, ValueError, TypeError, IndexError, ConfigError) as exc:
            raise DataFileError(f"MIPS index file {str(p)!r} is corrupt: {exc}") from None
        return index  # type: ignore[no-any-return]


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Per query, the fraction of the true top-k ids ``truth (q, k)`` present in ``found (q, k')``: ``(q,)``."""
    hits = (truth[:, :, None] == found[:, None, :]).any(axis=2).sum(axis=1)
    return hits / truth.shape[1]


def check_option(value: object, name: str, *, minimum: float = 1) -> None:
    """ConfigError unless ``value`` is a number ``>= minimum``."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) or value < minimum:
        raise ConfigError(f"{name} must be a number >= {minimum}, got {value!r}")


__all__ = ["INDEXES", "Index", "SearchCost", "SearchResult", "as_matrix", "check_option", "recall_at_k", "rerank",
           "topk_rows"]
