from __future__ import annotations

from sweepflow.tasks.evaluate import (
    baseline_predictions,
    confusion,
    confusion_figure,
    scores,
)

from tests.conftest import make_frame


def test_predictions_map_back_to_their_test_rows(tiny_config, tiny_model_dir):
    """Inference runs in length-sorted batches; each prediction must land on its own row:
    the batched result equals the model applied to each test text alone."""
    import torch
    from sweepflow.tasks.evaluate import predict_test
    from sweepflow.tasks.ingest import ingest
    from sweepflow.tasks.tokenize import load_tokenized, tokenize
    from sweepflow.tasks.train import fit

    tokens = tokenize(tiny_config, ingest(tiny_config))
    learns = {"learning_rate": 3e-3, "max_epochs": 6}  # macro-F1 about 0.55: several classes
    module, _ = fit(tokens, tiny_config.train.model_copy(update=learns), 0,
                    "val/f1_macro", "max", progress=False)
    model = module.model.float()
    model.eval()
    rows = load_tokenized(tokens.path)["test"]

    def logits_alone():
        with torch.inference_mode():
            return torch.cat([model(input_ids=torch.tensor([r["input_ids"]]),
                                    attention_mask=torch.tensor([r["attention_mask"]])).logits
                              for r in rows])

    # A short fit on another CPU can still predict one class; centring each class's logit
    # over the test rows makes every class win somewhere without touching the batching.
    with torch.no_grad():
        model.classifier.bias -= logits_alone().mean(0)
    alone = logits_alone().argmax(-1).tolist()
    model.save_pretrained(tiny_model_dir.parent / "scorer")
    batched = predict_test(tiny_model_dir.parent / "scorer", tokens, 7, "32-true")
    assert list(batched) == alone
    assert len(set(alone)) > 1  # a random head that predicts one class would prove nothing


def test_baseline_learns_tiny_data_and_confusion_png(tmp_path):
    df = make_frame(300)
    y = df["sentiment"].astype("category").cat.codes.to_numpy()
    pred = baseline_predictions(list(df.text[:240]), y[:240], list(df.text[240:]), seed=0)
    assert scores(y[240:], pred).accuracy > 0.8
    fig = confusion_figure(confusion(y[240:], pred, 3), ["negative", "neutral", "positive"])
    cells = [t.get_text() for t in fig.axes[0].texts]
    assert sum(int(c) for c in cells) == 60 and len(cells) == 9


def test_baseline_is_cached_per_data_and_seed(tiny_config):
    from sweepflow.tasks.evaluate import cached_baseline
    from sweepflow.tasks.ingest import ingest, load_ingested

    from sweepflow.paths import cache_dir, shared_dir

    data = ingest(tiny_config)
    dd = load_ingested(data)
    folder = cache_dir(shared_dir(tiny_config.store.shared_dir), "baseline")
    first = cached_baseline(dd, data, 0, folder)
    files = list(folder.iterdir())
    assert len(files) == 1 and files[0].suffix == ".npy"  # no temp file left
    stamp = files[0].stat().st_mtime_ns
    assert (cached_baseline(dd, data, 0, folder) == first).all()
    assert files[0].stat().st_mtime_ns == stamp  # read, not fitted and written again
    cached_baseline(dd, data, 1, folder)
    assert len(list(folder.iterdir())) == 2  # another seed, another entry
