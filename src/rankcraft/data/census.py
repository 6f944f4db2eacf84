"""``census-income``: UCI Census-Income (KDD), the two tasks of the MMoE paper (Ma et al., KDD 2018).

Input: ``census-income.test.gz`` in the data directory (``$RANKCRAFT_DATA_DIR/census-income`` or
``../shared/data/census-income`` by default): 99,762 rows, 42 comma-separated columns, no header, every value with
a leading space (values are stripped on reading).

* **Labels** (built as ``"0"``/``"1"`` string columns): ``income`` = ``income_50k == "50000+."`` (≈ 6.2 %
  positive) and ``marital`` = ``marital_stat == "Never married"`` (≈ 43.2 %).
* **Features**: every other column except ``instance_weight`` (a survey weight, kept in the table as an extra
  column, not a feature) and the two label sources. Numeric: ``age``, ``num_emp`` (0..6) and ``weeks_worked``
  (0..52) standardised; ``wage_per_hour``, ``capital_gains``, ``capital_losses`` and ``stock_dividends`` (mostly 0,
  heavy right tails) with ``log1p``. Every other column (including the industry/occupation codes, ``own_or_self``,
  ``vet_benefits`` and ``year``, which are codes) is categorical; ``?`` (not asked) is a value of its own.
  Note that ``det_hh_fam_stat`` / ``det_hh_summ`` (household status) carry much of the marital status, as in every
  benchmark on this data set.
* **Split**: only the 99,762-row file is available, so the rows are split at random, seeded: a permutation of the
  rows by ``numpy.random.default_rng(seed)`` (``seed`` option, default 0); its first ``⌊0.8·N⌋`` rows are
  ``train``, the next ``⌊0.9·N⌋ − ⌊0.8·N⌋`` ``valid`` and the rest ``test`` (79,809 / 9,976 / 9,977 rows);
  within each split the rows keep their file order. Results on this split are not comparable to papers' tables.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from rankcraft.data.dataset import DataSource
from rankcraft.data.readers import RawTable
from rankcraft.data.registry import find_data_dir, recipe
from rankcraft.data.schema import FeatureSpec, Schema
from rankcraft.errors import DataError

CENSUS_FILE = "census-income.test.gz"
CENSUS_COLUMNS = [
    "age", "class_worker", "det_ind_code", "det_occ_code", "education", "wage_per_hour", "hs_college",
    "marital_stat", "major_ind_code", "major_occ_code", "race", "hisp_origin", "sex", "union_member",
    "unemp_reason", "full_or_part_emp", "capital_gains", "capital_losses", "stock_dividends", "tax_filer_stat",
    "region_prev_res", "state_prev_res", "det_hh_fam_stat", "det_hh_summ", "instance_weight", "mig_chg_msa",
    "mig_chg_reg", "mig_move_reg", "mig_same", "mig_prev_sunbelt", "num_emp", "fam_under_18", "country_father",
    "country_mother", "country_self", "citizenship", "own_or_self", "vet_question", "vet_benefits", "weeks_worked",
    "year", "income_50k",
]
CENSUS_LABELS = ["income", "marital"]
CENSUS_STANDARDIZED = ["age", "num_emp", "weeks_worked"]
CENSUS_LOG = ["wage_per_hour", "capital_gains", "capital_losses", "stock_dividends"]
_NOT_FEATURES = {"instance_weight", "income_50k", "marital_stat"}
CENSUS_SPLIT = (0.8, 0.1)


def census_schema() -> Schema:
    feats = []
    for c in CENSUS_COLUMNS:
        if c in _NOT_FEATURES:
            continue
        if c in CENSUS_STANDARDIZED:
            feats.append(FeatureSpec(name=c, type="numeric", transform="standardize"))
        elif c in CENSUS_LOG:
            feats.append(FeatureSpec(name=c, type="numeric", transform="log"))
        else:
            feats.append(FeatureSpec(name=c, type="categorical"))
    return Schema(labels=list(CENSUS_LABELS), features=feats)


def read_census(path) -> pa.Table:
    """The gzip file as a string table: the 42 named columns (values stripped) plus ``income`` and ``marital``."""
    try:
        with pa.input_stream(str(path), compression="gzip") as fh:
            raw = pacsv.read_csv(
                fh, read_options=pacsv.ReadOptions(column_names=CENSUS_COLUMNS),
                convert_options=pacsv.ConvertOptions(column_types={c: pa.string() for c in CENSUS_COLUMNS},
                                                     strings_can_be_null=False))
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"census-income: cannot read the file: {exc}", path=str(path)) from None
    table = pa.table({c: pc.utf8_trim_whitespace(raw.column(c)) for c in CENSUS_COLUMNS})
    income = pc.if_else(pc.equal(table.column("income_50k"), "50000+."), "1", "0")
    marital = pc.if_else(pc.equal(table.column("marital_stat"), "Never married"), "1", "0")
    return table.append_column("income", income).append_column("marital", marital)


def census_split(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Row indices of train/valid/test (80/10/10 of a seeded permutation, each sorted)."""
    perm = np.random.default_rng(seed).permutation(n)
    a, b = int(n * CENSUS_SPLIT[0]), int(n * (CENSUS_SPLIT[0] + CENSUS_SPLIT[1]))
    return {"train": np.sort(perm[:a]), "valid": np.sort(perm[a:b]), "test": np.sort(perm[b:])}


@recipe("census-income", "UCI Census-Income (KDD): labels income > 50K and never married; seeded 80/10/10 split")
def census_source(data_dir: str | None = None, *, seed: int = 0) -> DataSource:
    d = find_data_dir("census-income", data_dir)
    path = d / CENSUS_FILE if d.is_dir() else d
    if not path.is_file():
        raise DataError(f"census-income: {CENSUS_FILE} not found", path=str(path))

    def load() -> dict[str, RawTable]:
        table = read_census(path)
        return {split: RawTable(table.take(pa.array(idx)), str(path), 0, "memory")
                for split, idx in census_split(table.num_rows, seed).items()}

    return DataSource(name="census-income", schema=census_schema(), loader=load, inputs=[str(path)],
                      version=f"1:seed={seed}", seed=seed)
