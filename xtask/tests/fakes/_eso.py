"""A small External Secrets Operator for the fake kubectl and helmfile.

The scenario's `kubectl.eso` describes the cluster:

    {"clock_offset": -30,          # the cluster's clock minus ours, in seconds
     "reconcile_delay": 0.2,       # how long ESO takes to act on a change
     "provider": "azure",          # what ClusterSecretStore/ameide-vault uses
                                   # until a `helmfile sync` of layer 15 applies the flag
     "stores": {"vault": {"ready": false, "message": "..."}},   # a provider's health (default ready)
     "externalsecrets": [{"namespace": "ameide", "name": "a"},
                         {"namespace": "team", "name": "b", "store": {"kind": "SecretStore", "name": "team"}},
                         {"namespace": "ameide", "name": "c", "frozen": true}]}   # never reconciled

Like ESO, a reconcile happens when an ExternalSecret's annotations change
(`kubectl annotate ... force-sync=...`) or after a failed reconcile (ESO
retries), never on its own. A successful one sets `status.refreshTime` from
the cluster's clock and `status.syncedResourceVersion` from the object's
generation and annotations; a failed one sets Ready=False with the store's
message and leaves both as they were. The state persists in
$FAKE_DIR/eso-state.json across scenario changes, as a cluster would.
"""
import hashlib
import json
import os
import time

from _fake import FAKE_DIR, lock, scenario

STATE = os.path.join(FAKE_DIR, "eso-state.json")


def config():
    return scenario().get("kubectl", {}).get("eso")


def _cluster_time(cfg, at=None):
    t = (at if at is not None else time.time()) + cfg.get("clock_offset", 0)
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def _version(es):
    digest = hashlib.sha256(json.dumps(es["annotations"], sort_keys=True).encode()).hexdigest()
    return f"{es['generation']}-{digest[:16]}"


def _health(cfg, state):
    store = cfg.get("stores", {}).get(state["provider"], {})
    return store.get("ready", True), store.get(
        "message", f"could not get secret data from provider {state['provider']}")


def _load(cfg):
    if os.path.exists(STATE):
        with open(STATE) as f:
            state = json.load(f)
    else:
        state = {"provider": cfg.get("provider", "vault"), "items": {}}
    for spec in cfg.get("externalsecrets", []):
        key = f"{spec.get('namespace', 'ameide')}/{spec['name']}"
        if key in state["items"]:
            continue
        es = {"namespace": spec.get("namespace", "ameide"), "name": spec["name"],
              "store": spec.get("store", {"kind": "ClusterSecretStore", "name": "ameide-vault"}),
              "frozen": spec.get("frozen", False), "generation": 1, "annotations": {},
              "dirty_since": None}
        # Synced a while ago, on the store it had then.
        ready, message = _health(cfg, state)
        es["refreshTime"] = _cluster_time(cfg, time.time() - 5)
        es["syncedResourceVersion"] = _version(es)
        es["ready"], es["reason"], es["message"] = (
            (True, "SecretSynced", "secret synced") if ready else (False, "SecretSyncedError", message))
        state["items"][key] = es
    return state


def _save(state):
    tmp = STATE + ".tmp"
    with open(tmp, "w") as f:
        json.dump(state, f)
    os.replace(tmp, STATE)


def _reconcile(cfg, state):
    now = time.time()
    delay = cfg.get("reconcile_delay", 0.2)
    for es in state["items"].values():
        if es["frozen"] or es["dirty_since"] is None or now - es["dirty_since"] < delay:
            continue
        if es["store"] != {"kind": "ClusterSecretStore", "name": "ameide-vault"}:
            es["dirty_since"] = None
            continue
        ready, message = _health(cfg, state)
        if ready:
            es["refreshTime"] = _cluster_time(cfg)
            es["syncedResourceVersion"] = _version(es)
            es["ready"], es["reason"], es["message"] = True, "SecretSynced", "secret synced"
            es["dirty_since"] = None
        else:
            es["ready"], es["reason"], es["message"] = False, "SecretSyncedError", message
            es["dirty_since"] = now  # ESO retries with a backoff


def list_json():
    """`kubectl get externalsecrets --all-namespaces --output json`."""
    cfg = config()
    with lock():
        state = _load(cfg)
        _reconcile(cfg, state)
        _save(state)
    items = []
    for es in state["items"].values():
        status = {"refreshTime": es["refreshTime"], "syncedResourceVersion": es["syncedResourceVersion"],
                  "conditions": [{"type": "Ready", "status": "True" if es["ready"] else "False",
                                  "reason": es["reason"], "message": es["message"],
                                  "lastTransitionTime": es["refreshTime"]}]}
        items.append({"apiVersion": "external-secrets.io/v1", "kind": "ExternalSecret",
                      "metadata": {"namespace": es["namespace"], "name": es["name"],
                                   "generation": es["generation"], "annotations": es["annotations"]},
                      "spec": {"secretStoreRef": es["store"], "refreshInterval": "1h"},
                      "status": status})
    return {"apiVersion": "v1", "kind": "List", "items": items, "metadata": {"resourceVersion": ""}}


def annotate(namespace, name, key, value):
    """`kubectl annotate externalsecret NAME --namespace NS key=value --overwrite`.
    Returns False when there is no such ExternalSecret."""
    cfg = config()
    with lock():
        state = _load(cfg)
        es = state["items"].get(f"{namespace}/{name}")
        if es is None:
            return False
        if es["annotations"].get(key) != value:
            es["annotations"][key] = value
            es["dirty_since"] = time.time()
        _save(state)
    return True


def apply_store(provider):
    """A `helmfile sync` of layer 15 applied the store for `provider`."""
    cfg = config()
    if cfg is None:
        return
    with lock():
        state = _load(cfg)
        state["provider"] = provider
        _save(state)
