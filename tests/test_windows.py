"""Delayed conversions: the ``delay`` label kind (window labels, maturity, named errors), the generator with
known truth, maturity-weighted training (immature rows teach nothing), and Personalized Interpolation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rankcraft.data import readers
from rankcraft.data.catalog import get_source
from rankcraft.data.dataset import prepare
from rankcraft.data.delayed import FAMILIES, delay_cdf, delayed_truth
from rankcraft.data.encoders import validate_table
from rankcraft.data.schema import Schema
from rankcraft.data.windows import (
    WindowInterpolator,
    exp_alpha,
    solve_beta,
    window_ratio,
)
from rankcraft.errors import ConfigError, DataError

DAY = 86400


def _schema(**label) -> Schema:
    lab = {"name": "conv", "kind": "delay", "column": "conv", "click_time": "click", "windows": ["1d", "7d"],
           **label}
    return Schema.from_dict({"labels": [lab], "features": [{"name": "adv", "type": "categorical"}]})


def _labels(tmp_path, text: str, **label) -> dict[str, np.ndarray]:
    path = tmp_path / "log.csv"
    path.write_text(text)
    schema = _schema(**label)
    raw = validate_table(readers.read_table(str(path), schema.required_columns()), schema)
    from rankcraft.data.encoders import labels_of

    values, problems = labels_of(raw, schema.labels[0])
    assert problems == []
    return values


LOG = """adv,click,conv
a,2026-01-01T00:00:00,2026-01-01T12:00:00
b,2026-01-01T00:00:00,
a,2026-01-05T00:00:00,2026-01-09T00:00:00
b,2026-01-08T00:00:00,2026-01-08T01:00:00
a,2026-01-09T12:00:00,
"""


def test_delay_label_windows_and_maturity(tmp_path):
    v = _labels(tmp_path, LOG)  # cut at the latest time in the table: 2026-01-09T12:00
    assert list(v) == ["conv_1d", "conv_1d_mature", "conv_7d", "conv_7d_mature", "conv_observed",
                       "conv_elapsed_days"]
    assert v["conv_1d"].tolist() == [1, 0, 0, 1, 0]
    assert v["conv_7d"].tolist() == [1, 0, 1, 1, 0]
    # a window is mature once it has elapsed since the click: 8.5, 8.5, 4.5, 1.5 and 0 days have
    assert v["conv_1d_mature"].tolist() == [1, 1, 1, 1, 0]
    assert v["conv_7d_mature"].tolist() == [1, 1, 0, 0, 0]
    assert v["conv_observed"].tolist() == [1, 0, 1, 1, 0]
    np.testing.assert_allclose(v["conv_elapsed_days"], [0.5, 8.5, 4.0, 1 / 24, 0.0])


def test_an_earlier_cut_hides_later_conversions_and_leaves_labels_immature(tmp_path):
    v = _labels(tmp_path, LOG, observed_at="2026-01-06")
    # row 3 converts on 01-09: after the cut it is not observed yet; row 4 and 5 are clicked after the cut
    assert v["conv_observed"].tolist() == [1, 0, 0, 0, 0]
    assert v["conv_7d"].tolist() == [1, 0, 0, 0, 0]
    assert v["conv_1d_mature"].tolist() == [1, 1, 1, 0, 0]
    assert v["conv_7d_mature"].tolist() == [0, 0, 0, 0, 0]
    # a delay column in hours gives the same labels as the conversion times
    text = "adv,click,conv\n" + "\n".join(["a,1767225600,12", "b,1767225600,", "a,1767571200,96",
                                            "b,1767830400,1", "a,1767960000,"]) + "\n"
    d = _labels(tmp_path, text, delay_unit="h")
    full = _labels(tmp_path, LOG)
    for k in full:
        np.testing.assert_allclose(d[k], full[k], err_msg=k)


@pytest.mark.parametrize("row,column,message", [
    ("b,2026-01-03,2026-01-02", "conv", "conversion before the click"),
    ("b,yesterday,", "click", "is not a time"),
    ("b,,2026-01-02", "click", "click time is missing"),
    ("b,2026-01-03,soon", "conv", "is not a time"),
])
def test_bad_delay_cells_are_named(tmp_path, row, column, message):
    path = tmp_path / "bad.csv"
    path.write_text(LOG + row + "\n")
    schema = _schema()
    with pytest.raises(DataError, match=message) as err:
        validate_table(readers.read_table(str(path), schema.required_columns()), schema)
    assert "line 7" in str(err.value) and f"column '{column}'" in str(err.value)


def test_negative_or_unparseable_delays_are_named(tmp_path):
    schema = _schema(delay_unit="h")
    for cell, message in (("-3", "negative delay -3"), ("3 hours", "is not a number")):
        path = tmp_path / "bad.csv"
        path.write_text(f"adv,click,conv\na,1767225600,2\nb,1767225600,{cell}\n")
        with pytest.raises(DataError, match=message):
            validate_table(readers.read_table(str(path), schema.required_columns()), schema)


@pytest.mark.parametrize("label,message", [
    ({"windows": None}, "needs 'windows'"),
    ({"windows": ["1d", "24h"]}, "repeat a window"),
    ({"windows": ["1 week"]}, "expected a duration"),
    ({"windows": ["0d"]}, "longer than zero"),
    ({"click_time": None}, "needs 'click_time'"),
    ({"observed_at": "next tuesday"}, "observed_at"),
    ({"kind": "binary"}, "belong to kind 'delay'"),
])
def test_delay_label_spec_errors(label, message):
    with pytest.raises(ConfigError, match=message):
        _schema(**label)


# ------------------------------------------------------------------------------------------------ generator
@pytest.fixture(scope="module")
def delayed():
    src = get_source("delayed-conversions", None, clicks=30_000, seed=3)
    return src, prepare(src, cache_dir=None)


def test_generator_truth_and_labels_agree(delayed):
    src, data = delayed
    truth = delayed_truth(src, "train")
    cols = data.splits["train"].columns
    assert len(truth["true_p"]) == len(cols["label"]) == 24_000
    assert abs(truth["true_p"].mean() - 0.05) < 0.005
    fam = truth["family"]
    assert set(np.unique(fam)) == set(FAMILIES) and 0.5 < (fam == "exponential").mean() < 0.9
    # among rows whose 7d window has elapsed, the observed 7d label is the true one
    mature = cols["label/conv_7d_mature"].numpy() > 0
    y7 = (truth["true_delay_days"] <= 7).astype(np.float32)
    assert np.array_equal(cols["label/conv_7d"].numpy()[mature], y7[mature])
    # immature rows miss conversions that have not happened yet: fewer positives than the truth
    assert cols["label/conv_7d"].numpy()[~mature].sum() < y7[~mature].sum()
    # the mean 7d label over matured rows matches E[p · CDF(7)] of the generator
    fi = np.where(fam == "exponential", 0, np.where(fam == "weibull", 1, 2))
    expected = (truth["true_p"] * delay_cdf(7.0, truth["true_beta"], fi))[mature].mean()
    assert abs(cols["label/conv_7d"].numpy()[mature].mean() - expected) < 0.004


def test_immature_rows_teach_a_window_head_nothing(delayed):
    """A task weighted by its maturity column: flipping the labels of immature rows changes neither the loss nor
    any gradient (no leakage from labels that are not final yet)."""
    from rankcraft.data.features import FeatureSet  # noqa: F401  (features come from the prepared data)
    from rankcraft.models.catalog import build_model
    from rankcraft.training.objectives import build_objective

    _, data = delayed
    obj = build_objective({"type": "multitask", "tasks": [
        {"name": "w1d", "label": "conv_1d", "weight_column": "conv_1d_mature"},
        {"name": "w7d", "label": "conv_7d", "weight_column": "conv_7d_mature"}]}, data.features)
    torch.manual_seed(0)
    model = build_model("sharedbottom", data.features, {"embedding_dim": 4, "bottom_units": [16],
                                                        "tower_units": [8], "tasks": ["w1d", "w7d"]})
    batch = next(data.splits["train"].batches(2048))
    flipped = dict(batch)
    for d in ("1d", "7d"):
        immature = batch[f"label/conv_{d}_mature"] == 0
        assert immature.any()
        flipped[f"label/conv_{d}"] = torch.where(immature, 1 - batch[f"label/conv_{d}"], batch[f"label/conv_{d}"])
    grads = []
    for b in (batch, flipped):
        model.zero_grad()
        loss, _ = obj.loss(model(b), b)
        loss.backward()
        grads.append((loss.item(), [p.grad.clone() for p in model.parameters() if p.grad is not None]))
    assert grads[0][0] == pytest.approx(grads[1][0], rel=1e-6)
    for g0, g1 in zip(grads[0][1], grads[1][1]):
        torch.testing.assert_close(g0, g1)


# ------------------------------------------------------------------------------------------------ interpolation
def test_exponential_interpolation_is_exact_and_beta_is_recovered():
    beta = np.array([0.05, 0.3, 1.0, 2.5])
    p_inf = 0.1

    def p(T):
        return p_inf * (1 - np.exp(-beta * T))

    for T in (2.0, 3.5, 6.0, 10.0):  # 10: extrapolation beyond the long window
        a = exp_alpha(T, 1.0, 7.0, beta)
        np.testing.assert_allclose(p(1.0) + a * (p(7.0) - p(1.0)), p(T), rtol=1e-9)
    np.testing.assert_allclose(exp_alpha(4.0, 1.0, 7.0, 0.0), 0.5)  # β → 0: linear
    np.testing.assert_allclose(solve_beta(window_ratio(beta, 1.0, 7.0), 1.0, 7.0), beta, rtol=1e-6)
    assert solve_beta(0.0, 1.0, 7.0) == pytest.approx(1e-3) and solve_beta(1.0, 1.0, 7.0) == pytest.approx(10.0)


def test_fit_shrinks_small_advertisers_and_predict_methods():
    rng = np.random.default_rng(0)
    groups, ys, yl = [], [], []
    for g, (b, n) in enumerate([(0.2, 4000), (2.0, 4000), (2.0, 8)]):   # the third has 8 conversions only
        d = rng.exponential(1 / b, n)
        groups.append(np.full(n, g))
        ys.append((d <= 1).astype(float))
        yl.append((d <= 7).astype(float))
    g, ys, yl = map(np.concatenate, (groups, ys, yl))
    wi = WindowInterpolator([1.0, 7.0]).fit(g, ys, yl, np.ones_like(ys))
    assert wi.betas[0] == pytest.approx(0.2, rel=0.15) and wi.betas[1] == pytest.approx(2.0, rel=0.15)
    # 8 conversions: pulled most of the way to the pooled rate
    assert abs(wi.betas[2] - wi.global_beta) < abs(2.0 - wi.global_beta) / 2
    ps, pl = np.array([0.02, 0.05]), np.array([0.04, 0.03])  # second row: p_l < p_s is raised to p_s
    assert WindowInterpolator([1.0, 7.0], method="nearest", global_beta=1).predict([ps, pl], 3.0).tolist() == \
        ps.tolist()
    assert WindowInterpolator([1.0, 7.0], method="nearest", global_beta=1).predict([ps, pl], 4.0).tolist() == \
        pl.tolist()  # a tie goes to the longer window
    lin = WindowInterpolator([1.0, 7.0], method="linear", global_beta=1).predict([ps, pl], 4.0)
    np.testing.assert_allclose(lin, [0.03, 0.05])
    pi = wi.predict([ps, pl], 4.0, np.array([0, 99]))  # unseen advertiser 99: the pooled β
    np.testing.assert_allclose(pi[0], 0.02 + exp_alpha(4.0, 1, 7, wi.betas[0]) * 0.02)
    assert pi[1] == pytest.approx(0.05)
    back = WindowInterpolator.from_dict(wi.to_dict())
    np.testing.assert_array_equal(back.predict([ps, pl], 2.5, np.array([0, 1])),
                                  wi.predict([ps, pl], 2.5, np.array([0, 1])))
    with pytest.raises(ValueError, match="needs each row's group"):
        wi.predict([ps, pl], 3.0)
    with pytest.raises(ValueError, match="longer than zero"):
        wi.predict([ps, pl], 0.0, np.array([0, 1]))
    with pytest.raises(ValueError, match="anchor windows"):
        WindowInterpolator([7.0])
    with pytest.raises(ValueError, match="method"):
        WindowInterpolator([1.0, 7.0], method="cubic")


# ------------------------------------------------------------------------------------------------ a run serves windows
def test_a_run_with_window_heads_serves_any_window(tmp_path, capsys):
    import pyarrow.csv as pacsv

    from rankcraft.cli.main import main
    from rankcraft.data.delayed import delayed_splits, make_delayed_conversions

    run = tmp_path / "run"
    cfg = tmp_path / "run.yaml"
    cfg.write_text("""
