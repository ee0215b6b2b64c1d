"""Typed configuration: the ``args`` of ``serve_config.yaml`` are validated into ``AppConfig``."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from serve_app.contract.api import GenerationParams
from serve_app.contract.base import StrictModel
from serve_app.contract.errors import InvalidRequestError

TINY_RANDOM_OPT = "builtin:tiny-random-blip2-opt"
"""An untrained, few-hundred-kilobyte BLIP-2 (OPT family) built from a small config."""

TINY_RANDOM_T5 = "builtin:tiny-random-blip2-t5"
"""An untrained, few-hundred-kilobyte BLIP-2 (Flan-T5 family) built from a small config."""

TINY_RANDOM_ITM = "builtin:tiny-random-blip2-itm"
"""An untrained, few-hundred-kilobyte BLIP-2 retrieval model built from a small config."""

DEMO_SHAPES = "builtin:shapes-blip2"
"""A tiny BLIP-2 trained on the synthetic shapes task of :mod:`serve_app.demo.task`."""

DEMO_SHAPES_ITM = "builtin:shapes-blip2-itm"
"""A tiny BLIP-2 retrieval model trained on the same shapes task."""

MODEL_DEPLOYMENT = "Blip2Server"
RETRIEVAL_DEPLOYMENT = "Blip2RetrievalServer"
INGRESS_DEPLOYMENT = "Blip2Ingress"
"""The deployments' names (``deployments[].name`` in a Serve config file)."""

DEFAULT_VQA_TEMPLATE = "Question: {question} Answer:"

DEFAULT_MAX_BATCH_SIZE = 8
DEFAULT_MAX_ROWS = 32
DEFAULT_GRACEFUL_SHUTDOWN_S = 130.0
"""Room for a request at the default ``request_timeout_s`` (120 s) to finish, and its answer."""

Device = Literal["auto", "cpu", "cuda"]
DType = Literal["auto", "float16", "bfloat16", "float32"]
Quantization = Literal["none", "int8", "nf4"]
AttentionImplementation = Literal["sdpa", "eager"]


class CheckpointConfig(StrictModel):
    """Which checkpoint a model replica loads, and where it runs."""

    model_id: str = Field(
        description="Hugging Face model id, local directory, or a 'builtin:' name.", min_length=1
    )
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit).")
    served_name: str | None = Field(
        None, description="Name reported to clients; model_id if unset."
    )
    device: Device = "auto"
    dtype: DType = Field("auto", description="auto = float16 on CUDA, float32 on CPU.")
    cpu_threads: int | None = Field(
        None,
        ge=1,
        description="torch CPU threads in a model replica; its num_cpus (at least 1) if unset.",
    )
    gpu_memory_gib: float | None = Field(
        None,
        gt=0,
        description="GPU memory a replica may use; unset: the card's times the replica's GPU "
        "share (on CUDA). A model or max_batch_size that the memory plan cannot fit in it is "
        "refused.",
    )

    @property
    def name(self) -> str:
        """The model name clients see."""
        return self.served_name or self.model_id


