"""Reading a results folder's run cards: the input of every table, plot and leaderboard page.

Run cards are untrusted input (anyone can drop a JSON file into a results folder): each file is
read and checked by `cleanbench.runcard.read_card`; invalid files are skipped and reported with
the reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from cleanbench.fileio import RefusedFile, list_files
from cleanbench.runcard import CardInvalid, read_card, validate_card

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["CardInvalid", "CardScan", "cards_table", "load_cards", "scan_cards", "validate_card"]


@dataclass
class CardScan:
    """The valid cards under a results folder, and the files that were skipped with the reason."""

    cards: list[dict] = field(default_factory=list)
    rejected: list[tuple[str, str]] = field(default_factory=list)


def scan_cards(results_dir: str | Path) -> CardScan:
    """Read and validate every `*.json` under `results_dir/runs` (recursively, in name order).

    Only regular files of at most MAX_CARD_BYTES inside `results_dir` are read (`read_regular_file`);
    FIFOs, devices, links out of the folder or into a loop, and links to folders are skipped and listed.
    """
    scan = CardScan()
    for path, refused in list_files(Path(results_dir) / "runs", ".json"):
        if refused is not None:
            scan.rejected.append((str(path), f"skipped: {refused}"))
            continue
        try:
            card = read_card(path, root=results_dir).to_dict()
        except RefusedFile as error:
            scan.rejected.append((str(path), f"skipped: {error.reason}"))
            continue
        except OSError as error:
            scan.rejected.append((str(path), f"unreadable: {type(error).__name__}: {error}"))
            continue
        except CardInvalid as error:
            reason = str(error)
            scan.rejected.append((str(path), reason if reason.startswith("unreadable") else f"invalid: {reason}"))
            continue
        card["_path"] = str(path)
        scan.cards.append(card)
    return scan


def load_cards(results_dir: str | Path) -> list[dict]:
    """Every valid run card under `results_dir/runs`, skipping files that are not valid cards."""
    return scan_cards(results_dir).cards


def cards_table(cards: list[dict]) -> pd.DataFrame:
    """One row per card: attack, defense, the options, setting and commit that tell rows apart,
    budget, seed, CA/ASR before and after, time."""
    import pandas as pd

    from cleanbench.leaderboard.table import setting_of, variant_labels

    labels = {role: variant_labels(cards, role) for role in ("attack", "defense")}
    rows = []
    for card in cards:
        config = card["config"]
        options = [labels[role][id(card)].removeprefix(config[role]).strip(" ()") for role in ("attack", "defense")]
        row = {
            "attack": card["attack"]["name"],
            "defense": card["defense"]["name"],
            "options (attack / defense)": " / ".join(o or "-" for o in options) if any(options) else "",
            "poison": card.get("poison", {}).get("count"),
            "seed": config["seed"],
            "setting": setting_of(config)[1],
            "commit": str(card.get("git_commit") or "?")[:8] + ("+dirty" if str(card.get("git_commit")).endswith("+dirty") else ""),
            "status": card["status"],
        }
        metrics = card.get("metrics", {})
        for stage, prefix in (("poisoned", "before"), ("defended", "after")):
            for name in ("ca_top1", "asr"):
                value = metrics.get(stage, {}).get(name, {}).get("value")
                row[f"{name.replace('_top1', '')}_{prefix} %"] = None if value is None else round(100 * value, 1)
        row["seconds"] = round(card.get("costs", {}).get("total_seconds", float("nan")), 1)
        rows.append(row)
    return pd.DataFrame(rows).sort_values(["attack", "defense", "poison", "seed", "options (attack / defense)", "commit"], na_position="last")
