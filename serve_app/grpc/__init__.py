"""The gRPC edge: ``blip2.v1.Blip2Service`` served through Ray Serve's gRPC proxy."""
