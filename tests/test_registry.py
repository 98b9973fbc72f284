"""Registry: built-ins, plugin files, did-you-mean, broken plugins reported and skipped."""

import pytest

from cleanbench.errors import RunError, UsageError
from cleanbench.registry import ATTACKS, DEFENSES, Registry, load_plugin_file


def test_builtins_resolve_lazily():
    assert ATTACKS.get("badnet").name == "badnet"
    assert DEFENSES.get("cleanclip").name == "cleanclip"
    assert "none" in ATTACKS.names() and "none" in DEFENSES.names()


def test_unknown_name_suggests_close_one():
    with pytest.raises(UsageError, match="did you mean 'cleanclip'"):
        DEFENSES.get("cleanclp")


def test_broken_entry_is_reported_not_raised_when_listing():
    registry = Registry("defense", "cleanbench.no-such-group", {"good": "cleanbench.defenses.none:NoDefense",
                                                                 "bad": "cleanbench.no_such_module:Thing"})
    entries = {e.name: e for e in registry.entries()}
    assert entries["good"].error is None
    assert "ModuleNotFoundError" in entries["bad"].error
    with pytest.raises(RunError, match="failed to load"):
        registry.get("bad")


def test_plugin_file_registers_a_defense(tmp_path):
    plugin = tmp_path / "my_defense.py"
    plugin.write_text(
        "from cleanbench.registry import register_defense\n"
        "from cleanbench.defenses.none import NoDefense\n"
        "@register_defense\n"
        "class Mine(NoDefense):\n"
        "    name = 'mine-from-file'\n"
        "    description = 'test plugin'\n"
    )
    load_plugin_file(plugin)
    assert DEFENSES.get("mine-from-file").description == "test plugin"


def test_plugin_file_errors_are_clear(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        load_plugin_file(tmp_path / "missing.py")
    broken = tmp_path / "broken.py"
    broken.write_text("raise RuntimeError('boom')\n")
    with pytest.raises(RunError, match="failed to import: RuntimeError: boom"):
        load_plugin_file(broken)
