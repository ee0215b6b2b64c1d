"""The gRPC edge: ``blip2.v1.Blip2Service`` served through Ray Serve's gRPC proxy."""

from serve_app.grpc.generated.blip2_pb2_grpc import add_Blip2ServiceServicer_to_server

SERVICER_FUNCTION = (
    f"{add_Blip2ServiceServicer_to_server.__module__}.{add_Blip2ServiceServicer_to_server.__name__}"
)
"""What ``grpc_options.grpc_servicer_functions`` names to serve the gRPC API."""
