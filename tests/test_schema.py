"""Schema: YAML loading and validation, fingerprint, YAML round trip."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
from pydantic import ValidationError

from rankcraft.data.schema import FeatureSpec, Schema
from rankcraft.errors import ConfigError, RankcraftError

FULL_YAML = textwrap.dedent("""\
    labels: [label]
    user_column: user
    delimiter: ","
    features:
      - {name: user, type: categorical, source: user, min_count: 2}
      - {name: item, type: categorical, source: item}
      - {name: price, type: numeric, transform: log, fill_value: 0}
      - {name: genres, type: multi_categorical, separator: "|", max_len: 6, source: item}
      - {name: clicks, type: sequence, separator: "^", max_len: 50, share_vocab_with: item,
         column: click_seq, timestamp_column: click_ts}
    """)


def write(tmp_path, text: str, name: str = "schema.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def load_error(tmp_path, text: str) -> str:
    p = write(tmp_path, text)
    with pytest.raises(ConfigError) as ei:
        Schema.from_yaml(p)
    msg = str(ei.value)
    assert str(p) in msg, "a schema error must name the file"
    return msg


def minimal(**extra) -> dict:
    d = {"labels": ["label"], "features": [{"name": "a", "type": "categorical"}]}
    d.update(extra)
    return d


# ------------------------------------------------------------------------------------------------ valid files
def test_load_valid_yaml(tmp_path):
    s = Schema.from_yaml(write(tmp_path, FULL_YAML))
    assert s.label_names == ["label"]
    assert s.user_column == "user"
    assert s.on_error == "raise"
    assert [f.name for f in s.features] == ["user", "item", "price", "genres", "clicks"]
    assert [f.type for f in s.features] == ["categorical", "categorical", "numeric", "multi_categorical", "sequence"]
    user, item, price, genres, clicks = s.features
    assert user.min_count == 2 and user.source == "user"
    assert item.min_count == 1 and item.source == "item"
    assert price.transform == "log" and price.fill_value == 0.0 and price.source == "context"
    assert genres.separator == "|" and genres.max_len == 6
    assert clicks.separator == "^" and clicks.max_len == 50 and clicks.share_vocab_with == "item"
    assert clicks.raw_column == "click_seq" and user.raw_column == "user"
    # labels first, then each feature's raw column (+ timestamps), user column not repeated
    assert s.required_columns() == ["label", "user", "item", "price", "genres", "click_seq", "click_ts"]


def test_required_columns_adds_user_column_and_dedups():
    s = Schema.from_dict({"labels": ["y"], "user_column": "uid",
                          "features": [{"name": "a", "type": "categorical"},
                                       {"name": "a2", "type": "categorical", "column": "a"}]})
    assert s.required_columns() == ["y", "a", "uid"]


def test_from_dict_equals_from_yaml(tmp_path):
    import yaml

    from_yaml = Schema.from_yaml(write(tmp_path, FULL_YAML))
    assert Schema.from_dict(yaml.safe_load(FULL_YAML)) == from_yaml


def test_schema_is_frozen():
    s = Schema.from_dict(minimal())
    with pytest.raises(ValidationError):
        s.labels = ["other"]
    with pytest.raises(ValidationError):
        s.features[0].min_count = 5


# ------------------------------------------------------------------------------------------------ invalid files
def test_unknown_feature_key_is_named(tmp_path):
    msg = load_error(tmp_path, "labels: [y]\nfeatures:\n  - {name: a, type: categorical, min_cont: 2}\n")
    assert "min_cont" in msg
    assert "features[0](a)" in msg  # the feature is identified by its name


def test_unknown_top_level_key_is_named(tmp_path):
    msg = load_error(tmp_path, "labels: [y]\nfeatures:\n  - {name: a, type: categorical}\nfeaturez: []\n")
    assert "featurez" in msg


def test_duplicate_feature_names(tmp_path):
    msg = load_error(tmp_path, "labels: [y]\nfeatures:\n  - {name: a, type: categorical}\n"
                               "  - {name: b, type: categorical}\n  - {name: a, type: numeric}\n")
    assert "duplicate" in msg and "'a'" in msg and "'b'" not in msg


def test_feature_named_like_a_label(tmp_path):
    msg = load_error(tmp_path, "labels: [y]\nfeatures:\n  - {name: y, type: categorical}\n")
    assert "'y'" in msg


@pytest.mark.parametrize("feats, needle", [
    ("  - {name: s, type: sequence, share_vocab_with: nope}\n", "nope"),
    ("  - {name: n, type: numeric}\n  - {name: s, type: sequence, share_vocab_with: n}\n", "categorical"),
    ("  - {name: c, type: categorical}\n  - {name: m, type: multi_categorical, share_vocab_with: c}\n"
     "  - {name: s, type: sequence, share_vocab_with: m}\n", "categorical"),
    ("  - {name: c, type: categorical}\n  - {name: d, type: categorical, share_vocab_with: c}\n", "share_vocab_with"),
])
def test_bad_share_vocab_with(tmp_path, feats, needle):
    msg = load_error(tmp_path, "labels: [y]\nfeatures:\n" + feats)
    assert "share_vocab_with" in msg and needle in msg


@pytest.mark.parametrize("ftype", ["categorical", "multi_categorical", "sequence"])
def test_transform_on_non_numeric(tmp_path, ftype):
    msg = load_error(tmp_path, f"labels: [y]\nfeatures:\n  - {{name: f, type: {ftype}, transform: log}}\n")
    assert "transform" in msg and "'f'" in msg


@pytest.mark.parametrize("ftype", ["categorical", "numeric", "multi_categorical"])
def test_timestamp_column_only_on_sequences(tmp_path, ftype):
    msg = load_error(tmp_path, f"labels: [y]\nfeatures:\n  - {{name: f, type: {ftype}, timestamp_column: t}}\n")
    assert "timestamp_column" in msg


@pytest.mark.parametrize("text, needle", [
    ("labels: [y]\nfeatures:\n  - {name: a, type: categoricl}\n", "type"),
    ("labels: [y]\nfeatures:\n  - {name: a, type: numeric, transform: sqrt}\n", "transform"),
    ("labels: [y]\nfeatures:\n  - {name: a, type: categorical, min_count: 0}\n", "min_count"),
    ("labels: [y]\nfeatures:\n  - {name: a, type: categorical, source: device}\n", "source"),
    ("labels: [y]\ndelimiter: ';;'\nfeatures:\n  - {name: a, type: categorical}\n", "delimiter"),
    ("labels: [y]\non_error: ignore\nfeatures:\n  - {name: a, type: categorical}\n", "on_error"),
    ("labels: []\nfeatures:\n  - {name: a, type: categorical}\n", "labels"),
    ("labels: [y]\nfeatures: []\n", "features"),
    ("features:\n  - {name: a, type: categorical}\n", "labels"),
])
def test_invalid_values_name_the_field(tmp_path, text, needle):
    assert needle in load_error(tmp_path, text)


@pytest.mark.parametrize("text", ["- labels\n- features\n", "", "just a string\n", "42\n"])
def test_not_a_mapping(tmp_path, text):
    assert "mapping" in load_error(tmp_path, text)


def test_invalid_yaml_syntax(tmp_path):
    assert "YAML" in load_error(tmp_path, "labels: [y\nfeatures: {\n")


def test_yaml_is_never_evaluated(tmp_path):
    marker = tmp_path / "pwned"
    text = f"labels: !!python/object/apply:os.system ['touch {marker}']\nfeatures: []\n"
    load_error(tmp_path, text)
    assert not marker.exists()


def test_missing_file(tmp_path):
    p = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="not found") as ei:
        Schema.from_yaml(p)
    assert str(p) in str(ei.value)
    assert isinstance(ei.value, RankcraftError)


def test_from_dict_error_names_origin():
    with pytest.raises(ConfigError, match=r"^my-origin: invalid schema"):
        Schema.from_dict({"labels": ["y"], "features": [{"name": "a"}]}, origin="my-origin")


# ------------------------------------------------------------------------------------------------ fingerprint
def test_fingerprint_is_stable(tmp_path):
    a = Schema.from_yaml(write(tmp_path, FULL_YAML))
    b = Schema.from_yaml(write(tmp_path, FULL_YAML, "copy.yaml"))
    assert a.fingerprint() == a.fingerprint() == b.fingerprint()
    assert len(a.fingerprint()) == 16 and int(a.fingerprint(), 16) >= 0


def test_fingerprint_is_stable_across_processes():
    """No dependence on Python's per-process hash randomisation (it is part of an on-disk cache key)."""
    code = ("from rankcraft.data.schema import Schema;"
            "print(Schema.from_dict({'labels':['y'],'features':[{'name':'a','type':'categorical'},"
            "{'name':'b','type':'numeric','transform':'log'}]}).fingerprint())")
    here = Schema.from_dict({"labels": ["y"], "features": [{"name": "a", "type": "categorical"},
                                                          {"name": "b", "type": "numeric", "transform": "log"}]})
    for seed in ("1", "2"):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                             env={**os.environ, "PYTHONHASHSEED": seed})
        assert out.stdout.strip() == here.fingerprint()


