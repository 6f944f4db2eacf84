"""The ``census-income`` recipe (skipped without ../shared/data/census-income) and the synthetic ``funnel`` recipe:
splits, label rates, determinism, the funnel's known truth and its selection bias."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch
from conftest import shared

from rankcraft.data.catalog import RECIPES, get_source
from rankcraft.data.census import census_split
from rankcraft.data.dataset import prepare
from rankcraft.data.funnel import funnel_source, funnel_truth, make_funnel
from rankcraft.data.spec import DataSpec
from rankcraft.errors import ConfigError, DataError
from rankcraft.models.catalog import build_model
from rankcraft.models.multitask_common import parameter_count


# ------------------------------------------------------------------------------------------ census-income
@pytest.fixture(scope="module")
def census():
    d = shared("census-income")
    src = get_source("census-income", str(d))
    return src, src.load_raw(), prepare(src)


def test_census_splits_sizes_and_label_rates(census):
    src, raw, data = census
    assert "census-income" in RECIPES
    rows = {k: t.num_rows for k, t in raw.items()}
    assert rows == {"train": 79_809, "valid": 9_976, "test": 9_977} and sum(rows.values()) == 99_762
    def both(split):
        c = data.splits[split].columns
        return torch.stack([c["label/income"], c["label/marital"]], 1)

    labels = torch.cat([both(s) for s in ("train", "valid", "test")])
    assert labels.shape == (99_762, 2)
    assert labels.sum(0).tolist() == [6_186, 43_143]           # 6.20 % income > 50K, 43.25 % never married
    for s in ("train", "valid", "test"):                        # every split near the overall rates
        rate = both(s).mean(0)
        assert abs(rate[0] - 0.062) < 0.004 and abs(rate[1] - 0.432) < 0.015, (s, rate)


def test_census_schema_features(census):
    src, raw, data = census
    fs = data.features
    assert fs.labels == ("income", "marital")
    names = [f.name for f in fs.features]
    assert len(names) == 39 and not {"instance_weight", "income_50k", "marital_stat"} & set(names)
    assert {f.name for f in fs.numeric} == {"age", "wage_per_hour", "capital_gains", "capital_losses",
                                           "stock_dividends", "num_emp", "weeks_worked"}
    # values are stripped of their leading space; '?' is a category of its own
    t = raw["train"].table
    assert t.column("class_worker")[0].as_py() == t.column("class_worker")[0].as_py().strip()
    assert "?" in set(t.column("mig_chg_msa").to_pylist())
    num = data.splits["train"].columns["num"]
    assert torch.isfinite(num).all() and num.shape[1] == 7


def test_census_split_is_seeded_and_a_partition(census):
    src, raw, _ = census
    again = get_source("census-income", str(shared("census-income"))).load_raw()
    for s in raw:
        assert raw[s].table.equals(again[s].table)
    idx = census_split(99_762, 0)
    allidx = np.concatenate(list(idx.values()))
    assert len(np.unique(allidx)) == 99_762 and all((np.diff(v) > 0).all() for v in idx.values())
    other = census_split(99_762, 1)
    assert not np.array_equal(idx["test"], other["test"])
    assert get_source("census-income", str(shared("census-income")), seed=1).fingerprint() != src.fingerprint()


def test_census_benchmark_parameter_counts_on_the_real_features(census):
    """Total parameters (embeddings included; two single-task DNNs have two embedding tables) within 10 %."""
    from test_multitask_models import CENSUS_CONFIGS

    fs = census[2].features
    counts = {}
    for name, params in CENSUS_CONFIGS.items():
        n = parameter_count(build_model(name, fs, params))
        counts[name] = 2 * n if name == "dnn" else n
    assert max(counts.values()) <= 1.10 * min(counts.values()), counts


def test_census_missing_file_is_a_named_error(tmp_path):
    with pytest.raises(DataError, match="census-income.test.gz"):
        get_source("census-income", str(tmp_path))


# ------------------------------------------------------------------------------------------ funnel
@pytest.fixture(scope="module")
def funnel_table() -> pa.Table:
    return make_funnel(60_000, seed=0)


def as01(col: pa.ChunkedArray) -> np.ndarray:
    return np.asarray(col.to_numpy(zero_copy_only=False) == "1")


def test_funnel_is_deterministic(funnel_table):
    assert make_funnel(60_000, seed=0).equals(funnel_table)
    assert not make_funnel(60_000, seed=1).column("click").equals(funnel_table.column("click"))


def test_funnel_outcomes_follow_the_true_probabilities(funnel_table):
    t = funnel_table
    ctr, cvr = t.column("true_ctr").to_numpy(), t.column("true_cvr").to_numpy()
    click, purchase, conversion = as01(t["click"]), as01(t["purchase"]), as01(t["conversion"])
    assert ((0 < ctr) & (ctr < 1) & (0 < cvr) & (cvr < 1)).all()
    assert abs(ctr.mean() - 0.1) < 1e-6 and abs(cvr.mean() - 0.2) < 1e-6          # calibrated intercepts
    assert abs(click.mean() - ctr.mean()) < 4 * np.sqrt(0.1 * 0.9 / len(ctr))       # empirical CTR
    # conversion is observed after a click only: purchase ⊆ click, and conversion equals purchase
    assert not (purchase & ~click).any() and np.array_equal(conversion, purchase)
    # empirical CVR among clicks matches the true CVR of the clicked impressions (not the overall mean)
    n_click = click.sum()
    emp = purchase.sum() / n_click
    true_clicked = cvr[click].mean()
    assert abs(emp - true_clicked) < 4 * np.sqrt(true_clicked * (1 - true_clicked) / n_click)
    # and purchase rate = E[pCTR·pCVR]
    assert abs(purchase.mean() - (ctr * cvr).mean()) < 4 * np.sqrt((ctr * cvr).mean() / len(ctr))


def test_funnel_has_selection_bias(funnel_table):
    t = funnel_table
    ctr, cvr, click = t.column("true_ctr").to_numpy(), t.column("true_cvr").to_numpy(), as01(t["click"])
    # clicked impressions are a biased sample: their true CVR is far below the mean over all impressions ...
    assert cvr.mean() - cvr[click].mean() > 0.04
    # ... the high-CVR impressions are rare among clicks ...
    top = cvr > np.quantile(cvr, 0.8)
    assert top[click].mean() < 0.7 * top.mean()
    # ... and pCTR and pCVR are related but far from identical
    assert -0.8 < np.corrcoef(ctr, cvr)[0, 1] < -0.05
    # the sign and size of the bias are the `anti` knob's: anti < 0 makes clicked impressions convert better
    t2 = make_funnel(60_000, seed=0, anti=-0.7)
    cvr2, click2 = t2.column("true_cvr").to_numpy(), as01(t2["click"])
    assert cvr2[click2].mean() - cvr2.mean() > 0.04


def test_funnel_recipe_through_the_pipeline():
    src = get_source("funnel", rows=5_000, seed=3)
    assert src.schema.label_names == ["click", "purchase", "conversion"]
    raw = src.load_raw()
    assert {k: t.num_rows for k, t in raw.items()} == {"train": 4_000, "valid": 500, "test": 500}
    data = prepare(src, use_cache=False)
    assert [f.name for f in data.features.features] == ["user", "user_group", "item", "category", "position"]
    assert data.features.labels == ("click", "purchase", "conversion")
    assert not any(k.startswith("true_") for k in data.splits["test"].columns)   # truth columns are not features
    truth = funnel_truth(src, "test")
    assert set(truth) == {"ctr", "cvr"} and all(v.shape == (500,) and v.dtype == np.float64 for v in truth.values())
    # row order: the prepared split is the raw split in order, so the truth lines up with its rows
    click = data.splits["test"].columns["label/click"].numpy()
    assert np.array_equal(click == 1, as01(raw["test"].table["click"]))
    assert np.array_equal(truth["cvr"], raw["test"].table.column("true_cvr").to_numpy())
    assert np.array_equal(funnel_truth(raw["test"])["ctr"], truth["ctr"])
    # ESMM builds on it with its fixed heads
    out = build_model("esmm", data.features, {"embedding_dim": 4})(data.splits["test"].take(torch.arange(8)))
    assert out.heads == ["ctr", "cvr", "ctcvr"]


def test_funnel_options_and_errors():
    src = DataSpec(recipe="funnel", options={"rows": 2_000, "seed": 1, "ctr_rate": 0.3}).source()
    assert src.fingerprint() != funnel_source(rows=2_000, seed=1).fingerprint()
    with pytest.raises(ConfigError, match="no_such_option"):
        DataSpec(recipe="funnel", options={"no_such_option": 1}).source()
    with pytest.raises(DataError, match="rows"):
        funnel_source(rows=5)
    with pytest.raises(ValueError, match="ctr_rate"):
        make_funnel(10, ctr_rate=1.5)
    with pytest.raises(DataError, match="split 'nope'"):
        funnel_truth(funnel_source(rows=100), "nope")
    with pytest.raises(DataError, match="true_ctr"):
        funnel_truth(pa.table({"click": ["0"]}))
