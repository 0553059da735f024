"""Training checkpoints: atomic step folders of safetensors plus JSON, RNG states, keep-last-K.

    DIR/checkpoints/step-000120/
        model.safetensors        trained weights (keys prefixed by module name, e.g. "denoiser.")
        ema.safetensors          their exponential moving average
        optimizer.safetensors    AdamW moments and step counts (param groups in state.json)
        rng-rank0.safetensors    python, numpy, torch CPU and CUDA generator states, one file per rank
        state.json               step, data position, LR schedule, counters, config and its hash, file sizes

A folder is written under a temporary name, every file fsynced, then renamed into
place and the parent fsynced: a checkpoint either exists complete or not at all,
so a kill -9 at any moment leaves the newest complete one loadable. `state.json`
is written last and lists each file's size, which `is_complete` checks. A write that
fails (a full disk, a quota) removes its temporary folder and is a `KinemaError` that
names the folder; the checkpoints already there are left as they were.
"""

from __future__ import annotations

import errno
import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from kinema.errors import KinemaError

STEP_DIR = re.compile(r"^step-(\d+)$")
SAVED_AGAIN = re.compile(r"^\.old-step-(\d+)-\d+$")
"""A checkpoint moved aside while its step is saved again; a kill -9 between the two renames leaves it alone."""
STATE_FILE = "state.json"


def step_dir_name(step: int) -> str:
    return f"step-{step:06d}"


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(
    checkpoints_dir: str | os.PathLike,
    step: int,
    tensors: dict[str, dict[str, torch.Tensor]],
    state: dict[str, Any],
    *,
    keep: int,
    also_keep: int | None = None,
) -> Path:
    """Write `step-N/` atomically: `tensors` maps a file stem to its tensors, `state` goes to state.json.

    Then delete all but the newest `keep` complete checkpoints and `also_keep`'s (and any leftover temporary
    folders). A write that fails raises a KinemaError naming the folder, with nothing of it left behind.
    """
    root = Path(checkpoints_dir)
    final = root / step_dir_name(step)
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        remove_temporaries(root)  # an earlier run's, cut short: on a full disk, the space this write needs
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        files = {}
        for stem, entries in tensors.items():
            path = tmp / f"{stem}.safetensors"
            save_file({k: v.detach().contiguous().cpu() for k, v in entries.items()}, str(path))
            _fsync_path(path)
            files[path.name] = path.stat().st_size
        state_path = tmp / STATE_FILE
        state_path.write_text(json.dumps({**state, "step": step, "files": files}, indent=2, sort_keys=True))
        _fsync_path(state_path)
        _fsync_path(tmp)
        old = root / f".old-{final.name}-{os.getpid()}"
        if final.exists():  # the same step saved again (e.g. interrupted right after a periodic save)
            os.replace(final, old)  # a kill -9 from here to the next rename leaves it as .old-: see remove_temporaries
        os.replace(tmp, final)
        _fsync_path(root)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        code = storage_errno(e)
        if code is None:
            raise
        previous = latest_checkpoint(root)
        then = f"the newest checkpoint, {previous.name}, is intact" if previous else "the run has no checkpoint yet"
        again = "continue with --resume" if previous else "start the run again"
        raise KinemaError(
            f"cannot write checkpoint {final.name} into {root}: {os.strerror(code)}; {then}. "
            f"{storage_fix(code).capitalize()}, then {again}"
        ) from e
    prune(root, keep=keep, also_keep=also_keep)
    return final


FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
DENIED = (errno.EROFS, errno.EACCES, errno.EPERM)
STORAGE_ERRORS = (*FULL, *DENIED, errno.EIO)
"""What a folder we write into can answer that the user fixes: full, over quota, read-only, no permission, failing."""


def storage_errno(e: BaseException) -> int | None:
    """A failed write's errno when the storage is to blame (STORAGE_ERRORS), else None.

    safetensors reports an OSError as a SafetensorError whose message ends "(os error N)"."""
    code = getattr(e, "errno", None)
    if isinstance(e, SafetensorError):
        match = re.search(r"\(os error (\d+)\)", str(e))
        code = int(match.group(1)) if match else None
    elif not isinstance(e, OSError):
        return None
    return code if code in STORAGE_ERRORS else None


def storage_fix(code: int) -> str:
    """What the user does about a storage errno, as a phrase: "free space there"."""
    if code == errno.EFBIG:
        return "raise the file size limit (ulimit -f) or choose another --out"
    if code in FULL:
        return "free space there"
    if code in DENIED:
        return "make it writable or choose another --out"
    return "check the disk"


def remove_temporaries(root: Path) -> None:
    """Remove the temporary folders other processes left in `root` (a kill -9, a failed write).

    A complete `.old-step-N-PID` with no `step-N` beside it is a checkpoint being saved again when the process
    died between its two renames: it is put back, not removed."""
    for entry in root.iterdir():
        stale = entry.name.startswith((".tmp-", ".old-")) and not entry.name.endswith(f"-{os.getpid()}")
        if not (stale and entry.is_dir()):
            continue
        if match := SAVED_AGAIN.match(entry.name):
            final = root / step_dir_name(int(match.group(1)))
            if not final.exists() and is_complete(entry):
                os.replace(entry, final)
                continue
        shutil.rmtree(entry, ignore_errors=True)


