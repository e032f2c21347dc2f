"""The benchmark sets crystext knows (`DATASETS`) and the hull references it can download (`REFERENCES`),
where their files are (`dataset_dir`), downloading them (`fetch`), and crystext's cache folder (`cache_dir`)."""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crystext.data.records import DatasetError

__all__ = [
    "CACHE_DIR_ENV",
    "DATASETS",
    "DATA_DIR_ENV",
    "REFERENCES",
    "DatasetSource",
    "cache_dir",
    "dataset_dir",
    "fetch",
]

DATA_DIR_ENV = "CRYSTEXT_DATA_DIR"
CACHE_DIR_ENV = "CRYSTEXT_CACHE_DIR"

_CDVAE = "https://raw.githubusercontent.com/txie-93/cdvae/f857f598d6f6cca5dc1ea0582d228f12dcc2c2ea/data"
_WYCKOFF = (
    "https://raw.githubusercontent.com/SymmetryAdvantage/WyckoffTransformer/"
    "5f1c22418cd53d237f652e9a60056fe2eb1c8669/data"
)


@dataclass(frozen=True)
class DatasetSource:
    """Where a benchmark set is published: one URL per split (or file), and each file's checksums where pinned.

    `filenames` names the saved file where the URL does not end in it (a figshare download id).
    """

    name: str
    description: str
    urls: Mapping[str, str]
    sha256: Mapping[str, str] = field(default_factory=dict)
    md5: Mapping[str, str] = field(default_factory=dict)
    filenames: Mapping[str, str] = field(default_factory=dict)

    def filename(self, split: str) -> str:
        return self.filenames.get(split) or self.urls[split].rsplit("/", 1)[-1]


def _splits(base: str, suffix: str) -> dict[str, str]:
    return {split: f"{base}/{split}{suffix}" for split in ("train", "val", "test")}


#: The standard benchmark sets. Checksums are pinned where the file's bytes could be verified
#: against the upstream git blob; the others are recorded on first download (see `fetch`).
DATASETS: dict[str, DatasetSource] = {
    source.name: source
    for source in (
        DatasetSource("mp_20", "MP-20: 45,231 Materials Project crystals with at most 20 atoms (CDVAE)",
                      _splits(f"{_CDVAE}/mp_20", ".csv")),
        DatasetSource("perov_5", "Perov-5: 18,928 perovskites with 5 atoms per cell (CDVAE)",
                      _splits(f"{_CDVAE}/perov_5", ".csv")),
        DatasetSource("carbon_24", "Carbon-24: 10,153 carbon allotropes with 6-24 atoms (CDVAE)",
                      _splits(f"{_CDVAE}/carbon_24", ".csv")),
        DatasetSource(
            "mpts_52",
            "MPTS-52: Materials Project time split, up to 52 atoms (Baird & Sparks)",
            _splits(f"{_WYCKOFF}/mpts_52", ".csv.gz"),
            {
                "test": "5c082d8cd8b5398bb9971f076e2f459771e01b45b1a2d206f665bd99a1369feb",
                "val": "af56fcaa2ed7f36e9ec0ce95ae409c73f4c909644153c3d441c76f87a4d1c11d",
            },
        ),
    )
}


_CSV = (".csv", ".csv.gz")
_MP_ENTRIES = "2023-02-07-mp-computed-structure-entries.json.gz"

#: Hull references for `crystext stability --entries`. The Materials Project snapshot that published S.U.N.
#: and stability rates use (MatterGen, LeMat-GenBench via matbench-discovery): 154,719 ComputedStructureEntries
#: of 2023-02-07 with MP2020 corrections, 179,351,659 bytes, CC-BY-4.0. Its MD5 is the one matbench-discovery
#: publishes for figshare file 40344436; the SHA-256 was recorded from the same file by independent users.
REFERENCES: dict[str, DatasetSource] = {
    source.name: source
    for source in (
        DatasetSource(
            "mp_2023_02_07",
            "Materials Project computed structure entries of 2023-02-07 (matbench-discovery): a full hull for "
            "`crystext stability --entries`",
            {"entries": "https://api.figshare.com/v2/file/download/40344436"},
            {"entries": "553d6272f049a8f4ec26e503b89751e2616dd3af53d086545f6ea00f317a361f"},
            {"entries": "76fc748db6b175bb80de4c276d27c235"},
            {"entries": _MP_ENTRIES},
        ),
    )
}