data: {recipe: delayed-conversions, options: {clicks: 8000, seed: 2}}
model: sharedbottom
params: {embedding_dim: 4, bottom_units: [16], tower_units: [8], tasks: [w1d, w7d]}
objective:
  type: multitask
  tasks:
    - {name: w1d, label: conv_1d, weight_column: conv_1d_mature}
    - {name: w7d, label: conv_7d, weight_column: conv_7d_mature}
train: {epochs: 2, batch_size: 512, quiet: true}
windows: {group: advertiser}
""")
    assert main(["train", "--config", str(cfg), "--out", str(run), "--quiet"]) == 0
    import json

    report = json.loads((run / "report.json").read_text())
    assert report["windows"]["heads"] == ["w1d", "w7d"] and report["windows"]["anchors_days"] == [1.0, 7.0]
    assert report["windows"]["groups"] > 10
    table, _ = make_delayed_conversions(8000, seed=2)
    test = delayed_splits(table)["test"].drop_columns(["click_time", "conversion_time", "true_p",
                                                       "true_delay_days", "true_beta", "family"])
    pacsv.write_csv(test, tmp_path / "new.csv")
    from rankcraft import api

    heads = api.predict(run, tmp_path / "new.csv")
    p3 = api.predict(run, tmp_path / "new.csv", window="3d")
    lo, hi = np.minimum(heads["w1d"], heads["w7d"]), np.maximum(heads["w1d"], heads["w7d"])
    assert p3.shape == heads["w1d"].shape and np.all(p3 >= lo - 1e-6) and np.all(p3 <= hi + 1e-6)
    np.testing.assert_allclose(api.predict(run, tmp_path / "new.csv", window="7d"), heads["w7d"], rtol=1e-6)
    assert main(["predict", str(run), str(tmp_path / "new.csv"), "--window", "36h",
                 "--out", str(tmp_path / "s.csv")]) == 0
    assert (tmp_path / "s.csv").read_text().splitlines()[0] == '"window_36h"'
    for bad, message in (("30d", "serves windows up to 14 days"), ("2 weeks", "expected a duration")):
        assert main(["predict", str(run), str(tmp_path / "new.csv"), "--window", bad]) != 0
        assert message in capsys.readouterr().err
    plain = tmp_path / "plain"
    (plain).mkdir()
    for f in run.iterdir():
        if f.name != "windows.json" and f.is_file():
            (plain / f.name).write_bytes(f.read_bytes())
    assert main(["predict", str(plain), str(tmp_path / "new.csv"), "--window", "3d"]) != 0
    assert "serves no conversion window" in capsys.readouterr().err


def test_delayed_feedback_loss_is_the_exponential_likelihood(delayed):
    from rankcraft.models.output import ModelOutput
    from rankcraft.training.objectives import build_objective

    _, data = delayed
    obj = build_objective({"type": "delayed_feedback", "label": "conv"}, data.features)
    assert obj.heads == ["conversion", "delay_rate"]
    z, r = torch.tensor([0.3, -1.0, 2.0]), torch.tensor([0.0, 0.5, -0.7])
    batch = {"label/conv_observed": torch.tensor([1.0, 0.0, 0.0]),
             "label/conv_elapsed_days": torch.tensor([2.0, 3.0, 0.5])}
    loss, _ = obj.loss(ModelOutput({"conversion": z, "delay_rate": r}), batch)
    p, lam, t = torch.sigmoid(z), torch.exp(r), batch["label/conv_elapsed_days"]
    expected = torch.stack([-(torch.log(p[0]) + torch.log(lam[0]) - lam[0] * t[0]),
                            -torch.log(1 - p[1] + p[1] * torch.exp(-lam[1] * t[1])),
                            -torch.log(1 - p[2] + p[2] * torch.exp(-lam[2] * t[2]))]).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    with pytest.raises(ConfigError, match="not a label of kind 'delay'.*conv"):
        build_objective({"type": "delayed_feedback", "label": "click"}, data.features)


def test_taobao_view_to_buy_recipe_and_maturity_on_real_timestamps():
    from conftest import shared

    path = shared("taobao-userbehavior-84k")
    src = get_source("taobao-conversions", str(path))
    raw = src.load_raw()
    data = prepare(src, cache_dir=None)
    end = 1_511_539_200 + 9 * DAY
    for split in ("train", "valid", "test"):
        t = raw[split].table
        click = np.array(t.column("click_time").to_pylist(), dtype=np.int64)
        conv = np.array([int(x) if x else -1 for x in t.column("conversion_time").to_pylist()])
        c = data.splits[split].columns
        assert (conv[conv >= 0] >= click[conv >= 0]).all()  # every conversion follows its click
        for w, sec in (("1h", 3600), ("1d", DAY), ("3d", 3 * DAY)):
            np.testing.assert_array_equal(c[f"label/buy_{w}_mature"].numpy(), (end - click >= sec).astype(np.float32))
            np.testing.assert_array_equal(c[f"label/buy_{w}"].numpy(),
                                          ((conv >= 0) & (conv - click <= sec)).astype(np.float32))
    # the test day's long windows cannot be mature at the end of the log; the training days' short ones all are
    assert data.splits["test"].columns["label/buy_3d_mature"].sum() == 0
    assert data.splits["train"].columns["label/buy_1d_mature"].min() == 1


def test_the_scoring_server_takes_a_window_per_candidate(tmp_path):
    pytest.importorskip("onnxruntime")
    from rankcraft import api
    from rankcraft.data.delayed import delayed_splits, make_delayed_conversions
    from rankcraft.serving.export import export_run
    from rankcraft.serving.server import ClientError, ScoringService

    run = tmp_path / "run"
    api.train({"data": {"recipe": "delayed-conversions", "options": {"clicks": 6000, "seed": 4}},
               "model": "sharedbottom",
               "params": {"embedding_dim": 4, "bottom_units": [16], "tower_units": [8], "tasks": ["w1d", "w7d"]},
               "objective": {"type": "multitask", "tasks": [
                   {"name": "w1d", "label": "conv_1d", "weight_column": "conv_1d_mature"},
                   {"name": "w7d", "label": "conv_7d", "weight_column": "conv_7d_mature"}]},
               "train": {"epochs": 1, "batch_size": 512, "quiet": True},
               "windows": {"group": "advertiser"}}, out=run)
    art = export_run(run, tmp_path / "art")
    service = ScoringService(art)
    table, _ = make_delayed_conversions(6000, seed=4)
    rows = delayed_splits(table)["test"].slice(0, 6).select(["advertiser", "f1", "f2", "f3", "f4", "f5", "f6"])
    cands = rows.to_pylist()
    windows = ["3d", "3d", "36h", "7d", "2d", "3d"]
    body, n = service.score({"candidates": [{**c, "window": w} for c, w in zip(cands, windows)]})
    assert n == 6 and len(body["window_scores"]) == 6
    import pyarrow.csv as pacsv

    pacsv.write_csv(rows, tmp_path / "rows.csv")
    for w in set(windows):
        want = api.predict(run, tmp_path / "rows.csv", window=w)
        got = [body["window_scores"][i] for i, x in enumerate(windows) if x == w]
        np.testing.assert_allclose(got, want[[i for i, x in enumerate(windows) if x == w]], atol=1e-5)
    top, _ = service.score({"window": "7d", "candidates": cands})
    np.testing.assert_allclose(top["window_scores"], top["scores"]["w7d"], atol=1e-6)
    with pytest.raises(ClientError, match="serves windows up to 14 days"):
        service.score({"window": "30d", "candidates": cands})
    with pytest.raises(ClientError, match="needs a window"):
        service.score({"candidates": [{**cands[0], "window": "3d"}, cands[1]]})


def test_taobao_conversions_train_and_serve_a_window_end_to_end(tmp_path):
    from conftest import shared

    from rankcraft import api

    path = shared("taobao-userbehavior-84k")
    res = api.train({"data": {"recipe": "taobao-conversions", "data_dir": str(path)}, "model": "sharedbottom",
                     "params": {"embedding_dim": 4, "bottom_units": [16], "tower_units": [8], "tasks": ["w1h", "w1d"]},
                     "objective": {"type": "multitask", "tasks": [
                         {"name": "w1h", "label": "buy_1h", "weight_column": "buy_1h_mature"},
                         {"name": "w1d", "label": "buy_1d", "weight_column": "buy_1d_mature"}]},
                     "train": {"epochs": 1, "batch_size": 2048, "quiet": True},
                     "windows": {"group": "category"}}, out=tmp_path / "run")
    assert res.report["windows"]["anchors_days"] == pytest.approx([1 / 24, 1.0])
    # the test day's 1d labels are immature at the end of the log: the 1d task has no test rows to judge
    assert res.report["test"]["w1d/rows"] == 0 and res.report["test"]["w1h/rows"] > 1000
    raw = get_source("taobao-conversions", str(path)).load_raw()["test"].table.slice(0, 50)
    import pyarrow.csv as pacsv

    pacsv.write_csv(raw.select(["user", "item", "category", "hour", "weekday"]), tmp_path / "rows.csv")
    p = api.predict(tmp_path / "run", tmp_path / "rows.csv", window="12h")
    assert p.shape == (50,) and np.all((p >= 0) & (p <= 1))
