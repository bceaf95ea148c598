#!/usr/bin/env bash
# Make sure Debian's slurm-wlm and munge are installed, for the real-Slurm integration
# tests (tests/integration/slurm_harness.py starts the daemons itself; nothing is enabled
# or started here). Installs with apt only when something is missing AND we run as root
# on an apt system; otherwise does nothing. Idempotent, and silent unless it installs.
set -euo pipefail

have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/sbin/$1" ]; }

missing=()
for bin in slurmctld slurmd sbatch srun sinfo scontrol squeue scancel; do
    have "$bin" || { missing+=(slurm-wlm); break; }
done
for bin in munged munge mungekey; do
    have "$bin" || { missing+=(munge); break; }
done

[ "${#missing[@]}" -eq 0 ] && exit 0
[ "${EUID:-$(id -u)}" -eq 0 ] || exit 0
command -v apt-get >/dev/null 2>&1 || exit 0

echo "ensure-slurm: installing ${missing[*]} with apt-get" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq "${missing[@]}" >/dev/null
echo "ensure-slurm: installed ${missing[*]}" >&2
