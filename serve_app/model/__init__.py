"""BLIP-2 inference without Ray: loading checkpoints, building prompts, batched generation."""
