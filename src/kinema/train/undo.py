"""Take back what a training run added to its folder when it fails before its first checkpoint.

A run that fails while building its models (a missing VAE, a config that does not fit it), on its
data or in its first steps has nothing to resume, yet it has written config.json, samples/ and
perhaps metrics: the folder would look like a run. `RunFolder` notes what the folder holds before
the run writes anything, and `undo` removes only what was not there then, restores the files a
resumed run rewrites, and removes the folders the run created (when they hold nothing else).
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from kinema.atomic import atomic_write
from kinema.train import checkpoint as ckpt

log = logging.getLogger("kinema.train")

WRITTEN_INTO = ("samples", "checkpoints", "cache", "tensorboard", "pipeline")
"""Folders of a run that it adds files to: only these are looked into (a user's --out may be a big folder)."""
REWRITTEN = ("config.json", "metrics.jsonl", "config_changes.jsonl", "loss.png")
"""Files a resumed run rewrites or appends to: their bytes are kept to put back."""


class RunFolder:
    """What `out_dir` holds before a run starts (rank 0 only: the other ranks write nothing)."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        # The folders that do not exist yet, out_dir first: the run creates them (mkdir with parents).
        self.new_folders: list[Path] = []
        folder = out_dir.absolute()
        while not os.path.lexists(folder) and folder != folder.parent:
            self.new_folders.append(folder)
            folder = folder.parent
        self.before = set(self._listing())
        self.kept = {name: (out_dir / name).read_bytes() for name in REWRITTEN if (out_dir / name).is_file()}
        self.checkpoint = ckpt.latest_checkpoint(out_dir / "checkpoints")

    def _listing(self) -> list[Path]:
        """The top level of out_dir, and everything inside the folders a run writes into."""
        if not self.out_dir.is_dir():
            return []
        found = []
        for entry in self.out_dir.iterdir():
            found.append(entry)
            if entry.name in WRITTEN_INTO and entry.is_dir() and not entry.is_symlink():
                for root, dirs, files in os.walk(entry):
                    found += [Path(root, name) for name in dirs + files]
        return found

    def wrote_a_checkpoint(self) -> bool:
        """Whether the run saved a checkpoint of its own: then its folder is a run to resume, and stays."""
        latest = ckpt.latest_checkpoint(self.out_dir / "checkpoints")
        return latest is not None and latest != self.checkpoint

    def undo(self) -> None:
        """Remove what the run added and put back what it rewrote; never touches what was there before."""
        # Shallowest first, so a new folder goes whole and what was inside it is not visited again.
        for path in sorted(self._listing(), key=lambda p: len(p.parts)):
            if path in self.before or not os.path.lexists(path):
                continue
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        for name, data in self.kept.items():
            path = self.out_dir / name
            if not path.is_file() or path.read_bytes() != data:
                atomic_write(path, lambda tmp, data=data: Path(tmp).write_bytes(data))
        for folder in self.new_folders:  # innermost first; one that holds anything else stays
            try:
                folder.rmdir()
            except OSError:
                break


def undo_failed_run(folder: RunFolder | None) -> None:
    """After a run failed: undo it unless it saved a checkpoint. A failure here is logged, never raised over
    the run's own error."""
    if folder is None or folder.wrote_a_checkpoint():
        return
    try:
        folder.undo()
    except OSError as e:
        log.warning("the failed run could not remove what it wrote into %s (%s)", folder.out_dir, e)
