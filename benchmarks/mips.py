"""MIPS benchmark (run by hand; never part of the test suite): fortify's indexes vs faiss / hnswlib / ScaNN.

Sets: (a) ``clustered``: ``1M * scale`` x 128, 1,000 Gaussian centres, per-vector lognormal norms, queries from
the same mixture; (b) ``gaussian``: ``200k * scale`` x 100 standard normal vectors and queries; (c) ``realhead``:
the item factors + bias of a BPR model trained on a generated ratings set (:mod:`fortify.mips.realhead`,
``items`` classes, queries = users' factors), cached under benchmarks/results/. For every index (fortify's and
each installed backend) and every budget of its ladder: recall@1/@10 against the exact answer, queries/s (median
of ``--repeats`` interleaved rounds: every configuration once per round, order rotated), inner products per query
(measured; faiss from its own counters; hnswlib/ScaNN: not exposed), build time and memory (arrays held or the
serialised size). One thread everywhere (OpenBLAS, faiss OpenMP, hnswlib). Then the per-query selector (trained
on held-out queries) against the best single configuration at the target recall, and FastHead on the real head.
The machine's 2 cores are shared with other jobs: q/s figures are noisy (medians, interleaved), inner products
are exact counts.

    nice -n 10 .venv/bin/python benchmarks/mips.py --scale 0.1 --queries 500
"""
from __future__ import annotations

import os

for _v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from functools import partial  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Callable  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from fortify.mips import INDEXES, recall_at_k  # noqa: E402
from fortify.mips.exact import exact_topk  # noqa: E402
from fortify.mips.head import FastHead  # noqa: E402
from fortify.mips.realhead import real_head  # noqa: E402
from fortify.mips.selector import Selector  # noqa: E402

RESULTS = Path(__file__).parent / "results"
Searcher = Callable[[np.ndarray, int], tuple[np.ndarray, float]]  # (U, k) -> (ids, inner products per query)


def clustered(n: int, d: int, q: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    C = rng.standard_normal((1000, d)).astype(np.float32)
    V = np.empty((n, d), dtype=np.float32)
    for s in range(0, n, 100_000):
        m = min(100_000, n - s)
        V[s:s + m] = C[rng.integers(0, 1000, m)] + 0.5 * rng.standard_normal((m, d)).astype(np.float32)
        V[s:s + m] *= rng.lognormal(0.0, 0.3, (m, 1)).astype(np.float32)
    U = (C[rng.integers(0, 1000, q)] + 0.5 * rng.standard_normal((q, d))).astype(np.float32)
    return V, U


def gaussian(n: int, d: int, q: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d), dtype=np.float32), rng.standard_normal((q, d), dtype=np.float32)


# -- peers ---------------------------------------------------------------------------------------
def faiss_indexes(V: np.ndarray, with_hnsw: bool = True) -> dict[str, tuple[Any, list[int], Callable[[int], Searcher], float,
                                                                      int]]:
    try:
        import faiss
    except ImportError:
        return {}
    faiss.omp_set_num_threads(1)
    n, d = V.shape
    out: dict[str, Any] = {}
    t0 = time.perf_counter()
    nlist = int(round(np.sqrt(n)))
    quant = faiss.IndexFlatIP(d)
    ivf = faiss.IndexIVFFlat(quant, d, nlist, faiss.METRIC_INNER_PRODUCT)
    ivf.train(V[np.random.default_rng(0).choice(n, min(n, 65536), replace=False)])
    ivf.add(V)
    bt = time.perf_counter() - t0

    def ivf_search(b: int) -> Searcher:
        def run(U: np.ndarray, k: int) -> tuple[np.ndarray, float]:
            ivf.nprobe = b
            getattr(faiss.cvar, "indexIVF_stats").reset()
            _, ids = ivf.search(U, k)
            return ids, nlist + getattr(faiss.cvar, "indexIVF_stats").ndis / U.shape[0]
        return run

    ladder = sorted({int(x) for x in np.geomspace(1, nlist, 8).round()})
    out["faiss-ivf"] = (ivf, ladder, ivf_search, bt, int(faiss.serialize_index(ivf).nbytes))
    if not with_hnsw:
        return out
    t0 = time.perf_counter()
    hnsw = faiss.IndexHNSWFlat(d, 32, faiss.METRIC_INNER_PRODUCT)
    hnsw.hnsw.efConstruction = 40
    hnsw.add(V)
    bt = time.perf_counter() - t0

    def hnsw_search(b: int) -> Searcher:
        def run(U: np.ndarray, k: int) -> tuple[np.ndarray, float]:
            hnsw.hnsw.efSearch = b
            getattr(faiss.cvar, "hnsw_stats").reset()
            _, ids = hnsw.search(U, k)
            return ids, getattr(faiss.cvar, "hnsw_stats").ndis / U.shape[0]
        return run

    out["faiss-hnsw-ip"] = (hnsw, [10, 16, 32, 64, 128, 256, 512], hnsw_search, bt,
                            int(faiss.serialize_index(hnsw).nbytes))
    return out


