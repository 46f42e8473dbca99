"""Every document of every manifest in deploy/k8s, validated against
Kubernetes' published API schema, without a cluster.

The schema is the one the Kubernetes project publishes as OpenAPI and from
which its Python client's models are generated (Debian's python3-kubernetes):
each model class lists its fields (`attribute_map`: Python name -> JSON
name), their types (`openapi_types`: 'str', 'int', 'bool', 'object'
(int-or-string), 'list[T]', 'dict(str, T)' or another model) and, in its
constructor, which are required. The walk below:
  * maps apiVersion + kind to its API group's client class (group "apps",
    version "v1" -> AppsV1Api) and refuses a kind that group does not serve
    (no create_<kind> / create_namespaced_<kind> method), then to the model
    V1<Kind>;
  * refuses every key that is not a field of the model at that place
    (a typo such as readOnlyRootFilesytem would otherwise be dropped
    silently by a lenient client);
  * checks every scalar's type (an int is not a string, a bool is not an
    int), every list and map;
  * builds the model objects bottom-up, so their generated constructors
    refuse missing required fields.

The client package is Kubernetes 1.22's schema (python3-kubernetes 22.6.0);
the manifests target 1.29+. Fields added since then are listed in
NEWER_FIELDS, each with the version that added it and a check of its own;
nothing else is accepted.

Run: /usr/bin/python3 -m pytest tests/deploy
Needs python3-kubernetes and python3-yaml (deploy/install_deps.sh).
"""

import copy
import re
from pathlib import Path

import pytest
import yaml

try:
    import kubernetes.client as kubernetes_client
except ImportError:  # fail, never skip: a skipped schema check would pass unseen
    kubernetes_client = None


@pytest.fixture(autouse=True)
def need_the_schema():
    if kubernetes_client is None:
        pytest.fail("python3-kubernetes is not installed: deploy/install_deps.sh "
                    "(or apt-get install -y python3-kubernetes)")

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"


# Fields newer than the client's schema (Kubernetes 1.22), model -> JSON name
# -> (version, check(value, path) -> error or None).
def _native_sidecar_restart_policy(value, path):
    # KEP-753: only "Always", and only on an init container.
    if not re.search(r"\.initContainers\[\d+\]$", path):
        return f"{path}.restartPolicy: only init containers have a restartPolicy (native sidecars)"
    if value != "Always":
        return f"{path}.restartPolicy: must be \"Always\", got {value!r}"
    return None


NEWER_FIELDS = {
    "V1Container": {"restartPolicy": ("1.28 (native sidecars, on by default from 1.29)",
                                      _native_sidecar_restart_policy)},
}


class SchemaError(Exception):
    pass


def api_class(api_version):
    """'apps/v1' -> AppsV1Api, 'v1' -> CoreV1Api,
    'rbac.authorization.k8s.io/v1' -> RbacAuthorizationV1Api."""
    group, _, version = api_version.rpartition("/")
    if not group:
        group = "core"
    group = group.removesuffix(".k8s.io")
    name = "".join(part.capitalize() for part in re.split(r"[.\-]", group)) + version.capitalize() + "Api"
    cls = getattr(kubernetes_client, name, None)
    if cls is None:
        raise SchemaError(f"apiVersion {api_version!r}: no such API group/version in the schema")
    return cls


def snake(kind):
    return re.sub(r"(?<!^)(?=[A-Z])", "_", kind).lower()


def model_for(api_version, kind):
    api = api_class(api_version)
    if not (hasattr(api, f"create_{snake(kind)}") or hasattr(api, f"create_namespaced_{snake(kind)}")):
        raise SchemaError(f"{api_version} serves no kind {kind!r}")
    version = api_version.rpartition("/")[2]
    cls = getattr(kubernetes_client, version.capitalize() + kind, None)
    if cls is None:
        raise SchemaError(f"no model {version.capitalize() + kind} for {api_version} {kind}")
    return cls


LIST_RE = re.compile(r"^list\[(.*)\]$")
DICT_RE = re.compile(r"^dict\(str, (.*)\)$")


