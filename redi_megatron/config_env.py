"""`${VAR}` and `${VAR:-default}` in config values, filled from the environment."""

import os
import re
from typing import Any

from redi_megatron.config import ConfigError

_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_environment(value: Any, key: str = "") -> Any:
    """Returns ``value`` (a config tree or leaf) with environment references replaced.

    ``${VAR}`` needs VAR set and non-empty, or raises ConfigError naming the key and VAR;
    ``${VAR:-default}`` falls back to ``default`` as the shell does.
    """
    if isinstance(value, dict):
        return {name: expand_environment(item, f"{key}.{name}" if key else name)
                for name, item in value.items()}
    if isinstance(value, list):
        return [expand_environment(item, f"{key}[{i}]") for i, item in enumerate(value)]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match) -> str:
        name, default = match.group(1), match.group(2)
        found = os.environ.get(name, "")
        if found:
            return found
        if default is not None:
            return default
        raise ConfigError(f"{key}: environment variable {name} is not set (the value is "
                          f"{value!r}); export {name}=... or override {key}=...")

    return _REFERENCE.sub(substitute, value)
