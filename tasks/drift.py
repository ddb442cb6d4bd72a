"""Drift: this run's newest rows against the data of the current champion.

The newest rows are those of this run's data that the champion's data did not hold (the
span that arrived since it was trained, as TFDV compares each new span with the previous).
Four measures, each with the well-kept test behind it (scipy.stats; Evidently would pull an
old 0.4 release and 27 packages, telemetry and a web server among them, into the pinned set):

- labels: total-variation distance of the label shares, chi-square test of the counts;
- text length: two-sample Kolmogorov-Smirnov statistic and p-value on characters per text;
- unknown words: share of the newest rows' words absent from the champion's training
  vocabulary, against the same share of the champion's own test rows (its baseline);
- the champion's macro-F1 on the newest rows against the score it was registered with.

A measure above `drift.threshold` (and, for the two tests, p below `drift.alpha`, so a
handful of rows does not flag) flags the run: tag `drift.flagged`, metric `drift/flagged`.
The report is `drift/report.json` and `drift/report.png` on the parent run.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, ConfigDict
from scipy.stats import chi2_contingency, ks_2samp
from sweepflow.tasks.clean import LABEL, TEXT
from sweepflow.tasks.ingest import label_texts, load_ingested
from sweepflow.tasks.register import ChampionCheck
from sweepflow.tasks.tokenize import TokenizedData
from sweepflow.tasks.versions import ROWS_ARTIFACT, load_json_artifact, newest_rows

from sweepflow import tracking
from sweepflow.config import DriftConfig, SweepflowConfig
from sweepflow.console import report

log = logging.getLogger(__name__)

REFERENCE_ARTIFACT = "data/reference.json"
VOCAB_SIZE = 50_000
WORD = re.compile(r"\w+", re.UNICODE)


class DriftReport(BaseModel):
    model_config = ConfigDict(frozen=True)
    champion_version: int
    new_rows: int
    label_tvd: float | None = None
    label_p_value: float | None = None
    length_ks: float | None = None
    length_p_value: float | None = None
    oov_share: float | None = None
    oov_share_reference: float | None = None
    champion_f1_newest: float | None = None
    champion_f1_recorded: float | None = None
    flagged: list[str] = []
    threshold: float
    note: str | None = None  # why some measures are missing

    def line(self) -> str:
        if self.note and self.label_tvd is None:
            return f"drift: {self.note}"
        parts = [f"labels TVD {self.label_tvd:.3f} (chi-square p={self.label_p_value:.2g})",
                 f"length KS {self.length_ks:.3f} (p={self.length_p_value:.2g})",
                 f"unknown words {self.oov_share:.1%} (champion's own test rows "
                 f"{self.oov_share_reference:.1%})"]
        if self.champion_f1_newest is not None:
            parts.append(f"champion v{self.champion_version} macro-F1 "
                         f"{self.champion_f1_newest:.4f} on them (registered with "
                         f"{self.champion_f1_recorded:.4f})")
        verdict = (f"DRIFT beyond drift.threshold={self.threshold:g}: "
                   f"{', '.join(self.flagged)}" if self.flagged
                   else f"no drift beyond drift.threshold={self.threshold:g}")
        return f"drift: {self.new_rows:,} newest rows vs champion v{self.champion_version}'s " \
               f"data: {'; '.join(parts)} -> {verdict}"


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


def reference(data: Any) -> dict[str, Any]:
    """What later runs compare with (`data/reference.json`): the train split's label
    counts, text lengths and vocabulary, and the unknown-word share of its own test rows."""
    dd = load_ingested(data)
    names = data.label_names
    labels = label_texts(data, dd["train"][LABEL])
    if data.multi_label:  # label-set shares
        names = sorted(set(labels))
    vocab = Counter(w for t in dd["train"][TEXT] for w in words(t))
    known = {w for w, _ in vocab.most_common(VOCAB_SIZE)}
    return {"label_names": names,
            "labels": dict(Counter(labels)),
            "lengths": [len(t) for t in dd["train"][TEXT]],
            "vocab": sorted(known), "oov_share_test": oov_share(dd["test"][TEXT], known)}


def oov_share(texts: list[str], known: set[str]) -> float:
    tokens = [w for t in texts for w in words(t)]
    return sum(w not in known for w in tokens) / len(tokens) if tokens else 0.0


def label_shift(ref: dict[str, int], new: dict[str, int]) -> tuple[float, float]:
    """(total-variation distance of the label shares, chi-square p-value of the counts)."""
    names = sorted(set(ref) | set(new))
    table = np.array([[ref.get(n, 0) for n in names], [new.get(n, 0) for n in names]])
    table = table[:, table.sum(axis=0) > 0]
    shares = table / table.sum(axis=1, keepdims=True)
    tvd = float(0.5 * np.abs(shares[0] - shares[1]).sum())
    p = 1.0 if table.shape[1] < 2 else float(chi2_contingency(table).pvalue)
    return tvd, p


def measure(cfg: DriftConfig, ref: dict[str, Any], texts: list[str], labels: list[str],
            check: ChampionCheck) -> DriftReport:
    """The four measures and the flags (pure: no store)."""
    version = check.champion.version
    if len(texts) < cfg.min_rows:
        return DriftReport(champion_version=version, new_rows=len(texts),
                           threshold=cfg.threshold,
                           note=f"{len(texts)} rows new since champion v{version}'s data "
                                f"(fewer than drift.min_rows={cfg.min_rows}): not measured")
    tvd, p_labels = label_shift(ref["labels"], dict(Counter(labels)))
    ks = ks_2samp(ref["lengths"], [len(t) for t in texts])
    oov = oov_share(texts, set(ref["vocab"]))
    recorded = check.champion.score
    newest = check.newest.f1_macro if check.newest is not None else None
    flags = {"labels": tvd > cfg.threshold and p_labels < cfg.alpha,
             "text length": ks.statistic > cfg.threshold and ks.pvalue < cfg.alpha,
             "unknown words": oov - ref["oov_share_test"] > cfg.threshold,
             "champion score": newest is not None and recorded is not None
             and recorded - newest > cfg.threshold}
    return DriftReport(champion_version=version, new_rows=len(texts), label_tvd=tvd,
                       label_p_value=p_labels, length_ks=float(ks.statistic),
                       length_p_value=float(ks.pvalue), oov_share=oov,
                       oov_share_reference=ref["oov_share_test"], champion_f1_newest=newest,
                       champion_f1_recorded=recorded, threshold=cfg.threshold,
                       flagged=[k for k, v in flags.items() if v])


def figure(ref: dict[str, Any], texts: list[str], labels: list[str], r: DriftReport
           ) -> Figure:
    fig = Figure(figsize=(11, 3.6))
    ax_labels, ax_len, ax_flags = fig.subplots(1, 3)
    names = ref["label_names"]
    total_ref, new = sum(ref["labels"].values()), Counter(labels)
    x = np.arange(len(names))
    ax_labels.bar(x - 0.2, [ref["labels"].get(n, 0) / total_ref for n in names], 0.4,
                  label=f"champion v{r.champion_version} train")
    ax_labels.bar(x + 0.2, [new.get(n, 0) / max(1, len(labels)) for n in names], 0.4,
                  label="newest rows")
    ax_labels.set_xticks(x, names)
    ax_labels.set_title(f"label shares (TVD {r.label_tvd:.3f})")
    ax_labels.legend()
    ax_len.hist(ref["lengths"], bins=40, alpha=0.5, density=True, label="champion train")
    ax_len.hist([len(t) for t in texts], bins=40, alpha=0.5, density=True, label="newest")
    ax_len.set_title(f"characters per text (KS {r.length_ks:.3f})")
    ax_len.legend()
    values = {"labels TVD": r.label_tvd, "length KS": r.length_ks,
              "unknown words +": r.oov_share - r.oov_share_reference,
              "champion F1 drop": (r.champion_f1_recorded - r.champion_f1_newest)
              if r.champion_f1_newest is not None and r.champion_f1_recorded is not None
              else 0.0}
    ax_flags.barh(list(values), list(values.values()))
    ax_flags.axvline(r.threshold, color="red", linestyle="--", label="drift.threshold")
    ax_flags.set_title("drift measures")
    ax_flags.legend()
    fig.tight_layout()
    return fig


def drift(config: SweepflowConfig, tokens: TokenizedData, check: ChampionCheck | None,
          tracker: tracking.Tracker) -> DriftReport | None:
    """Log this run's reference, then measure its newest rows against the champion's data."""
    client = tracker.client
    tracker.log_dict(reference(tokens.data), REFERENCE_ARTIFACT)
    if not config.drift.enabled or check is None or check.champion is None \
            or not check.champion.run_id:
        return None
    ref = load_json_artifact(client, check.champion.run_id, REFERENCE_ARTIFACT)
    rows = load_json_artifact(client, check.champion.run_id, ROWS_ARTIFACT)
    if ref is None or rows is None:
        return None
    inputs, ids = newest_rows(tokens.data, rows)
    texts = [t[0] if isinstance(t, tuple) else t for t in inputs]  # a pair: as `reference`
    labels = label_texts(tokens.data, ids)
    result = measure(config.drift, ref, texts, labels, check)
    log_drift(tracker, result, ref, texts, labels)
    return result


def log_drift(tracker: tracking.Tracker, r: DriftReport, ref: dict, texts: list[str],
              labels: list[str]) -> None:
    tracker.log_dict(r.model_dump(), "drift/report.json")
    values = {k: getattr(r, k) for k in ("new_rows", "label_tvd", "label_p_value", "length_ks",
                                         "length_p_value", "oov_share", "oov_share_reference",
                                         "champion_f1_newest", "champion_f1_recorded")}
    values["flagged"] = float(bool(r.flagged))
    tracker.log(metrics={f"drift/{k}": v for k, v in values.items() if v is not None},
                tags={"drift.flagged": ",".join(r.flagged), "drift.summary": r.line()[:5000]})
    if r.label_tvd is not None:
        tracker.log_figure(figure(ref, texts, labels, r), "drift/report.png", dpi=100)


@task(name="drift", cache_policy=NO_CACHE)
def drift_task(config: SweepflowConfig, tokens: TokenizedData, check: ChampionCheck | None,
               tracker: tracking.Tracker) -> DriftReport | None:
    result = drift(config, tokens, check, tracker)
    if result is not None:
        report.info(result.line())
    return result
