"""cleanbench: a reproducible benchmark of backdoor attacks and defenses on CLIP-style models."""

__version__ = "0.1.0"
