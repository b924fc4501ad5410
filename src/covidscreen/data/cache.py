"""Preprocessed image cache: decoded, resized ``uint8`` images in one memory-mapped ``.npy`` file.

The key is a hash of the image side, the preprocessing version and, for every image, its absolute path, byte size,
modification time, status-change time and inode (which a sync job that replaces a file and restores its old
modification time still changes): a changed or replaced file or another size gives another cache, so changed files
are re-read, never trusted; a rerun on unchanged files reuses it. :meth:`ImageCache.changed` tells which files
changed or vanished since the cache was opened (e.g. during a long training), so that later steps leave them out.
Epochs after the first (and later runs) read pixels straight from the memory map instead of decoding JPEGs. Files
that fail to decode are listed in the cache's JSON sidecar, so every user of the cache reports them instead of
dropping them.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..config import PreprocessConfig
from ..errors import DataError, ImageDecodeError
from ..runtime import atomic_write_text
from .decode import load_resized
from .preprocess import ignore_sigint, iter_preprocessed

CACHE_VERSION = 2  # bump when decoding, resizing or the key changes


def default_cache_dir() -> Path:
    return Path(os.environ.get("COVIDSCREEN_CACHE", Path.home() / ".cache" / "covidscreen"))


def file_signature(path: str) -> str:
    """Size, modification and status-change times and inode of a file ("missing" when it cannot be found)."""
    try:
        st = os.stat(path)
    except OSError:
        return "missing"
    return f"{st.st_size}|{st.st_mtime_ns}|{st.st_ctime_ns}|{st.st_ino}"


def _key(paths: list[str], size: int, preprocess_key: str = "") -> tuple[str, list[str]]:
    # the preprocessing settings (with the lung segmenter's sha256) are part of the key; "" = none
    h = hashlib.sha256(f"v{CACHE_VERSION}|{size}{'|' + preprocess_key if preprocess_key else ''}".encode())
    signatures = [file_signature(p) for p in paths]
    for p, sig in zip(paths, signatures):
        h.update(f"|{p}|{sig}".encode())
    return h.hexdigest()[:24], signatures


def _load_one(args: tuple[str, int]) -> tuple[np.ndarray | None, str | None]:
    path, size = args
    try:
        return load_resized(path, size), None
    except ImageDecodeError as exc:
        return None, str(exc)


class ImageCache:
    """Images of a list of files at one square size, decoded once.

    Attributes:
        images: ``(N, size, size)`` ``uint8`` array (memory-mapped); ``(N, C, size, size)`` when the preprocessing
            reads ``C`` CT windows as channels.
        ok: ``(N,)`` bool, False where the file could not be decoded.
        errors: message per path that failed.
    """

    def __init__(self, paths: list[str], size: int, cache_dir: str | Path | None = None, workers: int | None = None,
                 progress: bool = True, preprocess: PreprocessConfig | None = None, segmenter: object = None) -> None:
        if not paths:
            raise DataError("no images to cache")
        self.paths = list(paths)
        self.size = size
        # optional preprocessing (data/preprocess.py); ``segmenter`` is needed for the lung ROI options
        self.preprocess = preprocess if preprocess is not None and not preprocess.is_identity else None
        self.segmenter = segmenter
        self.index = {p: i for i, p in enumerate(self.paths)}
        folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        folder.mkdir(parents=True, exist_ok=True)
        key, self.signatures = _key(self.paths, size, self.preprocess.key() if self.preprocess else "")
        self.file = folder / f"{key}_{size}px.npy"
        meta_file = self.file.with_suffix(".json")
        if not (self.file.is_file() and meta_file.is_file()):
            self._build(meta_file, workers, progress)
        meta = json.loads(meta_file.read_text())
        self.errors: dict[str, str] = meta["errors"]
        self.images = np.load(self.file, mmap_mode="r")
        if self.images.shape != (len(self.paths), *self.item_shape):
            raise DataError(f"cache file {self.file} is damaged (shape {self.images.shape}); delete it and rerun")
        self.ok = np.array([p not in self.errors for p in self.paths])
        self.built = meta.get("built", False)
        self.stats: dict[str, int] = meta.get("stats", {})

    @property
    def item_shape(self) -> tuple[int, ...]:
        """Shape of one cached image: ``(size, size)``, or ``(C, size, size)`` for several CT windows."""
        channels = self.preprocess.channels if self.preprocess is not None else 1
        return (self.size, self.size) if channels == 1 else (channels, self.size, self.size)

    def _build(self, meta_file: Path, workers: int | None, progress: bool) -> None:
        tmp = self.file.with_name(self.file.stem + f".tmp{os.getpid()}.npy")
        arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(self.paths), *self.item_shape))
        errors: dict[str, str] = {}
        stats: dict[str, int] = {}
        workers = workers or min(4, os.cpu_count() or 1)
        if self.preprocess is not None:
            for i, img, err in iter_preprocessed(self.paths, self.size, self.preprocess, self.segmenter, workers,
                                                 progress, stats=stats):
                self._store(arr, i, img, err, errors)
            self._finish(arr, tmp, meta_file, errors, stats)
            return
        jobs = [(p, self.size) for p in self.paths]
        bar = tqdm(total=len(jobs), desc=f"caching images at {self.size}px", unit="img", disable=not progress)
        if workers > 1 and len(jobs) > 64:
            with ProcessPoolExecutor(workers, initializer=ignore_sigint) as pool:
                results = pool.map(_load_one, jobs, chunksize=32)
                for i, (img, err) in enumerate(results):
                    self._store(arr, i, img, err, errors)
                    bar.update()
        else:
            for i, job in enumerate(jobs):
                self._store(arr, i, *_load_one(job), errors)
                bar.update()
        bar.close()
        self._finish(arr, tmp, meta_file, errors, stats)

    def _finish(self, arr: np.ndarray, tmp: Path, meta_file: Path, errors: dict, stats: dict) -> None:
        arr.flush()
        del arr
        os.replace(tmp, self.file)
        meta = {"size": self.size, "n": len(self.paths), "errors": errors, "built": True}
        if self.preprocess is not None:
            meta.update(preprocessing=self.preprocess.to_dict(), stats=stats)
        atomic_write_text(meta_file, json.dumps(meta))

    def _store(self, arr: np.ndarray, i: int, img: np.ndarray | None, err: str | None, errors: dict) -> None:
        if err is not None:
            errors[self.paths[i]] = err
            arr[i] = 0
        else:
            arr[i] = img

    def changed(self, paths: list[str] | None = None) -> dict[str, str]:
        """``{path: what happened}`` for the files (of ``paths``, default all) that vanished or changed since the
        cache was opened: their cached pixels no longer show what the file holds."""
        out = {}
        for p in self.paths if paths is None else paths:
            now = file_signature(p)
            if now != self.signatures[self.index[p]]:
                out[p] = (f"{p}: file vanished after it was cached" if now == "missing" else
                          f"{p}: file changed after it was cached (size or time differ)")
        return out

    def rows(self, paths: list[str]) -> np.ndarray:
        """Row indices of ``paths`` in the cache."""
        return np.array([self.index[p] for p in paths], dtype=np.int64)
