#!/usr/bin/env python3
"""A Kubernetes API server for tests: the handful of endpoints Gantry's cluster driver uses, with
the API's own semantics, in memory. No cluster can run on the test machine (no container engine);
this stands in for kube-apiserver and the two controllers whose effects the driver waits on.

What it implements, as kube-apiserver does:
  - server-side apply: PATCH with application/apply-patch+yaml (JSON documents), fieldManager
    required, field ownership per manager, 409 Conflict on a field another manager owns with a
    different value unless force=true, fields a manager stops applying are removed, dryRun=All;
  - merge patch (application/merge-patch+json) as another manager (`kubectl edit`, `scale`);
  - POST to a collection (create; 409 AlreadyExists), GET, LIST with labelSelector (k=v, k!=v,
    k, !k) and fieldSelector metadata.name=, DELETE;
  - watch (?watch=true): ADDED for what exists, then MODIFIED/DELETED, chunked, timeoutSeconds;
  - 404 for unknown objects, namespaces and unserved APIs (the CloudNativePG CRD unless
    --cnpg), 409 on a stale resourceVersion, 422 Invalid with causes, 403 in a terminating namespace,
    401 without the bearer token, TLS with an optional client-certificate requirement;
  - generation (bumped on spec changes), resourceVersion, uid, creationTimestamp;
  - Secret stringData folded into base64 data;
  - a deployment controller: status follows spec after a short delay (replicas, updated, ready,
    available, observedGeneration, conditions); an image whose name holds "unpullable" stalls with
    ProgressDeadlineExceeded and a pod waiting in ErrImagePull. StatefulSets likewise;
  - namespace deletion: Terminating, content removed, objects with finalizers keep it in
    Terminating with the NamespaceFinalizersRemaining condition until their finalizers go.
Simplification (documented in docs/kubernetes.md): lists are atomic for field ownership (the API
merges some by key, containers by name).

Usage: kube-apiserver.py PORT [--token T] [--cert C --key K [--client-ca CA]] [--cnpg]
Test hooks: GET /_requests lists the requests seen (method, path, query, content type).
"""
import base64, copy, json, re, select, ssl, sys, threading, time, uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlparse, parse_qs

ARGS = sys.argv[1:]
PORT = int(ARGS[0])
def option(name):
    return ARGS[ARGS.index(name) + 1] if name in ARGS else None
TOKEN = option("--token")
CNPG = "--cnpg" in ARGS

# resource plural -> (group/version, kind, namespaced)
RESOURCES = {
    ("v1", "namespaces"): ("Namespace", False),
    ("v1", "secrets"): ("Secret", True),
    ("v1", "services"): ("Service", True),
    ("v1", "pods"): ("Pod", True),
    ("v1", "resourcequotas"): ("ResourceQuota", True),
    ("v1", "limitranges"): ("LimitRange", True),
    ("apps/v1", "deployments"): ("Deployment", True),
    ("apps/v1", "statefulsets"): ("StatefulSet", True),
    ("networking.k8s.io/v1", "ingresses"): ("Ingress", True),
    ("networking.k8s.io/v1", "networkpolicies"): ("NetworkPolicy", True),
    ("autoscaling/v2", "horizontalpodautoscalers"): ("HorizontalPodAutoscaler", True),
}
if CNPG:
    RESOURCES[("postgresql.cnpg.io/v1", "clusters")] = ("Cluster", True)

LOCK = threading.Condition()
STORE = {}          # (gv, plural, namespace or "", name) -> object
EVENTS = []         # (rv, type, key, object)
REQUESTS = []
RV = [100]
DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def now():
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def status(code, reason, message, causes=None):
    body = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}
    if causes:
        body["details"] = {"causes": causes}
    return code, body


class Failure(Exception):
    def __init__(self, code, reason, message, causes=None):
        self.response = status(code, reason, message, causes)


# --- field ownership --------------------------------------------------------------------------

