"""The demo model: a tiny BLIP-2 trained on a synthetic shapes task, shipped in the package."""