class ModelConfig(CheckpointConfig):
    """Which BLIP-2 to load, where, and the generation limits callers must stay within."""

    model_id: str = Field(
        TINY_RANDOM_OPT,
        description="Hugging Face model id, local directory, or a 'builtin:' name.",
        min_length=1,
    )
    vqa_prompt_template: str = Field(
        DEFAULT_VQA_TEMPLATE, description="Prompt for VQA; must contain '{question}'."
    )
    default_max_new_tokens: int = Field(30, ge=1)
    max_new_tokens_limit: int = Field(128, ge=1)
    max_num_beams: int = Field(4, ge=1)
    quantization: Quantization = Field(
        "none",
        description="Load the language model's linear layers in 8 bits (int8) or 4-bit "
        "NormalFloat (nf4) with bitsandbytes (the 'quantization' extra); the image encoder, "
        "Q-Former and output layer stay in dtype.",
    )
    attn_implementation: AttentionImplementation = Field(
        "sdpa", description="torch's scaled_dot_product_attention (sdpa) or plain matmuls (eager)."
    )
    static_kv_cache: bool = Field(
        False,
        description="Preallocate the KV cache and, on CUDA, let transformers compile the "
        "decoding step with torch.compile (a compile per new batch shape).",
    )

    max_rows: int = Field(
        DEFAULT_MAX_ROWS,
        ge=1,
        le=1024,
        description="Rows the decoding loop holds at most: requests generating at once in a "
        "replica. Fixed when the replica starts (the memory plan sizes it); the live "
        "batching.max_rows moves within it.",
    )
    feature_cache_mib: float = Field(
        64.0,
        ge=0.0,
        description="Memory for image features kept by image (MiB, on the model's device); a "
        "hit skips the vision encoder and the Q-Former. 0 keeps none.",
    )

    @field_validator("vqa_prompt_template")
    @classmethod
    def _template_has_question(cls, value: str) -> str:
        if "{question}" not in value:
            raise ValueError("vqa_prompt_template must contain '{question}'")
        try:
            value.format(question="q")
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"vqa_prompt_template is not a valid format string: {exc}") from exc
        return value

    @model_validator(mode="after")
    def _default_within_limit(self) -> ModelConfig:
        if self.default_max_new_tokens > self.max_new_tokens_limit:
            raise ValueError("default_max_new_tokens must not exceed max_new_tokens_limit")
        return self

    def effective_params(self, params: GenerationParams) -> GenerationParams:
        """``params`` with the server's defaults applied, checked against its caps.

        Settings that cannot matter (sampling settings of greedy requests) are normalised, so
        requests that generate alike compare equal and can share a ``generate`` call.

        Raises:
            InvalidRequestError: ``max_new_tokens`` or ``num_beams`` over the caps.
        """
        max_new = params.max_new_tokens or self.default_max_new_tokens
        if max_new > self.max_new_tokens_limit:
            raise InvalidRequestError(
                f"max_new_tokens must be at most {self.max_new_tokens_limit}",
                "params.max_new_tokens",
            )
        if params.num_beams > self.max_num_beams:
            raise InvalidRequestError(
                f"num_beams must be at most {self.max_num_beams}", "params.num_beams"
            )
        update: dict[str, Any] = {"max_new_tokens": max_new}
        if not params.do_sample:
            update.update(temperature=1.0, top_p=1.0, seed=None)
        return params.model_copy(update=update)


class RetrievalModelConfig(CheckpointConfig):
    """Which BLIP-2 retrieval model (``Blip2ForImageTextRetrieval``) to load, and its limits."""

    model_id: str = Field(
        description="Hugging Face id (e.g. Salesforce/blip2-itm-vit-g), local directory, or a "
        "'builtin:' name.",
        min_length=1,
    )
    max_text_tokens: int = Field(
        64, ge=1, le=512, description="Longest text, in the model's tokens, callers may send."
    )
    max_inputs: int = Field(64, ge=1, description="Images plus texts in one embeddings request.")
    max_candidates: int = Field(64, ge=1, description="Candidates in one rank request.")


class BatchingConfig(StrictModel):
    """How the model deployment batches: its ``user_config``, changed live by ``serve deploy``.

    Set it under ``deployments[].user_config`` of the model deployment in a Serve config file
    (or pass it to ``build_application``); its defaults are the only defaults.
    """

    max_batch_size: int = Field(DEFAULT_MAX_BATCH_SIZE, ge=1, le=512)
    batch_wait_timeout_s: float = Field(0.01, ge=0.0, le=10.0)
    merge_waiting_batches: bool = Field(
        True,
        description="Run the batches that formed while the model was busy as one batch, up to "
        "max_batch_size (false: each runs as @serve.batch closed it). Retrieval only: the "
        "generation model's decoding loop admits requests at every step.",
    )
    max_rows: int | None = Field(
        None,
        ge=1,
        description="Generation only: rows the decoding loop uses, at most model.max_rows (its "
        "bound, fixed at start); unset: all of them.",
    )
    max_prefills_per_step: int | None = Field(
        None,
        ge=1,
        description="Generation only: requests the decoding loop admits in one step, so that "
        "prefills do not stall the running rows for long; unset: as many as rows are free.",
    )