def leaves(value, prefix=()):
    """The field paths set in an applied configuration (maps recurse, lists are atomic)."""
    out = set()
    if isinstance(value, dict) and value:
        for key, item in value.items():
            if prefix == () and key in ("apiVersion", "kind"):
                continue
            if prefix == ("metadata",) and key in ("name", "namespace", "resourceVersion", "managedFields"):
                continue
            out |= leaves(item, prefix + (key,))
    else:
        out.add(prefix)
    return out


def get_path(obj, path):
    for key in path:
        if not isinstance(obj, dict) or key not in obj:
            return None
        obj = obj[key]
    return obj


def remove_path(obj, path):
    parents = []
    for key in path[:-1]:
        if not isinstance(obj, dict) or key not in obj:
            return
        parents.append((obj, key))
        obj = obj[key]
    if isinstance(obj, dict):
        obj.pop(path[-1], None)
    for parent, key in reversed(parents):  # empty maps left behind go too
        if parent[key] == {}:
            del parent[key]


def merge(into, applied):
    for key, value in applied.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            merge(into[key], value)
        else:
            into[key] = copy.deepcopy(value)


def fields_v1(paths):
    tree = {}
    for path in sorted(paths):
        node = tree
        for key in path:
            node = node.setdefault("f:" + key, {})
    return tree


def paths_of(fields, prefix=()):
    out = set()
    for key, value in fields.items():
        path = prefix + (key[2:],)
        if value:
            out |= paths_of(value, path)
        else:
            out.add(path)
    return out


def owners(obj):
    return {entry["manager"]: (entry["operation"], paths_of(entry.get("fieldsV1", {})))
            for entry in obj.get("metadata", {}).get("managedFields", [])}


def set_owners(obj, table):
    obj["metadata"]["managedFields"] = [
        {"manager": manager, "operation": operation, "apiVersion": obj.get("apiVersion"),
         "time": now(), "fieldsType": "FieldsV1", "fieldsV1": fields_v1(paths)}
        for manager, (operation, paths) in sorted(table.items()) if paths]


# --- validation -------------------------------------------------------------------------------

def validate(obj, kind, name, namespace):
    causes = []
    meta = obj.get("metadata") or {}
    if obj.get("kind") != kind:
        causes.append({"field": "kind", "message": "must be %s for this resource, found %r" % (kind, obj.get("kind"))})
    if meta.get("name") != name:
        raise Failure(400, "BadRequest", "the name of the object (%s) does not match the name on the URL (%s)" % (meta.get("name"), name))
    if namespace and meta.get("namespace") not in (None, namespace):
        raise Failure(400, "BadRequest", "the namespace of the provided object does not match the namespace sent on the request")
    label = kind in ("Namespace", "Service")
    if not (DNS1123_LABEL if label else DNS1123_SUBDOMAIN).match(name or "") or len(name) > (63 if label else 253):
        causes.append({"field": "metadata.name", "reason": "FieldValueInvalid",
                       "message": "Invalid value: %r: a lowercase RFC 1123 %s" % (name, "label" if label else "subdomain")})
    for key, value in (meta.get("labels") or {}).items():
        if not isinstance(value, str) or len(value) > 63:
            causes.append({"field": "metadata.labels", "message": "Invalid value for label %s: must be 63 characters or less" % key})
    spec = obj.get("spec") or {}
    if kind in ("Deployment", "StatefulSet"):
        selector = (spec.get("selector") or {}).get("matchLabels") or {}
        labels = ((spec.get("template") or {}).get("metadata") or {}).get("labels") or {}
        if not selector or any(labels.get(k) != v for k, v in selector.items()):
            causes.append({"field": "spec.template.metadata.labels", "message": "Invalid value: `selector` does not match template `labels`"})
        for i, container in enumerate(((spec.get("template") or {}).get("spec") or {}).get("containers") or []):
            if not container.get("image"):
                causes.append({"field": "spec.template.spec.containers[%d].image" % i, "message": "Required value"})
    if kind == "Secret":
        for key in list((obj.get("data") or {}).keys()) + list((obj.get("stringData") or {}).keys()):
            if not re.match(r"^[-._a-zA-Z0-9]+$", key):
                causes.append({"field": "data[%s]" % key, "message": "a valid config key must consist of alphanumeric characters, '-', '_' or '.'"})
    if causes:
        raise Failure(422, "Invalid", "%s %r is invalid: %s" % (kind, name, "; ".join(c["field"] + ": " + c["message"] for c in causes)), causes)


