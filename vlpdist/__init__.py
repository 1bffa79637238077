"""vlpdist: distributed pretraining of visio-linguistic transformers."""

__version__ = "0.1.0"
