"""The Kubernetes manifests validate against the Kubernetes schemas (``kubernetes-validate``).

Strict validation rejects unknown fields, so a misspelt key fails here rather than being
ignored by the API server. KEDA's ``ScaledObject`` is a custom resource without a schema in
that package; its required fields (KEDA documentation, "ScaledObject specification") are
checked directly.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

K8S = Path(__file__).resolve().parents[1] / "deploy" / "k8s"
VERSIONS = ("1.29.0", "1.37.0")
"""The oldest Kubernetes release we support and the newest the package knows."""


def objects() -> list[tuple[str, dict[str, Any]]]:
    """(file name, object) for every object in deploy/k8s/*.yaml."""
    found = []
    for path in sorted(K8S.glob("*.yaml")):
        found += [(path.name, doc) for doc in yaml.safe_load_all(path.read_text()) if doc]
    return found


BUILTIN = [(name, doc) for name, doc in objects() if "keda.sh" not in doc["apiVersion"]]
SCALED = [doc for _, doc in objects() if doc["kind"] == "ScaledObject"]


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(
    ("name", "doc"), BUILTIN, ids=[f"{n}:{d['kind']}/{d['metadata']['name']}" for n, d in BUILTIN]
)
def test_builtin_objects_validate_strictly(name: str, doc: dict[str, Any], version: str) -> None:
    """Each built-in object is valid for the Kubernetes version, unknown fields refused."""
    kubernetes_validate.validate(doc, version, strict=True)


def test_a_misspelt_field_is_refused() -> None:
    """The check bites: a Deployment with ``replica`` instead of ``replicas`` fails."""
    deployment = copy.deepcopy(next(d for _, d in BUILTIN if d["kind"] == "Deployment"))
    deployment["spec"]["replica"] = 2
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, VERSIONS[-1], strict=True)


def test_scaled_objects_target_a_deployment_here() -> None:
    """Every KEDA ScaledObject names a Deployment of these manifests and has triggers."""
    deployments = {d["metadata"]["name"] for _, d in BUILTIN if d["kind"] == "Deployment"}
    assert SCALED
    for scaled in SCALED:
        spec = scaled["spec"]
        assert spec["scaleTargetRef"]["name"] in deployments
        assert spec["triggers"] and all("type" in t and "metadata" in t for t in spec["triggers"])