def fold_secret(obj):
    if obj.get("kind") == "Secret" and "stringData" in obj:
        data = obj.setdefault("data", {})
        for key, value in obj.pop("stringData").items():
            data[key] = base64.b64encode(value.encode()).decode()


def strip_meta(obj):
    return {k: v for k, v in obj.items() if k not in ("metadata", "status")}


def record(kind_of_event, key, obj):
    RV[0] += 1
    EVENTS.append((RV[0], kind_of_event, key, copy.deepcopy(obj)))
    del EVENTS[:-2000]
    LOCK.notify_all()


def store(key, obj, created):
    RV[0] += 1
    obj["metadata"]["resourceVersion"] = str(RV[0])
    STORE[key] = obj
    EVENTS.append((RV[0], "ADDED" if created else "MODIFIED", key, copy.deepcopy(obj)))
    del EVENTS[:-2000]
    LOCK.notify_all()


def namespace_state(namespace):
    ns = STORE.get(("v1", "namespaces", "", namespace))
    if ns is None:
        raise Failure(404, "NotFound", 'namespaces "%s" not found' % namespace)
    if ns["metadata"].get("deletionTimestamp"):
        raise Failure(403, "Forbidden", "unable to create new content in namespace %s because it is being terminated" % namespace)


# --- verbs ------------------------------------------------------------------------------------

