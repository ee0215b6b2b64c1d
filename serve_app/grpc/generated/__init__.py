"""Modules generated from ``proto/blip2/v1/blip2.proto`` by ``proto/generate.py``; do not edit."""
