"""The leaderboard's other tracks: the detection table, the stage of each defense, per-stage costs and
the trade-off plot, all built from small cards that the tests make."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cleanbench.config import RunConfig
from cleanbench.detection_metrics import detection_metrics, poisoned_ranks
from cleanbench.leaderboard.detections import card_ranks, detection_views, load_detection_cards, pool
from cleanbench.leaderboard.site import build_site
from test_leaderboard import synthetic_card, write_cards


def detection_card(detector: str = "k-distance", attack: str = "badnet", seed: int = 0, shift: float = 1.0,
                   n: int = 2000, rate: float = 0.05, ranks: bool = True, **options: object) -> dict:
    """A detection card of scores drawn for the test: poisoned pairs shifted up by `shift`."""
    rng = np.random.default_rng([seed, int(100 * shift)])
    positive = rng.random(n) < rate
    scores = rng.normal(size=n) + shift * positive
    metrics = detection_metrics(scores, positive)
    card = {"kind": "detection", "status": "ok", "seed": seed,
            "config": RunConfig(attack=attack, poison_rate=rate, seed=seed).to_dict(),
            "attack": {"name": attack}, "detector": {"name": detector, "options": options},
            "poison": {"count": int(positive.sum()), "rate": rate}, "metrics": metrics.to_dict(),
            "group_key": f"{detector}-{attack}-{json.dumps(options)}"}
    if ranks:
        card["poisoned_ranks"] = poisoned_ranks(scores, positive)
    return card, scores, positive


def write_detections(results_dir: Path, cards: list[dict]) -> None:
    folder = results_dir / "detections"
    folder.mkdir(parents=True, exist_ok=True)
    for i, card in enumerate(cards):
        (folder / f"detection-{i:03d}.json").write_text(json.dumps(card))


def test_the_pair_bootstrap_from_ranks_matches_redrawing_the_scores():
    card, scores, positive = detection_card(n=1500, shift=1.2)
    cell = pool([card], "one card")
    rng = np.random.default_rng(7)
    pos, neg = scores[positive], scores[~positive]
    brute = {"auroc": [], "tpr_at_1pct_fpr": []}
    for _ in range(600):
        drawn = np.r_[rng.choice(pos, len(pos)), rng.choice(neg, len(neg))]
        labels = np.r_[np.ones(len(pos), bool), np.zeros(len(neg), bool)]
        metrics = detection_metrics(drawn, labels)
        brute["auroc"].append(metrics.auroc)
        brute["tpr_at_1pct_fpr"].append(metrics.tpr_at_1pct_fpr)
    for metric, tolerance in (("auroc", 0.01), ("tpr_at_1pct_fpr", 0.04)):
        mean, low, high = cell.values[metric]
        assert mean == pytest.approx(card["metrics"][metric])
        assert low == pytest.approx(np.percentile(brute[metric], 2.5), abs=tolerance)
        assert high == pytest.approx(np.percentile(brute[metric], 97.5), abs=tolerance)
    assert cell.items


def test_seeds_widen_the_interval_and_cards_without_ranks_redraw_seeds_only():
    close = [detection_card(seed=s, shift=1.0)[0] for s in range(3)]
    apart = [detection_card(seed=s, shift=shift)[0] for s, shift in enumerate((0.3, 1.0, 2.0))]
    width = {name: np.subtract(*pool(cards, name).values["auroc"][2:0:-1]) for name, cards in
             (("close", close), ("apart", apart))}
    assert width["apart"] > 2 * width["close"]
    bare = [detection_card(seed=s, ranks=False)[0] for s in range(3)]
    cell = pool(bare, "bare")
    assert not cell.items
    values = sorted(c["metrics"]["auroc"] for c in bare)
    assert values[0] <= cell.values["auroc"][1] <= cell.values["auroc"][2] <= values[-1]


def test_ranks_that_contradict_the_counts_are_ignored():
    card = detection_card()[0]
    assert card_ranks(card) is not None
    card["poisoned_ranks"]["clean_above"][0] = card["metrics"]["negatives"] + 5
    assert card_ranks(card) is None


def test_the_site_has_a_detector_by_attack_table_with_intervals(tmp_path):
    results = tmp_path / "results"
    write_cards(results, [synthetic_card(seed=0), synthetic_card(defense="none", seed=0)])
    cards = [detection_card(detector=d, attack=a, seed=s, shift=shift)[0]
             for d, shift in (("k-distance", 2.0), ("cosine", 0.5)) for a in ("badnet", "blended") for s in (0, 1)]
    cards.append(detection_card(detector="slof", attack="badnet", ranks=False)[0])
    cards.append(detection_card(detector="slof", attack="badnet", k=64)[0])
    write_detections(results, cards)
    (results / "detections" / "broken.json").write_text("{not json")
    (results / "detections" / "other.json").write_text(json.dumps({"kind": "run"}))
    loaded, rejected = load_detection_cards(results)
    assert len(loaded) == len(cards) and sorted(Path(p).name for p, _ in rejected) == ["broken.json", "other.json"]

    view, = detection_views(loaded)
    assert [c["attack"] for c in view["columns"]] == ["badnet", "blended"]
    assert [r["detector"] for r in view["rows"]] == ["cosine", "k-distance", "slof (defaults)", "slof (k=64)"]
    assert view["rows"][2]["cells"][1] is None  # slof did not run on blended

    report = build_site(results, tmp_path / "site")
    html = (tmp_path / "site" / "index.html").read_text()
    assert "Detection: which training pairs are poisoned?" in html
    assert html.count('class="det-metric"') == 2 * 6 and "(seeds only)" in html
    k_distance = pool([c for c in cards if c["detector"]["name"] == "k-distance" and c["attack"]["name"] == "badnet"],
                      "x").values["auroc"][0]
    assert f"AUROC {k_distance:.3f}" in html
    assert "broken.json" in html and len(report.rejected) == 2


def test_without_detection_cards_the_site_has_no_detection_table(tmp_path):
    write_cards(tmp_path / "results", [synthetic_card()])
    build_site(tmp_path / "results", tmp_path / "site")
    assert "detections-heading" not in (tmp_path / "site" / "index.html").read_text()
