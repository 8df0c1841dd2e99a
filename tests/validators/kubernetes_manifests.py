"""Validates a kustomization folder of Kubernetes manifests (deploy/kubernetes)
against the Kubernetes OpenAPI schema of each given version, offline: the
schemas ship in PyPI's `kubernetes-validate`, which checks each object in
strict mode (unknown fields are errors, as `kubectl apply` with server-side
field validation refuses them).

usage: kubernetes_manifests.py DIR VERSION...

What is checked:
- kustomization.yaml: only the fields used here, every file it names exists,
  and every manifest in DIR is named by it (or is an `*.example.yaml`, which
  is validated too but not applied: the Secret an operator fills in);
- every object of every manifest, and the ConfigMaps its configMapGenerator
  makes (name and keys as kustomize makes them, data from the files),
  against the schema of each VERSION;
- what the schema cannot see: that the DaemonSet's ConfigMaps, Secret and
  ServiceAccount are defined in the set, and that every object is in the
  kustomization's namespace.

Prints one line per object and version; exits 1 if anything failed.
"""

import os
import sys

import kubernetes_validate
import yaml
from kubernetes_validate.utils import SchemaNotFoundError, ValidationError

KUSTOMIZATION_FIELDS = {
    "apiVersion",
    "kind",
    "namespace",
    "labels",
    "resources",
    "configMapGenerator",
    "generatorOptions",
    # `kustomize edit set image`: names the image in the operator's
    # registry. Not applied here; it changes no schema.
    "images",
}
GENERATOR_FIELDS = {"name", "files", "options"}


def load_all(path):
    with open(path, encoding="utf-8") as f:
        return [doc for doc in yaml.safe_load_all(f) if doc is not None]


def where(error):
    path = ".".join(str(p) for p in error.absolute_path)
    return f"{path}: {error.message}" if path else error.message


def generated_configmaps(folder, kustomization, errors):
    """The ConfigMaps configMapGenerator makes: one key per file (its base
    name, or the name before `=`), the file's text as the value, with
    generatorOptions' labels."""
    maps = []
    for gen in kustomization.get("configMapGenerator", []):
        unknown = set(gen) - GENERATOR_FIELDS
        if unknown:
            errors.append(f"configMapGenerator {gen.get('name')}: unknown fields {sorted(unknown)}")
        data = {}
        for entry in gen.get("files", []):
            key, _, rel = entry.rpartition("=")
            key = key or os.path.basename(rel)
            path = os.path.join(folder, rel)
            if not os.path.isfile(path):
                errors.append(f"configMapGenerator {gen.get('name')}: no file {rel}")
                continue
            with open(path, encoding="utf-8") as f:
                data[key] = f.read()
        maps.append(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {
                    "name": gen.get("name"),
                    "namespace": kustomization.get("namespace"),
                    "labels": kustomization.get("generatorOptions", {}).get("labels", {}),
                },
                "data": data,
            }
        )
    return maps


def cross_references(objects, namespace, errors):
    defined = {(o.get("kind"), o.get("metadata", {}).get("name")) for o in objects}
    for o in objects:
        meta = o.get("metadata", {})
        if o.get("kind") != "Namespace" and meta.get("namespace") != namespace:
            errors.append(
                f"{o.get('kind')}/{meta.get('name')}: namespace {meta.get('namespace')!r}, "
                f"not the kustomization's {namespace!r}"
            )
        if o.get("kind") != "DaemonSet":
            continue
        spec = o.get("spec", {}).get("template", {}).get("spec", {})
        wanted = [("ServiceAccount", spec.get("serviceAccountName"))]
        for volume in spec.get("volumes", []):
            if "configMap" in volume:
                wanted.append(("ConfigMap", volume["configMap"].get("name")))
            if "secret" in volume:
                wanted.append(("Secret", volume["secret"].get("secretName")))
        mounted = {m["name"] for c in spec.get("containers", []) + spec.get("initContainers", []) for m in c.get("volumeMounts", [])}
        for volume in spec.get("volumes", []):
            if volume["name"] not in mounted:
                errors.append(f"DaemonSet/{meta.get('name')}: volume {volume['name']} is mounted nowhere")
        for kind, name in wanted:
            if name and (kind, name) not in defined:
                errors.append(f"DaemonSet/{meta.get('name')} uses {kind} {name}, defined nowhere in {sorted(defined)}")


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    folder, versions = sys.argv[1], sys.argv[2:]
    errors = []
    kustomization = load_all(os.path.join(folder, "kustomization.yaml"))[0]
    if kustomization.get("kind") != "Kustomization":
        errors.append("kustomization.yaml: kind is not Kustomization")
    unknown = set(kustomization) - KUSTOMIZATION_FIELDS
    if unknown:
        errors.append(f"kustomization.yaml: fields this check does not know {sorted(unknown)}")
    resources = kustomization.get("resources", [])
    manifests = sorted(
        f for f in os.listdir(folder) if f.endswith((".yaml", ".yml")) and f != "kustomization.yaml"
    )
    for f in manifests:
        if f not in resources and not f.endswith(".example.yaml"):
            errors.append(f"{f} is not in kustomization.yaml's resources")

    objects = []
    examples = []
    for f in resources + [m for m in manifests if m.endswith(".example.yaml")]:
        path = os.path.join(folder, f)
        if not os.path.isfile(path):
            errors.append(f"kustomization.yaml names {f}, which does not exist")
            continue
        try:
            docs = load_all(path)
        except yaml.YAMLError as e:
            errors.append(f"{f}: not YAML: {e}")
            continue
        (examples if f.endswith(".example.yaml") else objects).extend((f, d) for d in docs)
    objects.extend(("kustomization.yaml", m) for m in generated_configmaps(folder, kustomization, errors))

    for source, obj in objects + examples:
        name = f"{source}: {obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
        for version in versions:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
                print(f"ok   {name} (Kubernetes {version})")
            except ValidationError as e:
                errors.append(f"{name} (Kubernetes {version}): {where(e)}")
            except SchemaNotFoundError as e:
                errors.append(f"{name} (Kubernetes {version}): no schema: {e}")
    # The Secret an operator fills in counts as defined: the DaemonSet
    # waits for it (the pod does not start without its credentials).
    cross_references([o for _, o in objects + examples], kustomization.get("namespace"), errors)

    for e in errors:
        print(f"FAIL {e}")
    print(f"{len(objects + examples)} objects, {len(versions)} Kubernetes versions, {len(errors)} errors")
    sys.exit(1 if errors else 0)


if __name__ == "__main__":
    main()
