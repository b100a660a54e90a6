"""Every manifest parses and validates strictly against the Kubernetes object models (kubernetes client)."""
from __future__ import annotations

import pathlib
import re
import shutil
import subprocess

import pytest
import yaml
from kubernetes import client as k8s

import recpipe

ROOT = pathlib.Path(__file__).resolve().parents[2] / "manifests"
KINDS = {"Namespace": "V1Namespace", "ServiceAccount": "V1ServiceAccount", "Role": "V1Role",
         "RoleBinding": "V1RoleBinding", "Service": "V1Service", "StatefulSet": "V1StatefulSet",
         "Deployment": "V1Deployment", "Job": "V1Job", "CronJob": "V1CronJob", "ConfigMap": "V1ConfigMap"}
PRIMITIVE = {"str", "int", "bool", "float", "object", "datetime", "date"}


def check_keys(data, type_name: str, where: str, errors: list[str]) -> None:
    """Recursively rejects keys the Kubernetes model ``type_name`` does not define."""
    if type_name in PRIMITIVE or data is None:
        return
    m = re.fullmatch(r"list\[(.+)\]", type_name)
    if m:
        if not isinstance(data, list):
            errors.append(f"{where}: expected a list")
            return
        for i, x in enumerate(data):
            check_keys(x, m.group(1), f"{where}[{i}]", errors)
        return
    m = re.fullmatch(r"dict\(str, (.+)\)", type_name)
    if m:
        for k, x in (data or {}).items():
            check_keys(x, m.group(1), f"{where}.{k}", errors)
        return
    cls = getattr(k8s, type_name)
    if not isinstance(data, dict):
        errors.append(f"{where}: expected an object of {type_name}")
        return
    json_to_attr = {v: k for k, v in cls.attribute_map.items()}
    for key, val in data.items():
        if key not in json_to_attr:
            errors.append(f"{where}: unknown field {key!r} for {type_name}")
            continue
        check_keys(val, cls.openapi_types[json_to_attr[key]], f"{where}.{key}", errors)


def deserialize(data: dict, type_name: str):
    """Builds the model object (constructor validation: required fields, enums)."""
    return k8s.ApiClient()._ApiClient__deserialize(data, type_name)  # noqa: SLF001 - the client's own decoder


def _docs():
    for path in sorted(ROOT.rglob("*.yaml")):
        for i, doc in enumerate(yaml.safe_load_all(path.read_text())):
            if doc:
                yield path, i, doc


def _objects():
    return [(p, i, d) for p, i, d in _docs() if d.get("kind") != "Kustomization"]


def _is_patch(path: pathlib.Path) -> bool:
    return "overlays" in path.parts


@pytest.mark.parametrize("path,idx,doc", _objects(), ids=lambda x: x.name if isinstance(x, pathlib.Path) else None)
def test_object_validates(path, idx, doc):
    where = f"{path.relative_to(ROOT)}#{idx}"
    errors: list[str] = []
    kind = doc["kind"]
    if kind == "PyTorchJob":
        assert doc["apiVersion"] == "kubeflow.org/v1"
        specs = doc["spec"]["pytorchReplicaSpecs"]
        assert set(specs) <= {"Master", "Worker"} and "Master" in specs, where
        for role, spec in specs.items():
            assert set(spec) <= {"replicas", "restartPolicy", "template"}, f"{where}: {role} keys {set(spec)}"
            check_keys(spec["template"], "V1PodTemplateSpec", f"{where}.{role}.template", errors)
            deserialize(spec["template"], "V1PodTemplateSpec")
            cmd = " ".join(spec["template"]["spec"]["containers"][0]["args"])
            assert "torchrun" in cmd and "recpipe.tasks.train" in cmd
    else:
        assert kind in KINDS, f"{where}: no model known for kind {kind}"
        check_keys({k: v for k, v in doc.items()}, KINDS[kind], where, errors)
        if not _is_patch(path):
            obj = deserialize(doc, KINDS[kind])
            assert obj.metadata.name
    assert not errors, "\n".join(errors)


def test_validator_rejects_unknown_and_misplaced_fields():
    errors: list[str] = []
    bad = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"},
           "spec": {"replica": 2, "selector": {}, "template": {"spec": {"containers": [{"name": "c", "imag": "i"}]}}}}
    check_keys(bad, "V1Deployment", "bad", errors)
    assert any("'replica'" in e for e in errors) and any("'imag'" in e for e in errors)
    with pytest.raises(ValueError):
        deserialize({"metadata": {"name": "x"}, "spec": {"template": {}}}, "V1Deployment")  # selector required


def test_kustomizations_reference_existing_files_and_targets():
    base_objects = {(d["kind"], d["metadata"]["name"]) for p, _, d in _objects() if not _is_patch(p)}
    for path in ROOT.rglob("kustomization.yaml"):
        k = yaml.safe_load(path.read_text())
        for res in k.get("resources", []):
            assert (path.parent / res).exists(), f"{path}: resource {res} missing"
        for patch in k.get("patches", []):
            if "path" in patch:
                doc = yaml.safe_load((path.parent / patch["path"]).read_text())
                assert (doc["kind"], doc["metadata"]["name"]) in base_objects, f"{path}: patch targets nothing"
            if "target" in patch:
                t = patch["target"]
                assert (t["kind"], t["name"]) in base_objects, f"{path}: target {t} not in base"


def test_images_match_package_version_and_secrets_are_references():
    want = f"ghcr.io/recpipe/recpipe:{recpipe.__version__}"
    text = "\n".join(p.read_text() for p in ROOT.rglob("*.yaml"))
    images = set(re.findall(r"image:\s*(ghcr.io/recpipe/\S+)", text))
    assert images == {want}
    assert not [d for _, _, d in _docs() if d.get("kind") == "Secret"], "secrets must be referenced, never committed"


@pytest.mark.skipif(not (shutil.which("kustomize") or shutil.which("kubectl")), reason="kustomize not installed")
@pytest.mark.parametrize("overlay", ["dev", "prod"])
def test_kustomize_build(overlay):
    cmd = ["kustomize", "build"] if shutil.which("kustomize") else ["kubectl", "kustomize"]
    out = subprocess.run([*cmd, str(ROOT / "overlays" / overlay)], check=True, capture_output=True, text=True).stdout
    kinds = {d["kind"] for d in yaml.safe_load_all(out) if d}
    assert {"Deployment", "StatefulSet", "PyTorchJob", "Job"} <= kinds
