"""t2t: Text2Token training of decoder LLMs into text embedders (arXiv 2510.10224)."""

__version__ = "0.1.0"
