#!/usr/bin/env python3
"""DEPRECATED shim: seeding the local Vault now lives in
    cargo xtask secrets seed --provider vault
Kept so the devcontainer bootstrap and old habits keep working: same flags,
same exit codes (0 ok, 1 failed, 2 usage, 3 partial). See docs/secrets.md.
"""
import argparse
import os
import sys

parser = argparse.ArgumentParser(description="Deprecated: use `cargo xtask secrets seed --provider vault`.")
parser.add_argument("--vault-addr", help="Vault address (default: $VAULT_ADDR, else a port-forward)")
parser.add_argument("--mount", help="KV mount (default: secret)")
parser.add_argument("--secrets-file", help="fixtures (default: scripts/azure/default-local-keyvault-secrets.json)")
parser.add_argument("--dry-run", action="store_true", help="print the plan, write nothing")
parser.add_argument("--force", action="store_true", help="overwrite secrets changed by hand")
args = parser.parse_args()  # exits 2 on a usage error, like the tool

cmd = ["secrets", "seed", "--provider", "vault"]
if args.mount:
    cmd += ["--mount", args.mount]
if args.secrets_file:
    cmd += ["--fixtures", os.path.abspath(args.secrets_file)]
if args.dry_run:
    cmd.append("--dry-run")
if args.force:
    cmd.append("--force")
if args.vault_addr:
    os.environ["VAULT_ADDR"] = args.vault_addr

print("ensure-local-secrets.py is deprecated: running `cargo xtask secrets seed --provider vault` (see docs/secrets.md)",
      file=sys.stderr)
os.chdir(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
xtask = os.environ.get("XTASK_BIN")
if xtask:
    os.execv(xtask, [xtask] + cmd)
os.execvp("cargo", ["cargo", "xtask"] + cmd)