def hnswlib_index(V: np.ndarray) -> dict[str, Any]:
    try:
        import hnswlib
    except ImportError:
        return {}
    t0 = time.perf_counter()
    p = hnswlib.Index(space="ip", dim=V.shape[1])
    p.init_index(max_elements=V.shape[0], ef_construction=100, M=16)
    p.set_num_threads(1)
    p.add_items(V)
    bt = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        p.save_index(f"{tmp}/h.bin")
        size = os.path.getsize(f"{tmp}/h.bin")

    def search(b: int) -> Searcher:
        def run(U: np.ndarray, k: int) -> tuple[np.ndarray, float]:
            p.set_ef(max(b, k))
            ids, _ = p.knn_query(U, k=k, num_threads=1)
            return ids.astype(np.int64), float("nan")
        return run

    return {"hnswlib-ip": (p, [10, 16, 32, 64, 128, 256, 512], search, bt, size)}


def scann_index(V: np.ndarray) -> dict[str, Any]:
    try:
        import scann
    except ImportError:
        return {}
    n = V.shape[0]
    leaves = int(round(np.sqrt(n)))
    t0 = time.perf_counter()
    s = (scann.scann_ops_pybind.builder(V, 10, "dot_product").tree(num_leaves=leaves, num_leaves_to_search=8,
         training_sample_size=min(n, 65536)).score_ah(2, anisotropic_quantization_threshold=0.2).reorder(100).build())
    bt = time.perf_counter() - t0

    def search(b: int) -> Searcher:
        def run(U: np.ndarray, k: int) -> tuple[np.ndarray, float]:
            ids, _ = s.search_batched(U, final_num_neighbors=k, leaves_to_search=b, pre_reorder_num_neighbors=max(100, k))
            return ids.astype(np.int64), float("nan")
        return run

    ladder = sorted({int(x) for x in np.geomspace(1, leaves, 7).round()})
    return {"scann": (s, ladder, search, bt, -1)}


# -- fortify ---------------------------------------------------------------------------------------
SLOW = {"greedy", "wedge", "alsh"}  # python per-query loops: fewer budgets on big sets


class _Ladders:
    """Largest budgets swept (set from the command line): graph ef and the IVF's fraction of clusters probed."""

    graph_max = 256
    ivf_frac = 0.25


args_wide = _Ladders()


