"""The leaderboard: tables (and, later, a static site) built from run cards alone."""

from cleanbench.leaderboard.cards import cards_table, load_cards

__all__ = ["cards_table", "load_cards"]
