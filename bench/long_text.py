"""Long documents: head vs head_tail vs chunk at equal max_length (`python -m bench.long_text`).

The data set is built offline from the bundled tweets: a document is 10 tweets, 5 of its
label and 5 of the two other labels (neither of them 5), shuffled, so the evidence is spread
over ~250 tokens and a 64-token window sees a quarter of it. 300 training, 100 validation and
200 test documents; validation and test documents are made of test-split tweets only. Each
strategy fine-tunes the bundled MiniLM-L6 for `--epochs` epochs at a fixed learning rate, per
seed, and scores the best validation weights on the test documents (macro-F1); time is fit +
test prediction, wall clock, on whatever else the machine is doing (same run, so the ratios
hold better than the seconds). Results: bench/long_text-results.json.
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import time
from pathlib import Path

from bench.common import OFFLINE_ENV, ROOT, write_json

os.environ.update(OFFLINE_ENV)

STRATEGIES = {
    "head": ["tokenize.truncation=head"],
    "head_tail": ["tokenize.truncation=head_tail", "tokenize.head_share=0.25"],
    "chunk": ["tokenize.long_text=chunk", "tokenize.stride=16"],
    # what max_length=auto picks on these documents (p95 ~370 tokens, capped at 256)
    "head_256": ["tokenize.truncation=head", "tokenize.max_length=256"],
    # the product's own resolution of max_length (p95 of the training texts within [64, 256])
    "auto": ["tokenize.truncation=head", "tokenize.max_length=auto"],
}

# Tweets per document of the document's label, out of 10 (the rest from the other labels):
# `plurality` spreads the evidence (5 of 10, no other label reaches 5); `coherent` is closer
# to a review whose sentiment runs through the text (7 of 10).
MIXES = {"plurality": 5, "coherent": 7}


def build_documents(folder: Path, seed: int, sizes: dict[str, int], mix: str = "plurality"
                    ) -> dict[str, Path]:
    """CSV files of documents built from the bundled tweets (cleaned and split by ingest)."""
    import pandas as pd
    from sweepflow.tasks.ingest import ingest, load_ingested

    from sweepflow.config import load_config

    data = ingest(load_config(overrides=["data.max_train_samples=null",
                                         "data.max_eval_samples=null"]))
    dd, names = load_ingested(data), data.label_names
    rng = random.Random(seed)
    pools = {"train": dd["train"], "validation": dd["test"], "test": dd["test"]}
    files = {}
    for split, n in sizes.items():
        by_label: dict[int, list[str]] = {}
        for text, label in zip(pools[split]["text"], pools[split]["label"], strict=True):
            by_label.setdefault(label, []).append(text)
        if split == "test":  # test documents use the other half of the test tweets
            by_label = {k: v[len(v) // 2:] for k, v in by_label.items()}
        elif split == "validation":
            by_label = {k: v[:len(v) // 2] for k, v in by_label.items()}
        rows = []
        for i in range(n):
            label = i % 3
            others = [k for k in by_label if k != label]
            own = MIXES[mix]
            a = rng.choice(range(1, 10 - own))
            tweets = (rng.sample(by_label[label], own) + rng.sample(by_label[others[0]], a)
                      + rng.sample(by_label[others[1]], 10 - own - a))
            rng.shuffle(tweets)
            rows.append({"text": " ".join(tweets), "label": names[label]})
        files[split] = folder / f"{split}.csv"
        pd.DataFrame(rows).to_csv(files[split], index=False)
    return files


def tfidf_baseline(files: dict[str, Path]) -> float:
    """The product's TF-IDF baseline (tasks/evaluate.py) on the same documents: macro-F1."""
    import pandas as pd
    from sklearn.metrics import f1_score
    from sweepflow.tasks.evaluate import baseline_predictions

    train, test = pd.read_csv(files["train"]), pd.read_csv(files["test"])
    pred = baseline_predictions(list(train["text"]), train["label"].to_numpy(),
                                list(test["text"]), 0)
    return float(f1_score(test["label"], pred, average="macro"))


