"""Where a downloadable dataset's files are: the search order, and a download that leaves nothing behind on failure.

Search order (the first folder that holds every file wins; ``Found.source`` says which):

1. ``dataset.data_dir`` (when set);
2. ``$GSDEFENSE_DATA_DIR`` (when set);
3. the system folder of a distribution package (FashionMNIST: Debian's ``dataset-fashion-mnist`` puts the four
   gzipped files in ``/usr/share/datasets/fashion-mnist``);
4. ``./data`` (only when neither 1 nor 2 is set: where earlier downloads went);
5. with ``dataset.download`` true, a download into the first of 1, 2, ``./data``.

In a root, the files lie in the dataset's torchvision subfolder (``FashionMNIST/raw``, ``cifar-10-batches-py``) or,
where the layout allows, directly in the root; each gzipped (``<name>.gz``) or not, where the layout allows.
A folder that holds some but not all files is an error (a half-copied set is never passed over in silence), and so
is a named root (1, 2) that is not a folder unless it is the download target. A download runs in a temporary folder
and moves the files in only once it has succeeded: a failed one creates nothing.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from gsdefense.errors import ConfigError, DatasetNotFoundError

ENV = "GSDEFENSE_DATA_DIR"
DEFAULT_DIR = "data"
FIELD = "dataset.data_dir"


@dataclass(frozen=True)
class Layout:
    """``title`` for messages; ``files`` (canonical names) live in ``<root>/<subdir>`` (or ``<root>`` if ``flat``),
    each optionally as ``<name>.gz`` if ``gz``; ``offline`` says how to get them without internet access."""

    title: str
    files: tuple[str, ...]
    subdir: str
    flat: bool
    gz: bool
    offline: str


@dataclass(frozen=True)
class Found:
    folder: Path
    files: dict[str, Path]  # canonical name -> the file to read (un-gzipped preferred)
    source: str  # dataset.data_dir | GSDEFENSE_DATA_DIR | system | default


def _present(folder: Path, layout: Layout) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for name in layout.files:
        for candidate in (name, f"{name}.gz") if layout.gz else (name,):
            if (folder / candidate).is_file():
                out[name] = folder / candidate
                break
    return out


def _named(data_dir: str | None) -> list[tuple[str, Path]]:
    named = [(FIELD, data_dir), (ENV, os.environ.get(ENV) or None)]
    return [(source, Path(p).expanduser().resolve()) for source, p in named if p]


def download_root(data_dir: str | None) -> Path:
    """Where a download goes: ``dataset.data_dir``, else ``$GSDEFENSE_DATA_DIR``, else ``./data``."""
    named = _named(data_dir)
    return named[0][1] if named else Path(DEFAULT_DIR).resolve()


def candidates(layout: Layout, *, data_dir: str | None, system: Path | None) -> list[tuple[str, Path]]:
    """``(source, folder)`` in search order."""
    roots = _named(data_dir)
    out = [(s, f) for s, root in roots for f in [root / layout.subdir] + ([root] if layout.flat else [])]
    if system is not None:
        out.append(("system", system))
    if not roots:
        out.append(("default", Path(DEFAULT_DIR).resolve() / layout.subdir))
    return out


def locate(layout: Layout, *, data_dir: str | None, download: bool, system: Path | None) -> Found | None:
    """The first folder in search order holding every file of ``layout``; None when none does."""
    target = download_root(data_dir)
    for source, root in _named(data_dir):
        if not root.is_dir() and not (download and root == target):
            what = f"dataset.data_dir {root}" if source == FIELD else f"{ENV}={root}"
            raise DatasetNotFoundError(
                FIELD,
                f"{what} is not a folder.",
                f"point it at the folder that holds {layout.subdir}/, leave it unset to search "
                f"{ENV} and the system location, or set dataset.download=true to fetch {layout.title} into it.",
            )
    for source, folder in candidates(layout, data_dir=data_dir, system=system):
        have = _present(folder, layout)
        if len(have) == len(layout.files):
            return Found(folder=folder, files=have, source=source)
        if have:
            missing = [f for f in layout.files if f not in have]
            raise ConfigError(
                FIELD,
                f"{folder} holds {len(have)} of {layout.title}'s {len(layout.files)} files; missing: "
                f"{', '.join(missing)}{' (each may be gzipped)' if layout.gz else ''}.",
                "copy the missing files there, or move the others away so that the next location is searched.",
            )
    return None


def fetch(layout: Layout, *, target_root: Path, fetcher: Callable[[Path], Path]) -> Path:
    """Run ``fetcher(tmp)`` (returns the folder inside ``tmp`` that holds the files), then move its files into
    ``target_root/<subdir>``, each by an atomic rename; any failure leaves no new folder or file behind."""
    target = target_root / layout.subdir
    tmp = Path(tempfile.mkdtemp(prefix="gsdefense-download-"))
    try:
        got = fetcher(tmp)
        files = sorted(f for f in got.iterdir() if f.is_file())
        target.mkdir(parents=True, exist_ok=True)
        for f in files:
            part = target / f".{f.name}.part-{os.getpid()}"
            shutil.move(f, part)
            os.replace(part, target / f.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def not_found(
    layout: Layout,
    *,
    data_dir: str | None,
    system: Path | None,
    download: bool,
    reason: str | None,
    cause: str = "this machine cannot download them (no internet access?)",
) -> DatasetNotFoundError:
    """The one line for files found nowhere: where it looked, why no download (``reason``; ``cause`` says what to do
    about it), and the offline route."""
    searched = ", ".join(str(f) for _, f in candidates(layout, data_dir=data_dir, system=system))
    target = download_root(data_dir) / layout.subdir
    names = ", ".join(layout.files) + (" (each may be gzipped)" if layout.gz else "")
    copy = f"copy {names} into {target} (or point dataset.data_dir or {ENV} at a folder holding {layout.subdir}/)"
    if download:
        problem = (
            f"{layout.title}'s files are in none of {searched}, and downloading them into {target} failed ({reason})."
        )
        how = f"{cause}; or offline: {layout.offline}, or {copy}."
    else:
        problem = f"{layout.title}'s files are in none of {searched}, and dataset.download is false."
        how = f"offline: {layout.offline}, or {copy}; online: set dataset.download=true."
    return DatasetNotFoundError(FIELD, problem, how)
