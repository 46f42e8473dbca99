"""Static checks of the deployment material: deploy/k8s and deploy/image.

There is no cluster and no container engine here, so the manifests are
checked as files:
  * every YAML file parses (all documents) and passes yamllint --strict with
    tests/deploy/yamllint.yaml; so do the configurations embedded in
    ConfigMaps;
  * the security-relevant structure: who runs as which UID, capabilities,
    read-only root filesystems, the native sidecar, the projected token,
    resources, image tags, mtls-ca's read-only RBAC;
  * nothing to fill in by hand: no ${...} placeholder, the agents name
    mtls-ca by its Service's DNS name, one node-mode config for every node;
  * the embedded agent and mtls-ca configurations are loaded by the real
    binaries (`--check-config`), with files laid out the way the volumes
    mount them, mtls-ca's `kubernetes: {}` with a faithful in-pod service
    account directory and environment (skipped when the binaries are not
    built);
  * the Dockerfile's stages, packages and runtime USER.

Run: /usr/bin/python3 -m pytest tests/deploy
Needs python3-yaml, python3-cryptography and yamllint (deploy/install_deps.sh).
The schema validation against Kubernetes' API is test_manifest_schema.py.
"""

import base64
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"
DOCKERFILE = REPO / "deploy" / "image" / "Dockerfile"
INSTALL_DEPS = REPO / "deploy" / "install_deps.sh"
YAMLLINT_CONFIG = Path(__file__).resolve().with_name("yamllint.yaml")
JWKS_TO_PEM = K8S / "jwks-to-pem.py"
MKPKI = REPO / "certs" / "mkpki.sh"
MTLSD_BIN = Path(os.environ.get("MTLSD_BIN") or REPO / "bazel-bin" / "agent" / "mtlsd")
MTLS_CA_BIN = Path(os.environ.get("MTLS_CA_BIN") or REPO / "bazel-bin" / "controlplane" / "mtls-ca")
PY = "/usr/bin/python3"

AGENT_UID = 1337
TRUST_DOMAIN = "example.org"
CA_PORT = 15012
OUTBOUND_PORT = 15001
INBOUND_PORT = 15006
TOKEN_AUDIENCE = "istio-ca"
TOKEN_DIR = "/var/run/secrets/tokens"
INIT_COMMAND = ["mtlsd", "init-iptables", "--config", "/etc/mtlsd/mtlsd.yaml", "--apply"]
# What a pod sees of its service account (PROTOCOL.md 9): the in-cluster
# defaults of mtls-ca's `kubernetes: {}`.
SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
# A kubeadm-like in-cluster environment for the fake pod.
IN_CLUSTER_ENV = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}
MESH_LABEL = ("mtlsd.io/mesh", "enabled")
RUNTIME_PACKAGES = {"android-libboringssl", "libev4", "libyaml-0-2", "libnghttp2-14",
                    "libprotobuf-c1", "libjansson4", "libseccomp2",
                    "iptables"}
# What the runtime base image (debian:bookworm-slim) already has.
BASE_IMAGE_PACKAGES = {"libc6", "libstdc++6", "libgcc-s1"}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding"}
WORKLOAD_KINDS = {"Deployment", "DaemonSet", "StatefulSet", "Job", "Pod"}


# ---- loading ------------------------------------------------------------------

def manifest_files():
    return sorted(p for p in K8S.rglob("*") if p.suffix in (".yaml", ".yml"))


def load_docs(path):
    with open(path, encoding="utf-8") as f:
        return list(yaml.safe_load_all(f))


def all_objects():
    """(file name, object) for every document of every manifest."""
    out = []
    for path in manifest_files():
        out.extend((path.name, doc) for doc in load_docs(path) if doc is not None)
    return out


OBJECTS = all_objects()


def objects(kind=None, file=None):
    return [o for f, o in OBJECTS
            if (kind is None or o["kind"] == kind) and (file is None or f == file)]


def one(kind, name, namespace=None):
    found = [o for o in objects(kind) if o["metadata"]["name"] == name and
             (namespace is None or o["metadata"].get("namespace") == namespace)]
    assert len(found) == 1, f"expected exactly one {kind} {name}, found {len(found)}"
    return found[0]


def pod_spec(obj):
    return obj["spec"] if obj["kind"] == "Pod" else obj["spec"]["template"]["spec"]


def containers(spec):
    return list(spec.get("initContainers", [])) + list(spec.get("containers", []))


def workload_containers():
    """pytest params (ident, container) for every container of every workload."""
    out = []
    for _, obj in OBJECTS:
        if obj["kind"] in WORKLOAD_KINDS:
            for c in containers(pod_spec(obj)):
                ident = f"{obj['kind']}/{obj['metadata']['name']}/{c['name']}"
                out.append(pytest.param(ident, c, id=ident))
    return out


def sidecar_workloads():
    return objects("Deployment", "sidecar-example.yaml")


def init_container(spec, name):
    found = [c for c in spec.get("initContainers", []) if c["name"] == name]
    assert len(found) == 1, f"expected one init container {name!r}"
    return found[0]


def app_containers(spec):
    return spec.get("containers", [])


def volume(spec, name):
    found = [v for v in spec.get("volumes", []) if v["name"] == name]
    assert len(found) == 1, f"expected one volume {name!r}"
    return found[0]


def mounts_of(container):
    return {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}


def embedded_configs():
    """pytest params (ident, key, text) for every YAML file held in a ConfigMap."""
    out = []
    for cm in objects("ConfigMap"):
        for key, text in (cm.get("data") or {}).items():
            if key.endswith((".yaml", ".yml")):
                ident = f"{cm['metadata']['name']}/{key}"
                out.append(pytest.param(ident, key, text, id=ident))
    return out


def configmap_for_projected_file(spec, volume_name, path):
    """(ConfigMap name, key) that a projected volume puts at `path`."""
    vol = volume(spec, volume_name)
    for source in vol["projected"]["sources"]:
        cm = source.get("configMap")
        if cm is None:
            continue
        for item in cm.get("items", []):
            if item["path"] == path:
                return cm["name"], item["key"]
    raise AssertionError(f"volume {volume_name} has no file {path}")


def agent_config(workload):
    """A sidecar workload's mtlsd.yaml, parsed."""
    spec = pod_spec(workload)
    agent = init_container(spec, "mtlsd")
    assert agent["args"] == ["--config", "/etc/mtlsd/mtlsd.yaml"]
    vol_name = mounts_of(agent)["/etc/mtlsd"]
    name, key = configmap_for_projected_file(spec, vol_name, "mtlsd.yaml")
    cm = one("ConfigMap", name, workload["metadata"]["namespace"])
    return yaml.safe_load(cm["data"][key])


def spiffe_id(namespace, service_account):
    return f"spiffe://{TRUST_DOMAIN}/ns/{namespace}/sa/{service_account}"


def mtls_ca_deployment():
    return one("Deployment", "mtls-ca", "mtls-system")


def mtls_ca_config():
    cm = one("ConfigMap", "mtls-ca-config", "mtls-system")
    return yaml.safe_load(cm["data"]["ca.yaml"]), yaml.safe_load(cm["data"]["mesh.yaml"])


