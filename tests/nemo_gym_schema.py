"""NeMo Gym's agent-server types, rewritten as pydantic models to check `/run` and `/aggregate_metrics` against.

Written from NVIDIA-NeMo/Gym at commit a2ea5c5c43daffb6d00ae6a33d2061c1e3a8f213 (branch
`cwing/multi-turn-agent`):
- nemo_gym/openai_utils.py: TokenIDLogProbMixin, NeMoGymEasyInputMessage, NeMoGymMessage,
  NeMoGymResponseOutputText, NeMoGymResponseOutputMessage, NeMoGymFunctionCallOutput,
  NeMoGymResponseFunctionToolCall, the ...ForTraining items, NeMoGymResponseCreateParamsNonStreaming,
  NeMoGymResponseUsage, NeMoGymResponse (a subclass of the OpenAI SDK's `Response`);
- nemo_gym/base_resources_server.py: BaseRunRequest, BaseVerifyRequest, BaseVerifyResponse;
- responses_api_agents/multi_turn_agent/app.py: MultiTurnAgentRunRequest / MultiTurnAgentVerifyResponse
  (extra fields allowed: the row's own fields travel through);
- nemo_gym/config_types.py: AggregateMetricsRequest, AggregateMetrics.
The OpenAI SDK types they build on are imported from `openai`, as NeMo Gym does. Reasoning items are
left out (sparring's policy output has none).
"""

from __future__ import annotations

from typing import Any, Literal

from openai.types.responses import Response, ResponseUsage
from openai.types.responses.response_usage import InputTokensDetails, OutputTokensDetails
from pydantic import BaseModel, ConfigDict, Field


class TokenIDLogProbMixin(BaseModel):
    prompt_token_ids: list[int]
    generation_token_ids: list[int]
    generation_log_probs: list[float]


class OutputText(BaseModel):
    annotations: list[Any]
    text: str
    type: Literal["output_text"] = "output_text"
    logprobs: list[Any] | None = None


class OutputMessage(BaseModel):
    id: str
    content: list[OutputText]
    role: Literal["assistant"] = "assistant"
    status: Literal["in_progress", "completed", "incomplete"] = "completed"
    type: Literal["message"] = "message"


class EasyInputMessage(BaseModel):
    content: str | list[dict[str, Any]]
    role: Literal["user", "assistant", "system", "developer"]
    type: Literal["message"] = "message"


class FunctionCallOutput(BaseModel):
    call_id: str
    output: str
    type: Literal["function_call_output"] = "function_call_output"
    id: str | None = None
    status: Literal["in_progress", "completed", "incomplete"] | None = None


class FunctionToolCall(BaseModel):
    arguments: str
    call_id: str
    name: str
    type: Literal["function_call"] = "function_call"
    id: str | None = None
    status: Literal["in_progress", "completed", "incomplete"] | None = None


class OutputMessageForTraining(OutputMessage, TokenIDLogProbMixin):
    pass


class FunctionToolCallForTraining(FunctionToolCall, TokenIDLogProbMixin):
    pass


class EasyInputMessageForTraining(EasyInputMessage, TokenIDLogProbMixin):
    pass


OutputItem = (
    EasyInputMessage
    | OutputMessage
    | FunctionToolCall
    | FunctionCallOutput
    | EasyInputMessageForTraining
    | OutputMessageForTraining
    | FunctionToolCallForTraining
)
TRAINING_VARIANT = {
    "message": OutputMessageForTraining,
    "function_call": FunctionToolCallForTraining,
}


class ResponseCreateParamsNonStreaming(BaseModel):
    """NeMoGymResponseCreateParamsNonStreaming: extra fields forbidden, OpenAI's defaults."""

    model_config = ConfigDict(extra="forbid")
    background: bool | None = None
    include: list[str] | None = None
    input: str | list[OutputItem]
    instructions: str | None = None
    max_output_tokens: int | None = None
    max_tool_calls: int | None = None
    metadata: dict[str, str] | None = None
    model: str | None = None
    parallel_tool_calls: bool = True
    previous_response_id: str | None = None
    prompt: dict[str, Any] | None = None
    reasoning: dict[str, Any] | None = None
    service_tier: Literal["auto", "default", "flex", "scale", "priority"] | None = None
    store: bool | None = None
    temperature: float | None = None
    text: dict[str, Any] | None = None
    tool_choice: Any = "auto"
    tools: list[dict[str, Any]] = Field(default_factory=list)
    top_logprobs: int | None = None
    top_p: float | None = None
    truncation: Literal["auto", "disabled"] | None = None
    user: str | None = None
    stream: Literal[False] | None = None


class ResponseUsageDetails(ResponseUsage):
    input_tokens_details: InputTokensDetails
    output_tokens_details: OutputTokensDetails


class NeMoGymResponse(Response):
    output: list[OutputItem]  # type: ignore[assignment]
    usage: ResponseUsageDetails | None = None


class BaseRunRequest(BaseModel):
    responses_create_params: ResponseCreateParamsNonStreaming


class MultiTurnAgentRunRequest(BaseRunRequest):
    model_config = ConfigDict(extra="allow")


class BaseVerifyRequest(BaseRunRequest):
    response: NeMoGymResponse


class MultiTurnAgentVerifyResponse(BaseVerifyRequest):
    model_config = ConfigDict(extra="allow")
    reward: float


class AggregateMetricsRequest(BaseModel):
    verify_responses: list[dict[str, Any]]


class AggregateMetrics(BaseModel):
    group_level_metrics: list[dict[str, Any]] = Field(default_factory=list)
    agent_metrics: dict[str, Any] = Field(default_factory=dict)
    key_metrics: dict[str, Any] = Field(default_factory=dict)