def convert(value, type_name, path):
    """Checks `value` (parsed YAML) against `type_name` and returns what the
    model constructors take. Raises SchemaError naming the path."""
    if value is None:
        raise SchemaError(f"{path}: null")
    m = LIST_RE.match(type_name)
    if m:
        if not isinstance(value, list):
            raise SchemaError(f"{path}: expected a list, got {type(value).__name__}")
        return [convert(v, m.group(1), f"{path}[{i}]") for i, v in enumerate(value)]
    m = DICT_RE.match(type_name)
    if m:
        if not isinstance(value, dict):
            raise SchemaError(f"{path}: expected a map, got {type(value).__name__}")
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise SchemaError(f"{path}: key {k!r} is not a string")
            out[k] = convert(v, m.group(1), f"{path}.{k}")
        return out
    if type_name == "str":
        if not isinstance(value, str):
            raise SchemaError(f"{path}: expected a string, got {type(value).__name__} {value!r}")
        return value
    if type_name == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise SchemaError(f"{path}: expected an integer, got {type(value).__name__} {value!r}")
        return value
    if type_name == "bool":
        if not isinstance(value, bool):
            raise SchemaError(f"{path}: expected true or false, got {type(value).__name__} {value!r}")
        return value
    if type_name == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SchemaError(f"{path}: expected a number, got {type(value).__name__} {value!r}")
        return value
    if type_name == "object":  # IntOrString and free-form fields
        if isinstance(value, bool):
            raise SchemaError(f"{path}: expected an integer or a string, got a bool")
        return value
    if type_name == "datetime":
        if not isinstance(value, str):
            raise SchemaError(f"{path}: expected a timestamp string")
        return value
    cls = getattr(kubernetes_client, type_name, None)
    if cls is None:
        raise SchemaError(f"{path}: unknown schema type {type_name!r}")
    return build(value, cls, path)


def build(value, cls, path):
    """The model `cls` built from the mapping `value`, every field checked."""
    if not isinstance(value, dict):
        raise SchemaError(f"{path}: expected an object ({cls.__name__}), got {type(value).__name__}")
    by_json = {json_name: attr for attr, json_name in cls.attribute_map.items()}
    newer = NEWER_FIELDS.get(cls.__name__, {})
    kwargs = {}
    for key, item in value.items():
        if key in newer:
            problem = newer[key][1](item, path)
            if problem:
                raise SchemaError(problem)
            continue
        if key not in by_json:
            raise SchemaError(f"{path}: unknown field {key!r} in {cls.__name__} "
                              f"(known: {', '.join(sorted(by_json))})")
        attr = by_json[key]
        kwargs[attr] = convert(item, cls.openapi_types[attr], f"{path}.{key}")
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as e:  # the generated required-field checks
        raise SchemaError(f"{path} ({cls.__name__}): {e}") from None


def validate_object(obj, where="document"):
    if not isinstance(obj, dict):
        raise SchemaError(f"{where}: not a mapping")
    for key in ("apiVersion", "kind"):
        if not isinstance(obj.get(key), str):
            raise SchemaError(f"{where}: missing {key}")
    cls = model_for(obj["apiVersion"], obj["kind"])
    name = (obj.get("metadata") or {}).get("name", "?")
    built = build(obj, cls, f"{obj['kind']}/{name}")
    if not (obj.get("metadata") or {}).get("name"):
        raise SchemaError(f"{where}: metadata.name is required")
    return built


def documents():
    """pytest params, one per document of every manifest (collected without
    the schema package, so a missing package fails each of them)."""
    out = []
    for path in sorted(K8S.glob("*.yaml")):
        with open(path, encoding="utf-8") as f:
            for i, doc in enumerate(yaml.safe_load_all(f)):
                if doc is not None:
                    ident = f"{path.name}#{i + 1}:{doc.get('kind')}/{(doc.get('metadata') or {}).get('name')}"
                    out.append(pytest.param(doc, id=ident))
    return out


DOCUMENTS = documents()


def find(kind, name):
    for param in DOCUMENTS:
        doc = param.values[0]
        if doc["kind"] == kind and doc["metadata"]["name"] == name:
            return copy.deepcopy(doc)
    raise AssertionError(f"no {kind}/{name} in deploy/k8s")


# ---- the manifests --------------------------------------------------------------

def test_every_manifest_has_documents():
    files = {p.id.split("#")[0] for p in DOCUMENTS}
    assert {"namespace.yaml", "mtls-ca.yaml", "sidecar-example.yaml", "daemonset-node-mode.yaml"} <= files


@pytest.mark.parametrize("doc", DOCUMENTS)
def test_document_matches_the_kubernetes_schema(doc):
    validate_object(doc)


def test_the_schema_knows_every_kind_we_ship():
    kinds = {(p.values[0]["apiVersion"], p.values[0]["kind"]) for p in DOCUMENTS}
    assert kinds == {
        ("v1", "Namespace"), ("v1", "ServiceAccount"), ("v1", "ConfigMap"), ("v1", "Service"),
        ("apps/v1", "Deployment"), ("apps/v1", "DaemonSet"), ("networking.k8s.io/v1", "NetworkPolicy"),
        ("rbac.authorization.k8s.io/v1", "ClusterRole"), ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"),
    }


# ---- it catches errors ------------------------------------------------------------

def refused(obj, *fragments):
    with pytest.raises(SchemaError) as e:
        validate_object(obj)
    for fragment in fragments:
        assert fragment in str(e.value), str(e.value)
    return str(e.value)


