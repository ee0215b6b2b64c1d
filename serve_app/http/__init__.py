"""The HTTP edge: routes, body parsing, error bodies, OpenAPI, Server-Sent Events, metrics."""
