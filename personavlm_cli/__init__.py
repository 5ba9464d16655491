"""personavlm: a local assistant that remembers its user (PersonaVLM, arXiv 2604.13074)."""

__version__ = "0.1.0"
