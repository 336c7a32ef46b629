"""On-disk formats of compressed models: real bytes, not masks beside dense weights.

One ``.safetensors`` file (no pickle, nothing executed on load) whose header key
``"fortify_compressed"`` holds a JSON record: the layer list of the Sequential (so structurally
pruned and low-rank models with any widths rebuild), the optional ``Normalized`` mean/std, the
architecture record if still valid, and one encoding entry per weight tensor:

* ``dense``    -- float32 tensor as is (``{i}.weight``).
* ``sparse``   -- unstructured sparsity: ``{i}.weight.bitmap`` (``uint8``, ``np.packbits`` of the
  non-zero mask, 1 bit per weight) + ``{i}.weight.values`` (float32 non-zeros in row-major order).
  Costs ``n/8 + 4*nnz`` bytes instead of ``4*n``; chosen by ``encoding="auto"`` when smaller.
* ``codebook`` -- Deep Compression (Han et al. 2016, "Deep Compression: compressing deep neural
  networks with pruning, trained quantization and Huffman coding"): a per-layer codebook of ``k``
  float32 centroids (``{i}.weight.codebook``) and one byte blob (``{i}.weight.huffman``) holding two
  canonical Huffman streams (:mod:`fortify.compress.huffman`): the relative indices of the non-zeros
  (gaps <= 255 with filler entries, as in the paper) and their cluster indices, each with its
  code-length table.

Biases are stored dense. :func:`load_compressed` decodes everything back to a plain ``nn.Sequential``
(inside ``Normalized`` if recorded) in eval mode whose outputs equal the saved model's.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from fortify.compress import huffman
from fortify.compress.base import sequential_of
from fortify.compress.huffman import gaps_from_mask, mask_from_gaps
from fortify.errors import ConfigError, ModelFileError
from fortify.models import Normalized
from fortify.models.registry import ARCH_ATTR, architecture

FORMAT = "fortify.compressed"
VERSION = 1
_KEY = "fortify_compressed"
ENCODINGS = ("auto", "dense", "sparse", "codebook")


def layer_spec(layer: nn.Module) -> dict[str, Any]:
    """JSON description of one supported layer (enough to rebuild it without weights)."""
    if isinstance(layer, nn.Conv2d):
        return {"type": "Conv2d", "in": layer.in_channels, "out": layer.out_channels,
                "kernel": list(layer.kernel_size), "stride": list(layer.stride),
                "padding": list(layer.padding), "bias": layer.bias is not None}
    if isinstance(layer, nn.Linear):
        return {"type": "Linear", "in": layer.in_features, "out": layer.out_features, "bias": layer.bias is not None}
    if isinstance(layer, nn.MaxPool2d):
        return {"type": "MaxPool2d", "kernel": layer.kernel_size, "stride": layer.stride, "padding": layer.padding}
    if isinstance(layer, nn.Flatten):
        return {"type": "Flatten", "start": layer.start_dim, "end": layer.end_dim}
    return {"type": type(layer).__name__}


def build_layer(spec: Mapping[str, Any]) -> nn.Module:
    """Inverse of :func:`layer_spec` (fresh, uninitialised-weight layer); ModelFileError if unknown."""
    try:
        kind = spec["type"]
        if kind == "Conv2d":
            return nn.Conv2d(int(spec["in"]), int(spec["out"]), tuple(spec["kernel"]), tuple(spec["stride"]),
                             tuple(spec["padding"]), bias=bool(spec["bias"]))
        if kind == "Linear":
            return nn.Linear(int(spec["in"]), int(spec["out"]), bias=bool(spec["bias"]))
        if kind == "MaxPool2d":
            return nn.MaxPool2d(spec["kernel"], spec["stride"], spec["padding"])
        if kind == "Flatten":
            return nn.Flatten(int(spec["start"]), int(spec["end"]))
        simple = {"ReLU": nn.ReLU, "Identity": nn.Identity, "Dropout": nn.Dropout}
        return simple[kind]()
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelFileError(f"malformed layer record {spec!r}: {exc}") from None


def _encode(w: torch.Tensor, encoding: str, key: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Encode one weight tensor; returns (header entry, tensors to store)."""
    flat = w.detach().cpu().float().reshape(-1).numpy()
    mask = flat != 0
    nnz = int(mask.sum())
    entry: dict[str, Any] = {"shape": list(w.shape), "nnz": nnz}
    if encoding == "auto":
        encoding = "sparse" if (flat.size + 7) // 8 + 4 * nnz < 4 * flat.size else "dense"
    if encoding == "dense":
        return {**entry, "enc": "dense"}, {key: w.detach().cpu().float().contiguous()}
    bitmap = np.packbits(mask)
    if encoding == "sparse":
        return {**entry, "enc": "sparse"}, {
            f"{key}.bitmap": torch.from_numpy(bitmap.copy()),
            f"{key}.values": torch.from_numpy(flat[mask].copy()),
        }
    codebook, idx = np.unique(flat[mask], return_inverse=True)
    if codebook.size > 256:
        raise ConfigError(
            f"{key}: {codebook.size} distinct non-zero values; the codebook encoding needs weight sharing "
            "(<= 256 shared values per layer, e.g. fortify.compress.deep_compression.share_weights)"
        )
    gaps = gaps_from_mask(mask)
    g_alpha, g_len, g_bits = huffman.encode(gaps)
    i_alpha, i_len, i_bits = huffman.encode(idx)
    parts = [g_alpha.astype(np.uint8).tobytes(), g_len.tobytes(), i_alpha.astype(np.uint8).tobytes(),
             i_len.tobytes(), g_bits, i_bits]
    return {**entry, "enc": "codebook", "k": int(codebook.size), "gaps": int(gaps.size),
            "parts": [len(b) for b in parts]}, {
        f"{key}.codebook": torch.from_numpy(codebook.astype(np.float32)),
        f"{key}.huffman": torch.from_numpy(np.frombuffer(b"".join(parts), dtype=np.uint8).copy()),
    }


