"""anzoo: the Attentive Normalization and AOGNet detection model zoo."""
__version__ = "0.1.0"
