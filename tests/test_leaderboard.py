"""The leaderboard: card validation, the aggregated table, the site builder and its command."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.stats import beta

from cleanbench.cli import main
from cleanbench.config import RunConfig
from cleanbench.errors import UsageError
from cleanbench.leaderboard.cards import CardInvalid, cards_table, load_cards, scan_cards, validate_card
from cleanbench.leaderboard.site import build_site
from cleanbench.leaderboard.table import METRICS, leaderboard_table
from cleanbench.metrics import proportion


def _counts(pair: tuple[int, int]) -> dict:
    return proportion(*pair).to_dict()


def synthetic_card(attack: str = "badnet", defense: str = "cleanclip", rate: float = 0.01, seed: int = 0,
                   ca: tuple[int, int] = (80, 100), asr: tuple[int, int] = (90, 100),
                   ca_after: tuple[int, int] = (78, 100), asr_after: tuple[int, int] = (5, 100),
                   ra_after: tuple[int, int] = (60, 100), status: str = "ok", seconds: float = 10.0,
                   with_poisoned: bool = True, **config: object) -> dict:
    """A schema-valid run card with the given counts (no training involved)."""
    values = RunConfig(attack=attack, defense=defense, poison_rate=None if attack == "none" else rate, seed=seed).to_dict()
    values.update(config)
    card: dict = {
        "schema_version": 1, "status": status, "command": f"cleanbench run --attack {attack}", "config": values,
        "seed": seed, "versions": {"cleanbench": "0.1.0"}, "git_commit": "abc123", "device": {"type": "cpu"},
        "attack": {"name": attack, "description": f"the {attack} attack", "paper": "A. Author, 2020", "options": {}},
        "defense": {"name": defense, "description": f"the {defense} defense", "source": "B. Author, 2021",
                    "stage": "post-training finetuning", "options": {}},
        "costs": {"pretrain_seconds": 1.0, "defense_seconds": seconds, "total_seconds": seconds + 1.0},
        "artifacts": {"poisoned_model": "f" * 64},
    }
    if status == "failed":
        card["error"] = f"defense {defense!r} raised RuntimeError: out of memory"
        return card
    card["metrics"] = {"defended": {"ca_top1": _counts(ca_after), "ca_top5": _counts(ca_after),
                                    "asr": _counts(asr_after), "ra": _counts(ra_after)}}
    if with_poisoned:
        card["metrics"]["poisoned"] = {"ca_top1": _counts(ca), "ca_top5": _counts(ca), "asr": _counts(asr),
                                       "ra": _counts((asr[1] - asr[0], asr[1]))}
    return card


def write_cards(results_dir: Path, cards: list[dict]) -> list[Path]:
    """Write cards as results_dir/runs/card-NNN.json."""
    runs = results_dir / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, card in enumerate(cards):
        paths.append(runs / f"card-{i:03d}.json")
        paths[-1].write_text(json.dumps(card))
    return paths


def _row(table: pd.DataFrame, attack: str = "badnet", defense: str = "cleanclip") -> pd.Series:
    rows = table[(table["attack"] == attack) & (table["defense"] == defense)]
    assert len(rows) == 1
    return rows.iloc[0]


# --- validation -------------------------------------------------------------------------------


def test_a_synthetic_card_is_valid():
    assert validate_card(synthetic_card()) is not None
    assert validate_card(synthetic_card(status="failed")) is not None


def _break(path: str, value: object, delete: bool = False):
    def change(card: dict) -> None:
        *parents, last = path.split(".")
        for key in parents:
            card = card[key]
        if delete:
            del card[last]
        else:
            card[last] = value
    return change


@pytest.mark.parametrize("change, message", [
    (_break("schema_version", None, delete=True), "missing keys: schema_version"),
    (_break("schema_version", 2), "schema_version"),
    (_break("status", "running"), "status"),
    (_break("config.seed", "0"), "config.seed"),
    (_break("config.poison_rate", 2.0), "config.poison_rate"),
    (_break("attack.name", "other"), "attack.name differs"),
    (_break("defense.name", ""), "defense.name"),
    (_break("metrics.defended", None, delete=True), "metrics.defended"),
    (_break("metrics.defended.asr.successes", 101), "successes"),
    (_break("metrics.defended.asr.value", 0.5), "is not successes/total"),
    (_break("metrics.poisoned.ca_top1.high", 0.1), "interval"),
    (_break("metrics.poisoned.ra.total", 1.5), "integers"),
    (_break("costs.defense_seconds", -1), "costs.defense_seconds"),
    (_break("costs", [1]), "costs"),
    (_break("versions", {"torch": 2}), "versions"),
])
def test_invalid_cards_are_refused_with_the_reason(change, message):
    card = synthetic_card()
    change(card)
    with pytest.raises(CardInvalid, match=message):
        validate_card(card)


def test_a_failed_card_must_say_why_and_names_have_a_length_limit():
    card = synthetic_card(status="failed")
    del card["error"]
    with pytest.raises(CardInvalid, match="error"):
        validate_card(card)
    with pytest.raises(CardInvalid, match="expected a JSON object"):
        validate_card([1, 2])
    long_name = "x" * 501
    with pytest.raises(CardInvalid, match="config.attack"):
        validate_card(synthetic_card(attack=long_name))


def test_scan_reports_skipped_files_and_results_table_still_works(tmp_path):
    write_cards(tmp_path, [synthetic_card(), synthetic_card(seed=1)])
    (tmp_path / "runs" / "broken.json").write_text("{not json")
    (tmp_path / "runs" / "other.json").write_text(json.dumps({"schema_version": 1}))
    scan = scan_cards(tmp_path)
    assert len(scan.cards) == 2
    reasons = dict((Path(p).name, r) for p, r in scan.rejected)
    assert reasons["broken.json"].startswith("unreadable: JSONDecodeError")
    assert reasons["other.json"].startswith("invalid: missing keys")
    assert len(load_cards(tmp_path)) == 2
    assert list(cards_table(load_cards(tmp_path))["seed"]) == [0, 1]


# --- the aggregated table ---------------------------------------------------------------------


def test_one_seed_gets_a_bootstrap_interval_of_its_counts_and_hand_computed_der():
    table = leaderboard_table([synthetic_card(defense="none", asr_after=(90, 100), ca_after=(80, 100)), synthetic_card()])
    row = _row(table)
    # one seed: only the test images vary, so the interval is close to the Jeffreys interval of 78/100
    jeffreys = beta.ppf([0.025, 0.975], 78.5, 22.5)
    assert row["ca_mean"] == 0.78 and row["ca_method"] == "bootstrap" and math.isnan(row["ca_std"])
    assert (row["ca_low"], row["ca_high"]) == pytest.approx(tuple(jeffreys), abs=0.01)
    # drops: ASR 0.90 -> 0.05 is 0.85, CA 0.80 -> 0.78 is 0.02: DER = (0.85 - 0.02 + 1) / 2
    assert row["der_mean"] == pytest.approx(0.915)
    assert row["d_ca_mean"] == pytest.approx(-0.02) and row["d_asr_mean"] == pytest.approx(-0.85)
    assert row["der_low"] < 0.915 < row["der_high"] <= 1
    assert row["seconds_mean"] == 10.0 and row["n_seeds"] == 1 and row["status"] == "ok"
    reference = _row(table, defense="none")  # the reference against itself: no change, whatever the draws
    assert (reference["d_asr_low"], reference["d_asr_high"], reference["der_low"]) == (0.0, 0.0, 0.5)


def test_several_seeds_combine_the_spread_across_seeds_with_the_counting_noise():
    cards = [synthetic_card(seed=0, ca_after=(78, 100), asr_after=(5, 100)),
             synthetic_card(seed=1, ca_after=(80, 100), asr_after=(15, 100)),
             synthetic_card(seed=2, ca_after=(82, 100), asr_after=(10, 100))]
    row = _row(leaderboard_table(cards))
    assert row["ca_mean"] == pytest.approx(0.80) and row["ca_std"] == pytest.approx(0.02)
    # wider than the seeds' spread alone and than one seed's counting noise alone
    assert row["ca_low"] < 0.78 and row["ca_high"] > 0.82
    # DER per seed: (0.85 - 0.02 + 1)/2 = 0.915, (0.75 - 0 + 1)/2 = 0.875, (0.80 + 1)/2 = 0.90
    assert row["der_mean"] == pytest.approx((0.915 + 0.875 + 0.90) / 3)
    assert row["der_method"] == "bootstrap" and row["seeds"] == "0 1 2"


def test_identical_seeds_still_get_the_counting_noise():
    cards = [synthetic_card(attack="none", defense="none", seed=s, asr_after=(17, 1790), ca_after=(1800, 2000))
             for s in range(3)]
    row = _row(leaderboard_table(cards), attack="none", defense="none")
    assert row["asr_std"] == 0 and row["asr_low"] < 17 / 1790 < row["asr_high"]
    assert row["asr_high"] - row["asr_low"] > 0.004
    assert row["role"] == "control" and pd.isna(row["rank"])


def test_the_interval_is_reproducible():
    cards = [synthetic_card(seed=s, asr_after=(5 + s, 100)) for s in range(3)]
    first, second = leaderboard_table(cards), leaderboard_table(copy.deepcopy(cards)[::-1])
    assert _row(first)["der_low"] == _row(second)["der_low"] and _row(first)["asr_high"] == _row(second)["asr_high"]


def test_failed_and_not_run_cells_are_na_with_a_reason():
    cards = [synthetic_card(defense="none", asr_after=(90, 100), ca_after=(80, 100)),
             synthetic_card(defense="cleanclip"),
             synthetic_card(defense="finetune", status="failed"),
             synthetic_card(attack="blended", defense="none"),
             synthetic_card(defense="unimodal", seed=0), synthetic_card(defense="unimodal", seed=1, status="failed")]
    table = leaderboard_table(cards)
    failed = _row(table, defense="finetune")
    assert failed["status"] == "failed" and math.isnan(failed["asr_mean"])
    assert "failed (seed 0): defense 'finetune' raised RuntimeError" in failed["note"]
    not_run = _row(table, attack="blended", defense="cleanclip")
    assert not_run["status"] == "not run" and not_run["note"] == "not run" and not_run["n_seeds"] == 0
    partial = _row(table, defense="unimodal")
    assert partial["status"] == "ok" and partial["n_seeds"] == 1 and partial["n_failed"] == 1
    assert "failed (seed 1)" in partial["note"]
    assert len(table) == 2 * 4  # (badnet, blended) x (none, cleanclip, finetune, unimodal)
    assert list(table["defense"][:4]) == ["none", "cleanclip", "finetune", "unimodal"]


def test_the_undefended_reference_falls_back_to_the_defense_none_cell():
    cards = [synthetic_card(defense="none", ca_after=(80, 100), asr_after=(90, 100), with_poisoned=False),
             synthetic_card(defense="cleanclip", with_poisoned=False),
             synthetic_card(defense="finetune", with_poisoned=False, seed=7)]
    table = leaderboard_table(cards)
    assert _row(table)["der_mean"] == pytest.approx(0.915)
    orphan = _row(table, defense="finetune")
    assert math.isnan(orphan["der_mean"]) and "no undefended reference" in orphan["note"]


def _group(seed_count: int = 3, **defenses: tuple[tuple[int, int], tuple[int, int]]) -> list[dict]:
    """Cards of badnet 1% with a clean control; `defenses` maps name -> (CA counts, ASR counts) per seed."""
    cards = []
    for seed in range(seed_count):
        cards.append(synthetic_card(attack="none", defense="none", seed=seed, ca_after=(900, 1000), asr_after=(10, 1000)))
        for name, (ca, asr) in defenses.items():
            cards.append(synthetic_card(defense=name, seed=seed, ca=(900, 1000), asr=(900, 1000), ca_after=ca, asr_after=asr))
    return cards


def test_the_reference_is_never_ranked_and_stars_follow_the_ranks():
    table = leaderboard_table(_group(none=((900, 1000), (900, 1000)), cleanclip=((880, 1000), (50, 1000)),
                                     finetune=((890, 1000), (300, 1000)), weak=((890, 1000), (305, 1000))))
    none, clean, fine, weak = (_row(table, defense=d) for d in ("none", "cleanclip", "finetune", "weak"))
    assert none["role"] == "reference" and pd.isna(none["rank"]) and not none["der_best"] and not none["ca_best"]
    assert bool(none["implanted"]) and none["implant_p"] < 1e-100
    assert clean["rank"] == 1 and not clean["rank_tied"] and bool(clean["der_best"]) and bool(clean["asr_best"])
    # 30.0% and 30.5% of 1,000 images cannot be told apart: shared rank, no star for either
    assert fine["rank"] == weak["rank"] == 2 and fine["rank_tied"] and fine["tied_with"] == "weak"
    assert not fine["ca_best"] and not weak["ca_best"]  # 89.0% twice, 88.0% below: the best two are tied
    for _, row in table.iterrows():
        assert not row["der_best"] or (row["rank"] == 1 and not row["rank_tied"])


def test_an_attack_that_did_not_implant_is_left_out_of_the_rankings():
    table = leaderboard_table(_group(none=((900, 1000), (12, 1000)), cleanclip=((880, 1000), (8, 1000)),
                                     finetune=((890, 1000), (11, 1000))))
    rows = table[table["attack"] == "badnet"]
    assert set(rows["implanted"]) == {False} and (rows["implant_p"] > 0.05).all()
    assert rows["rank"].isna().all() and not rows[[f"{p}_best" for p, _, _ in METRICS]].to_numpy().any()


def test_a_significant_but_small_asr_gain_is_not_an_implant():
    # 5.0% against a 1.0% base rate on 1,000 images: p < 1e-6 in every seed, but a gain of 4 points
    table = leaderboard_table(_group(none=((900, 1000), (50, 1000)), cleanclip=((880, 1000), (20, 1000)),
                                     finetune=((890, 1000), (40, 1000))))
    rows = table[table["attack"] == "badnet"]
    assert (rows["implant_p"] < 1e-6).all() and rows["implant_gain"].tolist() == pytest.approx([0.04] * 3)
    assert set(rows["implanted"]) == {False} and rows["rank"].isna().all()
    # 12 points above the base rate passes the margin
    table = leaderboard_table(_group(none=((900, 1000), (130, 1000)), cleanclip=((880, 1000), (20, 1000))))
    row = _row(table, defense="cleanclip")
    assert bool(row["implanted"]) and row["implant_gain"] == pytest.approx(0.12) and row["rank"] == 1


def test_without_a_clean_control_the_group_is_ranked_untested():
    cards = [c for c in _group(none=((900, 1000), (900, 1000)), cleanclip=((880, 1000), (50, 1000)))
             if c["config"]["attack"] != "none"]
    row = _row(leaderboard_table(cards))
    assert row["implanted"] is None and row["rank"] == 1


def test_settings_and_option_variants_get_their_own_rows():
    small = dict(data={"source": "embedded", "preset": "easy", "image_size": 32, "n_pretrain": 500,
                       "n_clean": 100, "n_test": 100})
    cards = [synthetic_card(), synthetic_card(**small),
             synthetic_card(attack_options={"patch_size": 16}, rate=0.02),
             synthetic_card(attack_options={}, rate=0.02)]
    table = leaderboard_table(cards)
    assert table["setting_key"].nunique() == 2
    assert {"badnet (patch_size=16)", "badnet (defaults)"} <= set(table["attack"])
    assert set(table["poison_rate"]) == {"1%", "2%"}


def test_a_changed_default_is_its_own_row_not_pooled():
    old, new = synthetic_card(seed=0), synthetic_card(seed=1)
    old["defense"]["options"] = {"image_view": "crop-jitter", "lr": 0.002}
    new["defense"]["options"] = {"image_view": "autoaugment", "lr": 0.002}
    table = leaderboard_table([old, new])
    labels = set(table["defense"])
    assert {"cleanclip (defaults; image_view=crop-jitter)", "cleanclip (defaults; image_view=autoaugment)"} <= labels
    same = synthetic_card(seed=2)
    same["defense"]["options"] = {"image_view": "autoaugment", "lr": 0.002}
    pooled = leaderboard_table([new, same])
    assert "cleanclip" in set(pooled["defense"]) and not any("image_view" in label for label in pooled["defense"])


# --- the site ---------------------------------------------------------------------------------

XSS = "<script>alert('x')</script>"


def _build(tmp_path: Path, cards: list[dict]):
    write_cards(tmp_path / "results", cards)
    return build_site(tmp_path / "results", tmp_path / "site")


def test_site_has_pages_plots_and_downloads(tmp_path):
    cards = [synthetic_card(defense=d, seed=s, rate=r) for d in ("none", "cleanclip") for s in (0, 1) for r in (0.01, 0.02)]
    cards += [synthetic_card(attack="none", defense="none")]
    report = _build(tmp_path, cards)
    site = tmp_path / "site"
    assert report.cards == 9 and report.rows == 2 * 2 + 2 and report.rejected == []
    assert sorted(p.name.split("-")[0] for p in (site / "attacks").glob("*.html")) == ["badnet", "none"]
    assert len(list((site / "cards").glob("*.html"))) == 9 and len(list((site / "cards").glob("*.json"))) == 9
    kinds = sorted(p.name.split("-")[0] for p in (site / "plots").glob("*.svg"))
    assert kinds == ["asr", "ca", "ca", "heatmap"]
    csv = pd.read_csv(site / "leaderboard.csv")
    assert len(csv) == report.rows and {"ca_mean", "ca_low", "der_high", "rank", "note"} <= set(csv.columns)
    records = json.loads((site / "leaderboard.json").read_text())
    assert len(records) == report.rows
    assert all(r["ca_std"] is None or isinstance(r["ca_std"], float) for r in records)  # NaN -> null
    index = (site / "index.html").read_text()
    assert "https://" not in index and "http://" not in index
    assert 'alt="Heatmap of the mean attack success rate' in index
    assert "-0.0" not in index and "+0.0" not in index  # the reference's zero changes print as 0.0
    assert index.count('data-role="reference"') == 2 and index.count('data-role="control"') == 2
    card = next((site / "cards").glob("*.html")).read_text()
    assert "cleanbench run --config" in card and "Resolved config" in card


def test_untrusted_text_is_escaped_everywhere(tmp_path):
    cards = [synthetic_card(attack=XSS, defense="none"), synthetic_card(attack=XSS, defense=f"d{XSS}", seed=1),
             synthetic_card(attack=XSS, defense="x$y$", status="failed")]
    cards[2]["error"] = f"boom {XSS}"
    cards[0]["attack"]["description"] = XSS
    _build(tmp_path, cards)
    for path in (tmp_path / "site").rglob("*"):
        if path.suffix in (".html", ".svg"):
            text = path.read_text()
            assert "<script>alert" not in text, path
    index = (tmp_path / "site" / "index.html").read_text()
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in index


def test_invalid_cards_are_listed_on_the_index(tmp_path):
    write_cards(tmp_path / "results", [synthetic_card()])
    (tmp_path / "results" / "runs" / "bad.json").write_text(json.dumps({**synthetic_card(), "status": "<b>odd</b>"}))
    report = build_site(tmp_path / "results", tmp_path / "site")
    assert [Path(p).name for p, _ in report.rejected] == ["bad.json"]
    index = (tmp_path / "site" / "index.html").read_text()
    assert "Skipped files" in index and "&lt;b&gt;odd&lt;/b&gt;" in index


def test_rebuild_replaces_the_old_site_but_refuses_a_foreign_folder(tmp_path):
    paths = write_cards(tmp_path / "results", [synthetic_card(), synthetic_card(seed=1)])
    build_site(tmp_path / "results", tmp_path / "site")
    paths[1].unlink()
    build_site(tmp_path / "results", tmp_path / "site")
    assert len(list((tmp_path / "site" / "cards").glob("*.html"))) == 1
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep")
    with pytest.raises(UsageError, match="not empty"):
        build_site(tmp_path / "results", foreign)
    assert (foreign / "notes.txt").read_text() == "keep"


def test_command_builds_the_site_and_reports_problems(tmp_path, capsys):
    write_cards(tmp_path / "results", [synthetic_card()])
    (tmp_path / "results" / "runs" / "junk.json").write_text("[]")
    assert main(["leaderboard", str(tmp_path / "results"), "-o", str(tmp_path / "site")]) == 0
    out, err = capsys.readouterr()
    assert "1 run cards -> 1 rows" in out and (tmp_path / "site" / "index.html").is_file()
    assert "skipped" in err and "junk.json" in err
    assert main(["leaderboard", str(tmp_path / "missing"), "-o", str(tmp_path / "x")]) == 2
    (tmp_path / "empty" / "runs").mkdir(parents=True)
    assert main(["leaderboard", str(tmp_path / "empty")]) == 2
    assert "no valid run cards" in capsys.readouterr().err


def test_a_real_tiny_card_builds_a_site(tiny, tmp_path):
    from cleanbench.runner import run_cell

    config = tiny()
    card, path = run_cell(config, progress=False, log=lambda message: None)
    report = build_site(config.results_dir, tmp_path / "site")
    assert report.cards == 1 and report.rejected == []
    table = leaderboard_table(load_cards(config.results_dir))
    row = _row(table, defense=config.defense)
    assert row["status"] == "ok" and row["ca_mean"] == card["metrics"]["defended"]["ca_top1"]["value"]
    page = next((tmp_path / "site" / "cards").glob("*.html")).read_text()
    assert f"cleanbench run --config {path}" in page and card["versions"]["torch"] in page


# --- untrusted input: random corruptions are refused or handled, never a crash -----------------

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 10**6) | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)


def _paths(value: object, prefix: tuple = ()) -> list[tuple]:
    out = [prefix] if prefix else []
    if isinstance(value, dict):
        for key, item in value.items():
            out += _paths(item, prefix + (key,))
    return out


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_corrupted_cards_are_refused_or_aggregated(data):
    base = synthetic_card(status=data.draw(st.sampled_from(["ok", "failed"])))
    card = copy.deepcopy(base)
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(_paths(card)))
        parent = card
        for key in path[:-1]:
            parent = parent[key]
        if data.draw(st.booleans()):
            del parent[path[-1]]
        else:
            parent[path[-1]] = data.draw(JSON_VALUES)
        if not _paths(card):
            break
    try:
        validate_card(card)
    except CardInvalid:
        return
    table = leaderboard_table([card, synthetic_card(defense="none")])
    assert len(table) >= 1 and set(table["status"]) <= {"ok", "failed", "not run"}


def test_cards_with_the_same_file_name_in_subfolders_get_their_own_pages(tmp_path):
    for sub, seed in (("a", 0), ("b", 1)):
        (tmp_path / "results" / "runs" / sub).mkdir(parents=True)
        (tmp_path / "results" / "runs" / sub / "card.json").write_text(json.dumps(synthetic_card(seed=seed)))
    report = build_site(tmp_path / "results", tmp_path / "site")
    assert report.cards == 2 and len(list((tmp_path / "site" / "cards").glob("*.html"))) == 2


# --- the index's views: matrix and rankings ------------------------------------------------------


def _sweep_like() -> list[dict]:
    """badnet implants at 1% and 2% (strongly at 2%), blended only weakly, at the clean base rate at 1%."""
    cards = []
    for seed in range(3):
        cards.append(synthetic_card(attack="none", defense="none", seed=seed, ca_after=(900, 1000), asr_after=(10, 1000)))
        for attack, rate, asr, after in (("badnet", 0.01, 400, {"cleanclip": 50, "finetune": 200}),
                                         ("badnet", 0.02, 950, {"cleanclip": 100, "finetune": 600}),
                                         ("blended", 0.01, 12, {"cleanclip": 10, "finetune": 11}),
                                         ("blended", 0.02, 300, {"cleanclip": 150, "finetune": 20})):
            cards.append(synthetic_card(attack=attack, rate=rate, defense="none", seed=seed, ca=(900, 1000),
                                        asr=(asr, 1000), ca_after=(900, 1000), asr_after=(asr, 1000)))
            for defense, left in after.items():
                cards.append(synthetic_card(attack=attack, rate=rate, defense=defense, seed=seed, ca=(900, 1000),
                                            asr=(asr, 1000), ca_after=(880, 1000), asr_after=(left, 1000)))
    for card in cards:
        card["metrics"]["defended"]["stealthiness"] = {"psnr_db": 25.0, "linf": 0.5, "l2": 2.0}
    return cards


def test_matrices_one_per_rate_with_the_clean_control_and_reference_first():
    from cleanbench.leaderboard.table import analyse
    from cleanbench.leaderboard.views import matrices

    found = matrices(analyse(_sweep_like()).table)
    assert [m.rate for m in found] == ["1%", "2%"]
    assert found[0].defenses == ["none", "cleanclip", "finetune"]
    assert [row[0] for row in found[0].rows] == ["none", "badnet", "blended"]
    assert [row[1] for row in found[0].rows] == [None, True, False]  # blended 1% did not implant
    badnet_2 = found[1].rows[1][2]
    assert [bool(cell["der_best"]) for cell in badnet_2] == [False, True, False]


def test_defense_ranking_averages_der_over_the_implanted_groups_only():
    from cleanbench.leaderboard.table import analyse
    from cleanbench.leaderboard.views import defense_ranking

    analysis = analyse(_sweep_like())
    entries, groups, implanted = defense_ranking(analysis, analysis.table["setting"].iloc[0])
    assert groups == implanted == 3  # badnet 1%, badnet 2%, blended 2%; blended 1% did not implant
    clean, fine = entries
    # DER per group, CA 90% -> 88% everywhere: (ASR drop - 0.02 + 1) / 2
    expected = {"cleanclip": [(0.35 - 0.02 + 1) / 2, (0.85 - 0.02 + 1) / 2, (0.15 - 0.02 + 1) / 2],
                "finetune": [(0.20 - 0.02 + 1) / 2, (0.35 - 0.02 + 1) / 2, (0.28 - 0.02 + 1) / 2]}
    assert clean.name == "cleanclip" and clean.value == pytest.approx(sum(expected["cleanclip"]) / 3)
    assert fine.value == pytest.approx(sum(expected["finetune"]) / 3)
    assert clean.rank == 1 and clean.best and fine.rank == 2 and clean.low < clean.value < clean.high
    assert clean.extra["groups"] == "3 of 3" and clean.extra["d_ca"][0] == pytest.approx(-0.02)


def test_defense_ranking_compares_on_the_groups_every_ranked_defense_ran_in():
    from cleanbench.leaderboard.table import analyse
    from cleanbench.leaderboard.views import attack_ranking, defense_ranking

    extra = []  # roclip at 2% only (2 of 3 implanted groups), sparse at badnet 1% only (1 of 3)
    for seed in range(3):
        for attack, rate, asr, left in (("badnet", 0.02, 950, 30), ("blended", 0.02, 300, 40)):
            extra.append(synthetic_card(attack=attack, rate=rate, defense="roclip", seed=seed, ca=(900, 1000),
                                        asr=(asr, 1000), ca_after=(700, 1000), asr_after=(left, 1000)))
        extra.append(synthetic_card(attack="badnet", rate=0.01, defense="sparse", seed=seed, ca=(900, 1000),
                                    asr=(400, 1000), ca_after=(900, 1000), asr_after=(0, 1000)))
    cards = _sweep_like() + extra
    analysis = analyse(cards)
    entries, groups, implanted = defense_ranking(analysis, analysis.table["setting"].iloc[0])
    assert (groups, implanted) == (2, 3)
    by_name = {e.name: e for e in entries}
    assert by_name["roclip"].rank is not None and by_name["cleanclip"].rank is not None
    assert by_name["cleanclip"].extra["groups"] == "2 of 3"  # badnet 2% and blended 2%, not badnet 1%
    # cleanclip on the common groups: (0.85 - 0.02 + 1) / 2 and (0.15 - 0.02 + 1) / 2
    assert by_name["cleanclip"].value == pytest.approx(((0.85 - 0.02 + 1) / 2 + (0.15 - 0.02 + 1) / 2) / 2)
    assert by_name["sparse"].rank is None and "fewer than half" in by_name["sparse"].note
    assert by_name["sparse"].extra["groups"] == "1 of 3"
    # the attack ranking compares at the rate with the most implanted, defended attacks: 2% (two) over 1% (one)
    assert attack_ranking(analysis, analysis.table["setting"].iloc[0], cards)[1] == "2%"


def test_the_ranking_rate_is_the_one_with_the_most_implanted_attacks_not_the_highest():
    from cleanbench.leaderboard.table import analyse
    from cleanbench.leaderboard.views import ranking_rate

    cards = [c for c in _sweep_like() if not (c["config"]["attack"] == "blended" and c["config"]["poison_rate"] == 0.02)]
    for seed in range(3):  # blended at 5%, where it does not implant (12 of 1,000 against the base rate's 10)
        cards.append(synthetic_card(attack="blended", rate=0.05, defense="none", seed=seed, ca=(900, 1000),
                                    asr=(12, 1000), ca_after=(900, 1000), asr_after=(12, 1000)))
        cards.append(synthetic_card(attack="blended", rate=0.05, defense="cleanclip", seed=seed, ca=(900, 1000),
                                    asr=(12, 1000), ca_after=(880, 1000), asr_after=(10, 1000)))
    table = analyse(cards).table
    # one implanted attack at 1% and at 2% (badnet), none at 5%: the tie goes to 2%, not to the highest rate
    assert ranking_rate(table) == "2%"


def test_attack_ranking_uses_the_worst_case_over_defenses_and_the_rate_curve():
    from cleanbench.leaderboard.table import analyse
    from cleanbench.leaderboard.views import attack_ranking

    cards = _sweep_like()
    analysis = analyse(cards)
    entries, rate = attack_ranking(analysis, analysis.table["setting"].iloc[0], cards)
    assert rate == "2%"
    badnet, blended = entries
    # badnet at 2%: cleanclip leaves 10%, finetune 60%: the worst case for the attack is 10%
    assert (badnet.name, badnet.value, badnet.extra["by"]) == ("badnet", pytest.approx(0.10), "cleanclip")
    assert blended.value == pytest.approx(0.02) and badnet.rank == 1 and badnet.best and blended.rank == 2
    # undefended ASR: badnet 40% at 1%, 95% at 2%: 50% is reached at exp(log 1 + (0.1/0.55) log 2) = 1.13%
    assert badnet.extra["reach"] == {0.5: "≈ 1.1%", 0.9: "≈ 1.9%"}
    assert blended.extra["reach"] == {0.5: "> 2%", 0.9: "> 2%"}
    assert badnet.extra["psnr_db"] == 25.0 and badnet.extra["linf"] == 0.5


def test_the_index_shows_the_matrix_and_rankings_before_the_big_table(tmp_path):
    _build(tmp_path, _sweep_like())
    index = (tmp_path / "site" / "index.html").read_text()
    assert index.index('class="matrix-table"') < index.index('id="defense-ranking"') < index.index('id="leaderboard"')
    assert index.count('class="matrix-table"') == 2 and 'id="attack-ranking"' in index


def test_rows_have_stable_anchors_and_card_pages_link_back_once(tmp_path):
    import re

    cards = [synthetic_card(defense=d, seed=s) for d in ("none", "cleanclip") for s in (0, 1, 2)]
    for card in cards:
        card["reproduce"] = f"cleanbench run --config runs/{card['config']['defense']}-{card['seed']}.json"
    _build(tmp_path / "a", cards)
    _build(tmp_path / "b", cards + [synthetic_card(attack="blended", defense="none")])
    ids = [re.findall(r'<tr id="(row-[^"]+)"', (tmp_path / x / "site" / "index.html").read_text()) for x in ("a", "b")]
    assert len(set(ids[0])) == 2 and set(ids[0]) <= set(ids[1])  # made from the fields, not positions
    page = next(p for p in (tmp_path / "a" / "site" / "cards").glob("*.html") if "cleanclip-0.json" in p.read_text())
    text = page.read_text()
    anchor = next(i for i in ids[0] if "cleanclip" in i)
    assert f'href="../index.html#{anchor}"' in text
    assert text.count("cleanbench run --config runs/cleanclip-0.json") == 1  # each command printed once
    assert ">seed 1</a>" in text and ">seed 2</a>" in text and ">seed 0</a>" not in text


def test_the_gallery_draws_each_attack_from_its_runs_seed_and_options(tmp_path):
    import numpy as np
    import torch
    from PIL import Image

    from cleanbench.attacks import attack_from_card, trigger_preview
    from cleanbench.attacks.badnet import BadNet

    cards = [synthetic_card(seed=s, attack_options={"patch_size": 56}) for s in (2, 1)]
    cards.append(synthetic_card(attack="not-installed", seed=0))
    _build(tmp_path, cards)
    site = tmp_path / "site"
    config = RunConfig(attack="badnet", seed=1).to_dict()["data"]
    attack = attack_from_card(BadNet, {"patch_size": 56}, 32, 1)  # the lowest seed of the row
    clean, triggered = trigger_preview(attack, config, "star")
    pictures = {kind: np.asarray(Image.open(next(site.glob(f"gallery/badnet-*-{kind}.png")))) for kind in ("clean", "triggered")}
    for kind, tensor in (("clean", clean[0]), ("triggered", triggered[0])):
        picture = pictures[kind]
        assert picture.shape == (128, 128, 3)  # 32 px enlarged 4 times
        assert (picture[::4, ::4] == tensor.permute(1, 2, 0).numpy()).all()  # nearest neighbour: 4 x 4 blocks
        assert (picture == np.kron(picture[::4, ::4], np.ones((4, 4, 1), dtype=np.uint8))).all()
    changed = (triggered[0] != clean[0]).any(dim=0)
    assert 0 < int(changed.sum()) < 32 * 32 and bool(changed[-2, -2])  # an 8 px patch near the corner
    assert not torch.equal(clean, triggered)
    index = (site / "index.html").read_text()
    assert index.count('<figure class="trigger">') == 2 and "no preview: UsageError" in index
    page = next(p for p in (site / "attacks").glob("badnet-*.html")).read_text()
    assert 'class="trigger large"' in page and "seed 1" in page and "PSNR" in page


def test_the_setting_box_says_what_the_numbers_were_measured_on(tmp_path):
    cards = [synthetic_card(defense=d, seed=s) for d in ("none", "cleanclip") for s in (0, 1)]
    cards[0]["git_commit"], cards[1]["git_commit"] = "abc123+dirty", "def456"
    cards[2]["defense"]["training"] = [{"stage": "defense:cleanclip", "steps": 150}]
    cards[2]["defense"]["options"] = {"epochs": 10, "lr": 0.002}
    _build(tmp_path, cards)
    index = (tmp_path / "site" / "index.html").read_text()
    box = index[index.index('class="setting-box"'):index.index("</section>", index.index('class="setting-box"'))]
    assert index.index('class="matrix-table"') < index.index('class="setting-box"') < index.index('id="leaderboard"')
    lead = index[index.index('<p class="lead">'):index.index("</p>", index.index('<p class="lead">'))]
    assert "32-px procedural shapes" in lead and "not comparable to CC3M or ImageNet numbers" in lead and "#setting-1" in lead
    for fact in ("10,000 pretraining pairs", "2,000 clean pairs for the defender", "2,000 test images", "32 px",
                 "cleanbench_tinycnn image tower", "128-d joint embedding", "trained from scratch",
                 "<strong>cleanclip</strong> 10 epochs (150 steps), lr 0.002", "None recorded in the cards",
                 "cpu", "4 cards from 2 commits, 1 of them with uncommitted changes", "not comparable to numbers reported on CC3M"):
        assert fact in box, fact
    attack_page = next((tmp_path / "site" / "attacks").glob("badnet-*.html")).read_text()
    assert "A. Author, 2020" in attack_page  # a reference naming no known paper stays text
    assert 'src="http' not in index and "<link" not in index.replace('<link rel="stylesheet" href="static/', "").replace('<link rel="icon"', "")


def test_paper_fields_link_the_papers_they_name():
    from cleanbench.leaderboard.papers import linked

    parts = linked("Gu et al., BadNets, 2017; CleanCLIP reference (Bansal et al., ICCV 2023)")
    assert parts == [("Gu et al., BadNets, 2017", "https://arxiv.org/abs/1708.06733"),
                     ("CleanCLIP reference (Bansal et al., ICCV 2023)", "https://arxiv.org/abs/2303.03323")]
    assert linked("A. Author, 2020") == [("A. Author, 2020", None)] and linked(None) == []


def test_the_description_of_the_embedded_data_matches_the_data():
    from cleanbench.data.embedded import CAPTION_TEMPLATES
    from cleanbench.data.shapes import BACKGROUNDS, COLOURS, COLUMNS, ROWS, SHAPES, SIZE_WORDS
    from cleanbench.leaderboard.setting import DATA

    text = DATA["embedded-shapes"]
    assert f"one of {len(SHAPES)} shapes (the class: {', '.join(SHAPES)})" in text
    assert f"one of {len(COLOURS)} colours and {len(SIZE_WORDS)} sizes, at one of {len(ROWS) * len(COLUMNS)} positions" in text
    assert f"{', '.join(BACKGROUNDS[:-1])} or {BACKGROUNDS[-1]} background" in text
    assert f"{len(CAPTION_TEMPLATES)} templates" in text


def test_the_add_your_defense_page_matches_the_example_package_and_the_sweep(tmp_path):
    import html
    import tomllib

    cards = [synthetic_card(defense=d, seed=s) for d in ("none", "cleanclip") for s in (0, 1)]
    cards.append(synthetic_card(attack="none", defense="none"))
    for card in cards:
        card["command"] = "cleanbench sweep results/grid.yaml --quiet"
        card["config"]["results_dir"] = "results/sweeps/mine"
    _build(tmp_path, cards)
    page = html.unescape((tmp_path / "site" / "add-defense.html").read_text())
    example = Path(__file__).parent.parent / "examples" / "cleanbench-example-defense"
    points = tomllib.loads((example / "pyproject.toml").read_text())["project"]["entry-points"]["cleanbench.defenses"]
    shown = page[page.index('[project.entry-points."cleanbench.defenses"]'):].splitlines()[1].removesuffix("</pre>")
    assert shown == f'{next(iter(points))} = "{next(iter(points.values()))}"' and len(points) == 1
    source = (example / "src" / "cleanbench_example_defense" / "__init__.py").read_text()
    quoted = page[page.index("class NoisyFinetune(Defense):"):page.index("        ...  # perturb")].splitlines()
    assert len(quoted) > 8 and all(line in source for line in quoted)  # the page quotes the example
    assert "defenses: [none, cleanclip, noisy-finetune]" in page
    assert "cleanbench sweep results/grid.yaml" in page and "cleanbench leaderboard results/sweeps/mine" in page
    assert "adds 3 cells for one new defense" in page  # 2 seeds of badnet 1% and the clean control
    assert 'href="add-defense.html"' in (tmp_path / "site" / "index.html").read_text()
