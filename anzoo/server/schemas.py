"""Request options and response bodies of the service (they make up its OpenAPI schema)."""
from __future__ import annotations

from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "ErrorResponse",
    "Health",
    "Instance",
    "ModelInfo",
    "ModelsResponse",
    "Readiness",
    "ReplicaInfo",
    "RleMask",
    "SegmentOptions",
    "SegmentResponse",
    "Timing",
    "ZooInfo",
]

MAX_INSTANCES_LIMIT = 1000


class SegmentOptions(BaseModel):
    """Options of ``POST /segment`` and ``POST /segment/render`` (query parameters, or fields
    next to ``image`` in a multipart body)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: Optional[str] = Field(
        None, description="Id of a loaded model (see GET /models); default: the first one.")
    score_thr: float = Field(
        0.3, ge=0.0, le=1.0, allow_inf_nan=False,
        description="Keep instances scoring at least this (0..1).")
    max_instances: int = Field(
        100, ge=1, le=MAX_INSTANCES_LIMIT,
        description="Return at most this many instances, highest score first.")
    mask_format: Literal["rle", "polygon"] = Field(
        "rle", description="'rle': COCO compressed RLE; 'polygon': outer contours as COCO polygons.")


class RleMask(BaseModel):
    """COCO compressed run-length encoding (column-major), as pycocotools writes it."""

    size: list[int] = Field(..., description="[height, width]", min_length=2, max_length=2)
    counts: str


class Instance(BaseModel):
    category_id: int = Field(..., description="COCO category id (1..90 for COCO models).")
    category_name: str
    score: float
    bbox: list[float] = Field(
        ..., min_length=4, max_length=4,
        description="[x, y, w, h] in image pixels; w and h count pixels (x2 - x1 + 1), as "
                    "mmdetection v1 wrote COCO results.")
    mask: Union[RleMask, list[list[float]]] = Field(
        ..., description="RLE dict, or a list of polygons [x1, y1, x2, y2, ...] "
                         "(mask_format=polygon; may be empty for tiny masks).")


class Timing(BaseModel):
    decode_ms: float = Field(..., description="Image decoding and preprocessing.")
    queue_ms: float = Field(..., description="Waiting for the model worker (and batch mates).")
    inference_ms: float = Field(..., description="Forward pass of the batch.")
    encode_ms: float = Field(..., description="Pasting and encoding the masks, and the response.")
    total_ms: float = Field(..., description="From request received to response ready.")
    batch_size: int = Field(..., description="Images in the forward pass this one was part of.")


class SegmentResponse(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    model: str = Field(..., description="Id of the model that ran.")
    width: int
    height: int
    mask_format: Literal["rle", "polygon"]
    instances: list[Instance]
    truncated: bool = Field(
        False, description="True when lower-scoring instances were left out because the masks of the "
                           "instances asked for would cover more pixels than the server pastes per request "
                           "(its --max-mask-mpx); ask for fewer (max_instances, score_thr).")
    timing: Timing


class ErrorResponse(BaseModel):
    error: str = Field(..., description="Machine-readable kind, e.g. 'invalid_image'.")
    message: str = Field(..., description="What went wrong, for a person.")
    status: int


class ZooInfo(BaseModel):
    detector: str
    backbone: str
    backbone_norm: str
    head_norm: str
    params_m: Optional[float] = None
    box_ap: Optional[float] = None
    mask_ap: Optional[float] = None


class ReplicaInfo(BaseModel):
    """One replica of the served models (``anzoo serve --devices/--replicas``)."""

    index: int
    device: str
    state: Literal["loading", "ready", "failed", "stopped"] = Field(
        ..., description="'ready': in rotation; 'failed': out of rotation after an error (see detail).")
    detail: Optional[str] = Field(None, description="The error that took the replica out of rotation.")
    images: int = Field(..., description="Images it has run.")


class ModelInfo(BaseModel):
    id: str
    default: bool
    device: str
    precision: Literal["fp32", "bf16", "fp16"] = Field(..., description="Numeric precision of the model's forward.")
    fp16: bool = Field(..., description="Deprecated: precision is not fp32.")
    scale: list[int] = Field(..., description="Test scale [long side, short side].")
    num_classes: int
    zoo: Optional[ZooInfo] = Field(None, description="The zoo entry the model comes from.")
    replicas: list[ReplicaInfo] = Field(default_factory=list, description="The replicas that run it.")


class ModelsResponse(BaseModel):
    models: list[ModelInfo]


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    ready: bool
    models: list[str]
    detail: Optional[str] = None
    replicas: list[ReplicaInfo] = Field(default_factory=list,
                                        description="Each replica's state; ready when one is in rotation.")


def options_openapi_parameters() -> list[dict[str, Any]]:
    """The options as OpenAPI query parameters (the body is read by hand, see app.py)."""
    schema = SegmentOptions.model_json_schema()
    params = []
    for name, prop in schema["properties"].items():
        prop = dict(prop)
        description = prop.pop("description", "")
        prop.pop("title", None)
        if "anyOf" in prop:  # Optional[str]: a query parameter is either absent or a string
            prop = {"type": "string"}
        params.append({"name": name, "in": "query", "required": False,
                       "description": description, "schema": prop})
    return params
