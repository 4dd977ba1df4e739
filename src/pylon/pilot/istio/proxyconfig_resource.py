"""networking.istio.io/v1beta1 ProxyConfig, the resource (istio/api `networking/v1beta1/proxy_config.proto`).

Not to be confused with `proxyconfig.py`'s mesh ProxyConfig (`mesh/v1alpha1/proxy.proto`, MeshConfig
`defaultConfig` and the `proxy.istio.io/config` annotation): this resource carries only `selector`,
`concurrency`, `environmentVariables` and `image`, and istiod turns it into a mesh ProxyConfig (concurrency,
`proxyMetadata`, image) when it injects a sidecar; pilot generates nothing from it. Checks are istiod's
ValidateProxyConfig (concurrency >= 0, no empty or wildcard selector labels); environment variable names are
checked as Kubernetes checks a container's `env` (istiod leaves that to the pod's admission), so a bad name is
an error here rather than a pod that never starts.
"""

from __future__ import annotations

import re

from pylon.config.errors import FieldError
from pylon.pilot.istio.common import Int32, IstioStruct

#: Kubernetes' rule for a container env var name (apimachinery IsEnvVarName).
_ENV_NAME = re.compile(r"[-._a-zA-Z][-._a-zA-Z0-9]*")


class WorkloadSelector(IstioStruct, kw_only=True):
    """istio.type.v1beta1.WorkloadSelector. Present but without labels, it selects nothing (istiod warns)."""

    match_labels: dict[str, str] = {}

    def __post_init__(self) -> None:
        for key, value in self.match_labels.items():
            if key == "":
                raise FieldError("matchLabels", f"empty key is not supported in selector: {f'{key}={value}'!r}")
            if "*" in key or "*" in value:
                raise FieldError(f"matchLabels.{key}", f"wildcard is not supported in selector: {f'{key}={value}'!r}")


class ProxyImage(IstioStruct, kw_only=True):
    """`image.imageType` (default, debug, distroless): which container image the injector picks."""

    image_type: str = ""


class ProxyConfigSpec(IstioStruct, kw_only=True):
    selector: WorkloadSelector | None = None
    concurrency: Int32 | None = None
    environment_variables: dict[str, str] = {}
    image: ProxyImage | None = None

    def __post_init__(self) -> None:
        if self.concurrency is not None and self.concurrency < 0:
            raise FieldError("concurrency", "concurrency must be greater than or equal to 0")
        check_environment(self.environment_variables, "environmentVariables")


def check_environment(variables: dict[str, str], field: str) -> None:
    """FieldError at `field.NAME` for a variable a process environment cannot hold, or Kubernetes refuses."""
    for name, value in variables.items():
        if not _ENV_NAME.fullmatch(name):
            raise FieldError(f"{field}.{name}", "a valid environment variable name must consist of letters, digits, "
                             "'_', '-' or '.', and must not start with a digit")  # fmt: skip
        if "\0" in value:
            raise FieldError(f"{field}.{name}", "must not contain a NUL character")
