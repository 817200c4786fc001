"""The pydantic base every API model shares: camelCase on the wire, strict about unknown keys."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel


class ApiModel(BaseModel):
    """Base of every API object: camelCase aliases, unknown fields rejected, immutable."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
        use_enum_values=True,
    )

    def to_wire(self) -> dict[str, object]:
        """Serialise as the Kubernetes API sees it: camelCase, without unset optionals."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)
