"""OpenAPI descriptions of request bodies that routes parse themselves (JSON or multipart)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from serve_app.contract.api import GenerationParams

REF_TEMPLATE = "#/components/schemas/{model}"


def request_body(json_model: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` for a route taking ``json_model`` as JSON or as a multipart upload."""
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {"$ref": REF_TEMPLATE.format(model=json_model.__name__)}
                },
                "multipart/form-data": {"schema": _upload_schema(json_model)},
            },
        }
    }


def json_body(json_model: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` for a route taking ``json_model`` as a JSON body."""
    reference = {"$ref": REF_TEMPLATE.format(model=json_model.__name__)}
    return {
        "requestBody": {"required": True, "content": {"application/json": {"schema": reference}}}
    }


def _upload_schema(json_model: type[BaseModel]) -> dict[str, Any]:
    """The form fields of ``json_model``, its image as a file part, settings as flat fields."""
    schema = json_model.model_json_schema(ref_template=REF_TEMPLATE)
    properties: dict[str, Any] = {
        "image": {"type": "string", "format": "binary", "description": "The image file."}
    }
    for name, prop in schema["properties"].items():
        if name in ("params", "image"):
            continue
        properties[name] = prop
    params = GenerationParams.model_json_schema()["properties"]
    properties.update(params)
    properties["params"] = {"type": "string", "description": "Generation settings as JSON."}
    required = ["image", *(name for name in schema.get("required", []) if name != "image")]
    return {"type": "object", "properties": properties, "required": required}


def install_openapi(app: FastAPI, models: list[type[BaseModel]]) -> None:
    """Add ``models`` (request bodies parsed by hand) to the document's component schemas."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        document = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        _, definitions = models_json_schema(
            [(model, "validation") for model in models], ref_template=REF_TEMPLATE
        )
        schemas = document.setdefault("components", {}).setdefault("schemas", {})
        for name, definition in definitions.get("$defs", {}).items():
            schemas.setdefault(name, definition)
        app.openapi_schema = document
        return document

    app.openapi = openapi  # type: ignore[method-assign]
