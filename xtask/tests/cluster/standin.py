#!/usr/bin/env python3
"""A cluster stand-in for the integration tests: a loopback Kubernetes API
server that the real kubectl talks to, with a small External Secrets
Operator and a kubelet port-forward behind it.

    python3 standin.py --dir DIR [--parent-pid PID]

Writes DIR/standin.json = {"url", "token", "pid"} once it listens, appends
`METHOD PATH?QUERY -> STATUS` to DIR/requests.log for every API request, and
exits when PID is gone or on SIGTERM. See README.md for what it serves and
for the test control API under /_standin/. Python standard library only.
"""
import argparse
import base64
import calendar
import copy
import hashlib
import hmac
import json
import os
import re
import secrets
import select
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import traceback
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

# ---------------------------------------------------------------- state --
# One lock guards the objects, the knobs and the controllers' memory;
# CHANGED wakes the watchers after every write.
LOCK = threading.RLock()
CHANGED = threading.Condition(LOCK)
OBJECTS = {}            # (group, plural, namespace, name) -> object
HISTORY = []            # (rv, type, group, plural, namespace, object) for watches
RV = [1000]             # the global resourceVersion counter
ADMIN_TOKEN = secrets.token_urlsafe(32)
RSA = {}                # the service-account signing key: n, e, d, kid (see load_rsa)
ISSUER = "https://kubernetes.default.svc.cluster.local"
API_AUDIENCES = ["https://kubernetes.default.svc.cluster.local"]
KNOBS = {"clock_offset": 0, "reconcile_delay": 0.2, "store_health": {}, "upstreams": {},
         "portforward": {"websocket": True, "refuse": False, "die_after": [None]},
         "eso": {"running": True, "frozen": []}}
SESSIONS = []           # port-forward sessions, for /_standin/portforward
PF_BASE = [0]           # index into SESSIONS where the current die_after list starts
LOG = {"path": None, "lock": threading.Lock()}
SERVER_URL = [""]
PLAIN = [False]         # --plain: no TLS, and tokenless requests are the admin's

ALL_VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]
STATUS_VERBS = ["get", "patch", "update"]


# ---------------------------------------------------------------- clock --
def cluster_now():
    """The cluster's clock: ours plus the clock_offset knob."""
    return time.time() + float(KNOBS.get("clock_offset") or 0)


def rfc3339(t=None):
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(cluster_now() if t is None else t))


def parse_time(s):
    try:
        return calendar.timegm(time.strptime(str(s)[:19], "%Y-%m-%dT%H:%M:%S"))
    except ValueError:
        return None


def human_duration(secs):
    """apimachinery's duration.HumanDuration: the AGE column."""
    s = int(secs)
    if s < -1:
        return "<invalid>"
    if s < 0:
        return "0s"
    if s < 120:
        return f"{s}s"
    m = s // 60
    if m < 10:
        return f"{m}m" if s % 60 == 0 else f"{m}m{s % 60}s"
    if m < 180:
        return f"{m}m"
    h = s // 3600
    if h < 8:
        return f"{h}h" if m % 60 == 0 else f"{h}h{m % 60}m"
    if h < 48:
        return f"{h}h"
    if h < 24 * 8:
        return f"{h // 24}d" if h % 24 == 0 else f"{h // 24}d{h % 24}h"
    if h < 24 * 365 * 2:
        return f"{h // 24}d"
    if h < 24 * 365 * 8:
        y, d = h // 24 // 365, (h // 24) % 365
        return f"{y}y" if d == 0 else f"{y}y{d}d"
    return f"{h // 24 // 365}y"


def age(ts):
    t = parse_time(ts) if ts else None
    return human_duration(cluster_now() - t) if t is not None else "<unknown>"


def go_duration(s):
    """Seconds in a Go duration string ("1h", "15m30s", "0"); None if unparsable."""
    s = str(s or "").strip()
    if s in ("0", ""):
        return 0.0
    units = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)", s)
    if not parts or "".join(a + b for a, b in parts) != s:
        return None
    return sum(float(a) * units[b] for a, b in parts)


# ------------------------------------------------------------- registry --
def res(group, version, plural, singular, kind, namespaced, verbs=ALL_VERBS, short=(), cats=(), sub=None):
    return {"group": group, "versions": [version], "plural": plural, "singular": singular, "kind": kind,
            "namespaced": namespaced, "verbs": list(verbs), "shortNames": list(short),
            "categories": list(cats), "sub": sub or {}, "columns": {}, "crd": False}


BUILTIN = [
    res("", "v1", "namespaces", "namespace", "Namespace", False,
        ["create", "delete", "get", "list", "patch", "update", "watch"], ["ns"],
        sub={"status": ("Namespace", STATUS_VERBS)}),
    res("", "v1", "services", "service", "Service", True, short=["svc"], cats=["all"],
        sub={"status": ("Service", STATUS_VERBS)}),
    res("", "v1", "pods", "pod", "Pod", True, short=["po"], cats=["all"],
        sub={"status": ("Pod", STATUS_VERBS), "portforward": ("PodPortForwardOptions", ["create", "get"])}),
    res("", "v1", "endpoints", "endpoints", "Endpoints", True, short=["ep"]),
    res("", "v1", "serviceaccounts", "serviceaccount", "ServiceAccount", True, short=["sa"],
        sub={"token": ("TokenRequest", ["create"], "authentication.k8s.io", "v1")}),
    res("", "v1", "events", "event", "Event", True, short=["ev"]),
    res("", "v1", "secrets", "secret", "Secret", True),
    res("", "v1", "configmaps", "configmap", "ConfigMap", True, short=["cm"]),
    res("apiextensions.k8s.io", "v1", "customresourcedefinitions", "customresourcedefinition",
        "CustomResourceDefinition", False, short=["crd", "crds"], cats=["api-extensions"],
        sub={"status": ("CustomResourceDefinition", STATUS_VERBS)}),
    res("rbac.authorization.k8s.io", "v1", "clusterrolebindings", "clusterrolebinding", "ClusterRoleBinding", False),
    res("rbac.authorization.k8s.io", "v1", "clusterroles", "clusterrole", "ClusterRole", False),
    res("authentication.k8s.io", "v1", "tokenreviews", "tokenreview", "TokenReview", False, ["create"]),
]
CRD_KEY = ("apiextensions.k8s.io", "customresourcedefinitions")


def version_priority(v):
    """Kubernetes' version order: v1 > v1beta2 > v1beta1 > v1alpha1 > others."""
    m = re.fullmatch(r"v(\d+)(?:(alpha|beta)(\d+))?", v)
    if not m:
        return (0, 0, 0, v)
    stage = {"alpha": 1, "beta": 2, None: 3}[m[2]]
    return (1, stage, int(m[1]), int(m[3] or 0))


def crd_resources():
    """Custom resources as the CRDs in the store declare them (served versions only)."""
    out = []
    for (g, p, _, _), crd in list(OBJECTS.items()):
        if (g, p) != CRD_KEY:
            continue
        spec = crd.get("spec") or {}
        names = spec.get("names") or {}
        served = [v for v in spec.get("versions") or [] if v.get("served")]
        if not served or not names.get("plural") or not names.get("kind"):
            continue
        r = res(spec.get("group", ""), "", names["plural"], names.get("singular") or names["kind"].lower(),
                names["kind"], spec.get("scope", "Namespaced") == "Namespaced",
                short=names.get("shortNames") or (), cats=names.get("categories") or ())
        r["versions"] = sorted((v["name"] for v in served), key=version_priority, reverse=True)
        r["crd"] = True
        r["columns"] = {v["name"]: v.get("additionalPrinterColumns") for v in served}
        if any("status" in (v.get("subresources") or {}) for v in served):
            r["sub"] = {"status": (names["kind"], STATUS_VERBS)}
        out.append(r)
    return out


def all_resources():
    return BUILTIN + crd_resources()


def resolve(group, version, plural):
    for r in all_resources():
        if r["group"] == group and r["plural"] == plural and version in r["versions"]:
            return r
    return None


def by_kind(api_version, kind):
    """The resource of an object given as apiVersion+kind (any version of a CRD)."""
    group = api_version.rpartition("/")[0]
    for r in BUILTIN:
        if r["group"] == group and r["kind"] == kind:
            return r
    for crd in [o for (g, p, _, _), o in OBJECTS.items() if (g, p) == CRD_KEY]:
        spec = crd.get("spec") or {}
        names = spec.get("names") or {}
        if spec.get("group") == group and names.get("kind") == kind:
            r = res(group, "", names["plural"], names.get("singular", ""), kind,
                    spec.get("scope", "Namespaced") == "Namespaced")
            r["crd"] = True
            return r
    return None


def qualified(r):
    return r["plural"] if not r["group"] else f"{r['plural']}.{r['group']}"


# --------------------------------------------------------------- errors --
class ApiError(Exception):
    def __init__(self, code, reason, message, details=None):
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, details


def status_body(code, reason, message, details=None):
    body = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
            "reason": reason}
    if details is not None:
        body["details"] = details
    body["code"] = code
    return body


def details(r, name):
    d = {"name": name}
    if r["group"]:
        d["group"] = r["group"]
    d["kind"] = r["plural"]
    return d


def not_found(r, name):
    return ApiError(404, "NotFound", f'{qualified(r)} "{name}" not found', details(r, name))


def unknown_path():
    return ApiError(404, "NotFound", "the server could not find the requested resource", {})


# ---------------------------------------------------------------- store --
def key_of(r, ns, name):
    return (r["group"], r["plural"], ns if r["namespaced"] else "", name)


def commit(r, obj, event):
    """Store (or drop, for DELETED) obj with a fresh resourceVersion; wake watchers."""
    RV[0] += 1
    meta = obj["metadata"]
    meta["resourceVersion"] = str(RV[0])
    key = key_of(r, meta.get("namespace", ""), meta["name"])
    if event == "DELETED":
        OBJECTS.pop(key, None)
    else:
        OBJECTS[key] = obj
    HISTORY.append((RV[0], event, r["group"], r["plural"], key[2], copy.deepcopy(obj)))
    del HISTORY[:-4000]
    CHANGED.notify_all()
    return obj


def spec_part(obj):
    return {k: v for k, v in obj.items() if k not in ("metadata", "status", "apiVersion", "kind")}


