"""Kubernetes objects shaped as the API server returns them.

The shapes follow what `kubectl get -o json` prints for a Pod, a Service, a
discovery.k8s.io/v1 EndpointSlice and a Namespace on a 1.29 cluster:
ownerReferences on pods, several containers, conditions, dual-stack
status.podIPs, spec.nodeName, spec.serviceAccountName, status.phase. The
server (apiserver_standin.py) fills in metadata.uid, resourceVersion,
creationTimestamp and generation, as the real one does.
"""

import copy

MESH_LABEL = "mtlsd.io/mesh"
MESH_ENABLED = "enabled"
SERVICE_NAME_LABEL = "kubernetes.io/service-name"


def namespace(name, mesh=True, labels=None):
    all_labels = {"kubernetes.io/metadata.name": name}
    if mesh:
        all_labels[MESH_LABEL] = MESH_ENABLED
    all_labels.update(labels or {})
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": name, "labels": all_labels},
        "spec": {"finalizers": ["kubernetes"]},
        "status": {"phase": "Active"},
    }


def _container(name, image, port):
    return {
        "name": name,
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "ports": [{"containerPort": port, "name": "http", "protocol": "TCP"}] if port else [],
        "resources": {},
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "File",
        "volumeMounts": [
            {
                "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount",
                "name": "kube-api-access-x7k2p",
                "readOnly": True,
            }
        ],
    }


def _container_status(name, image, ready):
    return {
        "containerID": "containerd://" + ("%064x" % abs(hash((name, image))))[:64],
        "image": image,
        "imageID": image + "@sha256:" + "0" * 64,
        "lastState": {},
        "name": name,
        "ready": ready,
        "restartCount": 0,
        "started": ready,
        "state": {"running": {"startedAt": "2026-12-05T10:00:03Z"}},
    }


def pod(ns, name, sa, node, ips, phase="Running", ready=True, app=None, replicaset=None):
    """A Deployment's pod: owned by a ReplicaSet, an app container and a
    log-shipper sidecar. |ips| is the dual-stack list, IPv4 first."""
    app = app or name.rsplit("-", 2)[0]
    replicaset = replicaset or app + "-7d9f8b6c5d"
    ready_s = "True" if ready else "False"
    running = phase == "Running"
    obj = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": ns,
            "generateName": replicaset + "-",
            "labels": {"app": app, "pod-template-hash": replicaset.rsplit("-", 1)[1]},
            "ownerReferences": [
                {
                    "apiVersion": "apps/v1",
                    "blockOwnerDeletion": True,
                    "controller": True,
                    "kind": "ReplicaSet",
                    "name": replicaset,
                    "uid": "5b0c6a1e-8f7e-4c3b-9d2a-" + ("%012x" % (abs(hash(replicaset)) % (1 << 48))),
                }
            ],
        },
        "spec": {
            "containers": [
                _container(app, "registry.example.org/%s:1.4.2" % app, 8080),
                _container("log-shipper", "registry.example.org/fluent-bit:2.2", 0),
            ],
            "dnsPolicy": "ClusterFirst",
            "enableServiceLinks": True,
            "nodeName": node,
            "preemptionPolicy": "PreemptLowerPriority",
            "priority": 0,
            "restartPolicy": "Always",
            "schedulerName": "default-scheduler",
            "securityContext": {},
            "serviceAccount": sa,
            "serviceAccountName": sa,
            "terminationGracePeriodSeconds": 30,
            "tolerations": [
                {
                    "effect": "NoExecute",
                    "key": "node.kubernetes.io/not-ready",
                    "operator": "Exists",
                    "tolerationSeconds": 300,
                }
            ],
            "volumes": [
                {
                    "name": "kube-api-access-x7k2p",
                    "projected": {
                        "defaultMode": 420,
                        "sources": [
                            {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                            {"configMap": {"items": [{"key": "ca.crt", "path": "ca.crt"}], "name": "kube-root-ca.crt"}},
                        ],
                    },
                }
            ],
        },
        "status": {
            "conditions": [
                {"lastProbeTime": None, "lastTransitionTime": "2026-12-05T10:00:01Z", "status": "True", "type": "Initialized"},
                {"lastProbeTime": None, "lastTransitionTime": "2026-12-05T10:00:04Z", "status": ready_s, "type": "Ready"},
                {"lastProbeTime": None, "lastTransitionTime": "2026-12-05T10:00:04Z", "status": ready_s, "type": "ContainersReady"},
                {"lastProbeTime": None, "lastTransitionTime": "2026-12-05T10:00:00Z", "status": "True", "type": "PodScheduled"},
            ],
            "hostIP": "192.168.10.%d" % (1 + abs(hash(node)) % 200),
            "hostIPs": [{"ip": "192.168.10.%d" % (1 + abs(hash(node)) % 200)}],
            "phase": phase,
            "qosClass": "BestEffort",
            "startTime": "2026-12-05T10:00:00Z",
        },
    }
    if running:
        obj["status"]["containerStatuses"] = [
            _container_status(app, "registry.example.org/%s:1.4.2" % app, ready),
            _container_status("log-shipper", "registry.example.org/fluent-bit:2.2", ready),
        ]
    if not node:
        del obj["spec"]["nodeName"]  # unscheduled: the API omits it
    if ips:
        obj["status"]["podIP"] = ips[0]
        obj["status"]["podIPs"] = [{"ip": ip} for ip in ips]
    return obj


