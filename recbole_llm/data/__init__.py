"""Data layer: raw-format converters, the shared protocol and the prepared RecBole atomic files."""

from recbole_llm.data.prepare import (
    KNOWN_DATASETS,
    DatasetSpec,
    ProtocolParams,
    dataset_dir,
    dataset_files,
    ensure_prepared,
    is_prepared,
    load_metadata,
    prepare_command,
    prepare_dataset,
)

__all__ = [
    "KNOWN_DATASETS",
    "DatasetSpec",
    "ProtocolParams",
    "dataset_dir",
    "dataset_files",
    "ensure_prepared",
    "is_prepared",
    "load_metadata",
    "prepare_command",
    "prepare_dataset",
]