def run_one(files: dict[str, Path], strategy: str, seed: int, args: argparse.Namespace
            ) -> dict:
    import numpy as np
    from sklearn.metrics import f1_score
    from sweepflow.tasks.evaluate import predict_test
    from sweepflow.tasks.ingest import ingest, load_ingested
    from sweepflow.tasks.tokenize import load_tokenizer, tokenize
    from sweepflow.tasks.train import fit

    from sweepflow.config import load_config

    paths = "{" + ", ".join(f"{k}: {v}" for k, v in files.items()) + "}"
    config = load_config(overrides=[
        f"data.path={paths}", "data.label_column=label", "data.max_train_samples=null",
        "data.max_eval_samples=null", f"tokenize.max_length={args.max_length}",
        f"train.max_epochs={args.epochs}", f"train.learning_rate={args.lr}",
        f"train.batch_size={args.batch_size}",
        f"train.val_checks_per_epoch={args.val_checks}",
        "train.warmup_ratio=0.1", f"seed={seed}", *STRATEGIES[strategy]])
    tokens = tokenize(config, ingest(config))
    start = time.perf_counter()
    module, fitted = fit(tokens, config.train, seed, "val/f1_macro", "max", progress=False)
    module.model.load_state_dict(fitted.state)
    with tempfile.TemporaryDirectory() as tmp:
        module.model.save_pretrained(tmp)
        load_tokenizer(tokens.model_path).save_pretrained(tmp)
        pred = predict_test(Path(tmp), tokens, 128, config.train.precision)
    seconds = time.perf_counter() - start
    y = np.asarray(load_ingested(tokens.data)["test"]["label"])
    rows = {s: n for s, n in tokens.data.sizes.items()}
    return {"strategy": strategy, "seed": seed, "seconds": seconds, "steps": fitted.steps,
            "f1_macro": float(f1_score(y, pred, average="macro")), "docs": rows,
            "share_longer": tokens.stats.share_truncated, "p50_tokens": tokens.stats.p50,
            "max_length": tokens.max_length}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.long_text")
    parser.add_argument("--seeds", default="42,7,13")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--val-checks", type=int, default=1, help="validations per epoch")
    parser.add_argument("--strategies", default="head_256,head,head_tail,chunk")
    parser.add_argument("--docs", default="300,100,200", help="train,validation,test")
    parser.add_argument("--mix", choices=sorted(MIXES), default="plurality")
    parser.add_argument("--out", default=str(ROOT / "bench" / "long_text-results.json"))
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="sweepflow-bench-long-"))
    os.environ["SWEEPFLOW_HOME"] = str(home / "store")
    sizes = dict(zip(("train", "validation", "test"), map(int, args.docs.split(",")),
                     strict=True))
    files = build_documents(home, 0, sizes, args.mix)
    strategies = args.strategies.split(",")
    results, baseline = [], tfidf_baseline(files)
    print(f"TF-IDF baseline: macro-F1 {baseline:.4f}", flush=True)
    for seed in map(int, args.seeds.split(",")):
        for strategy in strategies:
            results.append(run_one(files, strategy, seed, args) | {"load": os.getloadavg()})
            r = results[-1]
            print(f"{strategy:9} seed {seed:3}: macro-F1 {r['f1_macro']:.4f}, "
                  f"{r['seconds']:.1f} s, {r['steps']} steps", flush=True)
            write_json(Path(args.out), {"args": vars(args), "tfidf_f1_macro": baseline,
                                        "results": results, "load": os.getloadavg()})
    print("\n| strategy | mean macro-F1 | per seed | mean time (s) |\n|---|---|---|---|")
    for strategy in strategies:
        mine = [r for r in results if r["strategy"] == strategy]
        f1 = [r["f1_macro"] for r in mine]
        secs = [r["seconds"] for r in mine]
        print(f"| {strategy} | {sum(f1) / len(f1):.4f} | "
              f"{' / '.join(f'{v:.4f}' for v in f1)} | {sum(secs) / len(secs):.1f} |")


if __name__ == "__main__":
    main()
