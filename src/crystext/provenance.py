"""What a result was made from: package versions and file digests, recorded beside every number crystext writes."""

from __future__ import annotations

import hashlib
import platform
from collections.abc import Iterable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from crystext import __version__

__all__ = ["RECORDED_PACKAGES", "file_digest", "package_versions"]

#: Packages whose versions can change crystext's numbers (validity, fingerprints, energies, sampling).
RECORDED_PACKAGES = (
    "numpy", "pymatgen", "spglib", "smact", "matminer", "ase", "torch", "transformers", "chgnet", "sevenn",
    "matgl", "mp-api",
)
#: Bytes read at a time when hashing a file.
_BLOCK = 1 << 20


def package_versions(packages: Iterable[str] = RECORDED_PACKAGES) -> dict[str, str]:
    """crystext's and Python's versions, and each package's ("not installed" where it is missing)."""
    found = {"crystext": __version__, "python": platform.python_version()}
    for name in packages:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found


def file_digest(path: Path) -> str:
    """SHA-256 of a file's bytes, or of a folder's .cif files, any case, as `crystext.data` reads them (names and
    bytes, in name order)."""
    digest = hashlib.sha256()
    folder = path.is_dir()
    cifs = sorted(f for f in path.iterdir() if f.suffix.lower() == ".cif" and f.is_file()) if folder else [path]
    for file in cifs:
        if folder:
            digest.update(file.name.encode() + b"\0")
        with open(file, "rb") as handle:
            while block := handle.read(_BLOCK):
                digest.update(block)
    return digest.hexdigest()
