"""The Serve deployments: the CPU ingress and the GPU-pinned model server."""