def agent_sidecar(dep):
    return next(c for c in dep["spec"]["template"]["spec"]["initContainers"] if c["name"] == "mtlsd")


def test_refuses_a_misspelled_field():
    dep = find("Deployment", "web")
    sc = agent_sidecar(dep)["securityContext"]
    sc["readOnlyRootFilesytem"] = sc.pop("readOnlyRootFilesystem")
    refused(dep, "Deployment/web.spec.template.spec.initContainers[1].securityContext",
            "unknown field 'readOnlyRootFilesytem'")


def test_refuses_a_field_at_the_wrong_level():
    dep = find("Deployment", "mtls-ca")
    container = dep["spec"]["template"]["spec"]["containers"][0]
    container["runAsNonRoot"] = True  # belongs in securityContext
    refused(dep, "containers[0]", "unknown field 'runAsNonRoot' in V1Container")


def test_refuses_an_unknown_top_level_field():
    role = find("ClusterRole", "mtls-ca")
    role["rule"] = role.pop("rules")
    refused(role, "ClusterRole/mtls-ca", "unknown field 'rule'")


@pytest.mark.parametrize("mutate,fragments", [
    (lambda d: d["spec"].__setitem__("replicas", "1"), ["spec.replicas", "expected an integer"]),
    (lambda d: d["spec"]["template"]["spec"].__setitem__("automountServiceAccountToken", "true"),
     ["automountServiceAccountToken", "expected true or false"]),
    (lambda d: d["spec"]["template"]["spec"]["securityContext"].__setitem__("runAsUser", True),
     ["securityContext.runAsUser", "expected an integer"]),
    (lambda d: d["spec"]["template"]["spec"]["containers"][0].__setitem__("args", "--config"),
     ["containers[0].args", "expected a list"]),
    (lambda d: d["metadata"].__setitem__("labels", ["app"]), ["metadata.labels", "expected a map"]),
    (lambda d: d["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"].__setitem__("cpu", 0.5),
     ["resources.limits.cpu", "expected a string"]),
], ids=["replicas-string", "bool-as-string", "uid-bool", "args-not-list", "labels-list", "quantity-float"])
def test_refuses_a_wrong_type(mutate, fragments):
    dep = find("Deployment", "mtls-ca")
    mutate(dep)
    refused(dep, *fragments)


def test_refuses_missing_required_fields():
    dep = find("Deployment", "web")
    del dep["spec"]["template"]["spec"]["containers"][0]["name"]
    refused(dep, "containers[0] (V1Container)", "`name`, must not be `None`")
    dep = find("Deployment", "web")
    del dep["spec"]["selector"]
    refused(dep, "Deployment/web.spec (V1DeploymentSpec)", "`selector`")
    binding = find("ClusterRoleBinding", "mtls-ca")
    del binding["roleRef"]
    refused(binding, "ClusterRoleBinding/mtls-ca", "`role_ref`")
    role = find("ClusterRole", "mtls-ca")
    del role["rules"][0]["verbs"]
    refused(role, "rules[0] (V1PolicyRule)", "`verbs`")
    pol = find("NetworkPolicy", "mtls-ca")
    del pol["spec"]["podSelector"]
    refused(pol, "NetworkPolicy/mtls-ca.spec", "`pod_selector`")


def test_refuses_a_kind_its_api_group_does_not_serve():
    pol = find("NetworkPolicy", "mtls-ca")
    pol["apiVersion"] = "apps/v1"
    refused(pol, "apps/v1 serves no kind 'NetworkPolicy'")
    role = find("ClusterRole", "mtls-ca")
    role["apiVersion"] = "rbac.authorization.k8s.io/v2"
    refused(role, "no such API group/version")


def test_newer_fields_are_checked_too():
    dep = find("Deployment", "web")
    dep["spec"]["template"]["spec"]["containers"][0]["restartPolicy"] = "Always"
    refused(dep, "containers[0].restartPolicy", "only init containers")
    dep = find("Deployment", "web")
    agent_sidecar(dep)["restartPolicy"] = "OnFailure"
    refused(dep, "initContainers[1].restartPolicy", "must be \"Always\"")


def test_accepts_what_it_should():
    """The checks are not simply refusing everything: int-or-string ports,
    an empty egress rule list, the native sidecar."""
    pol = find("NetworkPolicy", "mtls-ca")
    pol["spec"]["ingress"][0]["ports"][0]["port"] = "grpc-ca"
    validate_object(pol)
    pol["spec"]["egress"] = []
    validate_object(pol)
    dep = find("Deployment", "client")
    assert agent_sidecar(dep)["restartPolicy"] == "Always"
    validate_object(dep)