@pytest.mark.parametrize("change", [
    {"labels": ["other"]},
    {"on_error": "skip"},
    {"delimiter": "\t"},
    {"user_column": "a"},
    {"column_names": ["label", "a"]},
    {"features": [{"name": "a", "type": "categorical", "min_count": 2}]},
    {"features": [{"name": "a", "type": "categorical", "hash_buckets": 100}]},
    {"features": [{"name": "a", "type": "categorical", "source": "user"}]},
    {"features": [{"name": "a", "type": "numeric"}]},
    {"features": [{"name": "a", "type": "categorical"}, {"name": "b", "type": "categorical"}]},
])
def test_fingerprint_changes_with_schema(change):
    base = Schema.from_dict(minimal())
    assert Schema.from_dict(minimal(**change)).fingerprint() != base.fingerprint()


def test_fingerprint_depends_on_feature_order():
    f1 = [{"name": "a", "type": "categorical"}, {"name": "b", "type": "categorical"}]
    a = Schema.from_dict({"labels": ["y"], "features": f1})
    b = Schema.from_dict({"labels": ["y"], "features": list(reversed(f1))})
    assert a.fingerprint() != b.fingerprint()


def test_explicit_default_does_not_change_fingerprint():
    a = Schema.from_dict(minimal())
    b = Schema.from_dict({"labels": ["label"], "on_error": "raise",
                          "features": [{"name": "a", "type": "categorical", "min_count": 1}]})
    assert a == b and a.fingerprint() == b.fingerprint()