def _validate_autoscaling(value: dict[str, Any]) -> dict[str, Any]:
    from ray.serve.config import AutoscalingConfig

    AutoscalingConfig(**value)
    return value


class ModelDeploymentConfig(StrictModel):
    """Resources, queueing and autoscaling of the GPU-pinned ``Blip2Server`` deployment."""

    num_gpus: float = Field(1.0, ge=0.0, description="GPUs per replica; fractions allowed.")
    num_cpus: float = Field(1.0, ge=0.0)
    resources: dict[str, float] = Field(default_factory=dict)
    max_ongoing_requests: int = Field(
        2 * DEFAULT_MAX_ROWS,
        ge=1,
        description="Calls a replica holds (a grouped call counts once): room for a call per "
        "row of the decoding loop and as many waiting. A max_batch_size above it is refused "
        "when batching is applied.",
    )
    max_queued_requests: int = Field(256, ge=-1, description="-1 means unbounded.")
    autoscaling_config: dict[str, Any] = Field(
        default_factory=lambda: {"min_replicas": 1, "max_replicas": 1}
    )
    health_check_period_s: float = Field(10.0, gt=0)
    batch_timeout_s: float = Field(
        120.0,
        gt=0,
        description="A batch generating longer than this marks the replica unhealthy "
        "(a hung accelerator): Serve replaces it and its callers get a typed error.",
    )
    health_check_timeout_s: float = Field(30.0, gt=0)
    graceful_shutdown_timeout_s: float = Field(
        DEFAULT_GRACEFUL_SHUTDOWN_S,
        gt=0,
        description="How long a replica being stopped (scale-down, redeploy) may finish the "
        "requests it holds after new ones stop reaching it; at least limits.request_timeout_s.",
    )
    image_affinity: bool = Field(
        True,
        description="Generation only: send requests about the same image to the same replica "
        "(its image feature cache), unless that replica is full.",
    )

    _check_autoscaling = field_validator("autoscaling_config")(_validate_autoscaling)


class IngressDeploymentConfig(StrictModel):
    """Resources, queueing and autoscaling of the CPU ingress deployment."""

    num_cpus: float = Field(1.0, ge=0.0)
    max_ongoing_requests: int = Field(
        1024,
        ge=1,
        description="Requests an ingress replica holds: the backlog load shedding admits "
        "(max_queue_wait_s x its share of the throughput), URL fetches, and room to refuse a "
        "flood at once (a full ingress makes Serve's proxy hold requests instead).",
    )
    max_queued_requests: int = Field(
        1024, ge=-1, description="Last-resort queue at the proxy; -1 means unbounded."
    )
    model_calls_per_replica: int = Field(
        1,
        ge=1,
        description="Calls to the model deployment one ingress replica keeps out per running "
        "model replica; further requests wait for a call to come back and then go together, "
        "one call per group of up to max_batch_size. A full group never waits, so a backlog "
        "reaches the model replicas (and their autoscaling) as full groups.",
    )
    autoscaling_config: dict[str, Any] = Field(
        default_factory=lambda: {"min_replicas": 1, "max_replicas": 1}
    )
    graceful_shutdown_timeout_s: float = Field(
        DEFAULT_GRACEFUL_SHUTDOWN_S,
        gt=0,
        description="How long a replica being stopped (scale-down, redeploy) may finish the "
        "requests it holds after new ones stop reaching it; at least limits.request_timeout_s.",
    )

    _check_autoscaling = field_validator("autoscaling_config")(_validate_autoscaling)