def create(r, obj, ns, dry=False):
    """POST: a new object with uid, timestamps and the defaults its kind gets."""
    obj = copy.deepcopy(obj)
    meta = obj.setdefault("metadata", {})
    if not meta.get("name") and meta.get("generateName"):
        meta["name"] = meta["generateName"] + secrets.token_hex(3)[:5]
    name = meta.get("name")
    if not name:
        raise ApiError(422, "Invalid", f'{r["kind"]} "" is invalid: metadata.name: Required value: name or '
                       'generateName is required', {"kind": r["kind"], "causes": [{"reason": "FieldValueRequired",
                       "message": "Required value: name or generateName is required", "field": "metadata.name"}]})
    if r["namespaced"]:
        if meta.get("namespace") and meta["namespace"] != ns:
            raise ApiError(400, "BadRequest", "the namespace of the provided object does not match the namespace "
                           "sent on the request")
        meta["namespace"] = ns
        if ("", "namespaces", "", ns) not in OBJECTS:
            raise ApiError(404, "NotFound", f'namespaces "{ns}" not found', {"name": ns, "kind": "namespaces"})
    else:
        meta.pop("namespace", None)
    if key_of(r, ns, name) in OBJECTS:
        raise ApiError(409, "AlreadyExists", f'{qualified(r)} "{name}" already exists', details(r, name))
    meta.update(uid=str(uuid.uuid4()), creationTimestamp=rfc3339(), generation=1)
    if "status" in r["sub"]:    # status is the status subresource's to write
        obj.pop("status", None)
    obj["apiVersion"] = (r["group"] + "/" if r["group"] else "") + (obj.get("apiVersion", "").rpartition("/")[2]
                                                                     or r["versions"][0])
    obj["kind"] = r["kind"]
    defaults(r, obj)
    if dry:
        return obj
    commit(r, obj, "ADDED")
    if r["kind"] == "Namespace":    # the service-account controller's "default" SA
        sa = resolve("", "v1", "serviceaccounts")
        if key_of(sa, name, "default") not in OBJECTS:
            create(sa, {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default"}}, name)
    return obj


IP_COUNTER = [10]


def defaults(r, obj):
    """What the API server and the usual controllers fill in on create."""
    kind, meta = r["kind"], obj["metadata"]
    if kind == "Namespace":
        meta.setdefault("labels", {})["kubernetes.io/metadata.name"] = meta["name"]
        obj.setdefault("spec", {"finalizers": ["kubernetes"]})
        obj.setdefault("status", {"phase": "Active"})
    elif kind == "Service":
        spec = obj.setdefault("spec", {})
        spec.setdefault("type", "ClusterIP")
        if "clusterIP" not in spec:
            IP_COUNTER[0] += 1
            spec["clusterIP"] = f"10.43.{IP_COUNTER[0] // 250}.{IP_COUNTER[0] % 250 + 1}"
        spec.setdefault("clusterIPs", [spec["clusterIP"]])
        spec.setdefault("sessionAffinity", "None")
        for p in spec.get("ports") or []:
            p.setdefault("protocol", "TCP")
            p.setdefault("targetPort", p.get("port"))
        obj.setdefault("status", {"loadBalancer": {}})
    elif kind == "Pod":
        obj.setdefault("spec", {}).setdefault("nodeName", "k3d-ameide-server-0")
        obj.setdefault("status", {"phase": "Pending"})
    elif kind == "Secret":
        if obj.get("stringData"):
            data = obj.setdefault("data", {})
            for k, v in obj.pop("stringData").items():
                data[k] = base64.b64encode(str(v).encode()).decode()
        obj["type"] = obj.get("type") or "Opaque"
    elif kind == "CustomResourceDefinition":
        spec = obj.get("spec") or {}
        now = rfc3339()
        obj["status"] = {"acceptedNames": spec.get("names", {}), "storedVersions": [
            v["name"] for v in spec.get("versions", []) if v.get("storage")],
            "conditions": [{"type": t, "status": "True", "reason": rs, "message": msg, "lastTransitionTime": now}
                           for t, rs, msg in (("NamesAccepted", "NoConflicts", "no conflicts found"),
                                              ("Established", "InitialNamesAccepted", "the initial names have "
                                               "been accepted"))]}


def update(r, old, new, status_only=False, dry=False):
    """PUT/PATCH: keep what clients may not change; bump generation when the
    spec (anything outside metadata and status) changed; no-op writes keep
    the resourceVersion, as the real server does."""
    new = copy.deepcopy(new)
    meta, ometa = new.setdefault("metadata", {}), old["metadata"]
    if meta.get("resourceVersion") and meta["resourceVersion"] != ometa["resourceVersion"]:
        raise ApiError(409, "Conflict", f'Operation cannot be fulfilled on {qualified(r)} "{ometa["name"]}": the '
                       'object has been modified; please apply your changes to the latest version and try again',
                       details(r, ometa["name"]))
    if meta.get("name", ometa["name"]) != ometa["name"]:
        raise ApiError(400, "BadRequest", "the name of the object does not match the name on the URL")
    if status_only:
        body = copy.deepcopy(old)
        body["status"] = new.get("status")
        new = body
    elif "status" in r["sub"]:
        new["status"] = copy.deepcopy(old.get("status"))
        if new["status"] is None:
            new.pop("status")
    for k in ("name", "namespace", "uid", "creationTimestamp", "generation", "resourceVersion"):
        if k in ometa:
            new["metadata"][k] = ometa[k]
    new["apiVersion"], new["kind"] = old["apiVersion"], old["kind"]
    if r["kind"] == "Secret" and new.get("stringData"):
        data = new.setdefault("data", {})
        for k, v in new.pop("stringData").items():
            data[k] = base64.b64encode(str(v).encode()).decode()
    if new == old:
        return old
    if spec_part(new) != spec_part(old):
        new["metadata"]["generation"] = int(ometa.get("generation", 1)) + 1
    if dry:
        return new
    return commit(r, new, "MODIFIED")


def delete(r, obj):
    for o in dependants(r, obj):
        commit(o[0], o[1], "DELETED")
    return commit(r, obj, "DELETED")


def dependants(r, obj):
    """What goes with obj: a namespace's contents, a CRD's custom resources."""
    out = []
    name = obj["metadata"]["name"]
    if r["kind"] == "Namespace":
        for (g, p, ns, _), o in list(OBJECTS.items()):
            if ns == name:
                out.append((resolve_any(g, p), o))
    elif r["kind"] == "CustomResourceDefinition":
        spec = obj.get("spec") or {}
        plural = (spec.get("names") or {}).get("plural")
        for (g, p, _, _), o in list(OBJECTS.items()):
            if g == spec.get("group") and p == plural:
                out.append(({"group": g, "plural": p, "namespaced": True}, o))
    return [o for o in out if o[0]]


def resolve_any(group, plural):
    for r in all_resources():
        if r["group"] == group and r["plural"] == plural:
            return r
    return {"group": group, "plural": plural, "namespaced": True}


def served_as(obj, r, version):
    """obj as served at a version: no conversion, only the apiVersion."""
    obj = copy.deepcopy(obj)
    obj["apiVersion"] = f"{r['group']}/{version}" if r["group"] else version
    return obj


# ------------------------------------------------------------ selectors --
def dig(obj, path):
    for part in path.split("."):
        obj = obj.get(part) if isinstance(obj, dict) else None
    return obj


def parse_label_selector(s):
    reqs = []
    for part in re.findall(r"[^,(]+(?:\([^)]*\))?", s or ""):
        part = part.strip()
        if not part:
            continue
        m = re.fullmatch(r"(\S+)\s+(in|notin)\s+\((.*)\)", part)
        if m:
            reqs.append((m[1], m[2], {v.strip() for v in m[3].split(",")}))
            continue
        m = re.fullmatch(r"([^\s!=]+)\s*(==|=|!=)\s*(\S*)", part)
        if m:
            reqs.append((m[1], "!=" if m[2] == "!=" else "=", m[3]))
        elif part.startswith("!"):
            reqs.append((part[1:].strip(), "!exists", None))
        else:
            reqs.append((part, "exists", None))
    return reqs


def labels_match(reqs, labels):
    labels = labels or {}
    for k, op, v in reqs:
        ok = {"=": lambda: labels.get(k) == v, "!=": lambda: labels.get(k) != v,
              "in": lambda: labels.get(k) in v, "notin": lambda: labels.get(k) not in v,
              "exists": lambda: k in labels, "!exists": lambda: k not in labels}[op]()
        if not ok:
            return False
    return True


def parse_field_selector(s):
    reqs = []
    for part in (s or "").split(","):
        m = re.fullmatch(r"\s*([^!=\s]+)\s*(==|=|!=)\s*(.*?)\s*", part)
        if m:
            reqs.append((m[1], m[2] == "!=", m[3]))
        elif part.strip():
            raise ApiError(400, "BadRequest", f'unable to parse requirement: found \'{part}\', expected: \'=\', '
                           "'!=', '==', 'in', notin'")
    return reqs


def fields_match(reqs, obj):
    for path, negate, value in reqs:
        got = dig(obj, path)
        got = "" if got is None else (str(got).lower() if isinstance(got, bool) else str(got))
        if (got == value) == negate:
            return False
    return True


# ----------------------------------------------------------------- patch --
def merge_patch(target, patch):
    """RFC 7386."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge_patch(out.get(k), v)
    return out


def strip_directives(patch):
    """Strategic merge patch directives ($patch, $setElementOrder/...) are dropped."""
    if isinstance(patch, dict):
        return {k: strip_directives(v) for k, v in patch.items() if not k.startswith("$")}
    if isinstance(patch, list):
        return [strip_directives(v) for v in patch]
    return patch


def json_patch(doc, ops):
    """RFC 6902: add, remove, replace, move, copy, test."""
    doc = copy.deepcopy(doc)

    def walk(path):
        parts = [p.replace("~1", "/").replace("~0", "~") for p in path.split("/")[1:]]
        if not parts:
            raise ApiError(422, "Invalid", "the JSON patch may not replace the whole object")
        parent = doc
        for p in parts[:-1]:
            parent = parent[int(p)] if isinstance(parent, list) else parent[p]
        return parent, parts[-1]

    def get(path):
        parent, last = walk(path)
        return parent[int(last)] if isinstance(parent, list) else parent[last]

    def put(path, value, replace):
        parent, last = walk(path)
        if isinstance(parent, list):
            i = len(parent) if last == "-" else int(last)
            if replace:
                parent[i] = value
            else:
                parent.insert(i, value)
        else:
            if replace and last not in parent:
                raise KeyError(last)
            parent[last] = value

    def remove(path):
        parent, last = walk(path)
        return parent.pop(int(last) if isinstance(parent, list) else last)

    for op in ops:
        try:
            kind, path = op["op"], op["path"]
            if kind == "add":
                put(path, copy.deepcopy(op["value"]), False)
            elif kind == "replace":
                put(path, copy.deepcopy(op["value"]), True)
            elif kind == "remove":
                remove(path)
            elif kind == "move":
                put(path, remove(op["from"]), False)
            elif kind == "copy":
                put(path, copy.deepcopy(get(op["from"])), False)
            elif kind == "test":
                if get(path) != op.get("value"):
                    raise ApiError(422, "Invalid", f"the server rejected our request due to an error in our "
                                   f"request: testing value {path} failed")
            else:
                raise ApiError(400, "BadRequest", f"Unexpected kind: {kind}")
        except (KeyError, IndexError, ValueError, TypeError, AttributeError):
            raise ApiError(422, "Invalid", f"the server rejected our request due to an error in our request: "
                           f"doc is missing path: \"{op.get('path')}\": missing value")
    return doc


# -------------------------------------------------------------- protobuf --
# kubectl's typed clients (create namespace/serviceaccount/configmap/secret/
# clusterrolebinding/token) send application/vnd.kubernetes.protobuf. The
# field numbers below are those of k8s.io/api's generated.proto; fields not
# listed (timestamps, managedFields, ...) are skipped.
PB_META = ("metadata", {1: ("name", "str"), 2: ("generateName", "str"), 3: ("namespace", "str"),
                        11: ("labels", "map"), 12: ("annotations", "map"), 14: ("finalizers[]", "str")})
PB_KINDS = {
    "TokenRequest": {1: PB_META, 2: ("spec", {1: ("audiences[]", "str"), 4: ("expirationSeconds", "int"), 3: (
        "boundObjectRef", {1: ("kind", "str"), 2: ("apiVersion", "str"), 3: ("name", "str"), 4: ("uid", "str")})})},
    "Namespace": {1: PB_META, 2: ("spec", {1: ("finalizers[]", "str")})},
    "ServiceAccount": {1: PB_META, 2: ("secrets[]", {1: ("kind", "str"), 2: ("namespace", "str"), 3: ("name", "str"),
                                                      4: ("uid", "str"), 5: ("apiVersion", "str")}),
                       3: ("imagePullSecrets[]", {1: ("name", "str")}), 4: ("automountServiceAccountToken", "bool")},
    "ConfigMap": {1: PB_META, 2: ("data", "map"), 3: ("binaryData", "mapb"), 4: ("immutable", "bool")},
    "Secret": {1: PB_META, 2: ("data", "mapb"), 3: ("type", "str"), 4: ("stringData", "map"), 5: ("immutable", "bool")},
    "ClusterRoleBinding": {1: PB_META, 2: ("subjects[]", {1: ("kind", "str"), 2: ("apiGroup", "str"),
                                                          3: ("name", "str"), 4: ("namespace", "str")}),
                           3: ("roleRef", {1: ("apiGroup", "str"), 2: ("kind", "str"), 3: ("name", "str")})},
}


def pb_fields(buf):
    """(field number, value) pairs of one protobuf message."""
    i = 0

    def varint():
        nonlocal i
        shift = val = 0
        while True:
            b = buf[i]
            i += 1
            val |= (b & 0x7F) << shift
            shift += 7
            if b < 0x80:
                return val
    while i < len(buf):
        key = varint()
        wire = key & 7
        if wire == 0:
            yield key >> 3, varint()
        elif wire == 2:
            n = varint()
            yield key >> 3, buf[i:i + n]
            i += n
        elif wire in (1, 5):
            i += 8 if wire == 1 else 4
        else:
            raise ValueError(f"protobuf wire type {wire}")


def pb_decode(buf, schema):
    out = {}
    for num, v in pb_fields(buf):
        if num not in schema:
            continue
        name, typ = schema[num]
        many, name = name.endswith("[]"), name.rstrip("[]")
        if typ in ("map", "mapb"):
            entry = dict(pb_fields(v))
            val = entry.get(2, b"")
            out.setdefault(name, {})[entry.get(1, b"").decode()] = \
                val.decode() if typ == "map" else base64.b64encode(val).decode()
            continue
        val = {"str": lambda: v.decode(), "int": lambda: v, "bool": lambda: bool(v)}[typ]() \
            if isinstance(typ, str) else pb_decode(v, typ)
        if many:
            out.setdefault(name, []).append(val)
        else:
            out[name] = val
    return out


def pb_object(raw):
    """A Kubernetes protobuf body (magic k8s\\0 + runtime.Unknown) as a JSON-shaped dict."""
    if raw[:4] != b"k8s\x00":
        raise ValueError("no k8s protobuf magic")
    unknown = dict(pb_fields(raw[4:]))
    tm = dict(pb_fields(unknown.get(1, b"")))
    api_version, kind = tm.get(1, b"").decode(), tm.get(2, b"").decode()
    if kind not in PB_KINDS:
        raise ApiError(415, "UnsupportedMediaType", f"the stand-in decodes protobuf only for {sorted(PB_KINDS)}, "
                       f"not {kind}: send application/json")
    obj = {"apiVersion": api_version, "kind": kind}
    obj.update(pb_decode(unknown.get(2, b""), PB_KINDS[kind]))
    return obj


# ---------------------------------------------------------------- tables --
NAME_COL = ("Name", "string", "name", 0)


def jsonpath(obj, path):
    """The subset of JSONPath printer columns use: .a.b, [N], [*], ['k'], [?(@.k=="v")]."""
    cur = [obj]
    for name, idx, fkey, fval, qname in re.findall(
            r"\.([\w\-$]+)|\[(\d+|\*)\]|\[\?\(@\.([\w.\-]+)\s*==\s*[\"']([^\"']*)[\"']\)\]|\[[\"']([^\"']+)[\"']\]",
            path):
        nxt = []
        for c in cur:
            if (name or qname) and isinstance(c, dict) and (name or qname) in c:
                nxt.append(c[name or qname])
            elif idx and isinstance(c, list):
                nxt.extend(c if idx == "*" else c[int(idx):int(idx) + 1])
            elif fkey and isinstance(c, list):
                nxt.extend(e for e in c if str(dig(e, fkey)) == fval)
        cur = nxt
    return cur


def pod_cells(o):
    spec, st = o.get("spec") or {}, o.get("status") or {}
    statuses = st.get("containerStatuses") or []
    ready = sum(1 for c in statuses if c.get("ready"))
    reason = st.get("reason") or st.get("phase") or "Unknown"
    for c in statuses:
        state = c.get("state") or {}
        for s in ("waiting", "terminated"):
            if (state.get(s) or {}).get("reason"):
                reason = state[s]["reason"]
    if o["metadata"].get("deletionTimestamp"):
        reason = "Terminating"
    restarts = sum(int(c.get("restartCount") or 0) for c in statuses)
    return [f"{ready}/{len(spec.get('containers') or [])}", reason, str(restarts),
            age(o["metadata"].get("creationTimestamp")), st.get("podIP") or "<none>",
            spec.get("nodeName") or "<none>", "<none>", "<none>"]


def svc_cells(o):
    spec = o.get("spec") or {}
    ports = ",".join(f"{p.get('port')}{':' + str(p['nodePort']) if p.get('nodePort') else ''}/"
                     f"{p.get('protocol', 'TCP')}" for p in spec.get("ports") or []) or "<none>"
    ingress = ((o.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
    ext = ",".join(i.get("ip") or i.get("hostname", "") for i in ingress) or \
        ("<pending>" if spec.get("type") == "LoadBalancer" else "<none>")
    sel = ",".join(f"{k}={v}" for k, v in sorted((spec.get("selector") or {}).items())) or "<none>"
    return [spec.get("type", "ClusterIP"), spec.get("clusterIP") or "<none>", ext, ports,
            age(o["metadata"].get("creationTimestamp")), sel]


def event_cells(o):
    inv = o.get("involvedObject") or {}
    last = o.get("lastTimestamp") or o.get("eventTime") or o["metadata"].get("creationTimestamp")
    return [age(last), o.get("type", ""), o.get("reason", ""), f"{inv.get('kind', '').lower()}/{inv.get('name', '')}",
            o.get("message", "")]


def crb_cells(o):
    ref = o.get("roleRef") or {}
    subj = o.get("subjects") or []
    pick = lambda kind, f: ",".join(f(s) for s in subj if s.get("kind") == kind) or ""  # noqa: E731
    return [f"{ref.get('kind')}/{ref.get('name')}", age(o["metadata"].get("creationTimestamp")),
            pick("User", lambda s: s["name"]), pick("Group", lambda s: s["name"]),
            pick("ServiceAccount", lambda s: f"{s.get('namespace')}/{s['name']}")]


def created_at(o):
    return [o["metadata"].get("creationTimestamp", "")]


def printer(r, version):
    """(column definitions, cells-after-name) for a resource, as kube-apiserver prints it."""
    age_col = [("Age", "string", "", 0)]
    cols_age = lambda o: [age(o["metadata"].get("creationTimestamp"))]  # noqa: E731
    k = r["kind"]
    if k == "Pod":
        return [NAME_COL, ("Ready", "string", "", 0), ("Status", "string", "", 0), ("Restarts", "string", "", 0),
                ("Age", "string", "", 0), ("IP", "string", "", 1), ("Node", "string", "", 1),
                ("Nominated Node", "string", "", 1), ("Readiness Gates", "string", "", 1)], pod_cells
    if k == "Service":
        return [NAME_COL, ("Type", "string", "", 0), ("Cluster-IP", "string", "", 0), ("External-IP", "string", "", 0),
                ("Port(s)", "string", "", 0), ("Age", "string", "", 0), ("Selector", "string", "", 1)], svc_cells
    if k == "Namespace":
        return [NAME_COL, ("Status", "string", "", 0)] + age_col, \
            lambda o: [(o.get("status") or {}).get("phase", "")] + cols_age(o)
    if k == "ServiceAccount":
        return [NAME_COL, ("Secrets", "integer", "", 0)] + age_col, \
            lambda o: [len(o.get("secrets") or [])] + cols_age(o)
    if k == "Secret":
        return [NAME_COL, ("Type", "string", "", 0), ("Data", "string", "", 0)] + age_col, \
            lambda o: [o.get("type", ""), str(len(o.get("data") or {}))] + cols_age(o)
    if k == "ConfigMap":
        return [NAME_COL, ("Data", "string", "", 0)] + age_col, \
            lambda o: [str(len(o.get("data") or {}) + len(o.get("binaryData") or {}))] + cols_age(o)
    if k == "Endpoints":
        return [NAME_COL, ("Endpoints", "string", "", 0)] + age_col, lambda o: [",".join(
            f"{a.get('ip')}:{p.get('port')}" for s in o.get("subsets") or [] for a in s.get("addresses") or []
            for p in s.get("ports") or []) or "<none>"] + cols_age(o)
    if k == "Event":
        return [("Last Seen", "string", "", 0), ("Type", "string", "", 0), ("Reason", "string", "", 0),
                ("Object", "string", "", 0), ("Message", "string", "", 0)], event_cells
    if k == "ClusterRoleBinding":
        return [NAME_COL, ("Role", "string", "", 0), ("Age", "string", "", 0), ("Users", "string", "", 1),
                ("Groups", "string", "", 1), ("ServiceAccounts", "string", "", 1)], crb_cells
    if r["crd"]:
        extra = r["columns"].get(version)
        if not extra:
            return [NAME_COL, ("Age", "date", "", 0)], cols_age
        defs = [NAME_COL] + [(c["name"], c.get("type", "string"), c.get("format", ""), c.get("priority", 0))
                             for c in extra]

        def cells(o):
            out = []
            for c in extra:
                found = jsonpath(o, c.get("jsonPath", ""))
                v = found[0] if found else None
                if v is not None and c.get("type") == "date":
                    v = age(v)
                elif isinstance(v, (dict, list)):
                    v = json.dumps(v, separators=(",", ":"))
                out.append(v)
            return out
        return defs, cells
    # The default table convertor (CRDs, ClusterRoles): Name, Created At.
    return [NAME_COL, ("Created At", "date", "", 0)], created_at


def table(r, version, objs, include, list_rv=None):
    defs, cells = printer(r, version)
    rows = []
    for o in objs:
        first = [] if r["kind"] == "Event" else [o["metadata"]["name"]]
        row = {"cells": first + cells(o)}
        if include == "Object":
            row["object"] = o
        elif include != "None":
            row["object"] = {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                             "metadata": o["metadata"]}
        rows.append(row)
    return {"kind": "Table", "apiVersion": "meta.k8s.io/v1",
            "metadata": {"resourceVersion": list_rv} if list_rv else {},
            "columnDefinitions": [{"name": n, "type": t, "format": f, "description": n, "priority": p}
                                  for n, t, f, p in defs], "rows": rows}


# ---------------------------------------------------------------- tokens --
def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64url(s):
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def der_items(buf):
    """The (tag, value) TLVs of a DER byte string, one level deep."""
    i, out = 0, []
    while i < len(buf):
        tag, n = buf[i], buf[i + 1]
        i += 2
        if n & 0x80:
            k = n & 0x7F
            n, i = int.from_bytes(buf[i:i + k], "big"), i + k
        out.append((tag, buf[i:i + n]))
        i += n
    return out


def load_rsa(pem_path):
    """n, e, d of the PKCS#8 RSA key openssl wrote: the token signing key."""
    with open(pem_path) as f:
        body = "".join(line for line in f.read().splitlines() if not line.startswith("-----"))
    pkcs8 = der_items(der_items(base64.b64decode(body))[0][1])
    rsa = der_items(der_items(pkcs8[2][1])[0][1])
    n, e, d = (int.from_bytes(rsa[i][1], "big") for i in (1, 2, 3))
    RSA.update(n=n, e=e, d=d, kid=b64url(hashlib.sha256(rsa[1][1]).digest()))


def rs256(data, verify_sig=None):
    """RSASSA-PKCS1-v1_5 with SHA-256: the signature of data, or whether verify_sig is it."""
    size = (RSA["n"].bit_length() + 7) // 8
    info = bytes.fromhex("3031300d060960864801650304020105000420") + hashlib.sha256(data).digest()
    em = b"\x00\x01" + b"\xff" * (size - len(info) - 3) + b"\x00" + info
    if verify_sig is not None:
        return pow(int.from_bytes(verify_sig, "big"), RSA["e"], RSA["n"]) == int.from_bytes(em, "big")
    return pow(int.from_bytes(em, "big"), RSA["d"], RSA["n"]).to_bytes(size, "big")


def mint_token(sa, audiences, seconds):
    """A service-account JWT in the projected-token shape, RS256-signed like kube-apiserver's."""
    now = int(cluster_now())
    meta = sa["metadata"]
    claims = {"aud": audiences, "exp": now + seconds, "iat": now, "iss": ISSUER, "jti": str(uuid.uuid4()),
              "kubernetes.io": {"namespace": meta["namespace"],
                                "serviceaccount": {"name": meta["name"], "uid": meta["uid"]}},
              "nbf": now, "sub": f"system:serviceaccount:{meta['namespace']}:{meta['name']}"}
    head = b64url(json.dumps({"alg": "RS256", "kid": RSA["kid"]}, separators=(",", ":")).encode())
    body = b64url(json.dumps(claims, separators=(",", ":")).encode())
    return f"{head}.{body}.{b64url(rs256(f'{head}.{body}'.encode()))}", now + seconds


def review(token, audiences):
    """Authenticate a service-account token as kube-apiserver would:
    (user dict, token audiences) or (None, error text)."""
    parts = token.split(".")
    try:
        claims = json.loads(unb64url(parts[1])) if len(parts) == 3 else None
    except ValueError:
        claims = None
    if not isinstance(claims, dict) or claims.get("iss") != ISSUER:
        return None, "invalid bearer token"
    fail = lambda why: (None, f"[invalid bearer token, {why}]")  # noqa: E731
    try:
        if not rs256(f"{parts[0]}.{parts[1]}".encode(), unb64url(parts[2])):
            return fail("square/go-jose: error in cryptographic primitive")
    except ValueError:
        return fail("square/go-jose: error in cryptographic primitive")
    now = cluster_now()
    if claims.get("exp", 0) < now:
        return fail("service account token has expired")
    if claims.get("nbf", 0) > now + 60:
        return fail("service account token is not valid yet")
    token_auds = claims.get("aud") or []
    token_auds = [token_auds] if isinstance(token_auds, str) else token_auds
    want_auds = audiences or API_AUDIENCES
    if not set(token_auds) & set(want_auds):
        return fail(f"token audiences {go_quote_list(token_auds)} is invalid for the target audiences "
                    f"{go_quote_list(want_auds)}")
    k8s = claims.get("kubernetes.io") or {}
    ns, sa_ref = k8s.get("namespace", ""), k8s.get("serviceaccount") or {}
    with LOCK:
        sa = OBJECTS.get(("", "serviceaccounts", ns, sa_ref.get("name", "")))
    if sa is None:
        return fail(f'serviceaccounts "{sa_ref.get("name")}" not found')
    if sa["metadata"]["uid"] != sa_ref.get("uid"):
        return fail(f"service account UID ({sa['metadata']['uid']}) does not match claim ({sa_ref.get('uid')})")
    user = {"username": f"system:serviceaccount:{ns}:{sa_ref['name']}", "uid": sa["metadata"]["uid"],
            "groups": ["system:serviceaccounts", f"system:serviceaccounts:{ns}", "system:authenticated"],
            "extra": {"authentication.kubernetes.io/credential-id": [f"JTI={claims.get('jti', '')}"]}}
    return user, sorted(set(token_auds) & set(want_auds), key=want_auds.index)


def go_quote_list(items):
    """Go's %q of a []string: ["a" "b"]."""
    return "[" + " ".join(json.dumps(i) for i in items) + "]"


def may_review(user):
    """Whether user holds a ClusterRoleBinding to system:auth-delegator (or cluster-admin)."""
    with LOCK:
        bindings = [o for (g, p, _, _), o in OBJECTS.items() if (g, p) == ("rbac.authorization.k8s.io",
                                                                           "clusterrolebindings")]
    for crb in bindings:
        ref = crb.get("roleRef") or {}
        if ref.get("kind") != "ClusterRole" or ref.get("name") not in ("system:auth-delegator", "cluster-admin"):
            continue
        for s in crb.get("subjects") or []:
            if s.get("kind") == "ServiceAccount" and \
                    user["username"] == f"system:serviceaccount:{s.get('namespace')}:{s.get('name')}":
                return True
            if s.get("kind") == "User" and s.get("name") == user["username"]:
                return True
            if s.get("kind") == "Group" and s.get("name") in user["groups"]:
                return True
    return False


# ------------------------------------------------------------------- ESO --
ESO_GROUP = "external-secrets.io"
ESO = {"seen": {}, "next": {}, "es_due": {}}   # the controllers' memory, keyed by uid


def eso_version(meta):
    """ESO's ctrlutil.GetResourceVersion: "<generation>-<sha3-224 of %+v of labels and annotations>"."""
    gomap = lambda m: "map[" + " ".join(f"{k}:{v}" for k, v in sorted((m or {}).items())) + "]"  # noqa: E731
    text = "{annotations:%s labels:%s}" % (gomap(meta.get("annotations")), gomap(meta.get("labels")))
    return f"{meta.get('generation', 1)}-{hashlib.sha3_224(text.encode()).hexdigest()}"


def record_event(obj, etype, reason, message):
    """client-go's recorder: a core v1 Event, identical ones aggregated (count)."""
    meta = obj["metadata"]
    ns = meta.get("namespace") or "default"
    evr = resolve("", "v1", "events")
    now = rfc3339()
    for (g, p, n, _), ev in OBJECTS.items():
        if (g, p, n) == ("", "events", ns) and (ev.get("involvedObject") or {}).get("uid") == meta["uid"] and \
                (ev.get("type"), ev.get("reason"), ev.get("message")) == (etype, reason, message):
            nev = copy.deepcopy(ev)
            nev["count"] = int(ev.get("count", 1)) + 1
            nev["lastTimestamp"] = now
            nev["involvedObject"]["resourceVersion"] = meta.get("resourceVersion", "")
            update(evr, ev, nev)
            return
    create(evr, {"apiVersion": "v1", "kind": "Event",
                 "metadata": {"name": f"{meta['name']}.{time.time_ns():x}", "namespace": ns},
                 "involvedObject": {"kind": obj["kind"], "namespace": meta.get("namespace", ""),
                                    "name": meta["name"], "uid": meta["uid"], "apiVersion": obj["apiVersion"],
                                    "resourceVersion": meta.get("resourceVersion", "")},
                 "reason": reason, "message": message, "source": {"component": "external-secrets"},
                 "firstTimestamp": now, "lastTimestamp": now, "count": 1, "type": etype, "eventTime": None,
                 "reportingComponent": "external-secrets", "reportingInstance": ""}, ns)


def set_ready(obj, status, reason, message):
    """ESO's SetExternalSecretCondition: lastTransitionTime moves only when status does."""
    st = obj.setdefault("status", {}) or {}
    obj["status"] = st
    conds = st.setdefault("conditions", [])
    old = next((c for c in conds if c.get("type") == "Ready"), None)
    cond = {"type": "Ready", "status": status, "reason": reason, "message": message,
            "lastTransitionTime": (old.get("lastTransitionTime") if old and old.get("status") == status
                                   else None) or rfc3339()}
    st["conditions"] = [c for c in conds if c.get("type") != "Ready"] + [cond]


def provider_of(store):
    prov = ((store.get("spec") or {}).get("provider") or {})
    name = next(iter(prov), "")
    return name, {"azurekv": "azure"}.get(name, name)


def provider_health(store):
    name, knob_key = provider_of(store)
    h = (KNOBS.get("store_health") or {}).get(knob_key) or {}
    return h.get("ready", True), h.get("message") or f"could not validate {name or 'the'} provider", \
        bool(h.get("backoff"))


def reconcile_store(r, store):
    """The ClusterSecretStore/SecretStore controller: validate against the provider's knob."""
    ready, message, backoff = provider_health(store)
    new = copy.deepcopy(store)
    if ready:
        set_ready(new, "True", "Valid", "store validated")
        new["status"]["capabilities"] = "ReadWrite"
    else:
        set_ready(new, "False", "ValidationFailed", "unable to validate store")
    stored = update(r, store, new, status_only=True)
    if ready:
        record_event(stored, "Normal", "Valid", "store validated")
    else:
        record_event(stored, "Warning", "ValidationFailed", message)
    return ready, backoff, stored


def should_refresh(es, now):
    """external-secrets' shouldRefresh (pkg/controllers/externalsecret)."""
    spec, st = es.get("spec") or {}, es.get("status") or {}
    synced, refreshed = st.get("syncedResourceVersion", ""), st.get("refreshTime")
    policy = spec.get("refreshPolicy") or "Periodic"
    if policy == "CreatedOnce":
        return not synced or not refreshed
    if policy == "OnChange":
        return not synced or not refreshed or synced != eso_version(es["metadata"])
    interval = go_duration(spec.get("refreshInterval", "1h"))
    interval = 3600 if interval is None else interval
    if interval <= 0 and synced:
        return False
    if synced != eso_version(es["metadata"]) or not refreshed:
        return True
    t = parse_time(refreshed)
    return t is None or t > now or t + interval < now


def find_store(es):
    ref = (es.get("spec") or {}).get("secretStoreRef") or {}
    kind, name = ref.get("kind") or "SecretStore", ref.get("name", "")
    if kind == "ClusterSecretStore":
        return kind, name, OBJECTS.get((ESO_GROUP, "clustersecretstores", "", name))
    return kind, name, OBJECTS.get((ESO_GROUP, "secretstores", es["metadata"]["namespace"], name))


def es_error(es):
    """Why fetching the ExternalSecret's data fails now (ESO's words), or None."""
    spec = es.get("spec") or {}
    if spec.get("data"):
        wrap = f"error processing spec.data[0] (key: {((spec['data'][0].get('remoteRef') or {}).get('key', ''))}), err: "
    elif spec.get("dataFrom"):
        first = spec["dataFrom"][0]
        wrap = f"error processing spec.dataFrom[0].{'find' if 'find' in first else 'extract'}, err: "
    else:
        return None    # nothing to fetch: ESO never asks the store
    kind, name, store = find_store(es)
    if store is None:
        return f'{wrap}could not get {kind} "{name}", {kind}.{ESO_GROUP} "{name}" not found'
    cond = next((c for c in (store.get("status") or {}).get("conditions") or [] if c.get("type") == "Ready"), None)
    if not cond or cond.get("status") != "True":
        return f'{wrap}{kind} "{name}" is not ready'
    ready, message, _ = provider_health(store)
    return None if ready else wrap + message


def reconcile_es(r, es):
    err = es_error(es)
    new = copy.deepcopy(es)
    if err:
        set_ready(new, "False", "SecretSyncedError", "could not get secret data from provider")
    else:
        set_ready(new, "True", "SecretSynced", "secret synced")
        new["status"]["refreshTime"] = rfc3339()
        new["status"]["syncedResourceVersion"] = eso_version(es["metadata"])
        new["status"]["binding"] = {"name": ((es.get("spec") or {}).get("target") or {}).get("name")
                                    or es["metadata"]["name"]}
    stored = update(r, es, new, status_only=True)
    if err:
        record_event(stored, "Warning", "UpdateFailed", err)
    return err is None


def eso_tick():
    """One pass of both controllers."""
    with LOCK:
        eso = KNOBS.get("eso") or {}
        if not eso.get("running", True):
            return
        frozen = set(eso.get("frozen") or [])
        now, cnow = time.time(), cluster_now()
        delay = float(KNOBS.get("reconcile_delay", 0.2))
        for plural in ("clustersecretstores", "secretstores"):
            r = resolve_any(ESO_GROUP, plural)
            for key, store in [(k, o) for k, o in OBJECTS.items() if k[:2] == (ESO_GROUP, plural)]:
                uid, meta = store["metadata"]["uid"], store["metadata"]
                sig = (meta.get("generation"), json.dumps([meta.get("labels"), meta.get("annotations")],
                                                          sort_keys=True))
                if ESO["seen"].get(uid) != sig:     # a spec, label or annotation change: reconcile soon
                    ESO["next"][uid] = min(ESO["next"].get(uid) or now + delay, now + delay)
                due = ESO["next"].get(uid)
                if due is None or now < due:
                    continue
                ESO["seen"][uid] = sig
                ready, backoff, _ = reconcile_store(r, store)
                interval = go_duration((store.get("spec") or {}).get("refreshInterval")) or 300
                ESO["next"][uid] = now + interval if ready else (None if backoff else now + 1.0)
        r = resolve_any(ESO_GROUP, "externalsecrets")
        for key, es in [(k, o) for k, o in OBJECTS.items() if k[:2] == (ESO_GROUP, "externalsecrets")]:
            uid = es["metadata"]["uid"]
            if f"{key[2]}/{key[3]}" in frozen:
                continue
            if uid not in ESO["es_due"]:
                if should_refresh(es, cnow):
                    ESO["es_due"][uid] = now + delay
                continue
            if now < ESO["es_due"][uid]:
                continue
            if reconcile_es(r, es):
                ESO["es_due"].pop(uid)
            else:
                ESO["es_due"][uid] = now + 1.0   # ESO requeues a failed reconcile


def eso_loop():
    while True:
        try:
            eso_tick()
        except Exception:   # a controller bug must not stop the server
            traceback.print_exc()
        time.sleep(0.05)


def store_block(provider):
    """spec.provider of ClusterSecretStore/ameide-vault as the layer-15 chart renders it."""
    if provider == "azure":
        return {"azurekv": {"vaultUrl": "https://ameide.vault.azure.net/", "tenantId": "",
                            "authType": "WorkloadIdentity",
                            "serviceAccountRef": {"name": "external-secrets", "namespace": "external-secrets"}}}
    return {"vault": {"server": "http://vault.vault.svc.cluster.local:8200", "path": "secret", "version": "v2",
                      "auth": {"kubernetes": {"mountPath": "kubernetes", "role": "external-secrets",
                                              "serviceAccountRef": {"name": "external-secrets",
                                                                    "namespace": "external-secrets"}}}}}


def eso_crds(served, storage):
    """The three ESO CRDs, schema-less, with ESO's names and printer columns."""
    ready = [{"jsonPath": '.status.conditions[?(@.type=="Ready")].reason', "name": "Status", "type": "string"},
             {"jsonPath": '.status.conditions[?(@.type=="Ready")].status', "name": "Ready", "type": "string"}]
    es_cols = [{"jsonPath": ".spec.secretStoreRef.kind", "name": "StoreType", "type": "string"},
               {"jsonPath": ".spec.secretStoreRef.name", "name": "Store", "type": "string"},
               {"jsonPath": ".spec.refreshInterval", "name": "Refresh Interval", "type": "string"}] + ready + \
        [{"jsonPath": ".status.refreshTime", "name": "Last Sync", "type": "date"}]
    store_cols = [{"jsonPath": ".metadata.creationTimestamp", "name": "AGE", "type": "date"}, ready[0],
                  {"jsonPath": ".status.capabilities", "name": "Capabilities", "type": "string"}, ready[1]]
    out = []
    for kind, plural, short, scope, cols in (
            ("ExternalSecret", "externalsecrets", "es", "Namespaced", es_cols),
            ("ClusterSecretStore", "clustersecretstores", "css", "Cluster", store_cols),
            ("SecretStore", "secretstores", "ss", "Namespaced", store_cols)):
        versions = [{"name": v, "served": v in served, "storage": v == storage, "additionalPrinterColumns": cols,
                     "subresources": {"status": {}}, "schema": {"openAPIV3Schema": {
                         "type": "object", "x-kubernetes-preserve-unknown-fields": True}}}
                    for v in ("v1", "v1beta1")]
        out.append({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
                    "metadata": {"name": f"{plural}.{ESO_GROUP}",
                                 "labels": {"external-secrets.io/component": "controller"}},
                    "spec": {"group": ESO_GROUP, "scope": scope, "versions": versions,
                             "names": {"kind": kind, "listKind": kind + "List", "plural": plural,
                                       "singular": kind.lower(), "shortNames": [short],
                                       "categories": ["external-secrets"]}}})
    return out


# ------------------------------------------------------------ portforward --
def pod_sandbox(pod):
    return hashlib.sha256(pod["metadata"]["uid"].encode()).hexdigest()


def refusal(pod, port):
    """The kubelet's words when nothing listens on the pod's port."""
    sb = pod_sandbox(pod)
    return (f'error forwarding port {port} to pod {sb}, uid : failed to connect to localhost:{port} inside '
            f'namespace "{sb}", IPv4: dial tcp4 127.0.0.1:{port}: connect: connection refused IPv6 dial tcp6 '
            f'[::1]:{port}: connect: connection refused ')


def tls_relay(tls, plain):
    """Copy bytes both ways between a TLS socket and a plain one, on this
    thread alone, until either side ends; then close both."""
    tls.setblocking(False)
    plain.setblocking(False)
    to_tls, to_plain, done = b"", b"", False
    try:
        while not done or to_tls:
            rl = ([tls] if len(to_plain) < 1 << 20 and not done else []) + \
                 ([plain] if len(to_tls) < 1 << 20 and not done else [])
            wl = ([tls] if to_tls else []) + ([plain] if to_plain else [])
            r, w, _ = select.select(rl, wl, [], 0 if tls.pending() else 5)
            if tls in rl and (tls in r or tls.pending()):
                try:
                    data = tls.recv(65536)
                    to_plain += data
                    done = done or not data
                except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                    pass
            if plain in r:
                data = plain.recv(65536)
                to_tls += data
                done = done or not data
            if to_tls and (tls in w or tls in r):
                try:
                    to_tls = to_tls[tls.send(to_tls):]
                except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                    pass
            if to_plain and plain in w:
                to_plain = to_plain[plain.send(to_plain):]
        if to_plain:
            plain.setblocking(True)
            plain.sendall(to_plain)
    except OSError:
        pass
    finally:
        for s in (plain, tls):
            try:
                s.close()
            except OSError:
                pass


def load_portforward():
    """portforward.py, imported when it appears; None until then."""
    try:
        import portforward
        return portforward
    except ImportError:
        return None


# --------------------------------------------------------------- server --
class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "standin"
    sys_version = ""
    disable_nagle_algorithm = True   # headers and body go out as separate writes: no 40 ms stalls
    _logged = False

    def log_message(self, *args):
        pass

    def setup(self):
        if isinstance(self.request, ssl.SSLSocket):
            self.request.settimeout(10)
            self.request.do_handshake()
            self.request.settimeout(None)
        super().setup()

    def send_response(self, code, message=None):
        path = getattr(self, "path", "")
        if not self._logged and not path.startswith("/_standin/"):
            self._logged = True
            with LOG["lock"], open(LOG["path"], "a") as f:
                f.write(f"{getattr(self, 'command', '-')} {path} -> {code}\n")
        super().send_response(code, message)

    def do_any(self):
        self._logged = False
        try:
            self.raw = self.read_body()
            self.dispatch()
        except ApiError as e:
            self.reply(e.code, status_body(e.code, e.reason, e.message, e.details))
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as e:  # noqa: BLE001 - answer 500, keep serving
            traceback.print_exc()
            try:
                self.reply(500, status_body(500, "InternalError", f"Internal error occurred: {e!r}",
                                            {"causes": [{"message": repr(e)}]}))
            except OSError:
                self.close_connection = True

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_any

    def reply(self, code, obj, ctype="application/json"):
        data = obj if isinstance(obj, bytes) else (json.dumps(obj, separators=(",", ":")) + "\n").encode()
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Cache-Control", "no-cache, private")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def read_body(self):
        """The whole request body, always read, so the next request on the connection starts clean."""
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            out = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline().strip():
                        pass
                    return out
                out += self.rfile.read(size)
                self.rfile.readline()
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def body(self):
        raw = self.raw
        if not raw:
            return None
        try:
            if "protobuf" in (self.headers.get("Content-Type") or ""):
                return pb_object(raw)
            return json.loads(raw)
        except (ValueError, IndexError):
            raise ApiError(400, "BadRequest", "the body of the request was in an unknown format - accepted media "
                           "types include: application/json, application/yaml")

    # --- routing ---
    def dispatch(self):
        url = urlsplit(self.path)
        path, q = url.path.rstrip("/") or "/", {k: v[-1] for k, v in parse_qs(url.query).items()}
        if path.startswith("/_standin/"):
            return self.control(path, q)
        if getattr(self.server, "control_only", False):
            raise ApiError(404, "NotFound", "the control port answers /_standin/ only")
        user = self.authenticate()
        if path in ("/healthz", "/livez", "/readyz"):
            return self.reply(200, b"ok", "text/plain; charset=utf-8")
        if path == "/version":
            return self.reply(200, {"major": "1", "minor": "33", "emulationMajor": "1", "emulationMinor": "33",
                                    "minCompatibilityMajor": "1", "minCompatibilityMinor": "32",
                                    "gitVersion": "v1.33.4+k3s1", "gitCommit": "a4d1e4b1c2f5f0f0e9b7c3d2a1b0c9d8e7f6a5b4",
                                    "gitTreeState": "clean", "buildDate": "2025-08-15T00:00:00Z",
                                    "goVersion": "go1.24.5", "compiler": "gc", "platform": "linux/amd64"})
        parts = path.strip("/").split("/")
        with LOCK:
            resources = all_resources()
        if path == "/api":
            host = self.headers.get("Host", "127.0.0.1")
            return self.reply(200, {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [
                {"clientCIDR": "0.0.0.0/0", "serverAddress": host}]})
        if path == "/apis":
            return self.reply(200, {"kind": "APIGroupList", "apiVersion": "v1", "groups": group_list(resources)})
        if parts[0] == "api" and len(parts) >= 2:
            group, version, rest = "", parts[1], parts[2:]
        elif parts[0] == "apis" and len(parts) >= 2:
            group, version, rest = parts[1], (parts[2] if len(parts) > 2 else None), parts[3:]
            if version is None:
                g = next((g for g in group_list(resources) if g["name"] == group), None)
                if not g:
                    raise unknown_path()
                return self.reply(200, dict(kind="APIGroup", apiVersion="v1", **g))
        else:
            raise unknown_path()
        in_gv = [r for r in resources if r["group"] == group and version in r["versions"]]
        if not in_gv:
            raise unknown_path()
        if not rest:
            return self.reply(200, resource_list(group, version, in_gv))
        return self.resource(user, group, version, rest, q)

    def authenticate(self):
        auth = self.headers.get("Authorization", "")
        token = auth[7:].strip() if auth.lower().startswith("bearer ") else ""
        admins = [ADMIN_TOKEN] + list(KNOBS.get("admin_tokens") or [])
        if token and any(hmac.compare_digest(token, t) for t in admins):
            return {"username": "system:admin", "groups": ["system:masters", "system:authenticated"], "admin": True}
        if token:
            user, _ = review(token, API_AUDIENCES)
            if user:
                return user
        elif PLAIN[0]:
            return {"username": "system:admin", "groups": ["system:masters", "system:authenticated"], "admin": True}
        raise ApiError(401, "Unauthorized", "Unauthorized")

    def resource(self, user, group, version, rest, q):
        ns = None
        if rest[0] == "namespaces" and len(rest) >= 3 and resolve(group, version, rest[2]) and \
                resolve(group, version, rest[2])["namespaced"]:
            ns, rest = rest[1], rest[2:]
        r = resolve(group, version, rest[0])
        if r is None or len(rest) > 3:
            raise unknown_path()
        name = rest[1] if len(rest) > 1 else None
        sub = rest[2] if len(rest) > 2 else None
        if sub and sub not in r["sub"]:
            raise unknown_path()
        if r["namespaced"] and name is not None and ns is None:
            raise unknown_path()
        m = self.command
        watch = q.get("watch") in ("true", "1")
        verb = {"GET": "watch" if watch else ("get" if name else "list"), "HEAD": "get", "POST": "create",
                "PUT": "update", "PATCH": "patch", "DELETE": "delete" if name else "deletecollection"}[m]
        if sub in ("portforward", "token"):
            verb = "create" if m == "POST" or sub == "token" else "get"
        self.authorize(user, r, verb, ns, name, sub)
        allowed = r["sub"][sub][1] if sub else r["verbs"]
        if verb not in allowed and not (sub == "portforward"):
            raise ApiError(405, "MethodNotAllowed", "the server does not allow this method on the requested resource",
                           {})
        if r["kind"] == "TokenReview":
            return self.token_review(user)
        if sub == "token":
            return self.token_request(r, ns, name)
        if sub == "portforward":
            return self.port_forward(r, ns, name)
        if name is None:
            if m == "GET":
                return self.watch(r, version, ns, q) if watch else self.list(r, version, ns, q)
            if m == "POST":
                if r["namespaced"] and ns is None:
                    raise ApiError(405, "MethodNotAllowed", "the server does not allow this method on the "
                                   "requested resource", {})
                body = self.body() or {}
                with LOCK:
                    obj = create(r, body, ns or "", dry="dryRun" in q)
                return self.reply(201, served_as(obj, r, version))
            if m == "DELETE":
                return self.delete_collection(r, version, ns, q)
        with LOCK:
            old = OBJECTS.get(key_of(r, ns or "", name))
            if old is None:
                raise not_found(r, name)
            if m in ("GET", "HEAD"):
                return self.reply_object(r, version, old)
            if m == "DELETE":
                if "dryRun" not in q and not (self.body() or {}).get("dryRun"):
                    delete(r, old)
                return self.reply(200, served_as(old, r, version))
            if m == "PUT":
                new = self.body() or {}
            else:
                new = self.patched(r, old)
            stored = update(r, old, new, status_only=(sub == "status"), dry="dryRun" in q)
        return self.reply(200, served_as(stored, r, version))

    def authorize(self, user, r, verb, ns, name, sub):
        if user.get("admin"):
            return
        if r["kind"] == "TokenReview" and verb == "create" and may_review(user):
            return
        resource = r["plural"] + (f"/{sub}" if sub else "")
        scope = f'in the namespace "{ns}"' if ns else "at the cluster scope"
        what = f'{qualified(r)} "{name}"' if name else qualified(r)
        raise ApiError(403, "Forbidden", f'{what} is forbidden: User "{user["username"]}" cannot {verb} resource '
                       f'"{resource}" in API group "{r["group"]}" {scope}', details(r, name or ""))

    def patched(self, r, old):
        ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip()
        patch = self.body()
        if ctype == "application/json-patch+json":
            return json_patch(old, patch or [])
        if ctype == "application/strategic-merge-patch+json" and r["crd"]:
            raise ApiError(415, "UnsupportedMediaType", "the body of the request was in an unknown format - accepted "
                           "media types include: application/json-patch+json, application/merge-patch+json, "
                           "application/apply-patch+yaml")
        if ctype in ("application/merge-patch+json", "application/strategic-merge-patch+json",
                     "application/apply-patch+yaml", "application/apply-patch+cbor"):
            return merge_patch(old, strip_directives(patch or {}))
        raise ApiError(415, "UnsupportedMediaType", f"the body of the request was in an unknown format - accepted "
                       f"media types include: application/json-patch+json, application/merge-patch+json, "
                       f"application/apply-patch+yaml, application/strategic-merge-patch+json")

    def wants_table(self):
        return "as=Table" in (self.headers.get("Accept") or "")

    def reply_object(self, r, version, obj):
        obj = served_as(obj, r, version)
        if self.wants_table():
            include = parse_qs(urlsplit(self.path).query).get("includeObject", ["Metadata"])[-1]
            return self.reply(200, table(r, version, [obj], include), "application/json")
        return self.reply(200, obj)

    def selected(self, r, version, ns, q):
        labels, fields = parse_label_selector(q.get("labelSelector")), parse_field_selector(q.get("fieldSelector"))
        out = []
        for (g, p, n, _), o in sorted(OBJECTS.items()):
            if (g, p) == (r["group"], r["plural"]) and (ns is None or n == ns) and \
                    labels_match(labels, o["metadata"].get("labels")) and fields_match(fields, o):
                out.append(served_as(o, r, version))
        return out

    def list(self, r, version, ns, q):
        with LOCK:
            items, rv = self.selected(r, version, ns, q), str(RV[0])
        if self.wants_table():
            return self.reply(200, table(r, version, items, q.get("includeObject", "Metadata"), rv))
        return self.reply(200, {"kind": r["kind"] + "List", "apiVersion": items[0]["apiVersion"] if items else
                                (f"{r['group']}/{version}" if r["group"] else version),
                                "metadata": {"resourceVersion": rv}, "items": items})

    def delete_collection(self, r, version, ns, q):
        with LOCK:
            items = self.selected(r, version, ns, q)
            for o in items:
                delete(r, OBJECTS[key_of(r, o["metadata"].get("namespace", ""), o["metadata"]["name"])])
        return self.reply(200, {"kind": r["kind"] + "List", "apiVersion": f"{r['group']}/{version}".lstrip("/"),
                                "metadata": {"resourceVersion": str(RV[0])}, "items": items})

    def watch(self, r, version, ns, q):
        """A chunked stream of watch events until timeoutSeconds or the client leaves."""
        labels, fields = parse_label_selector(q.get("labelSelector")), parse_field_selector(q.get("fieldSelector"))
        deadline = time.time() + float(q.get("timeoutSeconds") or 1800)
        table_mode = self.wants_table()
        since = q.get("resourceVersion", "")

        def matches(g, p, n, o):
            return (g, p) == (r["group"], r["plural"]) and (ns is None or n == ns) and \
                labels_match(labels, o["metadata"].get("labels")) and fields_match(fields, o)

        def frame(etype, o):
            o = served_as(o, r, version)
            if table_mode and etype != "BOOKMARK":
                o = table(r, version, [o], q.get("includeObject", "Metadata"))
            return json.dumps({"type": etype, "object": o}, separators=(",", ":")).encode() + b"\n"

        with LOCK:
            cursor = RV[0]
            if since in ("", "0") or q.get("sendInitialEvents") == "true":
                first = [frame("ADDED", o) for (g, p, n, _), o in sorted(OBJECTS.items()) if matches(g, p, n, o)]
                if q.get("sendInitialEvents") == "true":
                    first.append(json.dumps({"type": "BOOKMARK", "object": {
                        "kind": r["kind"], "apiVersion": f"{r['group']}/{version}".lstrip("/"),
                        "metadata": {"resourceVersion": str(cursor),
                                     "annotations": {"k8s.io/initial-events-end": "true"}}}}).encode() + b"\n")
            else:
                try:
                    since = int(since)
                except ValueError:
                    raise ApiError(400, "BadRequest", f'invalid resource version: "{since}"')
                first = [frame(t, o) for rv, t, g, p, n, o in HISTORY if rv > since and matches(g, p, n, o)]
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Cache-Control", "no-cache, private")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            self.chunks(first)
            while time.time() < deadline:
                with CHANGED:
                    CHANGED.wait(0.5)
                    new = [(rv, t, o) for rv, t, g, p, n, o in HISTORY if rv > cursor and matches(g, p, n, o)]
                    cursor = RV[0]
                self.chunks([frame(t, o) for _, t, o in new])
                if self.client_gone():
                    self.close_connection = True
                    return
            self.wfile.write(b"0\r\n\r\n")
        except OSError:
            self.close_connection = True

    def chunks(self, frames):
        for f in frames:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(f), f))
        self.wfile.flush()

    def client_gone(self):
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    # --- authentication.k8s.io ---
    def token_request(self, r, ns, name):
        body = self.body() or {}
        spec = body.get("spec") or {}
        seconds = int(spec.get("expirationSeconds") or 3600)
        with LOCK:
            sa = OBJECTS.get(("", "serviceaccounts", ns, name))
            if sa is None:
                raise not_found(r, name)
            if seconds < 600:
                raise ApiError(422, "Invalid", f'TokenRequest.authentication.k8s.io "{name}" is invalid: '
                               f"spec.expirationSeconds: Invalid value: {seconds}: may not specify a duration less "
                               "than 10 minutes", {"name": name, "group": "authentication.k8s.io",
                                                   "kind": "TokenRequest"})
            audiences = spec.get("audiences") or API_AUDIENCES
            token, exp = mint_token(sa, audiences, seconds)
        self.reply(201, {"kind": "TokenRequest", "apiVersion": "authentication.k8s.io/v1",
                         "metadata": {"name": name, "namespace": ns, "creationTimestamp": rfc3339()},
                         "spec": {"audiences": audiences, "expirationSeconds": seconds,
                                  "boundObjectRef": spec.get("boundObjectRef")},
                         "status": {"token": token, "expirationTimestamp": rfc3339(exp)}})

    def token_review(self, user):
        body = self.body() or {}
        spec = body.get("spec") or {}
        reviewed, error = review(spec.get("token") or "", spec.get("audiences") or None)
        status = {"authenticated": bool(reviewed), "user": {}}
        if reviewed:
            status["user"], status["audiences"] = reviewed, error
        else:
            status["error"] = error
        self.reply(201, {"kind": "TokenReview", "apiVersion": "authentication.k8s.io/v1",
                         "metadata": {"creationTimestamp": None}, "spec": spec, "status": status})

    # --- pods/portforward: the kubelet, through portforward.py ---
    def port_forward(self, r, ns, name):
        with LOCK:
            pod = copy.deepcopy(OBJECTS.get(("", "pods", ns, name)))
            if pod is None:
                raise not_found(r, name)
            if not (pod.get("spec") or {}).get("nodeName"):
                raise ApiError(400, "BadRequest", f"pod {name} does not have a host assigned")
            websocket = (KNOBS.get("portforward") or {}).get("websocket", True)
        # A session exists once the upgrade succeeded (the first on_session);
        # refused upgrades (kubectl's WebSocket try when websocket is off) are none.
        session = {"pod": f"{ns}/{name}", "protocol": None, "connections": 0, "ended": False, "die_after": None}
        mod = load_portforward()
        if mod is None:
            raise ApiError(400, "BadRequest", "portforward.py is not there yet: the stand-in cannot forward ports")

        def dial(port, n):
            with LOCK:
                session["connections"] = max(session["connections"], n + 1)
                pf = KNOBS.get("portforward") or {}
                up = (KNOBS.get("upstreams") or {}).get(f"{ns}/{name}")
            die_after = session["die_after"]
            if die_after is not None and n >= die_after:
                return mod.DIE
            if pf.get("refuse") or not up:
                return refusal(pod, port)
            if isinstance(up, dict):
                up = up.get(str(port))
                if not up:
                    return refusal(pod, port)
            host, _, p = up.rpartition(":")
            try:
                s = socket.create_connection((host or "127.0.0.1", int(p)), timeout=2)
                s.settimeout(None)
                return s
            except OSError:
                return refusal(pod, port)

        def on_session(info):
            with LOCK:
                if session["protocol"] is None:
                    SESSIONS.append(session)
                    seq = (KNOBS.get("portforward") or {}).get("die_after", [None])
                    seq = seq if isinstance(seq, list) and seq else [None if isinstance(seq, list) else seq]
                    session["die_after"] = seq[min(len(SESSIONS) - 1 - PF_BASE[0], len(seq) - 1)]
                session["protocol"] = session["protocol"] or info.get("protocol")
                session["connections"] = max(session["connections"], int(info.get("connections") or 0))

        relay = None
        if isinstance(self.connection, ssl.SSLSocket):
            # An SSL socket must not be read and written from two threads at
            # once, as portforward.py would: it gets a plain socketpair end,
            # and one relay thread does every TLS read and write.
            inner, outer = socket.socketpair()
            relay = threading.Thread(target=tls_relay, args=(self.connection, outer), daemon=True)
            relay.start()
            self.connection, self.rfile, self.wfile = inner, inner.makefile("rb"), inner.makefile("wb", 0)
        try:
            mod.handle(self, dial, websocket=websocket, on_session=on_session)
        finally:
            if relay:
                self.wfile.flush()
                self.connection.close()
                relay.join(5)
            with LOCK:
                session["ended"] = True
            self.close_connection = True
            if not self._logged:
                self._logged = True
                with LOG["lock"], open(LOG["path"], "a") as f:
                    f.write(f"{self.command} {self.path} -> {101 if session['protocol'] else '?'}\n")

    # --- the tests' control API ---
    def control(self, path, q):
        m = self.command
        if path == "/_standin/objects" and m == "GET":
            with LOCK:
                return self.reply(200, [OBJECTS[k] for k in sorted(OBJECTS)])
        if path == "/_standin/objects" and m == "POST":
            return self.reply(200, put_objects(self.body() or []))
        if path == "/_standin/delete" and m == "POST":
            gone = []
            with LOCK:
                for ref in self.body() or []:
                    r = by_kind(ref.get("apiVersion", ""), ref.get("kind", ""))
                    obj = r and OBJECTS.get(key_of(r, ref.get("namespace", ""), ref.get("name", "")))
                    if obj:
                        gone.append(delete(r, obj))
            return self.reply(200, gone)
        if path == "/_standin/knobs":
            with LOCK:
                if m == "PUT":
                    patch = self.body() or {}
                    KNOBS.update(patch)
                    if "portforward" in patch:
                        PF_BASE[0] = len(SESSIONS)
                return self.reply(200, KNOBS)
        if path == "/_standin/apply-store" and m == "POST":
            body = self.body() or {}
            provider = body.get("provider", "vault")
            with LOCK:
                r = by_kind(f"{ESO_GROUP}/v1", "ClusterSecretStore")
                if r is None:
                    raise ApiError(404, "NotFound", "no ClusterSecretStore CRD in the cluster")
                old = OBJECTS.get(key_of(r, "", "ameide-vault"))
                labels = {"app.kubernetes.io/managed-by": "Helm", "ameide.io/secrets-provider": provider}
                if old is None:
                    obj = create(r, {"apiVersion": f"{ESO_GROUP}/v1", "kind": "ClusterSecretStore",
                                     "metadata": {"name": "ameide-vault", "labels": labels},
                                     "spec": {"provider": body.get("block") or store_block(provider)}}, "")
                else:
                    new = copy.deepcopy(old)
                    new["metadata"].setdefault("labels", {}).update(labels)
                    new.setdefault("spec", {})["provider"] = body.get("block") or store_block(provider)
                    # The same spec changes nothing, as a helm upgrade with
                    # no diff does: no new generation, ESO is not told.
                    obj = update(r, old, new)
            return self.reply(200, obj)
        if path == "/_standin/eso-crds" and m == "POST":
            body = self.body() or {}
            served = body.get("served") or ["v1"]
            return self.reply(200, put_objects(eso_crds(served, body.get("storage") or served[0])))
        if path == "/_standin/portforward" and m == "GET":
            with LOCK:
                return self.reply(200, {"sessions": [{k: v for k, v in x.items() if k != "die_after"}
                                                     for x in SESSIONS]})
        raise ApiError(404, "NotFound", f"no control endpoint {m} {path}")


