"""Datasets from a user's own files: arrays, image folders, tables and CIFAR-10 batches.

:func:`from_path` inspects ``path`` and returns a registered :class:`DatasetSpec` that every pillar
can load by name like a built-in dataset (``data.load(spec.name, "test")``):

* ``FILE.npz`` -- arrays ``x``/``y`` (one pool, split here) or ``x_train``/``y_train``/``x_test``/
  ``y_test``; a folder of ``.npy`` files with the same names. Read with ``allow_pickle=False``.
* an **image folder** -- one subfolder per class (``root/<class>/*.png``), or ``root/train/<class>``
  and ``root/test/<class>``; PNG/JPEG/BMP through Pillow, converted to one mode (``L`` when every
  image is grey, else ``RGB``), resized to ``image_size`` when given, otherwise every image must
  have the same size (mixed sizes are an error naming two files).
* ``FILE.csv`` (or ``.parquet`` when pyarrow is installed) -- a **table** with a label column;
  numeric columns are min-max scaled to [0, 1] with the range the file spans (or ``bounds``: the
  input domain, so a value outside it -- e.g. in a later file -- is an error naming the column),
  categorical columns (non-numeric, or named in ``categorical``) are one-hot encoded with the
  train split's categories; a category unseen in training is an error naming column and value.
* a **CIFAR-10 python folder** (``data_batch_1..5`` and ``test_batch``) through
  :mod:`fortify.data.safe_pickle`'s restricted unpickler: nothing but numpy arrays is rebuilt.

Every source returns ``x`` in ``[0, 1]`` (uint8 scaled by 1/255; float arrays must already be in
[0, 1] unless ``bounds=(lo, hi)`` is given) and integer labels ``0..K-1`` (class names, sorted,
are kept in ``spec.classes``). Without a test split in the files, a fixed stratified split of
``test_fraction`` is drawn (:func:`fortify.data.split.stratified_split`, seed ``seed``).
"""
from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from fortify.data.registry import DATASETS, DatasetSpec, register_dataset
from fortify.data.split import stratified_split
from fortify.errors import ConfigError, DataFileError

Splits = dict[str, tuple[np.ndarray, np.ndarray]]
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff")
LABEL_NAMES = ("label", "target", "class", "y")


@dataclass(frozen=True)
class TableSchema:
    """How a table's columns became features: min-max ranges and one-hot vocabularies (train split)."""

    label: str
    numeric: tuple[str, ...]
    lo: tuple[float, ...]
    hi: tuple[float, ...]
    categorical: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def features(self) -> tuple[str, ...]:
        """Names of the encoded features in order: numeric columns, then ``column=value`` per one-hot slot."""
        return self.numeric + tuple(f"{c}={v}" for c, vs in self.categorical.items() for v in vs)


# ------------------------------------------------------------------------------------------- arrays
def _scale(x: np.ndarray, where: str, bounds: tuple[float, float] | None) -> np.ndarray:
    if x.dtype == np.uint8 and bounds is None:
        return x
    if not np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_:
        raise DataFileError(f"{where}: x must be numeric, got dtype {x.dtype}")
    out = x.astype(np.float32)
    if not np.isfinite(out).all():
        raise DataFileError(f"{where}: x contains NaN or inf")
    if bounds is not None:
        lo, hi = float(bounds[0]), float(bounds[1])
        if not hi > lo:
            raise ConfigError(f"bounds must be (lo, hi) with hi > lo, got {bounds!r}")
        out = (out - lo) / (hi - lo)
    if out.size and (out.min() < 0.0 or out.max() > 1.0):
        raise DataFileError(f"{where}: x has values in [{out.min():.4g}, {out.max():.4g}]; fortify works in [0, 1]: "
                            "scale the data or pass bounds=(lo, hi)")
    return out


def _labels(y: np.ndarray, where: str) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise DataFileError(f"{where}: y must be a 1-D integer array, got shape {y.shape} dtype {y.dtype}")
    if y.size and y.min() < 0:
        raise DataFileError(f"{where}: labels must be >= 0, got {int(y.min())}")
    return y.astype(np.int64)


def _pair(x: np.ndarray, y: np.ndarray, where: str, bounds: tuple[float, float] | None) -> tuple[np.ndarray, np.ndarray]:
    if x.ndim < 2:
        raise DataFileError(f"{where}: x must be (N, ...) with at least one feature axis, got shape {x.shape}")
    y = _labels(y, where)
    if len(x) != len(y):
        raise DataFileError(f"{where}: x has {len(x)} rows but y has {len(y)}")
    if len(y) == 0:
        raise DataFileError(f"{where}: no examples")
    return _scale(x, where, bounds), y