def _decode(entry: Mapping[str, Any], key: str, state: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Rebuild one weight tensor from its header ``entry`` and stored tensors."""
    shape = [int(s) for s in entry["shape"]]
    n = int(np.prod(shape)) if shape else 1
    enc = entry.get("enc")
    if enc == "dense":
        return state[key]
    if enc == "sparse":
        mask = np.unpackbits(state[f"{key}.bitmap"].numpy())[:n].astype(bool)
        out = np.zeros(n, dtype=np.float32)
        out[mask] = state[f"{key}.values"].numpy()
        return torch.from_numpy(out).reshape(shape)
    if enc == "codebook":
        blob = state[f"{key}.huffman"].numpy().tobytes()
        sizes = [int(v) for v in entry["parts"]]
        offs = np.cumsum([0] + sizes)
        if offs[-1] != len(blob):
            raise ModelFileError(f"{key}: Huffman payload of {len(blob)} bytes, header says {offs[-1]}")
        g_alpha, g_len, i_alpha, i_len, g_bits, i_bits = (blob[offs[k]: offs[k + 1]] for k in range(6))
        u8 = lambda b: np.frombuffer(b, dtype=np.uint8).astype(np.int64)  # noqa: E731
        gaps = huffman.decode(u8(g_alpha), u8(g_len), g_bits, int(entry["gaps"]))
        mask = mask_from_gaps(gaps, n)
        idx = huffman.decode(u8(i_alpha), u8(i_len), i_bits, int(mask.sum()))
        book = state[f"{key}.codebook"].numpy()
        if idx.size and idx.max() >= book.size:
            raise ModelFileError(f"{key}: cluster index outside the codebook")
        out = np.zeros(n, dtype=np.float32)
        out[mask] = book[idx]
        return torch.from_numpy(out).reshape(shape)
    raise ModelFileError(f"unknown tensor encoding {enc!r} for {key}")


def save_compressed(model: nn.Module, path: str | os.PathLike[str], *, encoding: str = "auto",
                    meta: Mapping[str, Any] | None = None) -> Path:
    """Write ``model`` with its weights encoded as ``encoding`` (see module doc); returns the path.

    Raises ConfigError for an unknown encoding or (codebook) a layer without weight sharing,
    UnsupportedLayerError for a model outside the compressible family.
    """
    if encoding not in ENCODINGS:
        raise ConfigError(f"encoding must be one of {', '.join(ENCODINGS)}; got {encoding!r}")
    seq = sequential_of(model)
    tensors: dict[str, torch.Tensor] = {}
    entries: dict[str, Any] = {}
    for i, layer in enumerate(seq):
        if isinstance(layer, (nn.Conv2d, nn.Linear)):
            entry, ts = _encode(layer.weight, encoding, f"{i}.weight")
            entries[f"{i}.weight"] = entry
            tensors.update(ts)
            if layer.bias is not None:
                tensors[f"{i}.bias"] = layer.bias.detach().cpu().float().contiguous()
    norm = None
    if isinstance(model, Normalized):
        norm = {"mean": model.mean.flatten().tolist(), "std": model.std.flatten().tolist()}
    record = {"format": FORMAT, "version": VERSION, "layers": [layer_spec(m) for m in seq], "tensors": entries,
              "normalization": norm, "architecture": architecture(model), "user": dict(meta or {})}
    from safetensors.torch import save as st_save

    try:
        header = json.dumps(record, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"meta must be JSON-serialisable: {exc}") from None
    dest = Path(path)
    tmp = dest.with_name(f".{dest.name}.tmp")
    tmp.write_bytes(st_save(tensors, metadata={_KEY: header}))
    os.replace(tmp, dest)
    return dest


def load_compressed(path: str | os.PathLike[str]) -> nn.Module:
    """Decode a file written by :func:`save_compressed` into a runnable model (eval mode).

    Raises ModelFileError for a missing, corrupt or foreign file.
    """
    p = Path(path)
    try:
        blob = p.read_bytes()
    except OSError as exc:
        raise ModelFileError(f"cannot read compressed model {p}: {exc}") from None
    from safetensors.torch import load as st_load

    try:
        n = int.from_bytes(blob[:8], "little")
        header = json.loads(blob[8: 8 + n])
        record = json.loads(header["__metadata__"][_KEY])
        state = st_load(blob)
    except Exception as exc:  # noqa: BLE001 - any parse failure: not our file
        raise ModelFileError(f"{p}: not a {FORMAT} file or corrupt ({type(exc).__name__})") from None
    if record.get("format") != FORMAT or record.get("version") != VERSION:
        raise ModelFileError(f"{p}: not a {FORMAT} v{VERSION} file")
    seq = nn.Sequential(*[build_layer(s) for s in record["layers"]])
    new_state: dict[str, torch.Tensor] = {}
    try:
        for key, entry in record["tensors"].items():
            new_state[key] = _decode(entry, key, state)
        for key, t in state.items():
            if key.endswith(".bias"):
                new_state[key] = t
        seq.load_state_dict(new_state, strict=True)
    except (KeyError, RuntimeError, ValueError) as exc:
        raise ModelFileError(f"{p}: weights do not match the recorded layers: {str(exc)[:200]}") from None
    arch = record.get("architecture")
    if isinstance(arch, dict):
        setattr(seq, ARCH_ATTR, arch)
    model: nn.Module = seq
    if record.get("normalization"):
        model = Normalized(seq, record["normalization"]["mean"], record["normalization"]["std"])
    return model.eval()


def read_record(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The JSON record of a compressed file (layers, encodings, meta) without decoding weights."""
    blob = Path(path).read_bytes()
    n = int.from_bytes(blob[:8], "little")
    return json.loads(json.loads(blob[8: 8 + n])["__metadata__"][_KEY])


__all__ = ["ENCODINGS", "FORMAT", "build_layer", "layer_spec", "load_compressed", "read_record", "save_compressed"]