def apply(gv, plural, namespace, name, body, query, content_type):
    kind, _ = RESOURCES[(gv, plural)]
    manager = (query.get("fieldManager") or [None])[0]
    force = (query.get("force") or ["false"])[0] == "true"
    dry = (query.get("dryRun") or [None])[0] == "All"
    try:
        applied = json.loads(body or b"{}")
    except ValueError as error:
        raise Failure(400, "BadRequest", "error decoding YAML: %s (this test server reads JSON documents only)" % error)
    if not isinstance(applied, dict):
        raise Failure(400, "BadRequest", "the body must be an object")
    key = (gv, plural, namespace or "", name)
    live = STORE.get(key)
    if content_type.startswith("application/apply-patch"):
        if not manager:
            raise Failure(422, "Invalid", 'PatchOptions.meta.k8s.io "" is invalid: fieldManager: Required value: is required for apply patch')
        if applied.get("apiVersion") != gv:
            raise Failure(400, "BadRequest", "apiVersion %r does not match the request's %r" % (applied.get("apiVersion"), gv))
        if (applied.get("metadata") or {}).get("name") != name:
            raise Failure(400, "BadRequest", "the name of the object (%s) does not match the name on the URL (%s)" % ((applied.get("metadata") or {}).get("name"), name))
        fold_secret(applied)
        wanted = leaves(applied)
        table = owners(live) if live else {}
        if live:
            version = (applied.get("metadata") or {}).get("resourceVersion")
            if version and version != live["metadata"]["resourceVersion"]:
                raise Failure(409, "Conflict", 'Operation cannot be fulfilled on %s "%s": the object has been modified; please apply your changes to the latest version and try again' % (plural, name))
            conflicts = []
            for other, (operation, paths) in table.items():
                if other == manager:
                    continue
                for path in sorted(paths & wanted):
                    if get_path(live, path) != get_path(applied, path):
                        conflicts.append((other, path))
            if conflicts and not force:
                text = "; ".join('conflict with "%s": .%s' % (m, ".".join(p)) for m, p in conflicts)
                raise Failure(409, "Conflict", "Apply failed with %d conflict%s: %s" % (len(conflicts), "" if len(conflicts) == 1 else "s", text),
                              [{"type": "FieldManagerConflict", "message": 'conflict with "%s"' % m, "field": "." + ".".join(p)} for m, p in conflicts])
            result = copy.deepcopy(live)
            before = table.get(manager, ("Apply", set()))[1]
            others = set().union(*[p for m, (_, p) in table.items() if m != manager]) if len(table) > 1 else set()
            for path in before - wanted - others:
                remove_path(result, path)
            merge(result, applied)
            for other in list(table):
                if other != manager:
                    operation, paths = table[other]
                    table[other] = (operation, paths - wanted if force else {p for p in paths - wanted} | {p for p in paths & wanted if get_path(live, p) == get_path(applied, p)})
        else:
            if kind != "Namespace":
                namespace_state(namespace)
            result = copy.deepcopy(applied)
            result["metadata"].pop("resourceVersion", None)
        table[manager] = ("Apply", wanted)
    elif content_type.startswith("application/merge-patch+json"):
        if live is None:
            raise Failure(404, "NotFound", '%s "%s" not found' % (plural, name))
        manager = manager or "kubectl-edit"
        result = copy.deepcopy(live)
        def merge_patch(into, patch, prefix=()):
            changed = set()
            for k, v in patch.items():
                if v is None:
                    into.pop(k, None)
                    changed.add(prefix + (k,))
                elif isinstance(v, dict) and isinstance(into.get(k), dict):
                    changed |= merge_patch(into[k], v, prefix + (k,))
                else:
                    into[k] = copy.deepcopy(v)
                    changed |= leaves(v, prefix + (k,))
            return changed
        touched = merge_patch(result, applied)
        table = owners(live)
        for other in list(table):
            table[other] = (table[other][0], table[other][1] - touched)
        previous = table.get(manager, ("Update", set()))[1]
        table[manager] = ("Update", previous | {p for p in touched if get_path(result, p) is not None})
        if result["metadata"].get("deletionTimestamp") and not result["metadata"].get("finalizers"):
            if not dry:
                del STORE[key]
                record("DELETED", key, result)
            return 200, result
    else:
        raise Failure(415, "UnsupportedMediaType", "the body of the request was in an unknown format - accepted media types include: application/apply-patch+yaml, application/merge-patch+json")
    meta = result.setdefault("metadata", {})
    meta["name"] = name
    if namespace:
        meta["namespace"] = namespace
    # (As the API does: what is validated is the object the patch makes, not the patch.)
    validate(result, kind, name, namespace)
    set_owners(result, table)
    if live is None:
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = now()
        meta["generation"] = 1
        if kind == "Namespace":
            meta.setdefault("labels", {})["kubernetes.io/metadata.name"] = name
            result["status"] = {"phase": "Active"}
    else:
        meta["generation"] = live["metadata"].get("generation", 1) + (1 if strip_meta(result) != strip_meta(live) else 0)
        meta["resourceVersion"] = live["metadata"]["resourceVersion"]
    if dry:
        return (201 if live is None else 200), result
    if live is not None and result == live:
        return 200, result
    store(key, result, live is None)
    return (201 if live is None else 200), result


def create(gv, plural, namespace, body, query):
    """POST to a collection: the object is made, or 409 AlreadyExists (no adoption)."""
    kind, _ = RESOURCES[(gv, plural)]
    try:
        obj = json.loads(body or b"{}")
    except ValueError as error:
        raise Failure(400, "BadRequest", "error decoding: %s" % error)
    name = (obj.get("metadata") or {}).get("name")
    validate(obj, kind, name, namespace)
    key = (gv, plural, namespace or "", name)
    if key in STORE:
        raise Failure(409, "AlreadyExists", '%s "%s" already exists' % (plural, name))
    if kind != "Namespace":
        namespace_state(namespace)
    fold_secret(obj)
    manager = (query.get("fieldManager") or ["unknown"])[0]
    meta = obj.setdefault("metadata", {})
    if namespace:
        meta["namespace"] = namespace
    set_owners(obj, {manager: ("Update", leaves(obj))})
    meta["uid"] = str(uuid.uuid4())
    meta["creationTimestamp"] = now()
    meta["generation"] = 1
    if kind == "Namespace":
        meta.setdefault("labels", {})["kubernetes.io/metadata.name"] = name
        obj["status"] = {"phase": "Active"}
    if (query.get("dryRun") or [None])[0] != "All":
        store(key, obj, True)
    return 201, obj