# ------------------------------------------------------------------------------------------------ to_yaml
def test_to_yaml_round_trip(tmp_path):
    s = Schema(labels=["click", "conv"], delimiter="\t", on_error="skip", user_column="uid",
               column_names=["click", "conv", "uid", "item", "price", "tags", "seq", "ts"],
               features=[
                   FeatureSpec(name="uid", type="categorical", source="user", hash_buckets=1000),
                   FeatureSpec(name="item", type="categorical", source="item", min_count=3),
                   FeatureSpec(name="price", type="numeric", transform="bucketize", buckets=7, fill_value=-1.5),
                   FeatureSpec(name="tags", type="multi_categorical", separator=";", max_len=3),
                   FeatureSpec(name="hist", column="seq", type="sequence", separator="^", max_len=4,
                               share_vocab_with="item", timestamp_column="ts"),
               ])
    out = tmp_path / "out.yaml"
    s.to_yaml(out)
    back = Schema.from_yaml(out)
    assert back == s
    assert back.fingerprint() == s.fingerprint()
    # saving the reloaded schema gives the same file (a fixed point)
    out2 = tmp_path / "out2.yaml"
    back.to_yaml(out2)
    assert out2.read_text() == out.read_text()


def test_to_yaml_round_trip_of_example(tmp_path):
    s = Schema.from_yaml(write(tmp_path, FULL_YAML))
    s.to_yaml(tmp_path / "again.yaml")
    assert Schema.from_yaml(tmp_path / "again.yaml") == s


@pytest.mark.parametrize("kind", ["directory", "not_utf8"])
def test_bug_unreadable_schema_file_is_config_error(tmp_path, kind):
    if kind == "directory":
        p = tmp_path / "schema.yaml"
        p.mkdir()
    else:
        p = tmp_path / "schema.yaml"
        p.write_bytes(b"labels: [\xff\xfe]\nfeatures: []\n")
    with pytest.raises(ConfigError) as ei:
        Schema.from_yaml(p)
    assert str(p) in str(ei.value)


def test_numeric_looking_unquoted_names_in_yaml_get_a_quoting_hint(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text("labels: [click]\nfeatures:\n  - {name: a, type: categorical}\n  - {name: 109_14, type: categorical}\n")
    with pytest.raises(ConfigError, match=r"features\[1\]\.name is 10914, a int.*quote the name.*\"109_14\""):
        Schema.from_yaml(p)
    p.write_text("labels: [yes]\nfeatures:\n  - {name: a, type: categorical}\n")
    with pytest.raises(ConfigError, match=r"labels\[0\] is True, a bool"):
        Schema.from_yaml(p)
    p.write_text("labels: [click]\nfeatures:\n  - {name: \"109_14\", type: categorical}\n")
    assert Schema.from_yaml(p).features[0].name == "109_14"


def test_train_report_to_reaches_the_trainer(tmp_path, capsys, monkeypatch):
    import sys

    from rankcraft.cli.main import main

    monkeypatch.setitem(sys.modules, "mlflow", None)  # not installed: the tracker is asked for and says so
    code = main(["train", "--rows", "200", "--epochs", "1", "--report-to", "mlflow", "--out", str(tmp_path / "r"),
                 "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "pip install 'rankcraft[mlflow]'" in err
