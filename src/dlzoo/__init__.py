"""dlzoo: every model family of a deep-learning curriculum, trained, tracked and evaluated end to end."""

__version__ = "0.1.0"
