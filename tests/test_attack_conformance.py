"""`cleanbench check-plugin NAME --kind attack`: built-in attacks pass, broken surrogate attacks fail
at the check that names their fault."""

from __future__ import annotations

from pathlib import Path

import pytest

from cleanbench.cli import main


def _run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("name, options", [("badnet", []), ("badclip", ["epochs=1", "max_pairs=64"])])
def test_builtin_attacks_pass(capsys, name, options):
    args = [a for option in options for a in ("--attack-opt", option)]
    code, out, err = _run(capsys, "check-plugin", name, "--kind", "attack", *args)
    assert code == 0, err
    lines = out.strip().splitlines()
    checks = [line.split()[1].rstrip(":") for line in lines if line.startswith("  ok")]
    surrogate = ["fits"] if name == "badclip" else []
    assert checks == ["loads", *surrogate, "triggers", "deterministic", *(["restores"] if surrogate else []), "poisons"]
    assert lines[-1] == f"PASS {name}"


PLUGIN = """
import torch
from cleanbench.attacks.badclip import BadCLIP
from cleanbench.attacks.base import FittedTrigger
from cleanbench.registry import register_attack


@register_attack
class {cls}(BadCLIP):
    name = {name!r}
"""

BROKEN = {
    "unseeded-fit": ("deterministic", "the triggered images differ", """
    def fit(self, surrogate, pairs, target_index, target_name, generator):
        fitted = FittedTrigger({"patch": torch.rand(3, self.size, self.size)}, {"captions": ["a star."], "steps": 1, "final_losses": {}})
        self.restore(fitted)
        return fitted
"""),
    "never-fitted": ("fits", "`fit` must set `fitted`", """
    def fit(self, surrogate, pairs, target_index, target_name, generator):
        return FittedTrigger({"patch": self.patch.clone()}, {"captions": ["a star."], "steps": 1, "final_losses": {}})
"""),
    "no-losses": ("fits", "must hold `steps` (an int) and `final_losses`", """
    def fit(self, surrogate, pairs, target_index, target_name, generator):
        fitted = FittedTrigger({"patch": self.patch.clone()}, {"captions": ["a star."]})
        self.restore(fitted)
        return fitted
"""),
    "tensor-record": ("fits", "the fitted record is not JSON", """
    def fit(self, surrogate, pairs, target_index, target_name, generator):
        fitted = FittedTrigger({"patch": self.patch.clone()}, {"captions": ["a star."], "loss": torch.zeros(1)})
        self.restore(fitted)
        return fitted
"""),
}


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_broken_surrogate_attacks_fail_at_their_check(tmp_path: Path, capsys, name):
    check, reason, body = BROKEN[name]
    path = tmp_path / f"{name.replace('-', '_')}.py"
    cls = "".join(part.capitalize() for part in name.split("-"))
    path.write_text(PLUGIN.format(cls=cls, name=name) + body)
    code, out, err = _run(capsys, "check-plugin", name, "--kind", "attack", "--plugin", str(path))
    assert code == 1
    assert f"check-plugin {name!r} FAILED at {check}:" in err and reason in err
    assert "PASS" not in out
