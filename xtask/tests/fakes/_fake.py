"""Shared plumbing for the fake kubectl, helmfile and az used by the tests.

Each fake records its argv and stdin as one JSON line in $FAKE_DIR/calls.jsonl
and replays what $FAKE_DIR/scenario.json says. Fakes accept only the flags the
real tools accept for the calls this project makes; anything else fails the
way the real tool would, so a test cannot pass on a made-up flag.
"""
import json
import os
import sys

FAKE_DIR = os.environ["FAKE_DIR"]


def lock():
    """Serialises fakes that share state, as one real server would."""
    import fcntl
    f = open(os.path.join(FAKE_DIR, "fake.lock"), "w")
    fcntl.flock(f, fcntl.LOCK_EX)
    return f


def record(tool, argv):
    stdin = ""
    if not sys.stdin.isatty():
        try:
            stdin = sys.stdin.read()
        except Exception:
            stdin = ""
    # Which token variables the tool was handed (names only): none of the
    # tools needs Vault's token.
    env = sorted(v for v in ("VAULT_TOKEN", "BAO_TOKEN") if v in os.environ)
    with open(os.path.join(FAKE_DIR, "calls.jsonl"), "a") as f:
        f.write(json.dumps({"tool": tool, "argv": argv, "stdin": stdin, "env": env}) + "\n")


def scenario():
    path = os.path.join(FAKE_DIR, "scenario.json")
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)


def next_in_sequence(name, items):
    """The next item of a list in the scenario; the last one repeats."""
    counter = os.path.join(FAKE_DIR, f"counter-{name}")
    n = int(open(counter).read()) if os.path.exists(counter) else 0
    with open(counter, "w") as f:
        f.write(str(n + 1))
    return items[min(n, len(items) - 1)]


def parse(argv, with_value, bare, tool):
    """Splits argv into flags and positionals, refusing unknown flags."""
    flags, pos = {}, []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a.startswith("-") and a != "-":
            name, eq, val = a.partition("=")
            if name in with_value:
                if not eq:
                    i += 1
                    if i >= len(argv):
                        fail(tool, f"flag needs an argument: {name}")
                    val = argv[i]
                flags.setdefault(with_value[name], []).append(val)
            elif name in bare:
                flags[bare[name]] = [val or "true"]
            else:
                fail(tool, f"unknown flag: {name}")
        else:
            pos.append(a)
        i += 1
    return flags, pos


def fail(tool, msg, code=1):
    sys.stderr.write(f"Error: {msg}\n" if tool != "kubectl" else f"error: {msg}\n")
    sys.exit(code)
