"""Typed handlers shared by every edge: authentication, limits, images, calls to the model."""