def cache_dir(kind: str = "datasets") -> Path:
    """crystext's cache folder for `kind` (fetched datasets, fingerprints, hulls): under $CRYSTEXT_CACHE_DIR,
    else ~/.cache/crystext."""
    return Path(os.environ.get(CACHE_DIR_ENV) or Path.home() / ".cache" / "crystext") / kind


def _source(name: str) -> DatasetSource:
    try:
        return DATASETS[name] if name in DATASETS else REFERENCES[name]
    except KeyError:
        raise DatasetError(f"unknown dataset '{name}' (known: {', '.join([*DATASETS, *REFERENCES])})") from None


def _local_copy(source: DatasetSource, root: Path) -> Path | None:
    """`root/name` if it holds one of the source's files (as published, or a split also as plain or gzipped CSV),
    or `root` itself if it does."""
    names = {source.filename(split) for split in source.urls} | {f"{s}{ext}" for s in source.urls for ext in _CSV}
    for folder in (root / source.name, root):
        if any((folder / name).is_file() for name in names):
            return folder
    return None


def dataset_dir(name: str, data_dir: str | Path | None = None, download: bool = True) -> Path:
    """The folder holding a benchmark set's split files.

    Looks in `data_dir` (or $CRYSTEXT_DATA_DIR), as `data_dir/name/` or `data_dir` itself; then in the
    cache; and only then downloads it.
    """
    source = _source(name)
    root = data_dir or os.environ.get(DATA_DIR_ENV)
    if root:
        found = _local_copy(source, Path(root))
        if found is None:
            raise DatasetError(f"{root}: no {name} split files here or in {Path(root) / name}")
        return found
    cached = cache_dir() / name
    if all((cached / source.filename(s)).is_file() for s in source.urls):
        return cached
    if not download:
        raise DatasetError(f"{name} is not in the cache ({cached}); run `crystext data fetch {name}`")
    return fetch(name)


def fetch(name: str, splits: Sequence[str] | None = None, timeout: float = 60.0) -> Path:
    """Download a benchmark set's splits into the cache, verifying pinned checksums; return its folder.

    Each file lands under a temporary name and is renamed only once complete, so an interrupted
    download never leaves a truncated file behind. Unpinned files get their SHA-256 recorded in
    `SHA256SUMS` beside them.
    """
    source = _source(name)
    target = cache_dir() / name
    target.mkdir(parents=True, exist_ok=True)
    for split in splits or list(source.urls):
        url = source.urls[split]
        path = target / source.filename(split)
        if path.is_file():
            continue
        partial = path.with_name(path.name + ".part")
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response, open(partial, "wb") as out:
                digest = _copy_hashing(response, out)
        except (urllib.error.URLError, OSError) as err:
            partial.unlink(missing_ok=True)
            raise DatasetError(
                f"could not download {url} ({getattr(err, 'reason', err)}). Without internet, use a local copy: "
                f"pass --data-dir DIR or set {DATA_DIR_ENV}=DIR, where DIR/{name}/ holds "
                f"{', '.join(source.filename(s) for s in source.urls)}"
            ) from None
        for kind, pins in (("sha256", source.sha256), ("md5", source.md5)):
            if split in pins and digest[kind] != pins[split]:
                partial.unlink(missing_ok=True)
                raise DatasetError(f"{url}: checksum mismatch ({kind} {digest[kind]}, expected {pins[split]})")
        partial.replace(path)
        if split not in source.sha256:
            with open(target / "SHA256SUMS", "a") as sums:
                sums.write(f"{digest['sha256']}  {path.name}\n")
    return target


def _copy_hashing(response: Any, out: Any, chunk: int = 1 << 20) -> dict[str, str]:
    """Copy a download to `out`; its SHA-256 and MD5 (the checksum some publishers give)."""
    digests = {"sha256": hashlib.sha256(), "md5": hashlib.md5(usedforsecurity=False)}
    while block := response.read(chunk):
        for digest in digests.values():
            digest.update(block)
        out.write(block)
    return {kind: digest.hexdigest() for kind, digest in digests.items()}
