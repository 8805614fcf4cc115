"""RecBole dataset that reads the prepared shared split, so every model sees the same samples.

RecBole's benchmark mode (``benchmark_filename: [train, valid, test]``) loads pre-split
``<name>.<split>.inter`` files of ``user_id, item_id_list, item_id, timestamp`` rows without
re-splitting or augmenting them. This class adds what benchmark mode lacks:

* histories cut to the ``MAX_ITEM_LIST_LENGTH`` most *recent* items (RecBole would keep the oldest) and
  padded to exactly that width (Caser's convolution needs a fixed width);
* deterministic sub-sampling of each split (``train_sample_num``, ``eval_sample_num``) that is applied
  identically for every model, so an LLM evaluated on 200 test samples is compared with SASRec on
  the same 200 samples.
"""

from __future__ import annotations

import csv
import os

import numpy as np
import torch
import torch.nn.functional as F
from recbole.data.dataset import SequentialDataset

from recbole_llm.data.prepare import ensure_prepared
from recbole_llm.utils.errors import UserError

SPLITS = ("train", "valid", "test")


def sample_rows(n_rows: int, n_keep: int | None, seed: int) -> np.ndarray:
    """Indices of ``n_keep`` rows out of ``n_rows`` drawn without replacement, kept in file order.

    Keeping file (chronological) order means a sub-sample is still a valid chronological split.
    ``None`` or a value ``>= n_rows`` keeps every row.
    """
    if n_keep is None or n_keep >= n_rows:
        return np.arange(n_rows)
    if n_keep <= 0:
        raise ValueError(
            f"A sample size must be positive or null, got {n_keep}: use null to keep every sample."
        )
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n_rows, size=n_keep, replace=False))


def histories_of(interaction, seq_field: str, len_field: str) -> list[list[int]]:
    """Each sample's history as a list of item ids, oldest first, padding removed.

    The prompt builders and the analyses read histories as lists; the prepared split pads them to
    ``MAX_ITEM_LIST_LENGTH`` (see :class:`SharedSplitDataset`), so ``len_field`` says where each ends.
    """
    seq = interaction[seq_field].cpu()
    lens = interaction[len_field].cpu().tolist()
    return [row[:n].tolist() for row, n in zip(seq, lens, strict=True)]


class SharedSplitDataset(SequentialDataset):
    """The prepared (user, history, target) samples, identical for LLMGenRec and RecBole's sequential models."""

    def __init__(self, config):
        if config["benchmark_filename"] is None:
            raise ValueError(
                "recbole-llm reads the prepared split: keep `benchmark_filename: [train, valid, test]` "
                "(set in properties/overall.yaml) instead of letting RecBole re-split the data."
            )
        ensure_prepared(
            config["dataset"], config["data_root"], split=config["split_protocol"] or "global_time"
        )
        check_dataset_files(config)
        super().__init__(config)

    def _load_data(self, token, dataset_path):
        super()._load_data(token, dataset_path)
        list_field = self.iid_field + self.config["LIST_SUFFIX"]
        if list_field not in self.inter_feat:
            raise ValueError(
                f"{dataset_path} has no `{list_field}` column: it is not a prepared split. "
                f"Run `python -m recbole_llm.data prepare {self.dataset_name}`."
            )
        width = self.max_item_list_len
        histories = self.inter_feat[list_field]
        if (histories.map(len) == 0).any():
            raise ValueError(
                f"{self.dataset_name} has samples with an empty history: prepare it with --min-history 1 or more."
            )
        self.inter_feat[list_field] = histories.map(lambda h: h[-width:])
        self.field2seqlen[list_field] = width

    def _change_feat_format(self):
        super()._change_feat_format()
        list_field = self.iid_field + self.config["LIST_SUFFIX"]
        seq = self.inter_feat[list_field]
        if seq.shape[1] < self.max_item_list_len:
            self.inter_feat.interaction[list_field] = F.pad(seq, (0, self.max_item_list_len - seq.shape[1]))

    def build(self):
        datasets = super().build()
        sizes = {
            "train": self.config["train_sample_num"],
            "valid": self.config["eval_sample_num"],
            "test": self.config["eval_sample_num"],
        }
        # sample_seed, not seed: runs that differ only in their training seed keep the same samples
        seed = int(
            self.config["sample_seed"] if self.config["sample_seed"] is not None else self.config["seed"]
        )
        built = []
        for offset, (split, ds) in enumerate(zip(SPLITS, datasets, strict=True)):
            if len(ds) == 0:
                raise ValueError(
                    f"The {split} split of {self.dataset_name} is empty: the dataset is too small for an 8:1:1 "
                    "split. Prepare more data or lower --kcore."
                )
            keep = sample_rows(len(ds), sizes[split], seed + offset)
            built.append(ds if len(keep) == len(ds) else ds.copy(ds.inter_feat[torch.from_numpy(keep)]))
        return built

    def item_titles(self, field: str = "title") -> list[str]:
        """Titles indexed by RecBole's internal item id (index 0 is the padding item)."""
        if self.item_feat is None or field not in self.item_feat:
            raise ValueError(
                f"Dataset {self.dataset_name} has no item field `{field}`: LLM models need item titles. "
                f"Re-prepare it with `python -m recbole_llm.data prepare {self.dataset_name}` (it writes "
                f"{self.dataset_name}.item with a `title:token` column) or set `title_field` to your column."
            )
        raw = self.item_feat[field]
        raw = raw.numpy() if isinstance(raw, torch.Tensor) else np.asarray(raw, dtype=np.float64)
        ids = np.nan_to_num(raw, nan=0).astype(np.int64)  # 0 = RecBole's padding token: no title
        untitled = np.flatnonzero(ids[1:] == 0) + 1
        if len(untitled):
            item_tokens = self.field2id_token[self.iid_field]
            examples = ", ".join(str(item_tokens[i]) for i in untitled[:5])
            file = f"{self.dataset_path}/{self.dataset_name}.item"
            what = (
                f"The catalogue of {self.dataset_name} is empty: {file} gives no `{field}` for any item"
                if len(untitled) == len(ids) - 1
                else f"{len(untitled)} of {len(ids) - 1} items of {self.dataset_name} have no `{field}` "
                f"in {file} (e.g. {examples})"
            )
            raise ValueError(
                f"{what}. An LLM recommender can only write items it has a title for: add the missing "
                f"titles, or re-prepare with `python -m recbole_llm.data prepare {self.dataset_name}` "
                "(it drops items without a title and the interactions that use them)."
            )
        tokens = self.field2id_token[field]
        return [str(tokens[i]) for i in ids]

    def target_counts(self) -> torch.Tensor:
        """How often each item is a training target (length ``item_num``); the popularity used by IGD."""
        return torch.bincount(self.inter_feat[self.iid_field], minlength=self.item_num)


