"""recsys: sequential recommendation."""
__version__ = "0.1.0"
