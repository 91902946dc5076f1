"""Typed settings loaded from YAML files and environment variables.

Every long-running component declares a `Settings` subclass with its own env prefix
(e.g. `ROBOT_SQL_LEARNER_`). Precedence, highest first: explicit overrides (command-line
flags), environment variables, the YAML file, the defaults in the class. NaN and inf are
refused in every float setting (a checkpoint every inf seconds is a typo, not a plan).
"""
from __future__ import annotations

import contextvars
import os
from pathlib import Path
from typing import Any, TypeVar

import click
import yaml
from pydantic import ValidationError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, SettingsError

_yaml_values: contextvars.ContextVar[dict[str, Any]] = contextvars.ContextVar("_yaml_values", default={})


class ConfigError(click.ClickException):
    """A configuration that cannot be used; the CLI prints it and exits with status 2."""

    exit_code = 2


class _YamlSource(PydanticBaseSettingsSource):
    def get_field_value(self, field, field_name):  # pragma: no cover - __call__ does the work
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(_yaml_values.get())


class Settings(BaseSettings):
    """Base for component settings: unknown keys are errors, not silently ignored."""

    model_config = SettingsConfigDict(env_prefix="ROBOT_SQL_", env_nested_delimiter="__", extra="forbid",
                                      allow_inf_nan=False)

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings, file_secret_settings):
        return (init_settings, env_settings, _YamlSource(settings_cls))


S = TypeVar("S", bound=Settings)


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"config file {path} is not valid YAML: {error}") from error
    if not isinstance(values, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level, not {type(values).__name__}")
    return values


def load_settings(cls: type[S], path: str | Path | None = None, **overrides: Any) -> S:
    """Build `cls` from defaults < YAML file < environment < overrides (None overrides are ignored)."""
    token = _yaml_values.set(read_yaml(path) if path else {})
    try:
        return cls(**{key: value for key, value in overrides.items() if value is not None})
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in item['loc']) or '<root>'}: {item['msg']}"
            + (f" ({item['input']})" if item["type"].startswith("path_") else "")  # which file it was
            for item in error.errors()
        )
        source = f" (from {path})" if path else ""
        raise ConfigError(f"invalid {cls.__name__}{source}: {problems}") from error
    except SettingsError as error:  # an environment value that does not parse, e.g. a dict setting not in JSON
        raise ConfigError(f"invalid {cls.__name__}: {error} ({error.__cause__}); dict and list settings "
                          "are JSON in environment variables") from error
    finally:
        _yaml_values.reset(token)


def refuse_unknown_environment(cls: type[Settings], other_prefixes: tuple[str, ...] = ()) -> None:
    """ConfigError for an environment variable with `cls`'s prefix that names no setting: a misspelt
    variable would otherwise be ignored without a word. `other_prefixes`: those of other components
    that begin with this one's (ROBOT_SQL_ACTOR_NODE_ within ROBOT_SQL_ACTOR_)."""
    prefix, delimiter = cls.model_config["env_prefix"].upper(), cls.model_config["env_nested_delimiter"]
    fields = {name.upper() for name in cls.model_fields}
    unknown = sorted(name for name in os.environ if name.upper().startswith(prefix)
                     and not name.upper().startswith(tuple(other.upper() for other in other_prefixes))
                     and name.upper()[len(prefix):].split(delimiter)[0] not in fields)
    if unknown:
        raise ConfigError(f"unknown environment variable{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}: "
                          f"the {cls.__name__} variables are {prefix}{{{', '.join(sorted(fields))}}}")


def dump_settings(settings: Settings, path: str | Path) -> None:
    """Write the resolved settings as YAML (the run directory keeps what was actually used)."""
    Path(path).write_text(yaml.safe_dump(settings.model_dump(mode="json"), sort_keys=False))
