"""discorep: object discovery + object representation for self-supervised pretraining."""

__version__ = "0.1.0"
