"""ncsn: score-based generative modeling (score matching, Langevin dynamics, NCSN)."""

__version__ = "0.1.0"