def _check_not_empty(config) -> None:
    """A split or catalogue file with only its header: RecBole would fail with ``max() arg is an empty sequence``."""
    name, folder = config["dataset"], config["data_path"]
    files = [f"{name}.{split}.inter" for split in config["benchmark_filename"] or ()] + [f"{name}.item"]
    for file in files:
        path = os.path.join(folder, file)
        if not os.path.isfile(path):
            continue
        with open(path, encoding="utf-8") as handle:
            rows = 0
            for line in handle:
                rows += bool(line.strip())
                if rows == 2:  # a header and one row are enough: never read a whole big file
                    break
        if rows < 2:
            what = "item catalogue" if file.endswith(".item") else f"{file.split('.')[-2]} split"
            raise ValueError(
                f"{path} holds no rows (header only): the {what} of {name} is empty. Prepare more data "
                f"(`python -m recbole_llm.data prepare {name}` with a lower --kcore or a wider --start/--end) "
                "or check the file."
            )


def check_dataset_files(config) -> None:
    """The split and catalogue files are not empty and are well-formed atomic files (see
    :func:`check_atomic_file`). ``run_recbole_llm`` runs this before it creates ``log/`` or ``saved/``, so a
    refused dataset leaves nothing behind; the dataset runs it again when it loads (free: see there)."""
    _check_not_empty(config)
    for path in _atomic_files(config):
        check_atomic_file(path)


# Files already checked, by (path, size, mtime): a run checks before it starts and again when it loads.
_CHECKED: set[tuple[str, int, int]] = set()


def _atomic_files(config) -> list[str]:
    """The split and catalogue files RecBole will read (those that exist)."""
    name, folder = config["dataset"], config["data_path"]
    files = [f"{name}.{split}.inter" for split in config["benchmark_filename"] or ()] + [f"{name}.item"]
    return [p for p in (os.path.join(folder, f) for f in files) if os.path.isfile(p)]


def check_atomic_file(path: str | os.PathLike) -> None:
    """Refuse, with ``file:line`` and the fix, an atomic file RecBole would misread.

    RecBole reads atomic files with ``pd.read_csv(sep="\\t", engine="python")``: CSV quoting, tab-separated.
    A tab inside a field silently shifts the rest of that line (a title was cut at the tab), and a field
    that starts with ``"`` but is not a whole quoted field raised a pandas ``ParserError`` naming no file.
    This reads the file with the same rules (Python's ``csv``, which pandas' python engine uses) and
    checks that every record has as many fields as the header. A field holding a quote, a tab or a
    newline is read correctly when it is written as a quoted field with inner quotes doubled, which is
    how ``python -m recbole_llm.data prepare`` writes titles.
    """
    stat = os.stat(path)
    version = (os.path.abspath(path), stat.st_size, stat.st_mtime_ns)
    if version in _CHECKED:
        return
    with open(path, encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle, delimiter="\t", quotechar='"', doublequote=True, strict=True)
        header = next(reader, [])
        start = reader.line_num + 1
        try:
            for row in reader:
                if row and len(row) != len(header):
                    raise UserError(_field_count_message(path, start, len(row), header))
                start = reader.line_num + 1
        except csv.Error as err:
            raise UserError(
                f"{path}:{start}: {err}. A field that starts with a double quote must be quoted as a "
                'whole, inner quotes doubled ("""Weird Al"" Yankovic" for "Weird Al" Yankovic), as '
                "`python -m recbole_llm.data prepare` writes it."
            ) from None
    _CHECKED.add(version)


def _field_count_message(path: str | os.PathLike, line: int, fields: int, header: list[str]) -> str:
    """Why a record has the wrong number of fields, and the fix."""
    names = ", ".join(h.split(":")[0] for h in header)
    if fields > len(header):
        why = "a field holds a tab (the rest of the line would shift into the next field)"
        fix = "replace the tab with a space, or quote the whole field"
    else:
        why = "a field is missing, or a field on the line before holds a line break"
        fix = "give every field, and replace line breaks inside a field with a space (or quote the field)"
    return (
        f"{path}:{line}: {fields} fields where the header has {len(header)} ({names}): {why}. "
        f"Fields are tab-separated: {fix}."
    )
