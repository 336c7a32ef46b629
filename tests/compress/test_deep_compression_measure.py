"""Deep Compression file format, measurement, Pareto front and the compress() pipeline."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from fortify.compress import RECIPES, compress, create, load, load_compressed, measure, read_record, save_compressed
from fortify.compress.deep_compression import kmeans_1d, share_weights
from fortify.compress.measure import Measurement, count_macs, latencies
from fortify.compress.pareto import pareto_front, plot_pareto
from fortify.errors import ConfigError, ModelFileError

X = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(3))


def test_kmeans_1d_reference() -> None:
    v = torch.tensor([0.0, 0.1, 0.2, 10.0, 10.2, 10.4])
    c, lab = kmeans_1d(v, 2)
    assert torch.allclose(c, torch.tensor([0.1, 10.2]), atol=1e-5)
    assert lab.tolist() == [0, 0, 0, 1, 1, 1]


def test_codebook_file_roundtrip_and_ratio(mlp: nn.Module, tmp_path: Path) -> None:
    res = create("magnitude_prune", sparsity=0.9)(mlp, X)
    books = share_weights(res.model, 4)
    assert all(b.numel() <= 16 for b, _ in books.values())
    dense = save_compressed(mlp, tmp_path / "d.safetensors", encoding="dense").stat().st_size
    sparse = save_compressed(res.model, tmp_path / "s.safetensors", encoding="sparse").stat().st_size
    coded = save_compressed(res.model, tmp_path / "c.safetensors", encoding="codebook").stat().st_size
    assert coded < sparse < dense
    assert dense / coded > 15  # 10% density, 4-bit indices, entropy-coded mask
    back = load_compressed(tmp_path / "c.safetensors")
    assert torch.equal(back(X), res.model(X))
    assert read_record(tmp_path / "c.safetensors")["tensors"]["1.weight"]["enc"] == "codebook"


def test_codebook_refuses_unshared_weights(mlp: nn.Module, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="weight sharing"):
        save_compressed(mlp, tmp_path / "c.safetensors", encoding="codebook")


def test_corrupt_compressed_file(tmp_path: Path) -> None:
    p = tmp_path / "bad.safetensors"
    p.write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00{}xyz")
    with pytest.raises(ModelFileError):
        load_compressed(p)
    with pytest.raises(ModelFileError):
        load_compressed(tmp_path / "missing.safetensors")


def test_deep_compression_transform(mlp: nn.Module, train_data, test_data) -> None:
    res = create("deep_compression", sparsity={1: 0.9, 3: 0.7, 5: 0.5}, bits=5, prune_epochs=2, share_epochs=1,
                 config={"lr": 0.05})(mlp, X, data=train_data)
    assert res.report["ratio"] > 15
    assert res.report["ratio"] == pytest.approx(res.report["bytes_dense"] / res.report["bytes_compressed"])
    for m in res.model.inner:
        if isinstance(m, nn.Linear):
            assert torch.unique(m.weight[m.weight != 0]).numel() <= 32
    with torch.no_grad():
        acc = float((res.model(test_data[0]).argmax(1) == test_data[1]).float().mean())
        base = float((mlp(test_data[0]).argmax(1) == test_data[1]).float().mean())
    assert acc > base - 0.1


def test_count_macs_analytic() -> None:
    net = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 5 * 5, 3))
    with torch.no_grad():
        net[3].weight[0] = 0
    macs, nz = count_macs(net, torch.rand(1, 1, 5, 5))
    assert macs == 25 * 2 * 9 + 50 * 3
    assert nz == 25 * 18 + 100


def test_measure_rows_and_latency(cnn: nn.Module, test_data) -> None:
    small = create("channel_prune", amount=0.5)(cnn, X).model
    rows = measure({"full": cnn, "small": small}, test_data[0][:100], test_data[1][:100], threat="linf:0.1",
                   n_robust=20, pgd_steps=5, latency=False)
    full, sm = rows
    assert sm.bytes < full.bytes and sm.params_total < full.params_total and sm.macs < full.macs
    assert 0 <= sm.robust_acc <= sm.clean_acc + 1e-9 or sm.robust_acc <= 1
    assert full.robust_acc <= full.clean_acc + 0.2 and full.robust_method.startswith("pgd")
    assert full.latency_b1_ms is None
    lat = latencies({"a": cnn, "b": small}, test_data[0][:2], batch_sizes=(1, 64), repeats=3, warmup=1, threads=1)
    assert set(lat) == {"a", "b"} and set(lat["a"]) == {1, 64}
    assert all(0 < v < 1e4 for d in lat.values() for v in d.values())
    assert torch.get_num_threads() == 1  # restored


def test_pareto_front_and_plot(tmp_path: Path) -> None:
    rows = [Measurement("a", 100, robust_acc=0.5), Measurement("b", 50, robust_acc=0.6),
            Measurement("c", 200, robust_acc=0.7), Measurement("d", 300, robust_acc=0.6)]
    assert [r.name for r in pareto_front(rows)] == ["b", "c"]
    path = plot_pareto(rows, tmp_path / "p.png")
    assert path.stat().st_size > 1000


def test_compress_pipeline_writes_artefact_and_measures(cnn: nn.Module, train_data, test_data, tmp_path: Path) -> None:
    steps = [{"transform": "channel_prune", "amount": 0.5, "finetune_task": "standard"}, {"transform": "int8_static"}]
    before = [p.detach().clone() for p in cnn.parameters()]
    res = compress(cnn, steps, train_data, test=(test_data[0][:100], test_data[1][:100]), threat="linf:0.1",
                   out_dir=tmp_path, measure_args={"repeats": 2, "n_robust": 10, "pgd_steps": 3, "square_queries": 20})
    assert all(torch.equal(a, b) for a, b in zip(before, cnn.parameters()))
    assert res.artefact == tmp_path / "model.onnx" and res.pareto is not None and res.pareto.exists()
    orig, comp = res.measurements
    assert comp.bytes == res.artefact.stat().st_size and comp.bytes < orig.bytes / 5
    assert comp.params_total < orig.params_total  # counted on the float twin
    again = load(res.artefact)
    assert torch.equal(again(test_data[0][:16]), res.model(test_data[0][:16]))
    saved = json.loads((tmp_path / "compress.json").read_text())
    assert len(saved["reports"]) == 2 and saved["measurements"][1]["bytes"] == comp.bytes


def test_compress_errors(cnn: nn.Module) -> None:
    assert {"robust-int8", "naive-int8", "deep-compression"} <= set(RECIPES.names())
    with pytest.raises(ConfigError, match="unknown compression recipe"):
        compress(cnn, "nope", example_inputs=X)
    with pytest.raises(ConfigError, match="transform"):
        compress(cnn, [{"sparsity": 0.5}], example_inputs=X)
    with pytest.raises(ConfigError, match="last step"):
        compress(cnn, [{"transform": "int8_dynamic"}, {"transform": "magnitude_prune"}], example_inputs=X)
    with pytest.raises(ConfigError, match="magnitude_prune"):
        compress(cnn, [{"transform": "magnitude_prune", "bogus": 1}], example_inputs=X)


def test_huffman_roundtrip_and_near_entropy() -> None:
    import numpy as np

    from fortify.compress.huffman import decode, encode, gaps_from_mask, mask_from_gaps

    rng = np.random.default_rng(0)
    p = np.array([0.5, 0.25, 0.125, 0.125])  # dyadic: Huffman is optimal, 1.75 bits per symbol
    sym = rng.choice(4, size=4000, p=p)
    alpha, lens, bits = encode(sym)
    assert sorted(lens.tolist()) == [1, 2, 3, 3]
    assert len(bits) == -(-int(sum({0: 1, 1: 2, 2: 3, 3: 3}[s] for s in sym)) // 8)
    assert np.array_equal(decode(alpha, lens, bits, sym.size), sym)
    mask = rng.random(5000) < 0.05
    mask[100:1500] = False  # a gap > 255 needs filler entries
    gaps = gaps_from_mask(mask)
    assert (gaps == 0).sum() >= 5 and np.array_equal(mask_from_gaps(gaps, mask.size), mask)