def delete(gv, plural, namespace, name):
    key = (gv, plural, namespace or "", name)
    live = STORE.get(key)
    if live is None:
        raise Failure(404, "NotFound", '%s "%s" not found' % (plural, name))
    if plural == "namespaces" or live["metadata"].get("finalizers"):
        if not live["metadata"].get("deletionTimestamp"):
            live = copy.deepcopy(live)
            live["metadata"]["deletionTimestamp"] = now()
            if plural == "namespaces":
                live["status"] = {"phase": "Terminating"}
            store(key, live, False)
        return 200, live
    del STORE[key]
    record("DELETED", key, live)
    return 200, {"kind": "Status", "apiVersion": "v1", "status": "Success", "details": {"name": name, "kind": plural}}


def selected(obj, labels, fields):
    have = obj["metadata"].get("labels") or {}
    for term in labels:
        if "!=" in term:
            k, v = term.split("!=", 1)
            if have.get(k) == v:
                return False
        elif "=" in term:
            k, v = term.split("=", 1)
            if have.get(k.rstrip("=")) != v:
                return False
        elif term.startswith("!"):
            if term[1:] in have:
                return False
        elif term not in have:
            return False
    for term in fields:
        k, v = term.split("=", 1)
        if k.rstrip("=") == "metadata.name" and obj["metadata"]["name"] != v:
            return False
    return True


# --- controllers ------------------------------------------------------------------------------

