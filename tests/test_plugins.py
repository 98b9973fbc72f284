"""Third-party defenses: the entry-point example package, plugin files, broken plugins, check-plugin."""

from __future__ import annotations

import json
import os
import textwrap
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest
import yaml

from cleanbench.cli import main
from cleanbench.conformance import ConformanceFailure, check_defense
from cleanbench.registry import DEFENSES


def _run(capsys, *args):
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def _config_file(tmp_path: Path, config) -> str:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config.to_dict()))
    return str(path)


def _cards(results_dir: str) -> list[dict]:
    return [json.loads(p.read_text()) for p in Path(results_dir).rglob("*.json")]


def _example_installed() -> bool:
    try:
        version("cleanbench-example-defense")
        return True
    except PackageNotFoundError:
        if os.environ.get("CI"):
            pytest.fail("CI must install examples/cleanbench-example-defense (see scripts/test.sh)")
        return False


needs_example = pytest.mark.skipif(not _example_installed(), reason="pip install -e examples/cleanbench-example-defense")


@needs_example
def test_example_package_registers_through_its_entry_point(capsys):
    code, out, _ = _run(capsys, "list", "defenses")
    assert code == 0
    assert "noisy-finetune" in out and "(entry point of cleanbench-example-defense)" in out


@needs_example
def test_example_package_runs_end_to_end_through_the_cli(tmp_path, tiny, capsys):
    config = tiny(defense="noisy-finetune", defense_options={"epochs": 1, "batch_size": 64, "noise": 0.2})
    code, out, err = _run(capsys, "run", "--config", _config_file(tmp_path, config), "--quiet")
    assert code == 0, err
    assert "after noisy-finetune" in out
    (card,) = _cards(config.results_dir)
    assert card["status"] == "ok" and card["defense"]["source"].startswith("cleanbench-example-defense")
    assert card["defense"]["notes"] == {"noise": 0.2}
    assert card["defense"]["training"][0]["stage"] == "defense:noisy-finetune"


@needs_example
def test_example_package_passes_the_conformance_check(capsys):
    code, out, err = _run(capsys, "check-plugin", "noisy-finetune", "--defense-opt", "epochs=1")
    assert code == 0, err
    assert out.strip().splitlines()[-1] == "PASS noisy-finetune"


# --- conformance check ----------------------------------------------------------------------------


@pytest.mark.parametrize("name, options", [("none", []), ("finetune", ["epochs=1"]), ("cleanclip", ["epochs=2"]),
                                           ("unimodal", ["epochs=1"]), ("supervised-finetune", ["epochs=1"]),
                                           ("roclip", []), ("safeclip", [])])
def test_builtin_defenses_pass(capsys, name, options):
    args = [a for option in options for a in ("--defense-opt", option)]
    code, out, err = _run(capsys, "check-plugin", name, *args)
    assert code == 0, err
    lines = out.strip().splitlines()
    assert lines[-1] == f"PASS {name}"
    checks = [line.split()[1].rstrip(":") for line in lines if line.startswith("  ok")]
    pretrains = ["pretrains"] if DEFENSES.get(name).stage == "pretraining" else []
    assert checks == ["loads", "reads", "applies", *pretrains, "architecture", "evaluates", "deterministic", "files"]
    assert any(line.startswith("  cost") and "s per apply" in line for line in lines)


PLUGIN_HEADER = """
import torch
from cleanbench.attacks.base import NoOptions
from cleanbench.defenses import Defense
from cleanbench.registry import register_defense
"""

BAD_PLUGINS = {
    "peeks": ("reads", "read poison_indices without declaring it", """
        def apply(self, bundle, context):
            context.poison_indices()
            return bundle.model
    """),
    "peeks-around-the-accessor": ("reads", "read poisoned_test without declaring it", """
        def apply(self, bundle, context):
            context.restricted["poisoned_test"]()
            return bundle.model
    """),
    "raises": ("applies", "apply raised RuntimeError: boom", """
        def apply(self, bundle, context):
            raise RuntimeError("boom")
    """),
    "returns-nothing": ("applies", "must return an nn.Module, not NoneType", """
        def apply(self, bundle, context):
            return None
    """),
    "grows": ("architecture", "unexpected: extra", """
        def apply(self, bundle, context):
            bundle.model.register_buffer("extra", torch.zeros(1))
            return bundle.model
    """),
    "nan": ("evaluates", "not finite", """
        def apply(self, bundle, context):
            with torch.no_grad():
                for p in bundle.model.visual.parameters():
                    p.fill_(float("nan"))
            return bundle.model
    """),
    "unseeded": ("deterministic", "two runs with seed 0 differ", """
        def apply(self, bundle, context):
            with torch.no_grad():
                for p in bundle.model.parameters():
                    p.add_(torch.randn_like(p) * 1e-3)
            return bundle.model
    """),
    "undeclared-need": ("loads", "`needs` must be a frozenset drawn from", """
        needs = frozenset({"labels_of_the_test_set"})

        def apply(self, bundle, context):
            return bundle.model
    """),
}


def _plugin(tmp_path: Path, name: str, body: str, needs: str = "frozenset({'clean_pairs'})") -> Path:
    cls = "".join(part.capitalize() for part in name.split("-"))
    path = tmp_path / f"{cls.lower()}.py"
    path.write_text(PLUGIN_HEADER + textwrap.dedent(f"""
        @register_defense
        class {cls}(Defense):
            name = {name!r}
            description = "a test plugin"
            source = "tests"
            needs = {needs}
            Options = NoOptions
    """) + textwrap.indent(textwrap.dedent(body), "    "))
    return path


