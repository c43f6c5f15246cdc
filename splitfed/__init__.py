"""splitfed: federated split fine-tuning and split inference of LLMs."""

__version__ = "0.1.0"