def group_list(resources):
    groups = {}
    for r in resources:
        if r["group"]:
            vs = groups.setdefault(r["group"], [])
            vs.extend(v for v in r["versions"] if v not in vs)
    out = []
    for g, vs in groups.items():
        vs = sorted(vs, key=version_priority, reverse=True)
        gv = [{"groupVersion": f"{g}/{v}", "version": v} for v in vs]
        out.append({"name": g, "versions": gv, "preferredVersion": gv[0]})
    return out


def resource_list(group, version, rs):
    out = []
    for r in rs:
        out.append({"name": r["plural"], "singularName": r["singular"], "namespaced": r["namespaced"],
                    "kind": r["kind"], "verbs": r["verbs"], **({"shortNames": r["shortNames"]} if r["shortNames"]
                                                              else {}),
                    **({"categories": r["categories"]} if r["categories"] else {}),
                    "storageVersionHash": b64url(hashlib.sha256(qualified(r).encode()).digest()[:8])})
        for sub, spec in r["sub"].items():
            entry = {"name": f"{r['plural']}/{sub}", "singularName": "", "namespaced": r["namespaced"],
                     "kind": spec[0], "verbs": spec[1]}
            if len(spec) > 2:
                entry.update(group=spec[2], version=spec[3])
            out.append(entry)
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": f"{group}/{version}".lstrip("/"),
            "resources": out}


