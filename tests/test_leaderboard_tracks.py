"""The leaderboard's other tracks: the detection table, the stage of each defense, per-stage costs and
the trade-off plot, all built from small cards that the tests make."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cleanbench.config import RunConfig
from cleanbench.errors import UsageError
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


# --- new defenses and attacks: every name shows, with the defense's stage ---------------------


def _with_stage(card: dict, stage: str, seconds: float | None = None) -> dict:
    card["defense"]["stage"] = stage
    if seconds is not None:
        card["costs"]["defense_seconds"] = seconds
    return card


def _new_methods() -> list[dict]:
    cards = []
    for seed in (0, 1):
        cards.append(synthetic_card(attack="none", defense="none", seed=seed, ca_after=(81, 100), asr_after=(1, 100)))
        for attack in ("badnet", "badclip"):
            cards.append(_with_stage(synthetic_card(attack=attack, defense="none", seed=seed, ca_after=(80, 100),
                                                    asr_after=(90, 100)), "none"))
            cards.append(synthetic_card(attack=attack, defense="cleanclip", seed=seed))
            cards.append(_with_stage(synthetic_card(attack=attack, defense="par", seed=seed, asr_after=(20, 100)),
                                     "post-training finetuning"))
        cards.append(_with_stage(synthetic_card(defense="roclip", seed=seed, asr_after=(30, 100)), "pretraining", 50.0))
    for card in cards:
        card["costs"] |= {"data_seconds": 2.0, "poison_seconds": 0.5, "eval_seconds": 1.5, "pretrain_seconds": 40.0}
        card["artifacts"] |= {"poisoned_model": f"{card['config']['attack']}-{card['config']['seed']}",
                              "poisoned_model_reused": card["config"]["defense"] != "none",
                              "defended_model": f"{card['config']['defense']}-{id(card)}",
                              "defended_model_reused": False}
    return cards


def test_new_defenses_and_attacks_appear_in_the_matrix_and_rankings_with_their_stage(tmp_path):
    write_cards(tmp_path / "results", _new_methods())
    build_site(tmp_path / "results", tmp_path / "site")
    html = (tmp_path / "site" / "index.html").read_text()
    matrix = html[html.index('class="matrix-table"'):html.index("</table>", html.index('class="matrix-table"'))]
    for name in ("cleanclip", "par", "roclip", "badclip", "badnet"):
        assert name in matrix
    assert 'roclip <span class="tag stage" title="the stage the defense acts in">pretraining</span>' in matrix
    assert 'par <span class="tag stage" title="the stage the defense acts in">post-training</span>' in matrix
    ranking = html[html.index('id="defense-ranking"'):html.index("</table>", html.index('id="defense-ranking"'))]
    assert ranking.count('class="tag stage"') == 3  # cleanclip, par, roclip
    # roclip ran against badnet only: half of the implanted groups, so all three are ranked on badnet alone
    assert "roclip" in ranking and "not ranked" not in ranking and ranking.count('<td class="num">1 of 2</td>') == 3
    attacks = html[html.index('id="attack-ranking"'):html.index("</table>", html.index('id="attack-ranking"'))]
    assert "badclip" in attacks and "badnet" in attacks


def test_the_setting_box_and_card_pages_give_each_stages_cost(tmp_path):
    from cleanbench.leaderboard.costs import stage_costs

    cards = _new_methods()
    costs = stage_costs(cards)
    stages = {s["stage"]: s for s in costs["stages"]}
    assert stages["pretraining (the undefended model)"]["seconds"] == 40.0
    # one model per attack (none, badnet, badclip) and seed; every defended card reused its seed's model
    assert stages["pretraining (the undefended model)"]["over"] == "6 models; 10 of 16 cards reused one"
    roclip = next(d for d in costs["defenses"] if d["name"] == "roclip")
    assert roclip["stage"] == "pretraining" and roclip["seconds"] == 50.0
    assert "a full pretraining on the poisoned pairs (1.2× the undefended pretraining)" == roclip["note"]
    write_cards(tmp_path / "results", cards)
    build_site(tmp_path / "results", tmp_path / "site")
    html = (tmp_path / "site" / "index.html").read_text()
    assert "Cost per stage" in html and "a full pretraining on the poisoned pairs" in html
    page = next(p for p in (tmp_path / "site" / "cards").glob("*.html")
                if "roclip" in p.read_text() and "Costs" in p.read_text())
    text = page.read_text()
    assert "its cost is a full pretraining on the poisoned pairs" in text and "computed by this run" in text


# --- the trade-off view ----------------------------------------------------------------------


def _grid_cards(knob_values=(5e-5, 1e-4, 2e-4, 5e-4)) -> list[dict]:
    cards = []
    for seed in range(3):
        cards.append(synthetic_card(attack="none", defense="none", seed=seed, ca_after=(81, 100), asr_after=(1, 100)))
        for attack in ("badnet", "blended"):
            cards.append(synthetic_card(attack=attack, defense="none", seed=seed, rate=0.02, ca_after=(80, 100),
                                        asr_after=(90, 100)))
            for i, lr in enumerate(knob_values):
                for defense, step in (("finetune", 1), ("cleanclip", 2)):
                    card = synthetic_card(attack=attack, defense=defense, seed=seed, rate=0.02, defense_options={"lr": lr},
                                          ca_after=(80 - i * step, 100), asr_after=(90 - 15 * i * step + seed, 100))
                    card["defense"]["options"] = {"lr": lr, "epochs": 10}
                    cards.append(card)
    return cards


def test_strength_grids_become_one_curve_per_defense(tmp_path):
    from cleanbench.leaderboard.table import analyse
    from cleanbench.leaderboard.tradeoff import strength_curves

    cards = _grid_cards()
    analysis = analyse(cards)
    curves = strength_curves(analysis.table, cards)
    assert sorted((key[1], key[2]) for key in curves) == [("badnet", "2%"), ("blended", "2%")]
    by_name = {c.defense: c for c in curves[next(k for k in curves if k[1] == "badnet")]}
    assert set(by_name) == {"cleanclip", "finetune"}
    cleanclip = by_name["cleanclip"]
    assert cleanclip.knob == "lr" and cleanclip.values == [5e-5, 1e-4, 2e-4, 5e-4]
    assert [round(-100 * r["d_ca_mean"], 6) for r in cleanclip.rows] == [0, 2, 4, 6]
    assert [round(100 * r["asr_mean"], 6) for r in cleanclip.rows] == [91, 61, 31, 1]
    assert all(r["asr_low"] <= r["asr_mean"] <= r["asr_high"] for r in cleanclip.rows)

    write_cards(tmp_path / "results", cards)
    report = build_site(tmp_path / "results", tmp_path / "site")
    html = (tmp_path / "site" / "index.html").read_text()
    assert "Trade-off: ASR against CA drop" in html and html.count('class="kind-tradeoff"') == 2
    assert len(list((tmp_path / "site" / "plots").glob("tradeoff-*.svg"))) == 2 and report.figures >= 2
    svg = next((tmp_path / "site" / "plots").glob("tradeoff-*badnet*.svg")).read_text()
    assert "cleanclip (lr 5e-05–0.0005)" in svg and "undefended" in svg


def test_trade_off_plots_come_from_a_separate_grid_folder(tmp_path):
    grid = _grid_cards()
    main = [c for c in grid if c["config"]["defense"] == "none" or c["config"]["defense_options"].get("lr") == 2e-4]
    write_cards(tmp_path / "main", main)
    write_cards(tmp_path / "grid", grid)
    build_site(tmp_path / "main", tmp_path / "alone")
    assert not list((tmp_path / "alone" / "plots").glob("tradeoff-*.svg"))
    report = build_site(tmp_path / "main", tmp_path / "site", tradeoff_dir=tmp_path / "grid")
    assert len(list((tmp_path / "site" / "plots").glob("tradeoff-*.svg"))) == 2
    assert report.cards == len(main)
    with pytest.raises(UsageError, match="--tradeoff"):
        build_site(tmp_path / "main", tmp_path / "empty", tradeoff_dir=tmp_path / "nothing")


def test_no_trade_off_plot_without_a_grid_or_when_two_options_change(tmp_path):
    from cleanbench.leaderboard.table import analyse
    from cleanbench.leaderboard.tradeoff import strength_curves

    cards = _grid_cards(knob_values=(1e-4,))
    assert strength_curves(analyse(cards).table, cards) == {}
    cards = _grid_cards(knob_values=(1e-4, 2e-4))
    for card in cards:
        if card["config"]["defense_options"].get("lr") == 2e-4:
            card["config"]["defense_options"]["epochs"] = card["defense"]["options"]["epochs"] = 20
    assert strength_curves(analyse(cards).table, cards) == {}
    write_cards(tmp_path / "results", cards)
    build_site(tmp_path / "results", tmp_path / "site")
    assert "tradeoff-heading" not in (tmp_path / "site" / "index.html").read_text()


def test_several_results_folders_make_one_site_with_a_table_per_setting_in_folder_order(tmp_path, capsys):
    import html as html_module

    from cleanbench.cli import main

    def cards(setting: str, ca: int, lr: float) -> list[dict]:
        out = []
        for seed in range(2):
            for attack, defense, rate in (("none", "none", None), ("badnet", "none", 0.02), ("badnet", "cleanclip", 0.02)):
                out.append(synthetic_card(attack=attack, defense=defense, seed=seed, rate=rate, setting=setting,
                                          ca_after=(ca, 100), asr_after=(95 if defense == "none" and attack != "none" else 5, 100)))
                if defense == "cleanclip":  # tuned per setting: its rows are labelled "cleanclip (lr=...)"
                    out[-1]["config"]["defense_options"] = out[-1]["defense"]["options"] = {"lr": lr}
        return out

    folders = {"new": cards("standard-v2", 90, 5e-4), "old": cards("standard", 80, 2e-4)}
    for name, folder_cards in folders.items():
        for card in folder_cards:
            card["command"] = f"cleanbench sweep results/{name}.yaml"
            card["config"]["results_dir"] = f"results/sweeps/{name}"
        write_cards(tmp_path / name, folder_cards)
    assert main(["leaderboard", str(tmp_path / "new"), str(tmp_path / "old"), "-o", str(tmp_path / "site")]) == 0
    assert "12 run cards" in capsys.readouterr().out
    html = (tmp_path / "site" / "index.html").read_text()
    assert html.index("Attack × defense · standard-v2") < html.index("Attack × defense · standard ·")
    add = (tmp_path / "site" / "add-defense.html").read_text()  # the first folder is the one to add to
    assert "cleanbench sweep results/new.yaml" in add and "results/old.yaml" not in add
    assert "cleanbench leaderboard results/sweeps/new results/sweeps/old -o" in add
    assert "adds 4 cells for one new defense" in add  # the first folder's clean control and badnet, 2 seeds
    assert "defenses: [none, cleanclip, noisy-finetune]" in html_module.unescape(add)
    assert main(["leaderboard", str(tmp_path / "new"), str(tmp_path / "missing")]) != 0
    assert f"{str(tmp_path / 'missing')!r} does not exist" in capsys.readouterr().err