def _built(name: str, V: np.ndarray, cache: str) -> tuple[Any, float]:
    """``(index, build seconds)``: built here, or read from ``cache`` (a folder of saved indexes with their build
    times, keyed by name and a digest of ``V``; a later run of the same set skips the build)."""
    from fortify.mips import Index

    import hashlib

    digest = hashlib.sha1(V[:: max(1, V.shape[0] // 997)].tobytes()).hexdigest()[:10]
    key = f"{name}_{V.shape[0]}x{V.shape[1]}_{digest}"
    path = Path(cache) / f"{key}.npz" if cache else None
    if path is not None and path.is_file():
        return Index.load(path), float(json.loads(path.with_suffix(".json").read_text())["build_s"])
    t0 = time.perf_counter()
    idx = INDEXES.get(name).build(V)
    bt = time.perf_counter() - t0
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        idx.save(path)
        path.with_suffix(".json").write_text(json.dumps({"build_s": bt}))
    return idx, bt


def fortify_indexes(V: np.ndarray, names: list[str], cache: str = "") -> dict[str, Any]:
    out = {}
    for name in names:
        idx, bt = _built(name, V, cache)
        print(f"  built fortify-{name}: {bt:.1f} s", flush=True)
        ladder = idx.budgets()
        if name in SLOW:
            ladder = [ladder[len(ladder) // 3], ladder[-2]] if len(ladder) > 2 else ladder
        elif name == "graph":
            ladder = [b for b in ladder if b <= args_wide.graph_max]
        elif name == "ivf":
            ladder = [b for b in ladder if b <= max(1, int(idx.full_budget * args_wide.ivf_frac))]

        def make(b: int, idx: Any = idx) -> Searcher:
            def run(U: np.ndarray, k: int) -> tuple[np.ndarray, float]:
                r = idx.search(U, k, b)
                return r.ids, r.cost.inner_products
            return run

        out[f"fortify-{name}"] = (idx, ladder, make, bt, idx.nbytes)
    return out


def sweep(indexes: dict[str, Any], U: np.ndarray, truth: np.ndarray, repeats: int, n: int) -> list[dict[str, Any]]:
    """Every (index, budget) once per round, order rotated each round; medians of the wall time."""
    configs = [(name, b, make(b)) for name, (_, ladder, make, _, _) in indexes.items() for b in ladder]
    times: dict[tuple[str, int], list[float]] = {(c[0], c[1]): [] for c in configs}
    rows: dict[tuple[str, int], dict[str, Any]] = {}
    for r in range(repeats):
        rot = configs[r % len(configs):] + configs[:r % len(configs)]
        for name, b, run in rot:
            t0 = time.perf_counter()
            ids, ips = run(U, 10)
            times[(name, b)].append(time.perf_counter() - t0)
            if (name, b) not in rows:
                rec = recall_at_k(ids, truth)
                rows[(name, b)] = {"index": name, "budget": b, "recall@10": float(rec.mean()),
                                   "recall@1": float((ids[:, 0] == truth[:, 0]).mean()), "ips": float(ips)}
    out = []
    for key, row in rows.items():
        med = float(np.median(times[key]))
        row.update(qps=U.shape[0] / med, seconds=med, speedup_ips=n / row["ips"] if row["ips"] == row["ips"] else None)
        out.append(row)
    return out


def run_set(name: str, V: np.ndarray, U: np.ndarray, Utrain: np.ndarray, args: argparse.Namespace) -> dict[str, Any]:
    print(f"== {name}: V {V.shape}, {U.shape[0]} queries", flush=True)
    t0 = time.perf_counter()
    truth = exact_topk(V, U, 10)[0]
    exact_s = time.perf_counter() - t0
    idx: dict[str, Any] = fortify_indexes(V, [n for n in INDEXES.names() if n not in args.skip], args.index_cache)
    if not args.no_backends:
        wanted = set(args.backends.split(","))
        if wanted & {"faiss", "faiss-ivf"}:
            idx.update(faiss_indexes(V, with_hnsw="faiss" in wanted))
        for name, make in (("hnswlib", hnswlib_index), ("scann", scann_index)):
            if name in wanted:
                idx.update(make(V))
    builds = {k: {"build_s": v[3], "bytes": v[4]} for k, v in idx.items()}
    for k, v in builds.items():
        print(f"  build {k}: {v['build_s']:.1f} s, {v['bytes'] / 2**20:.0f} MiB", flush=True)
    rows = sweep(idx, U, truth, args.repeats, V.shape[0])
    sel = selector_result(idx, Utrain, U, truth, V)
    return {"set": name, "n": V.shape[0], "d": V.shape[1], "queries": U.shape[0], "exact_truth_s": exact_s,
            "builds": builds, "rows": rows, "selector": sel}


def selector_result(idx: dict[str, Any], Utrain: np.ndarray, U: np.ndarray, truth: np.ndarray,
                    V: np.ndarray) -> dict[str, Any]:
    chosen = {k.removeprefix("fortify-"): v[0] for k, v in idx.items() if k in ("fortify-ivf", "fortify-graph")}
    if "ivf" not in chosen:
        return {}
    top = max(1, int(chosen["ivf"].full_budget * args_wide.ivf_frac))
    budgets = {"ivf": [b for b in chosen["ivf"].budgets() if b <= top]}
    if "graph" in chosen:
        budgets["graph"] = [b for b in chosen["graph"].budgets() if b <= args_wide.graph_max // 2]
    out = {}
    for target in (0.9, 0.95):
        t_truth = exact_topk(V, Utrain, 10)[0]
        sel = Selector(chosen, target=target, k=10, budgets=budgets).fit(Utrain, t_truth)
        rep = sel.evaluate(U, truth, train=(Utrain, t_truth))
        res = sel.search(U)
        out[str(target)] = {"recall": rep.recall, "ips": rep.inner_products, "qps": U.shape[0] / res.cost.seconds,
                            "best": list(rep.best) if rep.best else None, "best_recall": rep.best_recall,
                            "best_ips": rep.best_inner_products, "cost_ratio": rep.cost_ratio,
                            "choices": {f"{a}@{b}": c for (a, b), c in rep.choices.items()}, "rule": sel.rule,
                            "mix": [list(c) for c in rep.mix] if rep.mix else None, "mix_weight": rep.mix_weight,
                            "mix_recall": rep.mix_recall, "mix_ips": rep.mix_inner_products}
        print(f"  selector target {target}: recall {rep.recall:.3f} at {rep.inner_products:.0f} ips; best single "
              f"{rep.best} {rep.best_recall:.3f} at {rep.best_inner_products:.0f} ips", flush=True)
    return out


def fasthead_result(head: Any, Uq: np.ndarray) -> dict[str, Any]:
    out = {}
    for name, budget in (("ivf", None), ("graph", 64)):
        fh = FastHead(head.layer, name)
        for b in ([budget] if budget else [1, 2, 4, 8]):
            cmp = fh.compare(Uq, 10, b, exact_head=head.layer, repeats=3)
            out[f"{name}@{b}"] = {"recall@10": cmp.recall, "fast_s": cmp.fast_seconds, "exact_s": cmp.exact_seconds,
                                  "speedup": cmp.speedup, "ips": cmp.inner_products, "classes": cmp.classes}
            print(f"  FastHead {name}@{b}: recall@10 {cmp.recall:.3f}, {cmp.speedup:.2f}x vs exact torch head, "
                  f"{cmp.inner_products:.0f} ips / {cmp.classes}", flush=True)
    return out


def plot(res: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    by: dict[str, list[dict[str, Any]]] = {}
    for r in res["rows"]:
        by.setdefault(r["index"], []).append(r)
    for name, rows in sorted(by.items()):
        rows = sorted(rows, key=lambda r: r["budget"])
        style = "-o" if name.startswith("fortify") else "--s"
        axes[0].plot([r["qps"] for r in rows], [r["recall@10"] for r in rows], style, label=name, ms=3)
        if all(r["ips"] == r["ips"] for r in rows):
            axes[1].plot([r["ips"] for r in rows], [r["recall@10"] for r in rows], style, label=name, ms=3)
    axes[0].set(xscale="log", xlabel="queries/s (1 thread)", ylabel="recall@10", title=f"{res['set']} n={res['n']}")
    axes[1].set(xscale="log", xlabel="inner products per query", ylabel="recall@10")
    axes[1].axvline(res["n"] / 50, color="grey", lw=0.8, ls=":")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def cheapest(rows: list[dict[str, Any]], index: str, target: float, key: str) -> dict[str, Any] | None:
    """The configuration of ``index`` reaching ``target`` recall@10 with the best ``key`` (ips: lowest, qps: highest)."""
    ok = [r for r in rows if r["index"] == index and r["recall@10"] >= target]
    if not ok:
        return None
    return max(ok, key=lambda r: r["qps"]) if key == "qps" else min(ok, key=lambda r: r["ips"])


def markdown(out: dict[str, Any]) -> str:
    """Summary tables (one per set), goal checks, selector and FastHead lines, as README markdown."""
    lines: list[str] = []
    for name in ("clustered", "gaussian", "realhead"):
        res = out.get(name)
        if not res:
            continue
        n = res["n"]
        lines += [f"**{name}** (n = {n:,}, d = {res['d']}, {res['queries']} queries, k = 10)", "",
                  "| index | build s | MiB | best recall@10 | r@10 >= 0.9: budget, r@1, q/s, ips (x fewer) "
                  "| r@10 >= 0.95: budget, r@1, q/s, ips (x fewer) |", "|---|---|---|---|---|---|"]
        for idx in sorted({r["index"] for r in res["rows"]}):
            b = res["builds"][idx]
            best = max(r["recall@10"] for r in res["rows"] if r["index"] == idx)
            cells = []
            for t in (0.9, 0.95):
                r = cheapest(res["rows"], idx, t, "ips" if idx.startswith("fortify") or idx.startswith("faiss")
                             else "qps")
                if r is None:
                    cells.append("not reached")
                    continue
                ips = f"{r['ips']:,.0f} ({n / r['ips']:.0f}x)" if r["ips"] == r["ips"] else "n/a"
                cells.append(f"{r['budget']}, {r['recall@1']:.3f}, {r['qps']:,.0f}, {ips}")
            mib = f"{b['bytes'] / 2 ** 20:.0f}" if b["bytes"] > 0 else "n/a"
            lines.append(f"| {idx} | {b['build_s']:.1f} | {mib} | {best:.3f} | {cells[0]} | {cells[1]} |")
        lines.append("")
        for t in (0.9, 0.95):
            f = [cheapest(res["rows"], i, t, "qps") for i in {r["index"] for r in res["rows"]} if i.startswith("fortify")]
            o = [cheapest(res["rows"], i, t, "qps") for i in {r["index"] for r in res["rows"]} if not i.startswith("fortify")]
            fb = max((r for r in f if r), key=lambda r: r["qps"], default=None)
            ob = max((r for r in o if r), key=lambda r: r["qps"], default=None)
            sel = res.get("selector", {}).get(str(t))
            sel_txt = f"; selector {sel['qps']:,.0f} q/s at recall {sel['recall']:.3f}" if sel else ""
            if fb and ob:
                lines.append(f"- recall@10 >= {t}: fastest fortify {fb['index']}@{fb['budget']} {fb['qps']:,.0f} q/s vs "
                             f"fastest backend {ob['index']}@{ob['budget']} {ob['qps']:,.0f} q/s "
                             f"(ratio {fb['qps'] / ob['qps']:.2f}){sel_txt}")
        g = [r for r in res["rows"] if r["index"].startswith("fortify") and r["recall@10"] >= 0.95
             and r["ips"] <= n / 50]
        lines.append(f"- recall@10 >= 0.95 at >= 50x fewer inner products than exact: "
                     f"{'met by ' + ', '.join(sorted({r['index'] + '@' + str(r['budget']) for r in g})) if g else 'not met'}")
        for t, sel in res.get("selector", {}).items():
            mix = (f"; cheapest random mix of two fixed configurations {sel['mix'][0]} ({sel['mix_weight']:.2f}) + "
                   f"{sel['mix'][1]}: {sel['mix_recall']:.3f} at {sel['mix_ips']:,.0f}") if sel.get("mix") else ""
            lines.append(f"- selector ({sel.get('rule', 'threshold')} rule, target {t}, trained on held-out queries): "
                         f"recall {sel['recall']:.3f} at {sel['ips']:,.0f} ips/query vs best single {sel['best']} "
                         f"{sel['best_recall']:.3f} at {sel['best_ips']:,.0f} (cost ratio {sel['cost_ratio']:.3f}: > 1 "
                         f"means the selector is cheaper){mix}; choices {sel['choices']}")
        for cfg, fh in res.get("fasthead", {}).items():
            lines.append(f"- FastHead {cfg}: recall@10 {fh['recall@10']:.3f} vs the exact torch head, {fh['ips']:,.0f} "
                         f"inner products per row of {fh['classes']:,}, {fh['speedup']:.2f}x the exact head's speed")
        lines.append("")
    return "\n".join(lines)


def old_vs_new(rev: str, name: str, V: np.ndarray, U: np.ndarray, args: argparse.Namespace) -> None:
    """fortify.mips at git revision ``rev`` (ivf, graph: its code on today's index arrays) vs now, interleaved
    with faiss IVF and ScaNN, 5 rounds; asserts equal ids and inner products; writes results/mips_speed_<set>_s<scale>.json."""
    import importlib
    import subprocess
    import sys

    tmp = Path(tempfile.mkdtemp())
    (tmp / "oldmips").mkdir()
    (tmp / "oldmips" / "__init__.py").write_text("")
    for f in ("base", "ivf", "graph", "_kmeans", "exact"):
        src = subprocess.run(["git", "show", f"{rev}:src/fortify/mips/{f}.py"], capture_output=True, text=True,
                             check=True, cwd=Path(__file__).parent).stdout
        (tmp / "oldmips" / f"{f}.py").write_text(src.replace("fortify.mips.", "oldmips."))
    sys.path.insert(0, str(tmp))
    truth = exact_topk(V, U, 10)[0]
    runs: list[tuple[str, Callable[[], Any], Any]] = []
    for kind, budgets in (("ivf", (1, 3, 6)), ("graph", (10, 22, 47))):
        new, _ = _built(kind, V, args.index_cache)
        old = getattr(importlib.import_module(f"oldmips.{kind}"), type(new).__name__)(**new._options())
        old._restore(new._arrays())
        for b in budgets:
            a, o = new.search(U, 10, b), old.search(U, 10, b)
            assert np.array_equal(a.ids, o.ids) and np.array_equal(a.cost.per_query, o.cost.per_query)
            runs += [(f"{kind}@{b} new", partial(new.search, U, 10, b), a),
                     (f"{kind}@{b} old", partial(old.search, U, 10, b), None)]
    peers = {**faiss_indexes(V, with_hnsw=False), **scann_index(V)}
    for peer, (_, _, make, _, _) in peers.items():
        runs += [(f"{peer}@{b}", partial(make(b), U, 10), make(b)(U, 10)) for b in (1, 3, 6 if "faiss" in peer else 8)]
    times: dict[str, list[float]] = {r[0]: [] for r in runs}
    for rep in range(5):
        for label, run, _ in runs[rep % len(runs):] + runs[:rep % len(runs)]:
            t0 = time.perf_counter()
            run()
            times[label].append(time.perf_counter() - t0)
    rows = {}
    for label, _, res in runs:
        ids, ips = (res.ids, res.cost.inner_products) if hasattr(res, "ids") else res if res else (None, None)
        rows[label] = {"qps": U.shape[0] / float(np.median(times[label])), "ips": ips,
                       "recall@10": None if ids is None else float(recall_at_k(ids, truth).mean())}
        print(f"  {label:16s} {rows[label]['qps']:9,.0f} q/s  recall@10 {rows[label]['recall@10']}  ips {ips}")
    out = {"rev": rev, "rows": rows, "load": os.getloadavg()}
    (RESULTS / f"mips_speed_{name}_s{args.scale:g}.json").write_text(json.dumps(out, indent=1, default=float))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scale", type=float, default=1.0, help="fraction of the full sizes (1M, 200k, 200k items)")
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--train-queries", type=int, default=500)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--sets", default="clustered,gaussian,realhead")
    p.add_argument("--skip", default="", help="fortify indexes to skip, comma separated")
    p.add_argument("--no-backends", action="store_true")
    p.add_argument("--backends", default="faiss,hnswlib,scann", help="backends to run (comma separated; faiss-ivf: faiss without its HNSW)")
    p.add_argument("--graph-max", type=int, default=256, help="largest graph ef swept (default 256)")
    p.add_argument("--ivf-frac", type=float, default=0.25, help="largest IVF probe count, fraction of nlist")
    p.add_argument("--index-cache", default="", help="folder of saved fortify indexes (reused by a later run)")
    p.add_argument("--tag", default="", help="suffix of the results files (a partial re-run beside the full one)")
    p.add_argument("--old", metavar="REV", help="old-vs-new speed of ivf and graph against git revision REV, exit")
    p.add_argument("--report", metavar="JSON", nargs="+", help="print the markdown tables of results files and exit")
    args = p.parse_args()
    if args.report:
        merged: dict[str, Any] = {}
        for f in args.report:
            merged.update(json.loads(Path(f).read_text()))
        print(markdown(merged))
        return
    args.skip = {s for s in args.skip.split(",") if s}
    args_wide.graph_max, args_wide.ivf_frac = args.graph_max, args.ivf_frac
    torch.set_num_threads(1)
    RESULTS.mkdir(parents=True, exist_ok=True)
    q, qt = args.queries, args.train_queries
    tag = f"s{args.scale:g}" + ("" if args.sets == "clustered,gaussian,realhead" else "_" + args.sets.replace(",", "_")) \
        + (f"_{args.tag}" if args.tag else "")
    out: dict[str, Any] = {"machine": {"cpu": platform.processor() or platform.machine(), "python": platform.python_version(),
                                       "numpy": np.__version__, "load_before": os.getloadavg()}, "scale": args.scale}
    for name in args.sets.split(","):
        if name == "clustered":
            V, U = clustered(int(1_000_000 * args.scale), 128, q + qt)
        elif name == "gaussian":
            V, U = gaussian(int(200_000 * args.scale), 100, q + qt)
        else:
            items = max(20_000, int(200_000 * args.scale))
            head = real_head(items, 20_000, cache=RESULTS / f"mips_realhead_{items}.npz")
            V, U = head.V, head.queries[np.random.default_rng(0).permutation(head.users.shape[0])[:q + qt]]
        if args.old:
            old_vs_new(args.old, name, V, U[:q], args)
            continue
        res = run_set(name, V, U[:q], U[q:], args)
        if name == "realhead":
            res["fasthead"] = fasthead_result(head, head.users[np.random.default_rng(0).permutation(
                head.users.shape[0])[:q]])
        out[name] = res
        plot(res, RESULTS / f"mips_{name}_{tag}.png")
        (RESULTS / f"mips_{tag}.json").write_text(json.dumps(out, indent=1, default=float))
    if args.old:
        return
    out["machine"]["load_after"] = os.getloadavg()
    (RESULTS / f"mips_{tag}.json").write_text(json.dumps(out, indent=1, default=float))
    (RESULTS / f"mips_{tag}.md").write_text(markdown(out) + "\n")
    print(markdown(out))


if __name__ == "__main__":
    main()