def is_complete(path: Path) -> bool:
    """True when state.json parses and every file it lists exists with the recorded size."""
    try:
        state = json.loads((path / STATE_FILE).read_text())
        return all((path / name).stat().st_size == size for name, size in state["files"].items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def list_checkpoints(checkpoints_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """(step, folder) of every complete checkpoint, oldest first."""
    root = Path(checkpoints_dir)
    if not root.is_dir():
        return []
    found, aside = {}, {}
    for entry in root.iterdir():
        match = STEP_DIR.match(entry.name) or SAVED_AGAIN.match(entry.name)
        if match and entry.is_dir() and is_complete(entry):
            (found if entry.name.startswith("step-") else aside)[int(match.group(1))] = entry
    return sorted({**aside, **found}.items())  # a step's own folder wins over one set aside


def latest_checkpoint(checkpoints_dir: str | os.PathLike) -> Path | None:
    found = list_checkpoints(checkpoints_dir)
    return found[-1][1] if found else None


def prune(checkpoints_dir: Path, *, keep: int, also_keep: int | None = None) -> None:
    """Keep the newest `keep` complete checkpoints and step `also_keep`'s (the last one known to be good); remove
    older ones, incomplete ones and stale temporaries."""
    remove_temporaries(checkpoints_dir)
    complete = list_checkpoints(checkpoints_dir)
    keep_paths = {path for _, path in complete[-keep:]} | {path for s, path in complete if s == also_keep}
    newest = complete[-1][0] if complete else -1
    for entry in checkpoints_dir.iterdir():
        match = STEP_DIR.match(entry.name)
        if match and entry.is_dir() and entry not in keep_paths and int(match.group(1)) <= newest:
            shutil.rmtree(entry, ignore_errors=True)


def checkpoint_at(checkpoints_dir: str | os.PathLike, step: int) -> Path | None:
    """The complete checkpoint of step `step`, or None."""
    return next((path for s, path in list_checkpoints(checkpoints_dir) if s == step), None)


def read_state(path: Path) -> dict[str, Any]:
    return json.loads((path / STATE_FILE).read_text())


def read_tensors(path: Path, stem: str, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    file = path / f"{stem}.safetensors"
    if not file.is_file():
        raise KinemaError(f"{file}: missing from the checkpoint; it was written by a run with a different setup")
    return load_file(str(file), device=str(device))


# ---- module dicts -------------------------------------------------------------------------


def prefixed(states: dict[str, dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """{"denoiser": {"w": t}} -> {"denoiser.w": t}: several modules in one safetensors file."""
    return {f"{name}.{key}": value for name, state in states.items() for key, value in state.items()}


def unprefixed(flat: dict[str, torch.Tensor], name: str) -> dict[str, torch.Tensor]:
    start = f"{name}."
    return {key[len(start) :]: value for key, value in flat.items() if key.startswith(start)}


# ---- optimizer --------------------------------------------------------------------------------


def optimizer_tensors(state_dict: dict[str, Any]) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    """An optimizer's state_dict as (tensors "state.{param}.{name}", JSON-ready param groups).

    `param` is the parameter's index (a plain state_dict) or its dotted name (a full FSDP2 one)."""
    tensors = {}
    for index, entries in state_dict["state"].items():
        for name, value in entries.items():
            tensors[f"state.{index}.{name}"] = value if torch.is_tensor(value) else torch.tensor(value)
    groups = [
        {k: list(v) if isinstance(v, tuple) else v for k, v in group.items()} for group in state_dict["param_groups"]
    ]
    return tensors, groups


def optimizer_state_dict(tensors: dict[str, torch.Tensor], groups: list[dict[str, Any]]) -> dict[str, Any]:
    """The inverse of `optimizer_tensors`."""
    state: dict[int | str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        param, name = key[len("state.") :].rsplit(".", 1)  # a parameter's index, or its dotted name under FSDP2
        state.setdefault(int(param) if param.isdigit() else param, {})[name] = value
    param_groups = [{k: tuple(v) if k == "betas" else v for k, v in group.items()} for group in groups]
    return {"state": state, "param_groups": param_groups}


# ---- random number generators ----------------------------------------------------------------


def rng_tensors() -> dict[str, torch.Tensor]:
    """This process's python, numpy, torch CPU and CUDA generator states as tensors."""
    version, py_state, gauss = random.getstate()
    _, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    out = {
        "python": torch.tensor([version, *py_state], dtype=torch.int64),
        "python_gauss": torch.tensor([float("nan") if gauss is None else gauss], dtype=torch.float64),
        "numpy": torch.tensor([np_pos, np_has_gauss, *np_keys.tolist()], dtype=torch.int64),
        "numpy_gauss": torch.tensor([np_gauss], dtype=torch.float64),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            out[f"cuda.{i}"] = s
    return out


def set_rng_tensors(t: dict[str, torch.Tensor]) -> None:
    py = t["python"].tolist()
    gauss = t["python_gauss"].item()
    random.setstate((py[0], tuple(py[1:]), None if gauss != gauss else gauss))
    np_pos, np_has_gauss, *np_keys = t["numpy"].tolist()
    np.random.set_state(("MT19937", np.array(np_keys, dtype=np.uint32), np_pos, np_has_gauss, t["numpy_gauss"].item()))
    torch.set_rng_state(t["torch"])
    cuda = [t[f"cuda.{i}"] for i in range(len(t)) if f"cuda.{i}" in t]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda[: torch.cuda.device_count()])