def read_arrays(path: str | Path, *, bounds: tuple[float, float] | None = None) -> Splits:
    """``.npz`` file or folder of ``.npy`` files -> ``{"all": (x, y)}`` or ``{"train": .., "test": ..}``."""
    p = Path(path)
    arrays: dict[str, np.ndarray] = {}
    try:
        if p.is_dir():
            for f in sorted(p.glob("*.npy")):
                arrays[f.stem] = np.load(f, allow_pickle=False)
        else:
            with np.load(p, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError) as exc:  # ValueError: object arrays (pickles) refused, bad headers
        raise DataFileError(f"cannot read arrays from {p}: {exc}") from None
    if {"x_train", "y_train", "x_test", "y_test"} <= arrays.keys():
        return {s: _pair(arrays[f"x_{s}"], arrays[f"y_{s}"], f"{p}[{s}]", bounds) for s in ("train", "test")}
    if {"x", "y"} <= arrays.keys():
        return {"all": _pair(arrays["x"], arrays["y"], str(p), bounds)}
    raise DataFileError(f"{p}: expected arrays x, y (or x_train, y_train, x_test, y_test), found {sorted(arrays)}")


# ------------------------------------------------------------------------------------------- images
def _class_dirs(root: Path) -> list[Path]:
    return sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))