@pytest.mark.parametrize("name", sorted(BAD_PLUGINS))
def test_check_reports_the_first_failure(tmp_path, capsys, name):
    check, reason, body = BAD_PLUGINS[name]
    code, out, err = _run(capsys, "check-plugin", name, "--plugin", str(_plugin(tmp_path, name, body)))
    assert code == 1
    assert err.strip() == err.strip().splitlines()[0]  # one line
    assert f"check-plugin {name!r} FAILED at {check}:" in err and reason in err
    assert "PASS" not in out and "Traceback" not in err


def test_declared_oracle_reads_pass(tmp_path):
    body = """
        def apply(self, bundle, context):
            assert len(context.poison_indices()) > 0
            test = context.poisoned_test()
            assert (test.labels != test.target_index).all()
            return bundle.model
    """
    load = _plugin(tmp_path, "oracle", body, needs="frozenset({'clean_pairs', 'poison_indices', 'poisoned_test'})")
    from cleanbench.registry import load_plugin_file

    load_plugin_file(load)
    report = check_defense("oracle")
    assert dict(report.passed)["reads"] == "only what it declares (poison_indices, poisoned_test)"
    assert report.cost["training_steps"] == 0


def test_check_of_an_unknown_name_is_a_usage_error(capsys):
    code, _, err = _run(capsys, "check-plugin", "finetun")
    assert code == 2 and "did you mean 'finetune'" in err


def test_conformance_failure_carries_the_check():
    failure = ConformanceFailure("x", "deterministic", "differs")
    assert (failure.check, failure.reason, failure.exit_code) == ("deterministic", "differs", 1)


# --- broken plugins -------------------------------------------------------------------------------


@pytest.fixture
def broken_entry_point(tmp_path, monkeypatch):
    """An installed distribution whose `cleanbench.defenses` entry point fails to import."""
    site = tmp_path / "site"
    dist = site / "broken_defense-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-defense\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[cleanbench.defenses]\nbroken = broken_defense_module:Broken\n")
    (site / "broken_defense_module.py").write_text("raise ImportError('needs a library that is not installed')\n")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setattr(DEFENSES, "_entries", dict(DEFENSES._entries))
    monkeypatch.setattr(DEFENSES, "_entry_points_loaded", False)


def test_broken_entry_point_is_listed_with_its_error(broken_entry_point, capsys):
    code, out, _ = _run(capsys, "list", "defenses")
    assert code == 0
    assert "broken" in out and "BROKEN (entry point of broken-defense): ImportError: needs a library" in out
    assert "cleanclip" in out and "supervised-finetune" in out


def test_running_a_broken_entry_point_is_one_line_exit_1(broken_entry_point, tiny, tmp_path, capsys):
    config = tiny(defense="broken", defense_options={})
    code, _, err = _run(capsys, "run", "--config", _config_file(tmp_path, config))
    assert code == 1
    assert err.strip() == ("error: defense 'broken' (entry point of broken-defense) failed to load: "
                           "ImportError: needs a library that is not installed")


def test_broken_plugin_file_is_reported_and_the_rest_listed(tmp_path, capsys):
    broken = tmp_path / "broken.py"
    broken.write_text("raise RuntimeError('boom')\n")
    code, out, _ = _run(capsys, "list", "defenses", "--plugin", str(broken))
    assert code == 0
    assert "BROKEN: plugin file" in out and "failed to import: RuntimeError: boom" in out
    assert "cleanclip" in out


def test_plugin_that_raises_in_apply_fails_the_run_cleanly(tmp_path, tiny, capsys):
    plugin = _plugin(tmp_path, "raises", BAD_PLUGINS["raises"][2])
    config = tiny(defense="raises", defense_options={})
    code, out, err = _run(capsys, "run", "--config", _config_file(tmp_path, config), "--plugin", str(plugin), "--quiet")
    assert code == 1 and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("error: defense 'raises' raised RuntimeError: boom")  # after the log
    (card,) = _cards(config.results_dir)
    assert card["status"] == "failed" and card["error"] == "defense 'raises' raised RuntimeError: boom"
    assert "poisoned" in card["metrics"]  # what ran before the defense is kept


def test_undeclared_read_fails_the_run_with_the_fix(tmp_path, tiny, capsys):
    plugin = _plugin(tmp_path, "peeks", BAD_PLUGINS["peeks"][2])
    config = tiny(defense="peeks", defense_options={})
    code, _, err = _run(capsys, "run", "--config", _config_file(tmp_path, config), "--plugin", str(plugin), "--quiet")
    assert code == 1 and "add 'poison_indices' to the class's `needs`" in err
    (card,) = _cards(config.results_dir)
    assert card["status"] == "failed"


def test_the_documented_example_passes_the_check(tmp_path, capsys):
    text = (Path(__file__).parent.parent / "docs" / "defenses.md").read_text()
    example = text.split("### A complete small example")[1].split("```python\n")[1].split("```")[0]
    path = tmp_path / "my_defense.py"
    path.write_text(example)
    code, out, err = _run(capsys, "check-plugin", "shrink-finetune", "--plugin", str(path), "--defense-opt", "epochs=1")
    assert code == 0, err
    assert out.strip().splitlines()[-1] == "PASS shrink-finetune"