def controllers():
    while True:
        time.sleep(0.1)
        with LOCK:
            for key, obj in list(STORE.items()):
                gv, plural, namespace, name = key
                meta = obj["metadata"]
                if plural in ("deployments", "statefulsets"):
                    spec, st = obj.get("spec") or {}, obj.get("status") or {}
                    if st.get("observedGeneration") == meta.get("generation") and st.get("_settled"):
                        continue
                    age = time.time() - st.get("_seen", time.time())
                    if st.get("observedGeneration") != meta.get("generation"):
                        st = {"observedGeneration": meta.get("generation"), "_seen": time.time(), "replicas": st.get("replicas", 0),
                              "updatedReplicas": 0, "readyReplicas": st.get("readyReplicas", 0), "availableReplicas": st.get("availableReplicas", 0)}
                        obj = copy.deepcopy(obj)
                        obj["status"] = st
                        store(key, obj, False)
                        continue
                    if age < 0.4:
                        continue
                    images = [c.get("image", "") for c in spec["template"]["spec"].get("containers", [])]
                    want = spec.get("replicas", 1)
                    obj = copy.deepcopy(obj)
                    if any("unpullable" in image for image in images):
                        obj["status"].update({"_settled": True, "conditions": [
                            {"type": "Available", "status": "False", "reason": "MinimumReplicasUnavailable", "message": "Deployment does not have minimum availability."},
                            {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
                             "message": 'ReplicaSet "%s-5d8f" has timed out progressing.' % name}]})
                        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {
                            "name": name + "-5d8f-x1", "namespace": namespace, "uid": str(uuid.uuid4()),
                            "labels": spec["template"]["metadata"].get("labels", {})},
                            "status": {"phase": "Pending", "containerStatuses": [{"name": c["name"], "ready": False, "state": {"waiting": {
                                "reason": "ErrImagePull", "message": 'failed to pull image "%s": not found' % c.get("image")}}}
                                for c in spec["template"]["spec"]["containers"]]}}
                        store(("v1", "pods", namespace, pod["metadata"]["name"]), pod, True)
                    else:
                        obj["status"].update({"_settled": True, "replicas": want, "updatedReplicas": want, "readyReplicas": want,
                                              "availableReplicas": want, "currentReplicas": want,
                                              "currentRevision": "r%d" % meta["generation"], "updateRevision": "r%d" % meta["generation"],
                                              "conditions": [{"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable"},
                                                             {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"}]})
                    store(key, obj, False)
                elif plural == "namespaces" and meta.get("deletionTimestamp"):
                    held = []
                    for other_key, other in list(STORE.items()):
                        if other_key[2] != name:
                            continue
                        if other["metadata"].get("finalizers"):
                            held.append(other)
                            if not other["metadata"].get("deletionTimestamp"):
                                other = copy.deepcopy(other)
                                other["metadata"]["deletionTimestamp"] = now()
                                store(other_key, other, False)
                        else:
                            del STORE[other_key]
                            record("DELETED", other_key, other)
                    if held:
                        finalizers = sorted({f for o in held for f in o["metadata"]["finalizers"]})
                        conditions = [{"type": "NamespaceFinalizersRemaining", "status": "True", "reason": "SomeFinalizersRemain",
                                       "message": "Some content in the namespace has finalizers remaining: %s in %d resource instances"
                                       % (", ".join(finalizers), len(held))},
                                      {"type": "NamespaceContentRemaining", "status": "True", "reason": "SomeResourcesRemain",
                                       "message": "Some resources are remaining: %s" % ", ".join(
                                           "%s.%s has 1 resource instances" % (o["kind"].lower(), o["metadata"]["name"]) for o in held)}]
                        if (obj.get("status") or {}).get("conditions") != conditions:
                            obj = copy.deepcopy(obj)
                            obj["status"]["conditions"] = conditions
                            store(key, obj, False)
                    else:
                        del STORE[key]
                        record("DELETED", key, obj)


def public(obj):
    """An object as the API shows it (the controllers' bookkeeping left out)."""
    obj = copy.deepcopy(obj)
    for k in [k for k in (obj.get("status") or {}) if k.startswith("_")]:
        del obj["status"][k]
    return obj


# --- HTTP -------------------------------------------------------------------------------------

PATH = re.compile(r"^/(?:api/(?P<core>v1)|apis/(?P<group>[^/]+/[^/]+))(?:/namespaces/(?P<ns>[^/]+))?/(?P<plural>[^/]+)(?:/(?P<name>[^/]+))?$")
NS_PATH = re.compile(r"^/api/v1/namespaces(?:/(?P<name>[^/]+))?$")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def log_message(self, *args):
        pass

    def send(self, code, body):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def route(self, method):
        url = urlparse(self.path)
        query = parse_qs(url.query)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        content_type = self.headers.get("Content-Type") or ""
        with LOCK:
            REQUESTS.append({"method": method, "path": url.path, "query": url.query, "contentType": content_type})
        if url.path == "/_requests":
            return self.send(200, REQUESTS)
        if TOKEN and self.headers.get("Authorization") != "Bearer " + TOKEN:
            return self.send(*status(401, "Unauthorized", "Unauthorized"))
        if url.path in ("/api", "/apis", "/version"):
            return self.send(200, {"kind": "APIVersions", "versions": ["v1"], "gitVersion": "v1.33.0-gantry-test"})
        discovery = re.match(r"^/apis/([^/]+/[^/]+)$", url.path)
        if discovery:
            gv = discovery.group(1)
            served = [(p, k) for (g, p), (k, _) in RESOURCES.items() if g == gv]
            if not served:
                return self.send(*status(404, "NotFound", "the server could not find the requested resource"))
            return self.send(200, {"kind": "APIResourceList", "groupVersion": gv,
                                   "resources": [{"name": p, "kind": k, "namespaced": True} for p, k in served]})
        match = NS_PATH.match(url.path)
        if match:
            gv, plural, namespace, name = "v1", "namespaces", None, match.group("name")
        else:
            match = PATH.match(url.path)
            if not match:
                return self.send(*status(404, "NotFound", "the server could not find the requested resource"))
            gv = match.group("core") or match.group("group")
            plural, namespace, name = match.group("plural"), match.group("ns"), match.group("name")
        if (gv, plural) not in RESOURCES:
            return self.send(*status(404, "NotFound", "the server could not find the requested resource"))
        try:
            if method == "GET" and name is None and (query.get("watch") or ["false"])[0] in ("true", "1"):
                return self.watch(gv, plural, namespace, query)
            with LOCK:
                if method == "GET" and name is None:
                    labels = [t for t in ",".join(query.get("labelSelector", [])).split(",") if t]
                    fields = [t for t in ",".join(query.get("fieldSelector", [])).split(",") if t]
                    items = [public(o) for (g, p, n, _), o in sorted(STORE.items())
                             if g == gv and p == plural and (namespace is None or n == namespace) and selected(o, labels, fields)]
                    return self.send(200, {"kind": RESOURCES[(gv, plural)][0] + "List", "apiVersion": gv,
                                           "metadata": {"resourceVersion": str(RV[0])}, "items": items})
                if method == "GET":
                    obj = STORE.get((gv, plural, namespace or "", name))
                    if obj is None:
                        raise Failure(404, "NotFound", '%s "%s" not found' % (plural, name))
                    return self.send(200, public(obj))
                if method == "PATCH" and name:
                    code, obj = apply(gv, plural, namespace, name, body, query, content_type)
                    return self.send(code, public(obj))
                if method == "DELETE" and name:
                    return self.send(*delete(gv, plural, namespace, name))
                if method == "POST" and name is None:
                    code, obj = create(gv, plural, namespace, body, query)
                    return self.send(code, public(obj))
            raise Failure(405, "MethodNotAllowed", "the server does not allow this method on the requested resource")
        except Failure as failure:
            return self.send(*failure.response)

    def watch(self, gv, plural, namespace, query):
        labels = [t for t in ",".join(query.get("labelSelector", [])).split(",") if t]
        fields = [t for t in ",".join(query.get("fieldSelector", [])).split(",") if t]
        deadline = time.time() + float((query.get("timeoutSeconds") or ["30"])[0])
        since = (query.get("resourceVersion") or [None])[0]
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        def chunk(event):
            data = (json.dumps(event) + "\n").encode()
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()
        def wanted(key, obj):
            g, p, n, _ = key
            return g == gv and p == plural and (namespace is None or n == namespace) and selected(obj, labels, fields)
        try:
            with LOCK:
                if since is None:
                    cursor = RV[0]
                    pending = [{"type": "ADDED", "object": public(o)} for k, o in sorted(STORE.items()) if wanted(k, o)]
                else:
                    cursor = int(since)
                    pending = []
            while True:
                for event in pending:
                    chunk(event)
                # A client that went away (closed, or sent TLS close_notify) ends the watch, as
                # kube-apiserver does.
                if select.select([self.connection], [], [], 0)[0]:
                    break
                with LOCK:
                    remaining = deadline - time.time()
                    if remaining <= 0:
                        break
                    if not any(rv > cursor for rv, _, _, _ in EVENTS[-50:]):
                        LOCK.wait(min(remaining, 0.5))
                    fresh = [(rv, t, k, o) for rv, t, k, o in EVENTS if rv > cursor]
                    if fresh:
                        cursor = fresh[-1][0]
                    pending = [{"type": t, "object": public(o)} for _, t, k, o in fresh if wanted(k, o)]
            self.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass
        self.close_connection = True

    def do_GET(self):
        self.route("GET")

    def do_PATCH(self):
        self.route("PATCH")

    def do_DELETE(self):
        self.route("DELETE")

    def do_POST(self):
        self.route("POST")

    def do_PUT(self):
        self.route("PUT")


server = ThreadingHTTPServer(("127.0.0.1", PORT), Handler)
server.daemon_threads = True
if option("--cert"):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(option("--cert"), option("--key"))
    if option("--client-ca"):
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(option("--client-ca"))
    server.socket = context.wrap_socket(server.socket, server_side=True)
threading.Thread(target=controllers, daemon=True).start()
print("ready", flush=True)
server.serve_forever()
