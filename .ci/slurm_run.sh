#!/usr/bin/env bash
# CI: run the tiny config through profiles/slurm on a throw-away one-node SLURM cluster on this
# machine (Debian slurm-wlm + munge, no accounting, no cgroups, a fake GPU), and check that every
# job ran as a SLURM job. train_model and predict_case ask for a GPU (--gpus=1); the node
# advertises one (gres on /dev/null), so sbatch accepts them and medseg falls back to the CPU.
#
#   bash .ci/slurm_run.sh            # as root; ~5 min on 2 cores
#
# Env: SNAKEMAKE (default: the venv's snakemake, else the one on PATH), CI_TIMEOUT (s, 900),
# KEEP_WORKDIR=1 keeps the temp working dir.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
SNAKEMAKE=${SNAKEMAKE:-$(command -v "$REPO/../venv/bin/snakemake" /work/venv/bin/snakemake snakemake 2>/dev/null | head -1)}
CI_TIMEOUT=${CI_TIMEOUT:-900}
log() { printf '[slurm_run %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "FAIL: $*"; exit 1; }

[[ $(id -u) == 0 ]] || die "run as root (starts munged, slurmctld, slurmd)"
[[ -x $SNAKEMAKE ]] || die "snakemake not found; set SNAKEMAKE=/path/to/snakemake"
"$(dirname "$SNAKEMAKE")/python" -c "import snakemake_executor_plugin_slurm" 2>/dev/null \
  || die "snakemake-executor-plugin-slurm is not installed next to $SNAKEMAKE (pip install snakemake-executor-plugin-slurm)"

# --- packages ----------------------------------------------------------------------------------
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null; then
  log "installing slurm-wlm and munge (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq slurm-wlm munge >/dev/null
fi

# --- a one-node cluster in a temp dir ----------------------------------------------------------
CI_DIR=$(mktemp -d /tmp/medseg-slurm-ci.XXXXXX)
WORK=$CI_DIR/work
SLURM_DIR=$CI_DIR/slurm
MUNGE_DIR=$CI_DIR/munge
mkdir -p "$WORK" "$SLURM_DIR"/{state,spool}
NODE=$(hostname -s)                 # NodeName must be the short hostname slurmd runs on
CTLD_PORT=${CTLD_PORT:-16817}       # not the default 6817/6818, to stay clear of a real install
SLURMD_PORT=${SLURMD_PORT:-16818}
PIDS=()

cleanup() {
  local rc=$?
  set +e
  [[ -n ${SLURM_CONF:-} ]] && scancel --user=root >/dev/null 2>&1
  for pidfile in "$SLURM_DIR/slurmd.pid" "$SLURM_DIR/slurmctld.pid" "$MUNGE_DIR/munged.pid"; do
    [[ -s $pidfile ]] && kill "$(cat "$pidfile")" 2>/dev/null
  done
  sleep 1
  for pidfile in "$SLURM_DIR/slurmd.pid" "$SLURM_DIR/slurmctld.pid" "$MUNGE_DIR/munged.pid"; do
    [[ -s $pidfile ]] && kill -9 "$(cat "$pidfile")" 2>/dev/null
  done
  [[ -L /run/slurm/conf && $(readlink /run/slurm/conf) == "$SLURM_DIR"/* ]] && rm -f /run/slurm/conf
  if [[ $rc != 0 ]]; then
    log "exit $rc; daemon logs:"
    tail -n 20 "$SLURM_DIR"/slurmctld.log "$SLURM_DIR"/slurmd.log "$MUNGE_DIR"/munged.log 2>/dev/null >&2
  fi
  if [[ ${KEEP_WORKDIR:-0} == 1 || $rc != 0 ]]; then log "kept $CI_DIR"; else rm -rf "$CI_DIR"; fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# munge on its default socket (configless slurmd authenticates before it has a config to name
# another one); a munged already answering there is reused. munged refuses root -> user munge.
MUNGE_SOCKET=/run/munge/munge.socket.2
if munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then
  log "using the munged already running"
else
  id munge >/dev/null 2>&1 || die "user munge missing (is the munge package installed?)"
  mkdir -p "$MUNGE_DIR" /run/munge
  chmod 0755 "$CI_DIR" "$MUNGE_DIR" /run/munge   # socket dir: readable by all, writable by munge only
  dd if=/dev/urandom of="$MUNGE_DIR/munge.key" bs=1024 count=1 status=none
  chmod 0400 "$MUNGE_DIR/munge.key"
  chown -R munge:munge "$MUNGE_DIR" /run/munge
  runuser -u munge -- /usr/sbin/munged --key-file="$MUNGE_DIR/munge.key" --socket="$MUNGE_SOCKET" \
    --pid-file="$MUNGE_DIR/munged.pid" --log-file="$MUNGE_DIR/munged.log" --seed-file="$MUNGE_DIR/munged.seed" \
    || die "munged did not start"
  munge -n </dev/null | unmunge >/dev/null || die "munge round trip failed"
fi

# CPUs/RealMemory are declared (config_overrides) so the profile's requests fit one small node:
# train_model asks 8 CPUs per GPU and 32 GB. TaskPlugin=task/none: nothing is really enforced.
cat >"$SLURM_DIR/slurm.conf" <<EOF
ClusterName=medsegci
SlurmctldHost=$NODE(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=$SLURM_DIR/state
SlurmdSpoolDir=$SLURM_DIR/spool
SlurmctldPidFile=$SLURM_DIR/slurmctld.pid
SlurmdPidFile=$SLURM_DIR/slurmd.pid
SlurmctldLogFile=$SLURM_DIR/slurmctld.log
SlurmdLogFile=$SLURM_DIR/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MinJobAge=3600
ReturnToService=2
SlurmdParameters=config_overrides
SlurmctldParameters=enable_configless
GresTypes=gpu
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=8 RealMemory=32768 Gres=gpu:1 State=UNKNOWN
PartitionName=ci Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
cat >"$SLURM_DIR/gres.conf" <<EOF
AutoDetect=off
NodeName=$NODE Name=gpu File=/dev/null
EOF
export SLURM_CONF=$SLURM_DIR/slurm.conf

/usr/sbin/slurmctld -f "$SLURM_CONF" -i || die "slurmctld did not start"
# slurmd runs configless (fetches the config from slurmctld) so that it publishes it at
# /run/slurm/conf: the plugin's job step strips SLURM_CONF from the environment of the srun it
# starts inside each job (snakemake-executor-plugin-slurm-jobstep), and srun falls back to there.
[[ -e /run/slurm/conf ]] && die "/run/slurm/conf exists: another slurmd runs on this machine"
/usr/sbin/slurmd --conf-server "127.0.0.1:$CTLD_PORT" -N "$NODE" || die "slurmd did not start"
for _ in $(seq 60); do
  state=$(sinfo -h -n "$NODE" -o %t 2>/dev/null || true)
  [[ $state == idle ]] && break
  sleep 1
done
[[ ${state:-} == idle ]] || die "node $NODE not idle (state '${state:-none}')"
log "cluster up: $(sinfo -h -o '%P %D %t %c CPUs %m MB %G')"
gpu_env=$(srun --gpus=1 -t 1 printenv CUDA_VISIBLE_DEVICES 2>&1) || die "srun --gpus=1 failed: $gpu_env"
log "a --gpus=1 job step sees CUDA_VISIBLE_DEVICES=$gpu_env (no driver: torch falls back to the CPU)"

# --- the workflow ------------------------------------------------------------------------------
# Status checks: squeue (no accounting here). The plugin polls after the first delay, then adds
# 10 s per poll that finds nothing finished (10, 30, 60 s ...); the tiny jobs take 6-30 s, so 10 s
# (default 40) keeps each of the ~10 dependent stages at 10-30 s instead of 40-90 s.
# MinJobAge=3600 >= 3 x 10 s, and long enough to list every job of the run at the end.
printf 'resources:\n  gpu: 1   # predict_case asks for a GPU too\n' >"$CI_DIR/gpu.yaml"
log "running the tiny config under SLURM in $WORK (timeout ${CI_TIMEOUT}s)"
cd "$WORK"
start=$SECONDS
set +e
timeout -k 30 "$CI_TIMEOUT" "$SNAKEMAKE" --snakefile "$REPO/Snakefile" --directory "$WORK" \
  --workflow-profile "$REPO/profiles/slurm" \
  --configfile "$REPO/config.yaml" "$REPO/tests/configs/tiny.yaml" "$CI_DIR/gpu.yaml" \
  --jobs 5 --retries 0 --keep-going \
  --slurm-init-seconds-before-status-checks 10 --seconds-between-status-checks 10 \
  --slurm-keep-successful-logs --slurm-delete-logfiles-older-than 0 \
  --latency-wait 10 \
  results/brats_timm.json >"$CI_DIR/snakemake.log" 2>&1
rc=$?
set -e
wall=$((SECONDS - start))
log "snakemake exit $rc after ${wall}s"
if [[ $rc != 0 ]]; then
  tail -n 60 "$CI_DIR/snakemake.log" >&2
  [[ $rc == 124 || $rc == 137 ]] && die "timed out after ${CI_TIMEOUT}s"
  die "snakemake failed"
fi

# --- checks ------------------------------------------------------------------------------------
# 1. every SLURM job of the run is COMPLETED; 2. every job of the DAG ran inside one of them
# (the plugin runs each rule under srun in the allocation: "localrule <rule>:" in the SLURM log,
# "localcheckpoint case_sheet:" for the checkpoint),
# rule by rule as in snakemake's job stats; 3. train_model and predict_case asked for a GPU.
[[ -s $WORK/results/brats_timm.json ]] || die "results/brats_timm.json missing"
# "Job 17 has been submitted with SLURM jobid 29 (log: .../slurm_logs/rule_train_model/brats_timm_0/29.log)."
declare -A log_of=() state_of=() tres_of=()
while read -r id path; do
  [[ -s $path ]] || die "SLURM log of job $id missing: $path"
  log_of[$id]=$path
done < <(sed -n 's/.*has been submitted with SLURM jobid \([0-9]\+\) (log: \(.*\.log\)).*/\1 \2/p' "$CI_DIR/snakemake.log")
ids=$(printf '%s\n' "${!log_of[@]}" | sort -n | tr '\n' ' ')
[[ -n $ids ]] || die "no 'submitted with SLURM jobid' lines in the snakemake log"
while read -r id st tres; do state_of[$id]=$st; tres_of[$id]=${tres:-}; done \
  < <(squeue -h --states=all -O 'JobID:12,State:14,tres-per-job:30')
bad=() gpu=()
for id in $ids; do
  name=${log_of[$id]#*/slurm_logs/}
  name=${name%%/*}
  [[ ${state_of[$id]:-MISSING} == COMPLETED ]] || bad+=("$id($name):${state_of[$id]:-MISSING}")
  [[ ${tres_of[$id]:-} == *gpu* ]] && gpu+=("$id(${name#rule_})")
done
[[ ${#bad[@]} -eq 0 ]] || die "SLURM jobs not COMPLETED: ${bad[*]}"
expected=$(awk '/^Job stats:/ {s=1; next} s && $1 == "total" {exit} s && $2 ~ /^[0-9]+$/ {print $1, $2}' \
  "$CI_DIR/snakemake.log" | sort)
ran=$(for id in $ids; do cat "${log_of[$id]}"; done | sed -n 's/^local\(rule\|checkpoint\) \([A-Za-z0-9_]*\):$/\2/p' | sort | uniq -c \
  | awk '{print $2, $1}' | sort)
[[ -n $expected ]] || die "no job stats in the snakemake log"
[[ $expected == "$ran" ]] || die "jobs in the DAG vs jobs run inside SLURM jobs:
$(diff <(echo "$expected") <(echo "$ran"))"
n_jobs=$(awk '{n += $2} END {print n}' <<<"$expected")
printf '%s\n' "${gpu[@]}" | grep -q train_model || die "train_model did not ask SLURM for a GPU (profiles/slurm set-resources)"
printf '%s\n' "${gpu[@]}" | grep -q predict_case || die "predict_case did not ask SLURM for a GPU (config resources.gpu)"
log "OK: $n_jobs jobs of the DAG ran in $(wc -w <<<"$ids") SLURM jobs, all COMPLETED; snakemake wall time ${wall}s"
log "SLURM job ids: $ids"
log "GPU jobs (--gpus=1, ran on the CPU): ${gpu[*]}"