def put_objects(objs):
    """POST /_standin/objects: create or replace each object (uid kept);
    missing namespaces are made. A store that arrives with a Ready condition
    counts as validated by ESO already; status.syncedResourceVersion
    "current" on an ExternalSecret becomes the value ESO would compute."""
    out = []
    with LOCK:
        for o in objs if isinstance(objs, list) else [objs]:
            r = by_kind(o.get("apiVersion", ""), o.get("kind", ""))
            if r is None:
                raise ApiError(400, "BadRequest", f"no resource for {o.get('apiVersion')} {o.get('kind')}")
            meta = o.setdefault("metadata", {})
            meta.pop("resourceVersion", None)
            ns = meta.get("namespace") or ("default" if r["namespaced"] else "")
            if r["namespaced"] and ("", "namespaces", "", ns) not in OBJECTS:
                create(resolve("", "v1", "namespaces"), {"metadata": {"name": ns}}, "")
            old = OBJECTS.get(key_of(r, ns, meta.get("name", "")))
            if old is None:
                stored = create(r, o, ns)
            else:
                new = copy.deepcopy(o)
                new["metadata"].pop("resourceVersion", None)
                stored = update(r, old, new)
                if "status" in o and "status" in r["sub"]:
                    stored = update(r, stored, o, status_only=True)
            if "status" in o and "status" in r["sub"] and old is None:
                stored = update(r, stored, o, status_only=True)
            st = stored.get("status") or {}
            if r["kind"] == "ExternalSecret" and st.get("syncedResourceVersion") == "current":
                fixed = copy.deepcopy(stored)
                fixed["status"]["syncedResourceVersion"] = eso_version(stored["metadata"])
                stored = update(r, stored, fixed, status_only=True)
            if r["kind"] in ("ClusterSecretStore", "SecretStore") and st.get("conditions"):
                m = stored["metadata"]
                ESO["seen"][m["uid"]] = (m.get("generation"), json.dumps([m.get("labels"), m.get("annotations")],
                                                                          sort_keys=True))
                ESO["next"][m["uid"]] = time.time() + 300
            out.append(stored)
    return out