def _image_files(root: Path, classes: Sequence[str]) -> list[tuple[Path, int]]:
    out = []
    for k, c in enumerate(classes):
        files = sorted(f for f in (root / c).rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
        out += [(f, k) for f in files]
    return out


def _read_images(files: list[tuple[Path, int]], mode: str, size: tuple[int, int] | None,
                 where: str) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image, UnidentifiedImageError

    xs, first = [], None
    for f, _ in files:
        try:
            with Image.open(f) as opened:
                im = opened.convert(mode)
            if size is not None:
                im = im.resize((size[1], size[0]), Image.Resampling.BILINEAR)
            a = np.asarray(im, dtype=np.uint8)
        except (OSError, UnidentifiedImageError) as exc:
            raise DataFileError(f"cannot read image {f}: {exc}") from None
        if first is None:
            first = (f, a.shape)
        elif a.shape != first[1]:
            raise DataFileError(f"{where}: images of different sizes ({first[0].name} is {first[1][:2]}, "
                                f"{f.name} is {a.shape[:2]}); pass image_size=(H, W) to resize them")
        xs.append(a if a.ndim == 3 else a[:, :, None])
    x = np.stack(xs).transpose(0, 3, 1, 2)
    return np.ascontiguousarray(x), np.asarray([k for _, k in files], dtype=np.int64)


def read_image_folder(root: str | Path, *, image_size: tuple[int, int] | None = None) -> tuple[Splits, list[str]]:
    """One subfolder per class (or ``train/`` and ``test/`` each holding them) -> uint8 ``(N, C, H, W)``."""
    from PIL import Image

    r = Path(root)
    split_roots = {"train": r / "train", "test": r / "test"}
    has_splits = all(d.is_dir() for d in split_roots.values())
    bases = split_roots if has_splits else {"all": r}
    classes = sorted({d.name for b in bases.values() for d in _class_dirs(b)})
    if len(classes) < 2:
        raise DataFileError(f"{r}: an image folder needs one subfolder per class (at least 2), found {classes}")
    files = {s: _image_files(b, classes) for s, b in bases.items()}
    for s, fl in files.items():
        if not fl:
            raise DataFileError(f"{bases[s]}: no images ({', '.join(IMAGE_SUFFIXES)}) in the class folders")
    grey = True
    for fl in files.values():
        for f, _ in fl[:200]:
            with Image.open(f) as im:
                grey = grey and im.mode in ("1", "L", "I", "I;16", "F", "LA")
    mode = "L" if grey else "RGB"
    return {s: _read_images(fl, mode, image_size, str(bases[s])) for s, fl in files.items()}, classes


# -------------------------------------------------------------------------------------------- CIFAR
def read_cifar10(root: str | Path) -> tuple[Splits, list[str]]:
    """CIFAR-10's python batches (``data_batch_1..5``, ``test_batch``) via the restricted unpickler."""
    from fortify.data.safe_pickle import safe_load_file

    r = Path(root)

    def batch(name: str) -> tuple[np.ndarray, np.ndarray]:
        doc = safe_load_file(r / name, encoding="bytes")
        if not isinstance(doc, dict):
            raise DataFileError(f"{r / name}: not a CIFAR batch (a dict), got {type(doc).__name__}")
        data, labels = doc.get(b"data", doc.get("data")), doc.get(b"labels", doc.get("labels"))
        if not isinstance(data, np.ndarray) or labels is None or data.ndim != 2 or data.shape[1] != 3072:
            raise DataFileError(f"{r / name}: expected 'data' (N, 3072) uint8 and 'labels'")
        return data.astype(np.uint8).reshape(-1, 3, 32, 32), np.asarray(labels, dtype=np.int64)

    train = [batch(f"data_batch_{i}") for i in range(1, 6)]
    splits = {"train": (np.concatenate([b[0] for b in train]), np.concatenate([b[1] for b in train])),
              "test": batch("test_batch")}
    names = [f"class{i}" for i in range(10)]
    if (r / "batches.meta").is_file():
        meta = safe_load_file(r / "batches.meta", encoding="bytes")
        raw = meta.get(b"label_names") if isinstance(meta, dict) else None
        if isinstance(raw, list) and len(raw) == 10:
            names = [v.decode() if isinstance(v, bytes) else str(v) for v in raw]
    return splits, names


def is_cifar10(root: Path) -> bool:
    return root.is_dir() and (root / "test_batch").is_file() and (root / "data_batch_1").is_file()


# -------------------------------------------------------------------------------------------- table
def _read_rows(path: Path) -> tuple[list[str], list[list[str]]]:
    if path.suffix.lower() == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise ConfigError(f"{path}: reading Parquet needs pyarrow (`pip install pyarrow`); or use CSV") from None
        table = pq.read_table(path)
        cols = table.column_names
        data = [[("" if v is None else str(v)) for v in table.column(c).to_pylist()] for c in cols]
        return cols, [list(r) for r in zip(*data)]
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = [r for r in csv.reader(fh) if r]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataFileError(f"cannot read {path}: {exc}") from None
    if len(rows) < 2:
        raise DataFileError(f"{path}: a table needs a header row and at least one data row")
    header, body = [h.strip() for h in rows[0]], rows[1:]
    for i, r in enumerate(body, start=2):
        if len(r) != len(header):
            raise DataFileError(f"{path}: line {i} has {len(r)} fields, the header has {len(header)}")
    return header, body


def _is_number(v: str) -> bool:
    try:
        float(v)
        return True
    except ValueError:
        return False


def fit_table_schema(header: Sequence[str], rows: Sequence[Sequence[str]], *, label: str | None,
                     categorical: Sequence[str] | None = None,
                     bounds: Mapping[str, tuple[float, float]] | None = None, where: str = "table",
                     range_rows: Sequence[Sequence[str]] | None = None) -> TableSchema:
    """Choose the label column, numeric and categorical columns and their ranges.

    Categories (one-hot vocabularies) come from ``rows`` (the training rows); numeric ranges from
    ``bounds`` where given, else from ``range_rows`` (the whole file: the input domain the data
    spans) or ``rows``."""
    if label is None:
        label = next((h for h in header if h.lower() in LABEL_NAMES), None)
        if label is None:
            raise DataFileError(f"{where}: no label column (none of {', '.join(LABEL_NAMES)}); "
                                "name it with label=COLUMN (CLI: data.label=COLUMN)")
    if label not in header:
        raise DataFileError(f"{where}: label column {label!r} not found; columns: {', '.join(header)}")
    given = set(categorical or ())
    unknown = given - set(header)
    if unknown:
        raise ConfigError(f"{where}: categorical columns not in the table: {', '.join(sorted(unknown))}")
    numeric, cats, lo, hi = [], {}, [], []
    for j, h in enumerate(header):
        if h == label:
            continue
        values = [r[j].strip() for r in rows]
        if h not in given and all(_is_number(v) for v in values):
            col = np.asarray([float(r[j]) for r in (range_rows if range_rows is not None else rows)])
            if not np.isfinite(col).all():
                raise DataFileError(f"{where}: column {h!r} contains NaN or inf")
            a, b = (bounds or {}).get(h, (float(col.min()), float(col.max())))
            numeric.append(h)
            lo.append(float(a))
            hi.append(float(b))
        else:
            cats[h] = tuple(sorted(set(values)))
    return TableSchema(label, tuple(numeric), tuple(lo), tuple(hi), cats)


def encode_table(schema: TableSchema, header: Sequence[str], rows: Sequence[Sequence[str]],
                 where: str = "table") -> np.ndarray:
    """Rows -> float32 ``(N, F)`` in [0, 1] with ``schema`` (min-max, then one-hot)."""
    col = {h: j for j, h in enumerate(header)}
    missing = [h for h in (*schema.numeric, *schema.categorical) if h not in col]
    if missing:
        raise DataFileError(f"{where}: columns missing: {', '.join(missing)}")
    parts = []
    if schema.numeric:
        num = np.asarray([[float(r[col[h]]) for h in schema.numeric] for r in rows], dtype=np.float64)
        lo, hi = np.asarray(schema.lo), np.asarray(schema.hi)
        span = np.where(hi > lo, hi - lo, 1.0)
        scaled = (num - lo) / span
        if (scaled < -1e-9).any() or (scaled > 1 + 1e-9).any():
            j = int(np.argwhere((scaled < -1e-9) | (scaled > 1 + 1e-9))[0][1])
            raise DataFileError(f"{where}: column {schema.numeric[j]!r} has values outside its range "
                                f"[{schema.lo[j]:g}, {schema.hi[j]:g}] (the data's range or the given bounds)")
        parts.append(np.clip(scaled, 0.0, 1.0))
    for h, vocab in schema.categorical.items():
        index = {v: i for i, v in enumerate(vocab)}
        onehot = np.zeros((len(rows), len(vocab)))
        for i, r in enumerate(rows):
            v = r[col[h]].strip()
            if v not in index:
                raise DataFileError(f"{where}: column {h!r} has the value {v!r}, unseen in training")
            onehot[i, index[v]] = 1.0
        parts.append(onehot)
    if not parts:
        raise DataFileError(f"{where}: no feature columns besides the label {schema.label!r}")
    return np.concatenate(parts, axis=1).astype(np.float32)


def read_table(path: str | Path, *, label: str | None = None, categorical: Sequence[str] | None = None,
               bounds: Mapping[str, tuple[float, float]] | None = None, test_fraction: float = 0.2,
               seed: int = 0) -> tuple[Splits, list[str], TableSchema]:
    """CSV/Parquet -> ``({"train", "test"}, class names, schema)``; the schema is fitted on train rows only."""
    p = Path(path)
    header, rows = _read_rows(p)
    if label is not None and label not in header:
        raise DataFileError(f"{p}: label column {label!r} not found; columns: {', '.join(header)}")
    li = header.index(label) if label is not None else next(
        (j for j, h in enumerate(header) if h.lower() in LABEL_NAMES), None)
    if li is None:
        raise DataFileError(f"{p}: no label column (none of {', '.join(LABEL_NAMES)}); "
                            "name it with label=COLUMN (CLI: data.label=COLUMN)")
    raw = [r[li].strip() for r in rows]
    classes = sorted(set(raw), key=lambda v: (not _is_number(v), float(v) if _is_number(v) else 0.0, v))
    y = np.asarray([classes.index(v) for v in raw], dtype=np.int64)
    tr, te = stratified_split(y, _n_test(len(y), test_fraction, str(p)), seed)
    schema = fit_table_schema(header, [rows[i] for i in tr], label=header[li], categorical=categorical,
                              bounds=bounds, where=str(p), range_rows=rows)
    splits = {s: (encode_table(schema, header, [rows[i] for i in idx], f"{p}[{s}]"), y[idx])
              for s, idx in (("train", tr), ("test", te))}
    return splits, classes, schema


# ---------------------------------------------------------------------------------------- the spec
def _n_test(n: int, fraction: float, where: str) -> int:
    if not 0.0 < fraction < 1.0:
        raise ConfigError(f"test_fraction must be in (0, 1), got {fraction!r}")
    if n < 2:
        raise DataFileError(f"{where}: {n} example(s); need at least 2 to split into train and test")
    return min(n - 1, max(1, round(n * fraction)))


def _split(splits: Splits, fraction: float, seed: int, where: str) -> Splits:
    if "all" not in splits:
        return splits
    x, y = splits["all"]
    tr, te = stratified_split(y, _n_test(len(y), fraction, where), seed)
    return {"train": (x[tr], y[tr]), "test": (x[te], y[te])}


def feature_stats(x: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel (axis 1) mean and std of the train split in [0, 1] space; std floored at 1e-3."""
    xf = x.astype(np.float64) / (255.0 if x.dtype == np.uint8 else 1.0)
    axes = tuple(i for i in range(xf.ndim) if i != 1)
    return tuple(float(v) for v in xf.mean(axis=axes)), tuple(max(float(v), 1e-3) for v in xf.std(axis=axes))


def _default_name(p: Path) -> str:
    digest = hashlib.sha256(str(p.resolve()).encode()).hexdigest()[:8]
    return f"file:{p.stem or p.name}-{digest}"


def load_splits(path: str | Path, *, label: str | None = None, categorical: Sequence[str] | None = None,
                bounds: Any = None, image_size: tuple[int, int] | None = None, test_fraction: float = 0.2,
                seed: int = 0) -> tuple[Splits, list[str], TableSchema | None]:
    """Read any supported source at ``path`` into ``{"train", "test"}`` arrays, class names, table schema."""
    p = Path(path).expanduser()
    if not p.exists():
        raise ConfigError(f"data path {str(p)!r} does not exist")
    schema = None
    if p.is_file() and p.suffix.lower() in (".csv", ".parquet"):
        splits, classes, schema = read_table(p, label=label, categorical=categorical, bounds=bounds,
                                             test_fraction=test_fraction, seed=seed)
        return splits, classes, schema
    if p.is_file() and p.suffix.lower() == ".npz" or p.is_dir() and any(p.glob("*.npy")):
        splits = _split(read_arrays(p, bounds=bounds), test_fraction, seed, str(p))
        k = int(max(int(y.max()) for _, y in splits.values())) + 1
        return splits, [str(i) for i in range(k)], None
    if is_cifar10(p):
        splits, classes = read_cifar10(p)
        return splits, classes, None
    if p.is_dir():
        splits, classes = read_image_folder(p, image_size=image_size)
        return _split(splits, test_fraction, seed, str(p)), classes, None
    raise ConfigError(f"{p}: unsupported data file; use .npz, a folder of .npy files, an image folder "
                      "(one subfolder per class), a CSV/Parquet table or CIFAR-10's python batches")


def from_path(path: str | Path, *, name: str | None = None, label: str | None = None,
              categorical: Sequence[str] | None = None, bounds: Any = None,
              image_size: tuple[int, int] | None = None, test_fraction: float = 0.2, seed: int = 0) -> DatasetSpec:
    """Read the data at ``path`` once and register it as a dataset (``name`` defaults to ``file:STEM-HASH``).

    Returns the :class:`DatasetSpec` (``spec.classes`` holds the class names, ``spec.features`` the
    encoded feature names of a table). Registering the same path again returns the existing spec.
    Raises ConfigError (missing path, bad options) or DataFileError (unreadable or inconsistent data).
    """
    p = Path(path).expanduser()
    spec_name = name or _default_name(p)
    if spec_name in DATASETS:
        return DATASETS.get(spec_name)
    splits, classes, schema = load_splits(p, label=label, categorical=categorical, bounds=bounds,
                                          image_size=image_size, test_fraction=test_fraction, seed=seed)
    x_train = splits["train"][0]
    shapes = {x.shape[1:] for x, _ in splits.values()}
    if len(shapes) != 1:
        raise DataFileError(f"{p}: train and test examples differ in shape: {sorted(shapes)}")
    num_classes = max(len(classes), max(int(y.max()) for _, y in splits.values()) + 1)
    mean, std = feature_stats(x_train)

    def loader(split: str, data_dir: Optional[Path]) -> tuple[np.ndarray, np.ndarray]:
        return splits[split]

    kind = "table" if schema is not None else "arrays"
    return register_dataset(DatasetSpec(
        name=spec_name, input_shape=tuple(int(s) for s in x_train.shape[1:]), num_classes=num_classes,
        mean=mean, std=std, description=f"user data ({kind}) from {p}", install=f"the file {p}",
        loader=loader, sizes={s: len(y) for s, (_, y) in splits.items()},
        classes=tuple(classes), features=schema.features if schema is not None else (),
    ))


__all__ = ["TableSchema", "encode_table", "fit_table_schema", "from_path", "load_splits", "read_arrays",
           "read_cifar10", "read_image_folder", "read_table"]
