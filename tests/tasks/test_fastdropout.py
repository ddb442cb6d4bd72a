"""The cheap CPU dropout: same distribution, same eval output, same attention math, on the
tiny BERT; and fit() trains with it and saves the stock model."""

from __future__ import annotations

import json

import torch
from sweepflow.tasks.ingest import ingest
from sweepflow.tasks.tokenize import tokenize
from sweepflow.tasks.train import fit
from transformers import AutoModelForSequenceClassification
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from sweepflow.fastdropout import ATTENTION, FastDropout, attention, keep_mask, speed_up_dropout


def test_keep_mask_drops_p_in_every_lane():
    torch.manual_seed(0)
    keep, q = keep_mask((1000, 1000), 0.1)
    assert abs(q - 0.9) < 1e-4
    per_lane = keep.view(-1, 4).float().mean(0)  # the four 16-bit lanes of each random word
    assert torch.all((per_lane - 0.9).abs() < 0.003)
    torch.manual_seed(0)
    assert torch.equal(keep, keep_mask((1000, 1000), 0.1)[0])  # seeded like nn.Dropout


def test_fast_dropout_keeps_the_mean_and_is_identity_in_eval():
    torch.manual_seed(0)
    layer = FastDropout(0.25)
    x = torch.ones(2000, 500)
    y = layer.train()(x)
    assert abs(float((y == 0).float().mean()) - 0.25) < 0.005
    assert abs(float(y.mean()) - 1.0) < 0.01
    assert torch.equal(layer.eval()(x), x)


def test_attention_math_matches_sdpa_when_nothing_is_dropped():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 4, 7, 8) for _ in range(3))
    mask = torch.ones(2, 1, 7, 7, dtype=torch.bool)
    mask[0, :, :, 5:] = False
    module = torch.nn.Module()
    module.is_causal = False
    ours, _ = attention(module, q, k, v, mask, dropout=1e-9)  # rounds to p = 0: keeps all
    stock, _ = sdpa_attention_forward(module, q, k, v, mask, dropout=0.0)
    assert torch.allclose(ours, stock, atol=1e-5)


def test_swapped_model_predicts_as_before(tiny_model_dir):
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir).eval()
    ids = torch.randint(5, model.get_input_embeddings().num_embeddings, (3, 9))
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    before = model(input_ids=ids, attention_mask=mask).logits
    assert speed_up_dropout(model)
    assert model.config._attn_implementation == ATTENTION
    assert not any(type(m) is torch.nn.Dropout for m in model.modules())
    assert torch.allclose(model(input_ids=ids, attention_mask=mask).logits, before, atol=1e-6)


def test_fit_trains_with_it_and_saves_the_stock_model(tiny_config, tmp_path):
    tokens = tokenize(tiny_config, ingest(tiny_config))
    cfg = tiny_config.train.model_copy(update={"max_epochs": 1, "fast_dropout": True})
    module, result = fit(tokens, cfg, 3, "val/f1_macro", "max", progress=False)
    assert result.steps > 0 and result.best_value is not None
    assert any(isinstance(m, FastDropout) for m in module.model.modules())
    module.model.save_pretrained(tmp_path / "saved")
    saved = json.loads((tmp_path / "saved" / "config.json").read_text())
    assert ATTENTION not in json.dumps(saved)
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "saved")
    assert reloaded.config._attn_implementation == "sdpa"
    off = cfg.model_copy(update={"fast_dropout": False})
    module, _ = fit(tokens, off, 3, "val/f1_macro", "max", progress=False)
    assert not any(isinstance(m, FastDropout) for m in module.model.modules())


def test_causal_attention_is_left_to_stock_sdpa():
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 2, 6, 8) for _ in range(3))
    module = torch.nn.Module()
    module.is_causal = True  # a decoder: SDPA may get no mask and apply causality itself
    ours, _ = attention(module, q, k, v, None, dropout=1e-9)
    causal, _ = sdpa_attention_forward(module, q, k, v, None, dropout=0.0)
    assert torch.allclose(ours, causal, atol=1e-5)


def test_bert_training_draws_its_masks_here(tiny_model_dir, monkeypatch):
    import sweepflow.fastdropout as fd

    calls = []
    real = fd.keep_mask
    monkeypatch.setattr(fd, "keep_mask", lambda shape, p, device=None:
                        calls.append(len(shape)) or real(shape, p, device))
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir).train()
    speed_up_dropout(model)
    ids = torch.randint(5, model.get_input_embeddings().num_embeddings, (2, 7))
    model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.sum().backward()
    layers = model.config.num_hidden_layers
    assert calls.count(4) == layers  # attention probabilities, one mask per layer
    assert calls.count(3) == 1 + 2 * layers  # embeddings, attention output, FFN output
