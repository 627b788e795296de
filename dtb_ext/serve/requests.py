"""The body of POST /answer: JSON `{"question", "context"}` plus at most one budget, checked field by field.

Errors carry the HTTP status and the field at fault: 400 for a body that is not JSON, 413 for one over the size
limit, 422 for a JSON value that breaks the contract. The question and context strings themselves are checked
by `QuestionAnswerer.prepare` (type, emptiness, token limits), so library and server agree.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, AsyncIterator

from dtb_ext.answering.budget import BUDGET_FIELDS, Budget, InputError

TEXT_FIELDS = ("question", "context")
ALLOWED_FIELDS = TEXT_FIELDS + BUDGET_FIELDS


class RequestError(Exception):
    """A request the server refuses: `status` (4xx), the `field` at fault (None when no field is) and why."""

    def __init__(self, status: int, field: str | None, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.field = field
        self.message = message


@dataclass(frozen=True)
class AnswerRequest:
    question: Any
    context: Any
    budget: Budget


async def read_body(chunks: AsyncIterator[bytes], declared_length: str | None, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it passes `limit` bytes (never read whole past that)."""
    too_large = RequestError(413, "body", f"the request body is over the limit of {limit} bytes")
    if declared_length is not None and declared_length.isdigit() and int(declared_length) > limit:
        raise too_large
    parts, size = [], 0
    async for chunk in chunks:
        size += len(chunk)
        if size > limit:
            raise too_large
        parts.append(chunk)
    return b"".join(parts)


def parse_answer_request(body: bytes, max_context_chars: int) -> AnswerRequest:
    """Check the body's JSON shape, keys, context length and budget; RequestError names the field at fault."""
    if not body.strip():
        raise RequestError(400, "body", 'empty body: expected a JSON object {"question": ..., "context": ...}')
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as error:  # UnicodeDecodeError is a ValueError
        raise RequestError(400, "body", f"malformed JSON: {error}") from None
    if not isinstance(data, dict):
        raise RequestError(
            422, "body", f"expected a JSON object with question and context, got a {type(data).__name__}"
        )
    unknown = sorted(key for key in data if key not in ALLOWED_FIELDS)
    if unknown:
        raise RequestError(422, unknown[0], f"unknown key; expected {', '.join(ALLOWED_FIELDS)} (at most one budget)")
    for field in TEXT_FIELDS:
        if field not in data:
            raise RequestError(422, field, "required")
    context = data["context"]
    if isinstance(context, str) and len(context) > max_context_chars:
        raise RequestError(422, "context", f"{len(context)} characters, over the limit of {max_context_chars}")
    try:
        budget = Budget.from_mapping(data)
    except InputError as error:
        raise RequestError(422, error.field, error.message) from None
    return AnswerRequest(data["question"], context, budget)
