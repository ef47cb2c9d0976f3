"""rewardtune: tune vision models with task rewards."""
__version__ = "0.1.0"
