"""Reading configuration: YAML files (``yaml.safe_load``: nothing is evaluated) and pydantic validation errors
rendered as ``field.path: message`` lines that name the file they came from."""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from rankcraft.errors import ConfigError
from rankcraft.files import read_text

M = TypeVar("M", bound=BaseModel)


def read_yaml_file(path: str | Path, what: str) -> object:
    """Parse a YAML file with ``yaml.safe_load`` (nothing is evaluated). A missing, unreadable or invalid file is a
    :class:`ConfigError` naming the file and ``what`` it should be (``"schema file"``, ``"config file"``)."""
    path = Path(path)
    text = read_text(path, what)
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None


def read_config_yaml(path: str | Path) -> dict:
    """A YAML config file as a mapping (``{}`` when empty); unreadable or invalid files are a ConfigError."""
    path = Path(path)
    obj = read_yaml_file(path, "config file")
    if obj is None:
        return {}
    if not isinstance(obj, dict):
        raise ConfigError(f"{path}: a config file is a YAML mapping (sections data, train, ...), "
                          f"got {type(obj).__name__}")
    return obj


def parse_model(cls: type[M], obj: object, origin: str, what: str = "config") -> M:
    """``cls.model_validate(obj)``; a validation error becomes a :class:`ConfigError` naming ``origin`` and every
    offending field."""
    try:
        return cls.model_validate(obj)
    except ValidationError as exc:
        raise ConfigError(f"{origin}: invalid {what}:\n{format_validation_error(exc, obj)}") from None


def format_validation_error(exc: ValidationError, data: object = None) -> str:
    """Render a pydantic error as ``field.path: message`` lines, naming features by name where possible."""
    lines = []
    for err in exc.errors():
        parts: list[str] = []
        node = data
        for key in err["loc"]:
            if isinstance(key, int) and isinstance(node, list) and key < len(node):
                item = node[key]
                label = item.get("name") if isinstance(item, dict) else None
                parts.append(f"[{key}]" + (f"({label})" if label else ""))
                node = item
            else:
                parts.append(f".{key}" if parts else str(key))
                node = node.get(key) if isinstance(node, dict) else None
        loc = "".join(parts) or "<root>"
        lines.append(f"  {loc}: {err['msg']}")
    return "\n".join(lines)
