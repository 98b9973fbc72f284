"""Defenses: the `Defense` base class, what a defense sees, and the built-in defenses (see
`cleanbench list defenses`).

The public API of a plugin defense: `Defense`, `DefenseContext`, `TrainingOptions` (the finetuning
hyper-parameters; subclass it to add your own) and `clip_objective` (the CLIP loss as a trainer
objective).
"""

from cleanbench.defenses.base import Defense, DefenseContext
from cleanbench.defenses.contrastive import TrainingOptions
from cleanbench.losses import clip_objective
from cleanbench.options import NoOptions

__all__ = ["Defense", "DefenseContext", "NoOptions", "TrainingOptions", "clip_objective"]