class LimitsConfig(StrictModel):
    """Caps on what a caller controls, enforced in the ingress."""

    max_body_bytes: int = Field(16 * 1024 * 1024, ge=1024)
    body_timeout_s: float = Field(
        30.0, gt=0, description="Deadline for receiving a request body (408 after it)."
    )
    max_image_bytes: int = Field(10 * 1024 * 1024, ge=1024)
    max_image_pixels: int = Field(40_000_000, ge=1)
    max_prompt_chars: int = Field(2000, ge=1)
    url_fetch_timeout_s: float = Field(
        10.0, gt=0, description="One deadline for a URL fetch: lookups, redirects, every byte."
    )
    max_concurrent_url_fetches: int = Field(
        16, ge=1, description="URL fetches a replica runs at once; more wait within their deadline."
    )
    max_concurrent_url_fetches_per_token: int = Field(
        4,
        ge=1,
        description="URL fetches one bearer token runs at once in a replica (with "
        "authentication on); its further fetches wait without holding a replica's slot.",
    )
    max_redirects: int = Field(3, ge=0)
    allow_image_urls: bool = Field(True, description="Accept images given by URL at all.")
    allow_private_urls: bool = Field(
        False, description="Allow image URLs that resolve to private or loopback addresses."
    )
    url_allowed_domains: list[str] = Field(
        default_factory=list,
        description="If not empty, image URLs must be on these domains or their subdomains.",
    )
    request_timeout_s: float = Field(120.0, gt=0)
    max_queue_wait_s: float | None = Field(
        10.0,
        gt=0,
        description="Shed load: a request whose expected wait for the model (the backlog "
        "ahead of it over the measured service rate) exceeds this is refused at once with a "
        "503 and a Retry-After; null admits every request the queues hold.",
    )

    @field_validator("url_allowed_domains")
    @classmethod
    def _normalise_domains(cls, domains: list[str]) -> list[str]:
        normalised = [domain.strip().strip(".").lower() for domain in domains]
        if any(not domain or "/" in domain or ":" in domain for domain in normalised):
            raise ValueError("url_allowed_domains holds bare domain names, like 'example.com'")
        return normalised


class AuthConfig(StrictModel):
    """Bearer tokens the HTTP API accepts; authentication is on when any source is set.

    Keep tokens out of committed files: name an environment variable or a file that holds them
    (on every ingress node). A source that is set but yields no token fails the ingress's start.
    """

    api_keys_env: str | None = Field(
        None, description="Environment variable holding comma-separated tokens."
    )
    api_keys_file: str | None = Field(None, description="File holding one token per line.")
    api_keys: list[SecretStr] = Field(
        default_factory=list, description="Tokens given inline (prefer the env or file source)."
    )
    allow_anonymous: bool = Field(
        False,
        description="Serve without tokens although the HTTP proxy listens on an address other "
        "hosts can reach (without it, such an ingress refuses to start).",
    )

    @property
    def enabled(self) -> bool:
        """Whether any token source is configured."""
        return bool(self.api_keys_env or self.api_keys_file or self.api_keys)


class AppConfig(StrictModel):
    """Everything ``build_app`` needs; the ``args`` of the application in ``serve_config.yaml``."""

    model: ModelConfig | None = Field(
        default_factory=ModelConfig,
        description="The generation model (VQA, captions, chat); null serves none.",
    )
    model_deployment: ModelDeploymentConfig = Field(default_factory=ModelDeploymentConfig)
    retrieval: RetrievalModelConfig | None = Field(
        None, description="The retrieval model (embeddings, rank); null (the default) serves none."
    )
    retrieval_deployment: ModelDeploymentConfig = Field(default_factory=ModelDeploymentConfig)
    ingress_deployment: IngressDeploymentConfig = Field(default_factory=IngressDeploymentConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    auth: AuthConfig = Field(default_factory=AuthConfig)
    playground: bool = Field(
        True, description="Serve the browser playground at GET / (false: the API only)."
    )

    @model_validator(mode="after")
    def _serves_a_model(self) -> AppConfig:
        if self.model is None and self.retrieval is None:
            raise ValueError("serve a generation model ('model'), a 'retrieval' model, or both")
        return self

    @model_validator(mode="after")
    def _drain_covers_a_request(self) -> AppConfig:
        for name in ("model_deployment", "retrieval_deployment", "ingress_deployment"):
            section: ModelDeploymentConfig | IngressDeploymentConfig = getattr(self, name)
            if section.graceful_shutdown_timeout_s < self.limits.request_timeout_s:
                raise ValueError(
                    f"{name}.graceful_shutdown_timeout_s must be at least "
                    "limits.request_timeout_s, so a stopping replica answers what it accepted"
                )
        return self
