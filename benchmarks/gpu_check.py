"""GPU check of `train.device` (run on a CUDA machine; everything else runs on CPU):

1. the same seeded run on cpu and on cuda reaches the same validation AUC (to float/kernel differences);
2. a cuda run stopped mid-epoch and resumed from last.pt ends with the weights of an uninterrupted cuda run;
3. stream training (progressive validation) runs on cuda;
4. training rows/s of DeepFM on cpu and cuda (indicative).

    python benchmarks/gpu_check.py --out results.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from rankcraft.data.dataset import encode_splits
from rankcraft.data.synthetic import synthetic_raw
from rankcraft.models.catalog import build_model
from rankcraft.training.checkpoint import load_checkpoint
from rankcraft.training.trainer import StopTraining, TrainConfig, Trainer


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="gpu_check.json")
    args = ap.parse_args()
    res: dict = {"torch": torch.__version__, "cuda": torch.cuda.is_available(),
                 "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    raw, schema = synthetic_raw(60_000, seed=1)
    enc, splits, _ = encode_splits(raw, schema)
    feats = enc.feature_set()
    params = {"hidden_units": [64, 32], "dropout": 0.1}

    def fit(device, run=None, stop_at=None, resume=False, model_name="dnn", epochs=3, batch=1024):
        torch.manual_seed(0)
        model = build_model(model_name, feats, params if model_name == "dnn" else {})
        cfg = TrainConfig(epochs=epochs, batch_size=batch, quiet=True, seed=5, device=device, checkpoint_every=10,
                          checkpoint_seconds=0, early_stopping_patience=epochs, lr_schedule="constant")

        def on_step(s):
            if stop_at is not None and s == stop_at:
                raise StopTraining

        t0 = time.perf_counter()
        try:
            r = Trainer(model, cfg, run, on_step=on_step).fit(splits["train"], splits["valid"], resume=resume)
        except StopTraining:
            return None, model
        r.extra["wall"] = time.perf_counter() - t0
        return r, model

    cpu, _ = fit("cpu")
    gpu, gmodel = fit("cuda")
    res["auc"] = {"cpu": cpu.best_metrics["auc"], "cuda": gpu.best_metrics["auc"],
                  "abs_diff": abs(cpu.best_metrics["auc"] - gpu.best_metrics["auc"])}
    res["model_back_on_cpu"] = next(gmodel.parameters()).device.type == "cpu"
    tmp = Path(tempfile.mkdtemp())
    fit("cuda", tmp / "ref")
    fit("cuda", tmp / "cut", stop_at=57)
    resumed, rmodel = fit("cuda", tmp / "cut", resume=True)
    ref = load_checkpoint(tmp / "ref" / "last.pt")["model"]
    got = load_checkpoint(tmp / "cut" / "last.pt")["model"]
    res["resume_max_abs_weight_diff"] = max(float((ref[k].float() - got[k].float()).abs().max()) for k in ref)
    res["resume_identical"] = all(torch.equal(ref[k], got[k]) for k in ref)
    # stream training on cuda: three "days" of the synthetic rows
    from rankcraft.training.loops import StreamLoop

    class Part:
        def __init__(self, key, data):
            self.key, self._d = key, data

        def data(self):
            return self._d

    n = len(splits["train"])
    parts = [Part(f"day{i}", splits["train"].subset(np.arange(i * n // 3, (i + 1) * n // 3))) for i in range(3)]
    torch.manual_seed(0)
    sm = build_model("dnn", feats, params)
    st = Trainer(sm, TrainConfig(batch_size=1024, quiet=True, device="cuda")).run(StreamLoop(parts))
    res["stream_cuda"] = [{k: h.get(k) for k in ("partition", "auc", "logloss", "train_loss")} for h in st.history]
    # throughput, one epoch of DeepFM at batch 4096 (indicative: one run each)
    for dev in ("cpu", "cuda"):
        r, _ = fit(dev, model_name="deepfm", epochs=1, batch=4096)
        res[f"deepfm_rows_per_s_{dev}"] = r.train_rows_per_s
    Path(args.out).write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))
    ok = res["auc"]["abs_diff"] < 0.01 and res["model_back_on_cpu"] and res["resume_max_abs_weight_diff"] < 1e-4
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
