"""Errors a user can cause with a config: each names the template file and line it comes from."""

from __future__ import annotations

from forgather.config.origin import Origin
from forgather.errors import ForgatherError


class ConfigError(ForgatherError):
    """A problem in a configuration, reported as one line naming where it comes from."""

    kind = "config error"

    def __init__(self, message: str, origin: Origin | None = None, key: str | None = None):
        super().__init__(message)
        self.message = message
        self.origin = origin
        self.key = key

    def __str__(self) -> str:
        where = f"{self.origin}: " if self.origin else ""
        key = f"[{self.key}] " if self.key else ""
        return f"{where}{key}{self.kind}: {self.message}"


class TemplateSyntaxError(ConfigError):
    kind = "template syntax error"


class TemplateNotFoundError(ConfigError):
    kind = "template not found"


class TemplateAccessError(ConfigError):
    """A template name that is absolute or climbs out of the search path (`..`)."""

    kind = "template access refused"


class UndefinedVariableError(ConfigError):
    kind = "undefined variable"


class TemplateRuntimeError(ConfigError):
    kind = "template error"


class YamlSyntaxError(ConfigError):
    kind = "YAML syntax error"


class UnknownTagError(ConfigError):
    kind = "unknown tag"


class GraphError(ConfigError):
    kind = "config graph error"


class DuplicateNameError(ConfigError):
    kind = "duplicate name"


class ImportSpecError(ConfigError):
    kind = "bad import spec"


class UnboundVarError(ConfigError):
    kind = "unbound !var"


class OverrideError(ConfigError):
    kind = "bad override"


class ArgumentError(ConfigError):
    kind = "bad arguments"


class BuildError(ConfigError):
    kind = "build failed"


class TargetNotFoundError(ConfigError):
    kind = "unknown target"


class CodegenError(ConfigError):
    kind = "code generation"


class ProjectError(ConfigError):
    kind = "project error"
