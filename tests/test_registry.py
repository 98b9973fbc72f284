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
                                                                 "bad": "cleanbench.no_such_module:Thing"},
                        "cleanbench.defenses.base:Defense")
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


def test_register_refuses_a_class_of_the_wrong_base_and_a_builtin_name():
    from cleanbench.defenses.none import NoDefense

    class NotADefense:
        name = "not-a-defense"

    with pytest.raises(UsageError, match=r"NotADefense is not a subclass of cleanbench.defenses.base.Defense"):
        DEFENSES.register(NotADefense)
    with pytest.raises(UsageError, match=r"is not a subclass of cleanbench.attacks.base.Attack"):
        ATTACKS.register(NoDefense)

    class Impostor(NoDefense):
        name = "cleanclip"

    with pytest.raises(UsageError) as error:
        DEFENSES.register(Impostor)
    message = str(error.value)
    assert "test_registry" in message and "Impostor" in message  # the plugin's source
    assert "built-in cleanbench.defenses.cleanclip.CleanCLIP" in message and "\n" not in message  # the built-in's
    assert DEFENSES.get("cleanclip").__name__ == "CleanCLIP"


def test_a_defense_without_options_needs_no_options_class():
    from cleanbench.defenses import Defense, NoOptions

    class Bare(Defense):
        name, description, source = "bare", "keeps the model", "test"

        def apply(self, bundle, context):
            return bundle.model

    assert Bare.Options is NoOptions and Bare(Bare.Options()).describe()["options"] == {}


def test_loading_a_plugin_file_twice_registers_it_once(tmp_path):
    plugin = tmp_path / "twice.py"
    plugin.write_text("from cleanbench.registry import register_defense\n"
                      "from cleanbench.defenses.none import NoDefense\n"
                      "LOADS = []\n"
                      "@register_defense\n"
                      "class Twice(NoDefense):\n"
                      "    name = 'twice-from-file'\n"
                      "LOADS.append(1)\n")
    load_plugin_file(plugin)
    first = DEFENSES.get("twice-from-file")
    load_plugin_file(plugin)
    assert DEFENSES.get("twice-from-file") is first