def seed():
    """What a fresh k3d cluster has before anything is installed."""
    nsr = resolve("", "v1", "namespaces")
    for ns in ("default", "kube-system", "kube-public", "kube-node-lease"):
        create(nsr, {"metadata": {"name": ns}}, "")
    create(resolve("", "v1", "services"), {"metadata": {"name": "kubernetes", "labels": {
        "component": "apiserver", "provider": "kubernetes"}}, "spec": {"clusterIP": "10.43.0.1", "ports": [
            {"name": "https", "port": 443, "protocol": "TCP", "targetPort": 6443}]}}, "default")
    crr = resolve("rbac.authorization.k8s.io", "v1", "clusterroles")
    create(crr, {"metadata": {"name": "cluster-admin"}, "rules": [
        {"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}, {"nonResourceURLs": ["*"], "verbs": ["*"]}]}, "")
    create(crr, {"metadata": {"name": "system:auth-delegator"}, "rules": [
        {"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": ["create"]},
        {"apiGroups": ["authorization.k8s.io"], "resources": ["subjectaccessreviews"], "verbs": ["create"]}]}, "")
    create(resolve("rbac.authorization.k8s.io", "v1", "clusterrolebindings"), {
        "metadata": {"name": "cluster-admin"}, "roleRef": {"apiGroup": "rbac.authorization.k8s.io",
                                                           "kind": "ClusterRole", "name": "cluster-admin"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "system:masters"}]}, "")


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128
    tls = None      # an ssl.SSLContext, or None for plain HTTP

    def get_request(self):
        """Accept; the TLS handshake happens in the request's own thread (Handler.setup)."""
        sock, addr = self.socket.accept()
        if self.tls:
            sock = self.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, addr

    def handle_error(self, request, client_address):
        pass    # a client that went away mid-handshake or mid-stream is no news


def make_key(d):
    """A self-signed CA-flagged certificate for 127.0.0.1/localhost and its
    RSA key (openssl CLI): the cluster CA kubectl and OpenBao verify the
    server with; the key also signs the service-account tokens."""
    cert, key = os.path.join(d, "ca.crt"), os.path.join(d, "ca.key")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert, "-days", "3650", "-subj", "/CN=k3s-server-ca",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes.default.svc",
                    "-addext", "basicConstraints=critical,CA:TRUE",
                    "-addext", "keyUsage=critical,digitalSignature,keyCertSign"],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    load_rsa(key)
    return cert, key


def make_tls(cert, key):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    ctx.set_alpn_protocols(["http/1.1"])
    with open(cert) as f:
        return ctx, cert, f.read()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", required=True)
    ap.add_argument("--parent-pid", type=int)
    ap.add_argument("--plain", action="store_true",
                    help="plain HTTP; kubectl then sends no token, so tokenless requests count as admin")
    args = ap.parse_args()
    PLAIN[0] = args.plain
    os.makedirs(args.dir, exist_ok=True)
    LOG["path"] = os.path.join(args.dir, "requests.log")
    open(LOG["path"], "a").close()
    with LOCK:
        seed()
    server = Server(("127.0.0.1", 0), Handler)
    info = {"token": ADMIN_TOKEN, "pid": os.getpid()}
    cert, key = make_key(args.dir)
    if not args.plain:
        server.tls, info["ca_file"], info["ca"] = make_tls(cert, key)
    SERVER_URL[0] = f"{'http' if args.plain else 'https'}://127.0.0.1:{server.server_address[1]}"
    info["url"] = SERVER_URL[0]
    # The tests' control calls go to a plain-HTTP port of their own, which
    # answers /_standin/ only: the harness and the fake helmfile need no
    # TLS client.
    control = Server(("127.0.0.1", 0), Handler)
    control.control_only = True
    info["control_url"] = f"http://127.0.0.1:{control.server_address[1]}"
    threading.Thread(target=control.serve_forever, kwargs={"poll_interval": 0.5}, daemon=True).start()
    tmp = os.path.join(args.dir, "standin.json.tmp")
    with open(tmp, "w") as f:
        json.dump(info, f)
    os.replace(tmp, os.path.join(args.dir, "standin.json"))
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    threading.Thread(target=eso_loop, daemon=True).start()
    if args.parent_pid:
        threading.Thread(target=watch_parent, args=(args.parent_pid,), daemon=True).start()
    server.serve_forever(poll_interval=0.5)


def watch_parent(pid):
    """Exit once the parent is gone (or a zombie)."""
    while True:
        time.sleep(1)
        try:
            os.kill(pid, 0)
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    os._exit(0)
        except (ProcessLookupError, FileNotFoundError):
            os._exit(0)
        except (PermissionError, OSError, IndexError):
            pass


if __name__ == "__main__":
    main()
