"""Datasets: built-in `shapes` and moving `digits`, and a folder of the user's clips.

Every dataset yields `{"video": (3, T, S, S) float in [-1, 1], "caption": str}`.
`get_dataset(name_or_manifest, **kw)` resolves a name used on the command line.
"""

from __future__ import annotations

import inspect
from typing import Any

from kinema.data.digits import MovingDigitsDataset
from kinema.data.shapes import ShapesDataset
from kinema.errors import KinemaError

DATASET_NAMES: tuple[str, ...] = ("shapes", "shapes2", "shapes-mixed", "digits")
"""Built-in dataset names accepted by `get_dataset` (besides a manifest path)."""
MANIFEST_SUFFIXES: tuple[str, ...] = (".csv", ".jsonl")

__all__ = ["DATASET_NAMES", "FolderDataset", "MovingDigitsDataset", "ShapesDataset", "get_dataset"]


def __getattr__(name: str) -> Any:
    # Imported on first use, so this package imports without the folder module's dependencies.
    if name == "FolderDataset":
        from kinema.data.folder import FolderDataset

        return FolderDataset
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def get_dataset(name_or_manifest: str, *, allow_outside: bool = False, **kw: Any) -> Any:
    """The dataset named `shapes` (one object), `shapes2` (two objects), `shapes-mixed`
    (one object in two clips of three, two in the third; one caption in four leaves the sizes out), `digits`
    (moving MNIST digits), or a FolderDataset for a `.csv` / `.jsonl` manifest path.

    Keyword arguments go to the dataset (size, frames, split, ...); one it does
    not take raises KinemaError naming the ones it does. allow_outside lets a
    manifest name files outside its folder (built-in datasets have no files).
    """
    name = str(name_or_manifest)
    args: tuple[Any, ...] = ()
    if name == "shapes":
        cls, fixed = ShapesDataset, {"objects": 1}
    elif name == "shapes2":
        cls, fixed = ShapesDataset, {"objects": 2}
    elif name == "shapes-mixed":
        cls, fixed = ShapesDataset, {"objects": (1, 1, 2), "sized_captions": 0.75}
    elif name == "digits":
        cls, fixed = MovingDigitsDataset, {}
    elif name.lower().endswith(MANIFEST_SUFFIXES):
        from kinema.data.folder import FolderDataset

        cls, fixed, args = FolderDataset, {"allow_outside": allow_outside}, (name,)
    else:
        raise KinemaError(
            f"unknown dataset {name!r}; use one of {', '.join(DATASET_NAMES)} "
            f"or the path of a manifest ending in {' or '.join(MANIFEST_SUFFIXES)}"
        )
    accepted = [p for p in list(inspect.signature(cls).parameters)[len(args) :] if p not in fixed]
    unknown = sorted(set(kw) - set(accepted))
    if unknown:
        raise KinemaError(f"dataset {name!r} does not take {', '.join(unknown)}; it takes {', '.join(accepted)}")
    return cls(*args, **fixed, **kw)
