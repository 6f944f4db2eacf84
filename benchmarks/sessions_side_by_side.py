"""Session hopping on MovieLens-100K and ml-1m-u3k side by side (the question of the sequence-scale issue: is
session hopping stronger on the complete ml-1m-u3k histories?).

    python benchmarks/sessions_side_by_side.py --out benchmarks/results/sessions_side_by_side

Both from the complete raw rating logs (u.data; ratings.dat.gz), genres as the theme, a new session after a 1-day
gap, theme returns up to 10 sessions later (`rankcraft analyze sessions`); writes report.md, results.json and one
PNG per dataset.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from rankcraft.analysis.sessions import analyze_sessions, format_session_report  # noqa: E402

DATASETS = ("ml-100k", "ml-1m-u3k")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/sessions_side_by_side"))
    ap.add_argument("--gap-seconds", type=float, default=86_400.0)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    res = {}
    for name in DATASETS:
        res[name] = analyze_sessions(name, gap_seconds=args.gap_seconds, max_k=10,
                                     out_png=args.out / f"{name}.png", title=name)
        res[name].pop("png", None)
    rows = [("users", "users", "{:,}"), ("events", "events", "{:,}"), ("sessions per user", "sessions_per_user", "{:.2f}"), ("median session length", "median_session_length", "{:.0f}"),
            ("within-session Jaccard of consecutive events", ("within", "jaccard"), "{:.4f}"),
            ("across-session Jaccard of consecutive events", ("across", "jaccard"), "{:.4f}"),
            ("random same-user pair Jaccard", ("random_pair", "jaccard"), "{:.4f}"),
            ("theme return rate at k = 1", ("return_rate", 1), "{:.4f}"),
            ("shuffled-order baseline (mean over k)", "baseline", "{:.4f}"),
            ("hop rate (theme absent from the next session)", "hop_rate", "{:.4f}"),
            ("returns within 2..10 sessions after a hop", "return_after_hop", "{:.4f}")]

    def get(r, key):
        if key is None:
            return r["sessions"] / r["users"]
        if isinstance(key, tuple):
            v = r[key[0]]
            return v[key[1]] if key[1] in v else v[str(key[1])]
        return r[key]

    lines = ["# Session hopping: ML-100K and ml-1m-u3k side by side", "",
             f"Complete raw rating logs, genres as themes, a new session after {args.gap_seconds:,.0f} s.", "",
             "| statistic | " + " | ".join(DATASETS) + " |", "|---|" + "---|" * len(DATASETS)]
    for label, key, fmt in rows:
        lines.append(f"| {label} | " + " | ".join(fmt.format(get(res[n], key)) for n in DATASETS) + " |")
    for n in DATASETS:
        lines += ["", f"## {n}", "", "```", format_session_report(res[n]), "```", "", f"![{n}]({n}.png)"]
    (args.out / "report.md").write_text("\n".join(lines) + "\n")
    (args.out / "results.json").write_text(json.dumps(res, indent=2, default=str))
    print("\n".join(lines[:16]))


if __name__ == "__main__":
    main()
