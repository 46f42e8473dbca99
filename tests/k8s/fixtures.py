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