def terminating(pod_obj, when="2026-12-05T11:00:00Z"):
    """The pod as the API shows it after `kubectl delete`, during its grace period."""
    obj = copy.deepcopy(pod_obj)
    obj["metadata"]["deletionTimestamp"] = when
    obj["metadata"]["deletionGracePeriodSeconds"] = 30
    return obj


def service(ns, name, cluster_ips, ports, selector=None):
    """|ports| is a list of (name, port, targetPort)."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": ns, "labels": {"app": name}},
        "spec": {
            "clusterIP": cluster_ips[0],
            "clusterIPs": list(cluster_ips),
            "internalTrafficPolicy": "Cluster",
            "ipFamilies": ["IPv6" if ":" in ip else "IPv4" for ip in cluster_ips],
            "ipFamilyPolicy": "PreferDualStack" if len(cluster_ips) > 1 else "SingleStack",
            "ports": [
                {"name": pname, "port": port, "protocol": "TCP", "targetPort": target}
                for pname, port, target in ports
            ],
            "selector": selector or {"app": name},
            "sessionAffinity": "None",
            "type": "ClusterIP",
        },
        "status": {"loadBalancer": {}},
    }


def endpointslice(ns, service_name, suffix, address_type, endpoints, ports):
    """|endpoints| is a list of (pod name, address, node, ready); |ports| of
    (name, port)."""
    return {
        "addressType": address_type,
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": "%s-%s" % (service_name, suffix),
            "namespace": ns,
            "generateName": service_name + "-",
            "labels": {
                "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
                SERVICE_NAME_LABEL: service_name,
            },
            "ownerReferences": [
                {
                    "apiVersion": "v1",
                    "blockOwnerDeletion": True,
                    "controller": True,
                    "kind": "Service",
                    "name": service_name,
                    "uid": "9e1d2c3b-4a5f-4e6d-8c7b-%012x" % (abs(hash(service_name)) % (1 << 48)),
                }
            ],
        },
        "endpoints": [
            {
                "addresses": [address],
                "conditions": {"ready": ready, "serving": ready, "terminating": False},
                "nodeName": node,
                "targetRef": {"kind": "Pod", "name": pod_name, "namespace": ns, "uid": "%032x" % abs(hash(pod_name))},
            }
            for pod_name, address, node, ready in endpoints
        ],
        "ports": [{"name": pname, "port": port, "protocol": "TCP"} for pname, port in ports],
    }


def _node_condition(ctype, status, reason, message):
    return {
        "lastHeartbeatTime": "2026-12-05T10:41:27Z",
        "lastTransitionTime": "2026-12-05T09:58:40Z",
        "message": message,
        "reason": reason,
        "status": status,
        "type": ctype,
    }


def node(name, pod_cidrs, internal_ips, legacy=False, control_plane=False):
    """A kubeadm worker as `kubectl get node NAME -o json` prints it on a
    1.29 cluster. |pod_cidrs| is spec.podCIDRs (IPv4 first on a dual-stack
    node; [] when the CNI allocates addresses itself, as Calico's IPAM
    does, and the field is absent); |legacy| writes spec.podCIDR alone, as
    objects from before the list existed have it."""
    labels = {
        "beta.kubernetes.io/arch": "amd64",
        "beta.kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        "mtlsd/node-mode": "true",
    }
    if control_plane:
        labels["node-role.kubernetes.io/control-plane"] = ""
        labels["node.kubernetes.io/exclude-from-external-load-balancers"] = ""
    spec = {"providerID": "kubeadm://" + name}
    if pod_cidrs and legacy:
        spec["podCIDR"] = pod_cidrs[0]
    elif pod_cidrs:
        spec["podCIDR"] = pod_cidrs[0]
        spec["podCIDRs"] = list(pod_cidrs)
    if control_plane:
        spec["taints"] = [{"effect": "NoSchedule", "key": "node-role.kubernetes.io/control-plane"}]
    resources = {"cpu": "8", "ephemeral-storage": "102625208Ki", "hugepages-1Gi": "0",
                 "hugepages-2Mi": "0", "memory": "32729720Ki", "pods": "110"}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "annotations": {
                "kubeadm.alpha.kubernetes.io/cri-socket": "unix:///var/run/containerd/containerd.sock",
                "node.alpha.kubernetes.io/ttl": "0",
                "volumes.kubernetes.io/controller-managed-attach-detach": "true",
            },
            "labels": labels,
            "name": name,
        },
        "spec": spec,
        "status": {
            "addresses": [{"address": ip, "type": "InternalIP"} for ip in internal_ips]
            + [{"address": name, "type": "Hostname"}],
            "allocatable": dict(resources),
            "capacity": dict(resources),
            "conditions": [
                _node_condition("MemoryPressure", "False", "KubeletHasSufficientMemory",
                                "kubelet has sufficient memory available"),
                _node_condition("DiskPressure", "False", "KubeletHasNoDiskPressure",
                                "kubelet has no disk pressure"),
                _node_condition("PIDPressure", "False", "KubeletHasSufficientPID",
                                "kubelet has sufficient PID available"),
                _node_condition("Ready", "True", "KubeletReady", "kubelet is posting ready status"),
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "images": [
                {"names": ["registry.k8s.io/etcd@sha256:22f892d7672adc0b9c86df67792afdb8b2dc08880f49f669eaaa59c47d7908c2",
                           "registry.k8s.io/etcd:3.5.10-0"], "sizeBytes": 56649232},
                {"names": ["registry.k8s.io/kube-proxy@sha256:6e0de32a002b910b9b2e0e8d769e2d7b05208240559c745ce4781082ab15f22",
                           "registry.k8s.io/kube-proxy:v1.29.2"], "sizeBytes": 28397431},
                {"names": ["registry.example.org/web@sha256:" + "1" * 64, "registry.example.org/web:1.4.2"],
                 "sizeBytes": 19871234},
                {"names": ["registry.k8s.io/pause@sha256:7031c1b283388d2c2e09b57badb803c05ebed362dc88d84b480cc47f72a21097",
                           "registry.k8s.io/pause:3.9"], "sizeBytes": 321520},
            ],
            "nodeInfo": {
                "architecture": "amd64",
                "bootID": "6f1e0c7a-4b2d-4e8f-9a3c-5d7e9f1b3c5d",
                "containerRuntimeVersion": "containerd://1.7.13",
                "kernelVersion": "6.1.0-18-amd64",
                "kubeProxyVersion": "v1.29.2",
                "kubeletVersion": "v1.29.2",
                "machineID": "3f5c7e9a1b2d4f6a8c0e2f4a6b8d0f1e",
                "operatingSystem": "linux",
                "osImage": "Debian GNU/Linux 12 (bookworm)",
                "systemUUID": "8c2e4f6a-0b1d-4e3f-8a5c-7e9f1b3d5f7a",
            },
        },
    }


# The nodes of the tests: an IPv4 node, a dual-stack one, one whose CNI
# allocates no per-node CIDR (no podCIDR at all), one written before
# spec.podCIDRs existed.
NODE_1 = node("node-1", ["10.244.1.0/24"], ["172.18.0.3"])
NODE_2 = node("node-2", ["10.244.2.0/24", "fd00:10:244:2::/64"], ["172.18.0.4", "fc00:f853:ccd:e793::4"])
NODE_3 = node("node-3", [], ["172.18.0.5"])
NODE_OLD = node("node-old", ["10.244.9.0/24"], ["172.18.0.9"], legacy=True)


def authorization_policy(ns, name, spec, version="v1"):
    """An Istio AuthorizationPolicy as `kubectl get -o json` prints it
    (the server fills in uid, resourceVersion, creationTimestamp)."""
    return {
        "apiVersion": "security.istio.io/" + version,
        "kind": "AuthorizationPolicy",
        "metadata": {"name": name, "namespace": ns, "generation": 1, "annotations": {}},
        "spec": copy.deepcopy(spec),
    }


def peer_authentication(ns, name, spec, version="v1"):
    """An Istio PeerAuthentication, shaped as authorization_policy's."""
    return {
        "apiVersion": "security.istio.io/" + version,
        "kind": "PeerAuthentication",
        "metadata": {"name": name, "namespace": ns, "generation": 1},
        "spec": copy.deepcopy(spec),
    }
