#!/usr/bin/env bash
# DEPRECATED shim: the per-developer Azure Key Vault seeding now lives in
#   cargo xtask secrets seed --provider azure
# Kept so old muscle memory and CI jobs keep working; same flags, same exit
# codes (0 ok, 1 failed, 2 usage, 3 partial). See docs/secrets.md.
set -euo pipefail

usage() {
  cat <<'USAGE'
usage: scripts/azure/sync-local-keyvault-secrets.sh [--vault-name NAME] [--secrets-file FILE] [--dry-run] [--force]
  --vault-name NAME     your own Azure Key Vault (default: $AZURE_KEYVAULT_NAME or .local/secrets.toml)
  --secrets-file FILE   fixtures (default: scripts/azure/default-local-keyvault-secrets.json)
  --dry-run             print the plan, write nothing
  --force               overwrite secrets changed by hand
USAGE
}

# Paths are from where you stand, as with any command; made absolute here
# because the tool runs from the repository root below.
abspath() { case "$1" in /*) printf '%s' "$1" ;; *) printf '%s/%s' "$PWD" "$1" ;; esac; }

args=(secrets seed --provider azure)
while [ $# -gt 0 ]; do
  case "$1" in
    --vault-name) [ $# -ge 2 ] || { usage >&2; exit 2; }; export AZURE_KEYVAULT_NAME="$2"; shift 2 ;;
    --vault-name=*) export AZURE_KEYVAULT_NAME="${1#*=}"; shift ;;
    --secrets-file) [ $# -ge 2 ] || { usage >&2; exit 2; }; args+=(--fixtures "$(abspath "$2")"); shift 2 ;;
    --secrets-file=*) args+=(--fixtures "$(abspath "${1#*=}")"); shift ;;
    --dry-run) args+=(--dry-run); shift ;;
    --force) args+=(--force); shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "unknown option: $1" >&2; usage >&2; exit 2 ;;
  esac
done

echo "sync-local-keyvault-secrets.sh is deprecated: running \`cargo xtask secrets seed --provider azure\` (see docs/secrets.md)" >&2
cd "$(dirname "$0")/../.."
if [ -n "${XTASK_BIN:-}" ]; then exec "$XTASK_BIN" "${args[@]}"; fi
exec cargo xtask "${args[@]}"