def mtls_ca_service_address():
    """NAME.NAMESPACE.svc:PORT of the Service that selects mtls-ca's pods and
    reaches its gRPC container port, derived from the objects themselves."""
    dep = mtls_ca_deployment()
    labels = dep["spec"]["template"]["metadata"]["labels"]
    named = {p["name"]: p["containerPort"] for p in pod_spec(dep)["containers"][0]["ports"]}
    found = []
    for svc in objects("Service"):
        if svc["metadata"]["namespace"] != dep["metadata"]["namespace"]:
            continue
        if not svc["spec"]["selector"].items() <= labels.items():
            continue
        for port in svc["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            if named.get(target, target) == CA_PORT:
                found.append(f"{svc['metadata']['name']}.{svc['metadata']['namespace']}.svc:{port['port']}")
    assert len(found) == 1, f"expected one Service port reaching mtls-ca:{CA_PORT}, found {found}"
    return found[0]


def keys_anywhere(value):
    """Every mapping key in a parsed YAML tree."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield k
            yield from keys_anywhere(v)
    elif isinstance(value, list):
        for v in value:
            yield from keys_anywhere(v)


def run_yamllint(paths, extra_rules=None):
    if shutil.which("yamllint") is None:
        pytest.fail("yamllint is not installed: deploy/install_deps.sh (or apt-get install -y yamllint)")
    if extra_rules:
        config = ["-d", json.dumps({"extends": str(YAMLLINT_CONFIG), "rules": extra_rules})]
    else:
        config = ["-c", str(YAMLLINT_CONFIG)]
    return subprocess.run(["yamllint", "--strict", "-f", "parsable", *config, *map(str, paths)],
                          capture_output=True, text=True, timeout=60)


# ---- files parse and lint -------------------------------------------------------

def test_expected_manifests_exist():
    names = {p.name for p in manifest_files()}
    assert {"namespace.yaml", "mtls-ca.yaml", "sidecar-example.yaml",
            "daemonset-node-mode.yaml"} <= names


@pytest.mark.parametrize("path", manifest_files(), ids=lambda p: p.name)
def test_every_document_parses_into_an_object(path):
    docs = load_docs(path)
    assert docs, f"{path.name}: no document"
    for i, doc in enumerate(docs):
        assert isinstance(doc, dict), f"{path.name}: document {i + 1} is empty or not a mapping"
        for key in ("apiVersion", "kind", "metadata"):
            assert key in doc, f"{path.name}: document {i + 1} has no {key}"
        assert doc["metadata"].get("name"), f"{path.name}: document {i + 1} has no name"


@pytest.mark.parametrize("path", manifest_files() + [YAMLLINT_CONFIG], ids=lambda p: p.name)
def test_yamllint(path):
    r = run_yamllint([path])
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("ident,key,text", embedded_configs())
def test_embedded_configs_parse_and_lint(ident, key, text, tmp_path):
    assert isinstance(yaml.safe_load(text), dict), f"{ident} is not a YAML mapping"
    path = tmp_path / key
    path.write_text(text)
    # A config file of its own is not a manifest: no "---" required.
    r = run_yamllint([path], {"document-start": "disable"})
    assert r.returncode == 0, r.stdout + r.stderr


def test_object_identities_are_unique():
    seen = set()
    for _, o in OBJECTS:
        ident = (o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"])
        assert ident not in seen, f"duplicate {ident}"
        seen.add(ident)


def test_namespaced_objects_name_a_namespace_we_create():
    namespaces = {o["metadata"]["name"] for o in objects("Namespace")}
    for f, o in OBJECTS:
        ns = o["metadata"].get("namespace")
        if o["kind"] in CLUSTER_SCOPED:
            assert ns is None, f"{f}: {o['kind']} {o['metadata']['name']} is cluster-scoped"
        else:
            # Never the kubectl context's current namespace by accident.
            assert ns in namespaces, f"{f}: {o['kind']} {o['metadata']['name']} namespace {ns!r}"


def test_no_placeholder_to_fill_in():
    """kubectl apply -f works as is: no envsubst variable, no <...> to edit."""
    for path in manifest_files():
        text = path.read_text()
        assert "${" not in text, f"{path.name}: a ${{...}} placeholder"
        assert "envsubst" not in text, f"{path.name}: still talks about envsubst"
        assert not re.search(r"<[a-z][a-z -]*>", text), f"{path.name}: a <placeholder>"
    readme = (K8S / "README.md").read_text()
    assert "${" not in readme and "envsubst" not in readme


def test_no_key_material_in_manifests():
    assert not objects("Secret"), "Secrets are created with kubectl from a PKI, never committed"
    for path in list(manifest_files()) + [DOCKERFILE]:
        assert "PRIVATE KEY" not in path.read_text(), path


# Field names of the pod API these manifests may use. With no API server to
# reject a typo (readOnlyRootFilesytem: true would be silently dropped by a
# lenient client), a misspelt security field must fail here.
POD_SPEC_FIELDS = {"serviceAccountName", "automountServiceAccountToken", "enableServiceLinks",
                   "terminationGracePeriodSeconds", "securityContext", "initContainers", "containers",
                   "volumes", "hostNetwork", "dnsPolicy", "nodeSelector", "tolerations", "affinity",
                   "priorityClassName"}
POD_SECURITY_FIELDS = {"runAsUser", "runAsGroup", "runAsNonRoot", "fsGroup", "fsGroupChangePolicy",
                       "seccompProfile", "supplementalGroups"}
CONTAINER_FIELDS = {"name", "image", "imagePullPolicy", "command", "args", "env", "ports", "resources",
                    "securityContext", "volumeMounts", "restartPolicy", "startupProbe", "readinessProbe",
                    "livenessProbe", "lifecycle"}
CONTAINER_SECURITY_FIELDS = {"runAsUser", "runAsGroup", "runAsNonRoot", "privileged",
                             "allowPrivilegeEscalation", "readOnlyRootFilesystem", "capabilities",
                             "seccompProfile"}
MOUNT_FIELDS = {"name", "mountPath", "readOnly"}
VOLUME_FIELDS = {"name", "configMap", "secret", "projected", "emptyDir", "hostPath"}


def test_pod_specs_use_only_known_fields():
    for _, obj in OBJECTS:
        if obj["kind"] not in WORKLOAD_KINDS:
            continue
        where = f"{obj['kind']}/{obj['metadata']['name']}"
        spec = pod_spec(obj)
        assert set(spec) <= POD_SPEC_FIELDS, (where, set(spec) - POD_SPEC_FIELDS)
        assert set(spec.get("securityContext", {})) <= POD_SECURITY_FIELDS, where
        for v in spec.get("volumes", []):
            assert set(v) <= VOLUME_FIELDS and len(v) == 2, (where, v)
        for c in containers(spec):
            assert set(c) <= CONTAINER_FIELDS, (where, c["name"], set(c) - CONTAINER_FIELDS)
            sc = c.get("securityContext", {})
            assert set(sc) <= CONTAINER_SECURITY_FIELDS, (where, c["name"], set(sc) - CONTAINER_SECURITY_FIELDS)
            assert set(sc.get("capabilities", {})) <= {"add", "drop"}, (where, c["name"])
            for m in c.get("volumeMounts", []):
                assert set(m) <= MOUNT_FIELDS, (where, c["name"], m)
                volume(spec, m["name"])


# ---- every container ---------------------------------------------------------------

@pytest.mark.parametrize("ident,container", workload_containers())
def test_container_has_resource_requests_and_limits(ident, container):
    res = container.get("resources", {})
    for kind in ("requests", "limits"):
        for what in ("cpu", "memory"):
            assert res.get(kind, {}).get(what), f"{ident}: no {kind}.{what}"


@pytest.mark.parametrize("ident,container", workload_containers())
def test_image_has_a_pinned_tag(ident, container):
    image = container["image"]
    if "@sha256:" in image:
        return
    last = image.rsplit("/", 1)[-1]
    assert ":" in last, f"{ident}: image {image} has no tag (that means latest)"
    tag = last.split(":", 1)[1]
    assert tag and tag != "latest", f"{ident}: image {image}"


@pytest.mark.parametrize("ident,container", workload_containers())
def test_no_container_is_privileged_or_escalates(ident, container):
    sc = container.get("securityContext", {})
    assert sc.get("privileged") is not True, ident
    assert sc.get("allowPrivilegeEscalation") is False, ident
    assert sc.get("capabilities", {}).get("drop") == ["ALL"], ident


def test_every_pod_uses_runtime_default_seccomp():
    for _, obj in OBJECTS:
        if obj["kind"] in WORKLOAD_KINDS:
            sc = pod_spec(obj).get("securityContext", {})
            assert sc.get("seccompProfile", {}).get("type") == "RuntimeDefault", obj["metadata"]["name"]


# ---- sidecar example ---------------------------------------------------------------

SIDECARS = sidecar_workloads()
SIDECAR_IDS = [w["metadata"]["name"] for w in SIDECARS]


def test_sidecar_example_has_workloads():
    assert SIDECAR_IDS, "sidecar-example.yaml has no Deployment"


@pytest.mark.parametrize("workload", SIDECARS, ids=SIDECAR_IDS)
def test_init_containers_order_and_kinds(workload):
    inits = pod_spec(workload)["initContainers"]
    assert [c["name"] for c in inits] == ["mtlsd-init", "mtlsd"]
    assert "restartPolicy" not in inits[0], "mtlsd-init must run to completion before the rest"
    # The agent is a native sidecar: an init container that keeps running.
    assert inits[1]["restartPolicy"] == "Always"
    assert all(c["name"] not in ("mtlsd", "mtlsd-init") for c in app_containers(pod_spec(workload)))


@pytest.mark.parametrize("workload", SIDECARS, ids=SIDECAR_IDS)
def test_iptables_init_container(workload):
    init = init_container(pod_spec(workload), "mtlsd-init")
    assert init["command"] == INIT_COMMAND
    assert "args" not in init
    sc = init["securityContext"]
    caps = sc["capabilities"]
    assert sorted(caps["add"]) == ["NET_ADMIN", "NET_RAW"], "exactly NET_ADMIN and NET_RAW"
    assert caps["drop"] == ["ALL"]
    assert sc.get("privileged") is False
    assert sc.get("allowPrivilegeEscalation") is False
    # It needs no token and no secret: only the configuration.
    assert TOKEN_DIR not in mounts_of(init)


@pytest.mark.parametrize("workload", SIDECARS, ids=SIDECAR_IDS)
def test_agent_sidecar_security_context(workload):
    agent = init_container(pod_spec(workload), "mtlsd")
    sc = agent["securityContext"]
    assert sc["runAsUser"] == AGENT_UID
    assert sc["runAsGroup"] == AGENT_UID
    assert sc["runAsNonRoot"] is True
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc.get("privileged") is False
    assert sc["capabilities"] == {"drop": ["ALL"]}, "the agent adds no capability"


@pytest.mark.parametrize("workload", SIDECARS, ids=SIDECAR_IDS)
def test_app_containers_never_run_as_the_agent_uid(workload):
    spec = pod_spec(workload)
    pod_sc = spec.get("securityContext", {})
    assert "runAsUser" not in pod_sc and "runAsGroup" not in pod_sc, \
        "no pod-wide UID: each container says its own, and the agent's differs from the app's"
    for c in app_containers(spec):
        sc = c.get("securityContext", {})
        # Traffic of UID 1337 bypasses interception: an app running as it
        # would leave the mesh unnoticed.
        assert sc.get("runAsUser") not in (None, 0, AGENT_UID), c["name"]
        assert sc.get("runAsGroup") not in (None, AGENT_UID), c["name"]
        assert sc.get("runAsNonRoot") is True, c["name"]


@pytest.mark.parametrize("workload", SIDECARS, ids=SIDECAR_IDS)
def test_projected_token(workload):
    spec = pod_spec(workload)
    agent = init_container(spec, "mtlsd")
    vol = volume(spec, mounts_of(agent)[TOKEN_DIR])
    sources = vol["projected"]["sources"]
    assert len(sources) == 1
    token = sources[0]["serviceAccountToken"]
    assert token["audience"] == TOKEN_AUDIENCE
    assert token["expirationSeconds"] == 3600
    config = agent_config(workload)
    assert config["control_plane"]["token_file"] == f"{TOKEN_DIR}/{token['path']}"
    # Readable by the agent (group 1337), by no one else.
    assert spec["securityContext"]["fsGroup"] == AGENT_UID
    assert vol["projected"]["defaultMode"] & 0o007 == 0
    # Only the agent gets the CA token; the pod gets no API token.
    for c in containers(spec):
        if c is not agent:
            assert vol["name"] not in mounts_of(c).values(), c["name"]
    assert spec["automountServiceAccountToken"] is False


@pytest.mark.parametrize("workload", SIDECARS, ids=SIDECAR_IDS)
def test_agent_config_matches_the_pod(workload):
    spec = pod_spec(workload)
    ns = workload["metadata"]["namespace"]
    config = agent_config(workload)
    ca_config, _ = mtls_ca_config()
    assert config["trust_domain"] == ca_config["trust_domain"] == TRUST_DOMAIN
    # The ID mtls-ca will sign for this pod's token, and the ID mtls-ca proves.
    assert config["identity"]["spiffe_id"] == spiffe_id(ns, spec["serviceAccountName"])
    one("ServiceAccount", spec["serviceAccountName"], ns)
    ca_spec = pod_spec(mtls_ca_deployment())
    assert config["control_plane"]["spiffe_id"] == spiffe_id("mtls-system", ca_spec["serviceAccountName"])
    # mtls-ca by the DNS name of its Service in these manifests.
    assert config["control_plane"]["address"] == mtls_ca_service_address() == \
        f"mtls-ca.mtls-system.svc:{CA_PORT}"
    # root_file comes from the same projected volume as the config.
    agent = init_container(spec, "mtlsd")
    root = config["control_plane"]["root_file"]
    assert root.startswith("/etc/mtlsd/")
    # (mtls-trust-bundle is created with kubectl, README.md)
    assert configmap_for_projected_file(spec, mounts_of(agent)["/etc/mtlsd"],
                                        root[len("/etc/mtlsd/"):]) == ("mtls-trust-bundle", "root.pem")
    # Istio's capture ports.
    inbound = [l["address"] for l in config["inbound"]["listeners"]]
    outbound = [l["address"] for l in config["outbound"]["listeners"]]
    assert f"0.0.0.0:{INBOUND_PORT}" in inbound
    assert f"127.0.0.1:{OUTBOUND_PORT}" in outbound
    # The interception rules exempt exactly the agent's UID.
    assert config["interception"]["proxy_uid"] == AGENT_UID
    # The init container reads the same file.
    init = init_container(spec, "mtlsd-init")
    assert mounts_of(init)["/etc/mtlsd"] == mounts_of(agent)["/etc/mtlsd"]


TELEMETRY_PORT = 15021  # the agent's /healthz /ready /metrics listener (Istio's health port)


@pytest.mark.parametrize("workload", SIDECARS, ids=SIDECAR_IDS)
def test_agent_sidecar_probes_and_scrape_use_the_telemetry_listener(workload):
    """kubelet and Prometheus reach the agent on the pod IP, port 15021: the
    telemetry listener (health and metrics only), never the full admin API,
    and the interception rules leave that port to the agent."""
    spec = pod_spec(workload)
    agent = init_container(spec, "mtlsd")
    config = agent_config(workload)
    assert config["admin"]["telemetry_address"] == f"0.0.0.0:{TELEMETRY_PORT}"
    assert config["admin"]["address"].startswith("127.0.0.1:"), "the full admin API stays in the pod"
    assert TELEMETRY_PORT in config["interception"]["exclude_inbound_ports"]
    # A native sidecar's startupProbe holds back the app containers until the
    # agent has its certificate; readiness follows it afterwards.
    for probe in ("startupProbe", "readinessProbe"):
        assert agent[probe]["httpGet"] == {"path": "/ready", "port": TELEMETRY_PORT}, probe
    assert {"name": "http-telemetry", "containerPort": TELEMETRY_PORT, "protocol": "TCP"} in agent["ports"]
    annotations = workload["spec"]["template"]["metadata"]["annotations"]
    assert annotations == {"prometheus.io/scrape": "true", "prometheus.io/port": str(TELEMETRY_PORT),
                           "prometheus.io/path": "/metrics"}
    # Apps keep their probe-less state: a plaintext probe on an app port would be refused.
    for c in app_containers(spec):
        assert "readinessProbe" not in c and "livenessProbe" not in c, c["name"]


# ---- mtls-ca -----------------------------------------------------------------------

@pytest.mark.parametrize("workload", SIDECARS, ids=SIDECAR_IDS)
def test_agents_carry_no_hand_written_destinations(workload):
    """mtls-ca pushes them from the cluster, only those the pod dials; an
    IP written here would be cluster-specific."""
    config = agent_config(workload)
    assert "destinations" not in set(keys_anywhere(config.get("outbound", {})))
    assert config["control_plane"]["destinations"] == "on_demand"


def test_sidecar_namespaces_are_in_the_mesh():
    """mtls-ca ignores pods of namespaces without mtlsd.io/mesh=enabled."""
    for workload in SIDECARS:
        ns = one("Namespace", workload["metadata"]["namespace"])
        assert ns["metadata"]["labels"].get(MESH_LABEL[0]) == MESH_LABEL[1], ns["metadata"]["name"]
    # The control plane's and the node agents' namespaces are not workloads of the mesh.
    for name in ("mtls-system", "mtlsd-node"):
        assert MESH_LABEL[0] not in one("Namespace", name)["metadata"]["labels"], name


def test_mtls_ca_deployment_is_locked_down():
    dep = mtls_ca_deployment()
    assert dep["spec"]["replicas"] == 1
    spec = pod_spec(dep)
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] != 0
    # Its API token, for kubernetes: {} (the only pod that gets one).
    assert spec["automountServiceAccountToken"] is True
    assert spec["serviceAccountName"] == "mtls-ca"
    assert not spec.get("hostNetwork")
    (container,) = spec["containers"]
    sc = container["securityContext"]
    assert sc["runAsNonRoot"] is True
    assert sc["runAsUser"] != 0
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert container["command"] == ["mtls-ca"]
    assert container["args"] == ["--config", "/etc/mtls-ca/config/ca.yaml"]


def test_mtls_ca_service_reaches_port_15012():
    svc = one("Service", "mtls-ca", "mtls-system")
    spec = pod_spec(mtls_ca_deployment())
    labels = mtls_ca_deployment()["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= labels.items()
    (port,) = svc["spec"]["ports"]
    assert port["port"] == CA_PORT
    named = {p["name"]: p["containerPort"] for p in spec["containers"][0]["ports"]}
    assert named[port["targetPort"]] == CA_PORT
    ca_config, _ = mtls_ca_config()
    assert ca_config["listen"].endswith(f":{CA_PORT}")


def test_mtls_ca_learns_the_cluster_from_the_api():
    ca_config, mesh = mtls_ca_config()
    assert ca_config["kubernetes"] == {}, "in-cluster defaults: nothing cluster-specific"
    assert "workloads_file" not in ca_config
    cm = one("ConfigMap", "mtls-ca-config", "mtls-system")
    assert set(cm["data"]) == {"ca.yaml", "mesh.yaml"}, "no workloads.yaml"
    # The mesh file keeps bundles and policy; destinations come from the cluster.
    assert mesh["trust_bundles"] and mesh["policy"]["rules"]
    assert "destinations" not in mesh


def test_mtls_ca_tokens_config():
    ca_config, _ = mtls_ca_config()
    assert ca_config["tokens"]["audience"] == TOKEN_AUDIENCE
    # The issuer is the API server's own (/.well-known/openid-configuration):
    # nothing cluster-specific to fill in, managed clusters included.
    assert "issuer" not in ca_config["tokens"]
    # The keys are the API server's own (/openid/v1/jwks): no key file to export.
    assert "keys_file" not in ca_config["tokens"]


def test_mtls_ca_files_come_from_mounted_volumes():
    """Every path in ca.yaml / mesh.yaml is under a mount of the right volume,
    and key material only ever comes from Secrets mounted 0440 or tighter."""
    spec = pod_spec(mtls_ca_deployment())
    mounts = mounts_of(spec["containers"][0])
    ca_config, mesh = mtls_ca_config()
    paths = {
        "tls.cert_file": ca_config["tls"]["cert_file"],
        "tls.key_file": ca_config["tls"]["key_file"],
        "signer.cert_file": ca_config["signer"]["cert_file"],
        "signer.key_file": ca_config["signer"]["key_file"],
        "roots_file": ca_config["roots_file"],
        "mesh_file": ca_config["mesh_file"],
    }
    for bundle in mesh["trust_bundles"]:
        for i, f in enumerate(bundle["roots_files"]):
            paths[f"mesh roots_files[{i}]"] = f
    for what, path in paths.items():
        directory, name = path.rsplit("/", 1)
        assert directory in mounts, f"{what}: {path} is not on a mounted volume"
        vol = volume(spec, mounts[directory])
        if "secret" in vol:
            assert name in ("tls.crt", "tls.key"), f"{what}: {name} is not a kubernetes.io/tls key"
            assert vol["secret"]["defaultMode"] & 0o037 == 0, f"{what}: key readable beyond the group"
        else:
            cm = vol["configMap"]
            items = {i["path"]: i["key"] for i in cm.get("items", [])}
            if items:
                assert name in items, f"{what}: {name} not projected from ConfigMap {cm['name']}"
        if what in ("tls.key_file", "signer.key_file"):
            assert "secret" in vol, f"{what} must come from a Secret"
    assert paths["mesh_file"] == "/etc/mtls-ca/config/mesh.yaml"
    # The API token is the automounted one, at the in-cluster default path.
    assert SA_DIR not in mounts and not any(m.startswith("/var/run/secrets") for m in mounts)


# What mtls-ca's Kubernetes source reads (controlplane/README.md "Kubernetes
# source"), and nothing else.
READ_VERBS = ["get", "list", "watch"]
# What it watches, and the one node at a time it GETs for NodeInfo (a
# node agent's own node's spec.podCIDRs): get only, never list or watch.
MTLS_CA_READS = {("", "pods"): READ_VERBS, ("", "services"): READ_VERBS,
                 ("", "namespaces"): READ_VERBS, ("discovery.k8s.io", "endpointslices"): READ_VERBS,
                 ("", "nodes"): ["get"],
                 # kubernetes.istio_policies (off by default): Istio's two kinds, listed and watched
                 ("security.istio.io", "authorizationpolicies"): ["list", "watch"],
                 ("security.istio.io", "peerauthentications"): ["list", "watch"]}
ISSUER_DISCOVERY = "system:service-account-issuer-discovery"


def mtls_ca_subject():
    dep = mtls_ca_deployment()
    return {"kind": "ServiceAccount", "name": pod_spec(dep)["serviceAccountName"],
            "namespace": dep["metadata"]["namespace"]}


def test_mtls_ca_cluster_role_is_read_only_on_exactly_what_it_watches():
    (role,) = objects("ClusterRole")
    assert role["metadata"]["name"] == "mtls-ca"
    assert "aggregationRule" not in role
    granted = {}
    for rule in role["rules"]:
        assert set(rule) == {"apiGroups", "resources", "verbs"}, \
            f"only apiGroups/resources/verbs (no resourceNames, no nonResourceURLs): {rule}"
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                assert "*" not in (group, resource) and "/" not in resource, rule  # no wildcard, no subresource
                assert (group, resource) not in granted, f"{group}/{resource} granted twice"
                granted[(group, resource)] = sorted(rule["verbs"])
    assert granted == MTLS_CA_READS
    assert not objects("Role"), "mtls-ca needs no namespaced Role; nothing else needs any"


def test_bindings_grant_only_mtls_ca_its_roles():
    subject = mtls_ca_subject()
    one("ServiceAccount", subject["name"], subject["namespace"])
    assert not objects("RoleBinding")
    refs = {}
    for binding in objects("ClusterRoleBinding"):
        assert binding["subjects"] == [subject], binding["metadata"]["name"]
        ref = binding["roleRef"]
        assert ref["apiGroup"] == "rbac.authorization.k8s.io" and ref["kind"] == "ClusterRole", ref
        refs[ref["name"]] = binding["metadata"]["name"]
    # Our own read-only role, and the built-in one for GET /openid/v1/jwks.
    assert set(refs) == {"mtls-ca", ISSUER_DISCOVERY}


def test_only_mtls_ca_gets_an_api_token():
    """The agents never call the Kubernetes API: no API token, only their
    projected istio-ca token."""
    subject = mtls_ca_subject()
    for sa in objects("ServiceAccount"):
        mine = (sa["metadata"]["name"], sa["metadata"]["namespace"]) == (subject["name"], subject["namespace"])
        assert sa["automountServiceAccountToken"] is mine, sa["metadata"]
    for _, obj in OBJECTS:
        if obj["kind"] in WORKLOAD_KINDS and obj is not mtls_ca_deployment():
            assert pod_spec(obj)["automountServiceAccountToken"] is False, obj["metadata"]["name"]


def test_mtls_ca_network_policy():
    pol = one("NetworkPolicy", "mtls-ca", "mtls-system")
    labels = mtls_ca_deployment()["spec"]["template"]["metadata"]["labels"]
    assert pol["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    assert sorted(pol["spec"]["policyTypes"]) == ["Egress", "Ingress"]
    # Out only to the API server's port (README.md "Assumptions": 443 or 6443).
    assert pol["spec"]["egress"] == [{"ports": [{"port": 443, "protocol": "TCP"},
                                                {"port": 6443, "protocol": "TCP"}]}]
    ports = [p for rule in pol["spec"]["ingress"] for p in rule["ports"]]
    assert ports == [{"port": CA_PORT, "protocol": "TCP"}]


def test_namespaces_pod_security():
    labels = {o["metadata"]["name"]: o["metadata"]["labels"] for o in objects("Namespace")}
    assert labels["mtls-system"]["pod-security.kubernetes.io/enforce"] == "restricted"


# ---- node mode ----------------------------------------------------------------------

NODE_CONFIG_DIR = "/etc/mtlsd"
NODE_CONFIG_ARG = f"{NODE_CONFIG_DIR}/mtlsd.yaml"  # the same file on every node
NODE_NAME_FOR_TESTS = "node-1"


def node_daemonset():
    (ds,) = objects("DaemonSet", "daemonset-node-mode.yaml")
    return ds


def node_agent_id():
    ds = node_daemonset()
    return spiffe_id(ds["metadata"]["namespace"], pod_spec(ds)["serviceAccountName"])


def node_config():
    """(raw text, parsed) of the one agent configuration every node reads."""
    ds = node_daemonset()
    spec = pod_spec(ds)
    (agent,) = spec["containers"]
    name, key = configmap_for_projected_file(spec, mounts_of(agent)[NODE_CONFIG_DIR], "mtlsd.yaml")
    cm = one("ConfigMap", name, ds["metadata"]["namespace"])
    assert set(cm["data"]) == {key}, f"{name}: one key for all nodes, not one per node: {sorted(cm['data'])}"
    return cm["data"][key], yaml.safe_load(cm["data"][key])


NODE_TEXT, NODE_CONFIG = node_config()


def node_name_env(container):
    env = {e["name"]: e for e in container.get("env", [])}
    return env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"]


def test_node_mode_is_opt_in_and_needs_no_per_node_rendering():
    ds = node_daemonset()
    text = (K8S / "daemonset-node-mode.yaml").read_text()
    assert "PREVIEW" not in text and "preview" not in json.dumps(ds)
    assert pod_spec(ds)["nodeSelector"]["mtlsd/node-mode"] == "true"
    # The static pod list and its per-node rendering are gone.
    assert "KNOWN LIMITATION" not in text and "render" not in text.lower()
    assert "$(NODE_NAME)" not in text, "no per-node file name"


def test_node_mode_pod_uses_the_host_network_and_no_api_token():
    ds = node_daemonset()
    spec = pod_spec(ds)
    assert spec["hostNetwork"] is True
    assert spec["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert spec["automountServiceAccountToken"] is False
    assert "runAsUser" not in spec["securityContext"], "each container says its own UID"


def test_node_mode_capabilities_only_on_the_init_container():
    spec = pod_spec(node_daemonset())
    init = init_container(spec, "mtlsd-init")
    assert "restartPolicy" not in init, "the rules are in place before the agent starts"
    assert init["command"] == ["mtlsd", "init-iptables", "--config", NODE_CONFIG_ARG, "--apply"]
    # node: {} takes its name from NODE_NAME (else the host name): set it
    # from the downward API in both containers.
    assert node_name_env(init) == "spec.nodeName"
    sc = init["securityContext"]
    assert sc["runAsUser"] == 0
    assert sorted(sc["capabilities"]["add"]) == ["NET_ADMIN", "NET_RAW"]
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert sc["readOnlyRootFilesystem"] is True
    (agent,) = spec["containers"]
    # The token names the node to mtls-ca, which answers its pod CIDRs.
    assert mounts_of(init)[TOKEN_DIR] == mounts_of(agent)[TOKEN_DIR]
    sc = agent["securityContext"]
    assert sc["runAsUser"] == AGENT_UID and sc["runAsGroup"] == AGENT_UID
    assert sc["runAsNonRoot"] is True
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]}, "the agent adds no capability"


def test_node_mode_host_path_is_only_the_iptables_lock():
    spec = pod_spec(node_daemonset())
    host = [v for v in spec["volumes"] if "hostPath" in v]
    assert [v["hostPath"] for v in host] == [{"path": "/run/xtables.lock", "type": "FileOrCreate"}]
    for c in containers(spec):
        mounted = host[0]["name"] in mounts_of(c).values()
        assert mounted == (c["name"] == "mtlsd-init"), c["name"]
    assert mounts_of(init_container(spec, "mtlsd-init"))["/run/xtables.lock"] == host[0]["name"]
    # No other workload mounts anything of the host.
    for _, obj in OBJECTS:
        if obj["kind"] in WORKLOAD_KINDS and obj is not node_daemonset():
            assert not any("hostPath" in v for v in pod_spec(obj).get("volumes", [])), obj["metadata"]


def test_node_mode_agent_reads_its_node_config_and_the_token():
    ds = node_daemonset()
    spec = pod_spec(ds)
    (agent,) = spec["containers"]
    assert agent["args"] == ["--config", NODE_CONFIG_ARG]
    assert node_name_env(agent) == "spec.nodeName"
    init = init_container(spec, "mtlsd-init")
    assert mounts_of(init)[NODE_CONFIG_DIR] == mounts_of(agent)[NODE_CONFIG_DIR]
    vol = volume(spec, mounts_of(agent)[TOKEN_DIR])
    (source,) = vol["projected"]["sources"]
    token = source["serviceAccountToken"]
    assert token["audience"] == TOKEN_AUDIENCE and token["expirationSeconds"] == 3600
    assert vol["projected"]["defaultMode"] & 0o007 == 0
    assert spec["securityContext"]["fsGroup"] == AGENT_UID
    assert NODE_CONFIG["control_plane"]["token_file"] == f"{TOKEN_DIR}/{token['path']}"


def test_node_mode_readiness_on_the_telemetry_port():
    spec = pod_spec(node_daemonset())
    (agent,) = spec["containers"]
    for probe in ("startupProbe", "readinessProbe"):
        assert agent[probe]["httpGet"] == {"path": "/ready", "port": 15021}, probe
    assert NODE_CONFIG["admin"]["telemetry_address"] == "0.0.0.0:15021"
    # hostNetwork: the full admin API (it can stop the agent) stays on the node's loopback
    assert NODE_CONFIG["admin"]["address"].startswith("127.0.0.1:")


def test_node_config_names_no_node_and_matches_the_ca():
    config = NODE_CONFIG
    ca_config, _ = mtls_ca_config()
    assert config["trust_domain"] == ca_config["trust_domain"] == TRUST_DOMAIN
    # The agent's own identity is the one mtls-ca lets act for the node's pods.
    assert config["identity"]["spiffe_id"] == node_agent_id()
    assert node_agent_id() in ca_config["node_agents"]
    assert ca_config["kubernetes"] == {}, "node agents' pods come from the API"
    # Nothing per node: the name from NODE_NAME, the pods from mtls-ca (watch on).
    assert config["node"] == {}, "no node.name, no node.workloads"
    assert "node_id" not in config["control_plane"]
    assert config["control_plane"].get("watch", True) is True
    assert config["control_plane"]["address"] == mtls_ca_service_address()
    assert "destinations" not in set(keys_anywhere(config.get("outbound", {})))
    assert config["control_plane"]["destinations"] == "on_demand"  # its pods' only
    # PREROUTING capture: listeners on every address, the node layout selected.
    assert [l["address"] for l in config["inbound"]["listeners"]] == [f"0.0.0.0:{INBOUND_PORT}"]
    assert [l["address"] for l in config["outbound"]["listeners"]] == [f"0.0.0.0:{OUTBOUND_PORT}"]
    # No pod CIDR to fill in: each node's own, from mtls-ca (README.md "Pod CIDR").
    assert config["interception"]["node_pod_cidrs"] == "from_control_plane"
    assert "10.244." not in NODE_TEXT
    assert config["interception"]["proxy_uid"] == AGENT_UID
    readme = (K8S / "README.md").read_text()
    assert "### Pod CIDR" in readme and "from_control_plane" in readme


def run_on_node_config(tmp_path, args, node_name=NODE_NAME_FOR_TESTS):
    """mtlsd with `args` ("CONFIG" = the node config), as the DaemonSet's
    containers run it: NODE_NAME from the downward API."""
    path = tmp_path / "mtlsd.yaml"
    path.write_text(NODE_TEXT)
    env = dict(os.environ, NODE_NAME=node_name)
    return subprocess.run([str(MTLSD_BIN)] + [str(path) if a == "CONFIG" else a for a in args],
                          capture_output=True, text=True, timeout=30, env=env)


def test_node_config_passes_check_config(tmp_path):
    need_binary(MTLSD_BIN)
    r = run_on_node_config(tmp_path, ["--check-config", "CONFIG"])
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"identity {node_agent_id()}" in r.stdout


def node_text_with(interception_changes):
    """The node config with `interception` keys replaced, as YAML text."""
    config = yaml.safe_load(NODE_TEXT)
    config["interception"].update(interception_changes)
    return yaml.safe_dump(config, sort_keys=False)


def test_init_iptables_without_an_answer_from_mtls_ca_installs_nothing(tmp_path):
    """Here there is no mtls-ca (nor its Service name, nor the mounted
    files): mtlsd-init says why and prints no rule, rather than a layout
    without capture (tests/integration/test_node_pod_cidrs.py runs it
    against a real mtls-ca)."""
    need_binary(MTLSD_BIN)
    path = tmp_path / "mtlsd.yaml"
    path.write_text(node_text_with({"node_pod_cidrs_wait_s": 1}))
    r = subprocess.run([str(MTLSD_BIN), "init-iptables", "--config", str(path), "--print"],
                       capture_output=True, text=True, timeout=30,
                       env=dict(os.environ, NODE_NAME=NODE_NAME_FOR_TESTS))
    assert r.returncode == 1, r.stdout + r.stderr
    assert r.stdout == ""
    assert "cannot learn this node's pod CIDRs from the control plane" in r.stderr


@pytest.mark.parametrize("cidrs", [["10.244.1.0/24"], ["10.244.2.0/24", "fd00:10:244:2::/64"]])
def test_init_iptables_rules_for_the_node(tmp_path, cidrs):
    """PREROUTING only, by the node's pod CIDRs (here listed by hand, as
    for a CNI that allocates none): the node's own traffic (kubelet, the
    agent, hostNetwork pods) is never captured."""
    need_binary(MTLSD_BIN)
    path = tmp_path / "mtlsd.yaml"
    path.write_text(node_text_with({"node_pod_cidrs": cidrs}))
    r = subprocess.run([str(MTLSD_BIN), "init-iptables", "--config", str(path), "--print"],
                       capture_output=True, text=True, timeout=30,
                       env=dict(os.environ, NODE_NAME=NODE_NAME_FOR_TESTS))
    assert r.returncode == 0, r.stdout + r.stderr
    rules = r.stdout.splitlines()
    for cidr in cidrs:
        assert f"-A MTLSD_INBOUND -s {cidr} -j MTLSD_NODE_OUT" in rules
        assert f"-A MTLSD_INBOUND -d {cidr} -j MTLSD_IN_REDIRECT" in rules
    # First in PREROUTING, ahead of kube-proxy's Service DNAT.
    assert "-I PREROUTING 1 -p tcp -j MTLSD_INBOUND" in rules
    assert not any(rule.startswith("-A OUTPUT") for rule in rules), rules
    assert ("# IPv6: ip6tables-restore --noflush" in rules) == (len(cidrs) == 2)


def test_node_agent_has_no_api_access():
    ds = node_daemonset()
    sa_name = pod_spec(ds)["serviceAccountName"]
    ns = ds["metadata"]["namespace"]
    assert one("ServiceAccount", sa_name, ns)["automountServiceAccountToken"] is False
    for binding in objects("RoleBinding") + objects("ClusterRoleBinding"):
        assert {"kind": "ServiceAccount", "name": sa_name, "namespace": ns} not in binding["subjects"]


# ---- the real binaries load the embedded configurations --------------------------------

def need_binary(path):
    if not path.is_file():
        pytest.skip(f"{path} not built (bazel build //agent:mtlsd //controlplane:mtls-ca)")


def check_config(text, tmp_path):
    path = tmp_path / "mtlsd.yaml"
    path.write_text(text)
    return subprocess.run([str(MTLSD_BIN), "--check-config", str(path)],
                          capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize("workload", SIDECARS, ids=SIDECAR_IDS)
def test_agent_config_passes_check_config(workload, tmp_path):
    need_binary(MTLSD_BIN)
    spec = pod_spec(workload)
    agent = init_container(spec, "mtlsd")
    name, key = configmap_for_projected_file(spec, mounts_of(agent)["/etc/mtlsd"], "mtlsd.yaml")
    cm = one("ConfigMap", name, workload["metadata"]["namespace"])
    r = check_config(cm["data"][key], tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "OK" in r.stdout


@pytest.mark.parametrize("workload", SIDECARS, ids=SIDECAR_IDS)
def test_init_iptables_rules_for_the_sidecar(workload, tmp_path):
    """What mtlsd-init would install (--print changes nothing): the agent's
    UID exempt, capture to 15001 / 15006, the health port left alone."""
    need_binary(MTLSD_BIN)
    spec = pod_spec(workload)
    name, key = configmap_for_projected_file(spec, mounts_of(init_container(spec, "mtlsd-init"))["/etc/mtlsd"],
                                             "mtlsd.yaml")
    path = tmp_path / "mtlsd.yaml"
    path.write_text(one("ConfigMap", name, workload["metadata"]["namespace"])["data"][key])
    command = [str(MTLSD_BIN)] + INIT_COMMAND[1:]
    command[command.index("--config") + 1] = str(path)
    command[command.index("--apply")] = "--print"
    r = subprocess.run(command, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr
    rules = r.stdout.splitlines()
    assert f"-A MTLSD_OUTPUT -m owner --uid-owner {AGENT_UID} -j RETURN" in rules
    assert f"-A MTLSD_REDIRECT -p tcp -j REDIRECT --to-ports {OUTBOUND_PORT}" in rules
    assert f"-A MTLSD_IN_REDIRECT -p tcp -j REDIRECT --to-ports {INBOUND_PORT}" in rules
    assert "-A MTLSD_INBOUND -p tcp -m tcp --dport 15021 -j RETURN" in rules
    assert not any("--gid-owner" in rule for rule in rules), "fsGroup 1337 is every container's group"


@pytest.fixture(scope="module")
def dev_pki(tmp_path_factory):
    out = tmp_path_factory.mktemp("pki") / "pki"
    subprocess.run([str(MKPKI), "--out", str(out), "--control-plane"], check=True,
                   capture_output=True, timeout=120)
    return out


def lay_out_mtls_ca_volumes(root, pki):
    """Writes the files the mtls-ca pod would see, under `root`, from the
    objects README.md tells the operator to create, and returns ca.yaml."""
    spec = pod_spec(mtls_ca_deployment())
    # What `kubectl create secret tls` / `create configmap` put in each (README.md).
    created = {
        "mtls-ca-tls": {"tls.crt": pki / "control-plane" / "chain.pem",
                        "tls.key": pki / "control-plane" / "key.pem"},
        "mtls-ca-signer": {"tls.crt": pki / "intermediate.pem", "tls.key": pki / "intermediate.key"},
        "mtls-trust-bundle": {"root.pem": pki / "root.pem"},
    }
    prefix = str(root)

    def relocate(text):
        return text.replace("/etc/mtls-ca/", prefix + "/etc/mtls-ca/")

    for mount in spec["containers"][0]["volumeMounts"]:
        vol = volume(spec, mount["name"])
        directory = Path(prefix + mount["mountPath"])
        directory.mkdir(parents=True)
        if "secret" in vol:
            files = {k: v.read_text() for k, v in created[vol["secret"]["secretName"]].items()}
        else:
            name = vol["configMap"]["name"]
            data = one("ConfigMap", name, "mtls-system")["data"] if name == "mtls-ca-config" else \
                {k: v.read_text() for k, v in created[name].items()}
            items = vol["configMap"].get("items")
            files = {i["path"]: data[i["key"]] for i in items} if items else dict(data)
        for name, text in files.items():
            (directory / name).write_text(relocate(text) if name.endswith(".yaml") else text)
    return Path(prefix + "/etc/mtls-ca/config/ca.yaml")


def fake_service_account_dir(directory, pki):
    """What kubelet mounts for an automounted token: token (a JWT), ca.crt
    (the cluster CA, PEM) and namespace."""
    directory.mkdir(parents=True)
    header = base64.urlsafe_b64encode(b'{"alg":"RS256","kid":"k"}').rstrip(b"=").decode()
    claims = base64.urlsafe_b64encode(json.dumps(
        {"iss": "https://kubernetes.default.svc.cluster.local", "aud": ["https://kubernetes.default.svc"],
         "sub": "system:serviceaccount:mtls-system:mtls-ca"}).encode()).rstrip(b"=").decode()
    (directory / "token").write_text(f"{header}.{claims}.c2lnbmF0dXJl")
    (directory / "ca.crt").write_text((pki / "root.pem").read_text())  # any PEM CA stands in
    (directory / "namespace").write_text("mtls-system")
    return directory


def in_pod_mount_namespace_works():
    """Can we give a process a private /run with the service account at
    its in-cluster path (root, or an unprivileged user namespace)?"""
    if shutil.which("unshare") is None:
        return None
    for flags in (["--mount"], ["--mount", "--map-root-user"]):
        r = subprocess.run(["unshare", *flags, "--propagation", "private", "sh", "-c",
                            "mount -t tmpfs none /run"], capture_output=True, timeout=30)
        if r.returncode == 0:
            return flags
    return None


def run_mtls_ca_check_in_pod(ca_yaml, sa_dir, env, flags):
    """mtls-ca --check-config in a private mount namespace where `sa_dir` is
    at /var/run/secrets/kubernetes.io/serviceaccount, as in the pod (the
    host's /run is not touched: the tmpfs exists only in that namespace)."""
    script = ('set -e; mount -t tmpfs none /run; mkdir -p "$2"; mount --bind "$1" "$2"; '
              'exec "$3" --check-config "$4"')
    sa_path = os.path.realpath("/var/run") + SA_DIR[len("/var/run"):]
    return subprocess.run(["unshare", *flags, "--propagation", "private", "sh", "-c", script, "sh",
                           str(sa_dir), sa_path, str(MTLS_CA_BIN), str(ca_yaml)],
                          capture_output=True, text=True, timeout=60, env=env)


def test_mtls_ca_config_passes_check_config_in_a_pod(dev_pki, tmp_path):
    """ca.yaml exactly as shipped (kubernetes: {}, no keys_file), with what
    a pod has: KUBERNETES_SERVICE_HOST/PORT and the service account at its
    standard path. --check-config reads the token and CA and makes no request."""
    need_binary(MTLS_CA_BIN)
    flags = in_pod_mount_namespace_works()
    if flags is None:
        pytest.skip("no mount namespace here (unshare --mount) to place the service account at its pod path")
    ca_yaml = lay_out_mtls_ca_volumes(tmp_path / "root", dev_pki)
    sa_dir = fake_service_account_dir(tmp_path / "sa", dev_pki)
    r = run_mtls_ca_check_in_pod(ca_yaml, sa_dir, dict(os.environ, **IN_CLUSTER_ENV), flags)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.strip() == f"{ca_yaml}: ok"
    # The same without the pod's environment is refused: the fake is what passes.
    env = {k: v for k, v in os.environ.items() if k not in IN_CLUSTER_ENV}
    r = run_mtls_ca_check_in_pod(ca_yaml, sa_dir, env, flags)
    assert r.returncode == 1 and "KUBERNETES_SERVICE_HOST" in r.stderr, r.stdout + r.stderr
    # And so is a pod without its token (automountServiceAccountToken: false).
    (sa_dir / "token").unlink()
    r = run_mtls_ca_check_in_pod(ca_yaml, sa_dir, dict(os.environ, **IN_CLUSTER_ENV), flags)
    assert r.returncode == 1 and f"{SA_DIR}/token" in r.stderr, r.stdout + r.stderr


def test_mtls_ca_config_passes_check_config_with_the_defaults_spelled_out(dev_pki, tmp_path):
    """Where no mount namespace is available: the shipped ca.yaml with only
    `kubernetes: {}` replaced by its documented defaults, pointed at the fake
    service account directory (controlplane/README.md "Configuration reference")."""
    need_binary(MTLS_CA_BIN)
    ca_yaml = lay_out_mtls_ca_volumes(tmp_path / "root", dev_pki)
    sa_dir = fake_service_account_dir(tmp_path / "sa", dev_pki)
    text = ca_yaml.read_text()
    assert text.count("kubernetes: {}") == 1
    spelled = (f"kubernetes:\n  server: https://{IN_CLUSTER_ENV['KUBERNETES_SERVICE_HOST']}:"
               f"{IN_CLUSTER_ENV['KUBERNETES_SERVICE_PORT']}\n"
               f"  token_file: {sa_dir}/token\n  ca_file: {sa_dir}/ca.crt")
    ca_yaml.write_text(text.replace("kubernetes: {}", spelled))
    r = subprocess.run([str(MTLS_CA_BIN), "--check-config", str(ca_yaml)],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr


# ---- jwks-to-pem.py --------------------------------------------------------------------

def b64url(n):
    return base64.urlsafe_b64encode(n.to_bytes((n.bit_length() + 7) // 8, "big")).rstrip(b"=").decode()


def run_jwks_to_pem(jwks):
    return subprocess.run([PY, str(JWKS_TO_PEM)], input=json.dumps(jwks),
                          capture_output=True, text=True, timeout=30)


@pytest.fixture(scope="module")
def api_server_keys():
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    ec_key = ec.generate_private_key(ec.SECP256R1()).public_key()
    r, e = rsa_key.public_numbers(), ec_key.public_numbers()
    jwks = {"keys": [
        {"use": "sig", "kty": "RSA", "kid": "rsa-1", "alg": "RS256", "n": b64url(r.n), "e": b64url(r.e)},
        {"use": "sig", "kty": "EC", "kid": "ec-1", "alg": "ES256", "crv": "P-256",
         "x": b64url(e.x), "y": b64url(e.y)},
    ]}
    return jwks, [rsa_key, ec_key]


def test_jwks_to_pem_converts_rsa_and_p256(api_server_keys):
    from cryptography.hazmat.primitives import serialization
    jwks, keys = api_server_keys
    r = run_jwks_to_pem(jwks)
    assert r.returncode == 0, r.stderr
    blocks = re.findall(r"-----BEGIN PUBLIC KEY-----.*?-----END PUBLIC KEY-----\n", r.stdout, re.S)
    assert len(blocks) == 2 and "".join(blocks) == r.stdout
    for block, key in zip(blocks, keys):
        loaded = serialization.load_pem_public_key(block.encode())
        assert loaded.public_numbers() == key.public_numbers()


@pytest.mark.parametrize("jwk,message", [
    ({"kty": "EC", "kid": "k384", "crv": "P-384", "x": "AA", "y": "AA"}, "k384: EC curve P-384"),
    ({"kty": "RSA", "kid": "small", "n": b64url((1 << 1023) + 1), "e": "AQAB"}, "small: RSA key of 1024 bits"),
    ({"kty": "OKP", "kid": "ed", "crv": "Ed25519", "x": "AA"}, "ed: key type 'OKP'"),
    ({"kty": "RSA", "kid": "noe", "n": "AQAB"}, "noe: missing member 'e'"),
    ({"kty": "RSA", "kid": "enc", "use": "enc", "n": "AQAB", "e": "AQAB"}, "enc: \"use\" is 'enc'"),
])
def test_jwks_to_pem_refuses_keys_mtls_ca_cannot_use(jwk, message):
    r = run_jwks_to_pem({"keys": [jwk]})
    assert r.returncode == 1
    assert r.stdout == ""
    assert message in r.stderr, r.stderr


def test_jwks_to_pem_refuses_non_jwks():
    r = subprocess.run([PY, str(JWKS_TO_PEM)], input="not json", capture_output=True, text=True, timeout=30)
    assert r.returncode == 1 and "not a JWKS" in r.stderr


def test_jwks_to_pem_output_loads_in_mtls_ca(api_server_keys, dev_pki, tmp_path):
    """For mtls-ca without the Kubernetes source (outside the cluster, with a
    workloads file): the converted keys are what tokens.keys_file takes."""
    need_binary(MTLS_CA_BIN)
    jwks, _ = api_server_keys
    keys = tmp_path / "sa-signer.pub.pem"
    keys.write_text(run_jwks_to_pem(jwks).stdout)
    ca_yaml = lay_out_mtls_ca_volumes(tmp_path / "root", dev_pki)
    config = yaml.safe_load(ca_yaml.read_text())
    del config["kubernetes"], config["node_agents"]
    config["tokens"]["keys_file"] = str(keys)
    # Without the API, the issuer is not discovered: it has to be given.
    config["tokens"]["issuer"] = "https://kubernetes.default.svc.cluster.local"
    ca_yaml.write_text(yaml.safe_dump(config))
    r = subprocess.run([str(MTLS_CA_BIN), "--check-config", str(ca_yaml)],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr


# ---- Dockerfile --------------------------------------------------------------------------

def dockerfile_stages():
    """[(FROM arguments, [(INSTRUCTION, arguments), ...]), ...] with line
    continuations joined and comments dropped."""
    lines, current = [], ""
    for raw in DOCKERFILE.read_text().splitlines():
        stripped = raw.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if current and stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        lines.append(current + stripped)
        current = ""
    assert not current, "Dockerfile ends inside a continued line"
    args, stages = {}, []
    for line in lines:
        instruction, _, rest = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "ARG" and not stages:
            name, _, value = rest.partition("=")
            args[name.strip()] = value.strip()
        elif instruction == "FROM":
            for name, value in args.items():
                rest = rest.replace("${" + name + "}", value)
            stages.append((rest.strip(), []))
        else:
            assert stages, f"{instruction} before FROM"
            stages[-1][1].append((instruction, rest.strip()))
    return stages


def apt_installed(instructions):
    pkgs = set()
    for instruction, rest in instructions:
        if instruction == "RUN" and "apt-get install" in rest:
            part = rest.split("apt-get install", 1)[1].split("&&", 1)[0]
            pkgs |= {w for w in part.split() if not w.startswith("-")}
    return pkgs


def install_deps_packages():
    text = INSTALL_DEPS.read_text()
    block = re.search(r"PACKAGES=\((.*?)\n\)", text, re.S).group(1)
    return set(block.split())


def test_dockerfile_stages_and_bases():
    stages = dockerfile_stages()
    assert len(stages) == 2, "a build stage and a runtime stage"
    assert stages[0][0] == "debian:bookworm-slim AS build"
    assert stages[1][0] == "debian:bookworm-slim"


def test_dockerfile_build_stage():
    (_, build), _ = dockerfile_stages()
    pkgs = apt_installed(build)
    assert "bazel-bootstrap" in pkgs and "android-libboringssl-dev" in pkgs
    assert pkgs <= install_deps_packages(), pkgs - install_deps_packages()
    runs = " ".join(rest for instruction, rest in build if instruction == "RUN")
    assert re.search(r"bazel .*build .*//agent:mtlsd //controlplane:mtls-ca", runs)


def test_dockerfile_runtime_stage():
    _, (_, runtime) = dockerfile_stages()
    assert apt_installed(runtime) == RUNTIME_PACKAGES
    copies = [rest for instruction, rest in runtime if instruction == "COPY"]
    assert any(c.startswith("--from=build") and "mtlsd" in c and "mtls-ca" in c for c in copies), copies
    users = [rest for instruction, rest in runtime if instruction == "USER"]
    assert users, "the runtime stage sets no USER (it would run as root)"
    assert users[-1].split(":")[0] == str(AGENT_UID)
    assert any(i == "ENTRYPOINT" for i, _ in runtime)


def test_runtime_packages_provide_every_needed_library():
    """The libraries the built binaries link against come from the runtime
    packages (or the base image)."""
    need_binary(MTLSD_BIN)
    need_binary(MTLS_CA_BIN)
    if shutil.which("readelf") is None or shutil.which("dpkg") is None:
        pytest.skip("readelf/dpkg not available")
    for binary in (MTLSD_BIN, MTLS_CA_BIN):
        dyn = subprocess.run(["readelf", "-d", str(binary)], capture_output=True, text=True,
                             check=True).stdout
        runpath = re.findall(r"\((?:RUNPATH|RPATH)\).*\[(.*)\]", dyn)
        search = [d for p in runpath for d in p.split(":")] + \
            ["/usr/lib/x86_64-linux-gnu", "/lib/x86_64-linux-gnu"]
        needed = re.findall(r"\(NEEDED\).*\[(.*)\]", dyn)
        if any(re.match(r"lib(asan|ubsan|tsan|msan)\.", lib) for lib in needed):
            pytest.skip(f"{binary} is a sanitizer build; the image ships the plain one")
        for lib in needed:
            path = next((f"{d}/{lib}" for d in search if os.path.exists(f"{d}/{lib}")), None)
            assert path, f"{binary.name}: {lib} not found"
            owner = subprocess.run(["dpkg", "-S", os.path.realpath(path)], capture_output=True, text=True)
            if owner.returncode != 0:  # merged /usr: dpkg knows the /lib path
                owner = subprocess.run(["dpkg", "-S", os.path.realpath(path).replace("/usr/lib/", "/lib/")],
                                       capture_output=True, text=True)
            package = owner.stdout.split(":", 1)[0]
            assert package in RUNTIME_PACKAGES | BASE_IMAGE_PACKAGES, f"{binary.name}: {lib} from {package!r}"


def test_image_docs_and_deps():
    assert "docker build -f deploy/image/Dockerfile -t mtlsd:dev ." in \
        (REPO / "deploy" / "image" / "README.md").read_text()
    # This suite's own tools are installed by the project's dependency script
    # (test_manifest_schema.py validates against python3-kubernetes' models).
    assert {"yamllint", "python3-kubernetes"} <= install_deps_packages()


# ---- the Istio policy example ----------------------------------------------------

def test_istio_policy_example_names_the_sidecar_example_as_it_runs():
    """deploy/istio/web-allow-client.yaml speaks about what the sidecar
    example deploys: its selector selects web's pods (and nothing else),
    its principal is the client's identity as mtls-ca issues it (Istio's
    form, no spiffe://), its port is web's container port."""
    example = [d for d in load_docs(K8S.parent / "istio" / "web-allow-client.yaml") if d]
    (allow,) = [d for d in example if d["kind"] == "AuthorizationPolicy"]
    (strict,) = [d for d in example if d["kind"] == "PeerAuthentication"]
    assert allow["apiVersion"] == strict["apiVersion"] == "security.istio.io/v1"
    web = one("Deployment", "web", "mtls-demo")
    client = one("Deployment", "client", "mtls-demo")
    labels = allow["spec"]["selector"]["matchLabels"]
    selects = lambda d: labels.items() <= d["spec"]["template"]["metadata"]["labels"].items()
    assert selects(web) and not selects(client)
    assert allow["metadata"]["namespace"] == strict["metadata"]["namespace"] == "mtls-demo"
    assert allow["spec"]["action"] == "ALLOW" and strict["spec"]["mtls"]["mode"] == "STRICT"
    (rule,) = allow["spec"]["rules"]
    trust_domain = mtls_ca_config()[0]["trust_domain"]
    sa = pod_spec(client)["serviceAccountName"]
    assert rule["from"][0]["source"]["principals"] == [f"{trust_domain}/ns/mtls-demo/sa/{sa}"]
    ports = {str(p["containerPort"]) for c in containers(pod_spec(web)) for p in c.get("ports", [])}
    assert set(rule["to"][0]["operation"]["ports"]) <= ports


def test_workload_api_socket_is_shared_with_the_app_and_only_the_apps_uid_is_admitted():
    """web serves the SPIFFE Workload API to its app container: the socket
    lies in a volume the agent and the app (and nobody else) mount; the app
    finds it through SPIFFE_ENDPOINT_SOCKET; allowed_uids is the app's UID."""
    web = [w for w in SIDECARS if w["metadata"]["name"] == "web"]
    assert len(web) == 1
    spec = pod_spec(web[0])
    config = agent_config(web[0])
    socket = config["workload_api"]["socket"]
    directory = socket.rsplit("/", 1)[0]
    agent = init_container(spec, "mtlsd")
    shared = mounts_of(agent)[directory]
    assert "emptyDir" in volume(spec, shared)
    (app,) = app_containers(spec)
    assert mounts_of(app)[directory] == shared
    env = {e["name"]: e.get("value") for e in app.get("env", [])}
    assert env["SPIFFE_ENDPOINT_SOCKET"] == "unix://" + socket
    assert config["workload_api"]["allowed_uids"] == [app["securityContext"]["runAsUser"]]
    assert AGENT_UID not in config["workload_api"]["allowed_uids"]
    others = [c["name"] for c in containers(spec)
              if c is not agent and c is not app and shared in mounts_of(c).values()]
    assert others == [], f"other containers mount the Workload API socket: {others}"
