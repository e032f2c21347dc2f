"""Crystal datasets and structure files: read any generator's output, find or fetch the benchmark sets.

Every reader returns a `Dataset`: the structures that parsed, and a list of the records that did not,
each with its id and the reason, so one bad record never costs the rest.

Modules, one job each:

- `records`: `Record`, `Dataset` (and `Dataset.concat`, which never drops a record silently), `DatasetError`.
- `tables`: CSV tables: reading one, which column holds the structures, and the one id rule (`table_ids`).
- `readers`: `read_structures`, which reads whatever a path is (CSV, CIF, CIF folder, .zip/.tar of CIFs,
  pymatgen JSON, CDVAE/DiffCSP/FlowMM .pt, extxyz and other ASE files), and one reader per format.
- `registry`: the benchmark sets (`DATASETS`) and hull references (`REFERENCES`), their local copies
  (`dataset_dir`), `fetch`, `cache_dir`.
- `splits`: splits in the CDVAE layout (`read_split`) and training sets joined from several (`training_set`).
"""

from crystext.data.readers import (
    READER_VERSION,
    read_cif,
    read_cif_archive,
    read_cif_dir,
    read_csv,
    read_extxyz,
    read_frames,
    read_pymatgen_json,
    read_structures,
    read_torch_eval,
)
from crystext.data.records import Dataset, DatasetError, Record
from crystext.data.registry import (
    CACHE_DIR_ENV,
    DATA_DIR_ENV,
    DATASETS,
    REFERENCES,
    DatasetSource,
    cache_dir,
    dataset_dir,
    fetch,
)
from crystext.data.splits import read_split, training_set
from crystext.data.tables import (
    ID_COLUMNS,
    STRUCTURE_COLUMNS,
    find_id_column,
    find_structure_column,
    is_csv,
    read_table,
    table_ids,
)

__all__ = [
    "CACHE_DIR_ENV",
    "DATASETS",
    "DATA_DIR_ENV",
    "ID_COLUMNS",
    "READER_VERSION",
    "REFERENCES",
    "STRUCTURE_COLUMNS",
    "Dataset",
    "DatasetError",
    "DatasetSource",
    "Record",
    "cache_dir",
    "dataset_dir",
    "fetch",
    "find_id_column",
    "find_structure_column",
    "is_csv",
    "read_cif",
    "read_cif_archive",
    "read_cif_dir",
    "read_csv",
    "read_extxyz",
    "read_frames",
    "read_pymatgen_json",
    "read_split",
    "read_structures",
    "read_table",
    "read_torch_eval",
    "table_ids",
    "training_set",
]
