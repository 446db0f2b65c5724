#!/usr/bin/env bash
# The README's SLURM recipe on a real scheduler (not part of pytest / CI; run it by hand, as root).
#
#   sudo tests/cluster/slurm_e2e.sh                 # install, start a cluster, run, check, stop
#   sudo KEEP=1 tests/cluster/slurm_e2e.sh          # keep the cluster, data and outputs
#   sudo tests/cluster/slurm_e2e.sh stop            # stop a kept cluster, remove its state
#
# What it does (reference/BIDS_APPS.md §5; README "SLURM"; measured run in docs/cluster.md):
#   1. installs slurm-wlm and munge with apt-get when they are missing;
#   2. starts a private munged (own key and socket) and a one-node cluster, slurmctld + slurmd on
#      localhost, configured in $STATE (SLURM_CONF; /etc/slurm and /etc/munge are not used). The
#      node declares what the README scripts ask for (8 CPUs, 48 GB, 2 GPUs as stand-in device
#      files) with SlurmdParameters=config_overrides, so the scripts are submitted unchanged on a
#      small machine; nothing is enforced (task/none): the jobs share the real CPUs;
#   3. writes a phantom dataset with `shiva-bids synth` (3 participants, T1w + FLAIR + T2starw) and
#      truncates sub-02's T1w (a bad input);
#   4. takes participants.sh, group.sh and the submission block from README.md and runs them as
#      written, in $STATE/submit, with SHIVA_BIDS_EXEC set to the local shiva-bids under `nice`
#      (instead of apptainer) and MODELS = the bundled demo models;
#   5. waits, then checks: the sub-01 and sub-03 tasks COMPLETED with every output of the four
#      markers, the sub-02 task FAILED with a crash file, the group job started after the array
#      (afterany) and COMPLETED, its table has sub-01 and sub-03 and its report names sub-02;
#   6. restores sub-02's T1w and runs the submission block again: sub-01 and sub-03 are skipped
#      (summaries untouched, "already complete" in their logs), sub-02 completes, the group table
#      has 3 rows; the input dataset is unchanged;
#   7. prints the jobs' times (from the jobcomp file) and stops the cluster.
#
# Environment knobs (defaults in brackets):
#   STATE [/var/tmp/shiva-bids-slurm]  PYTHON [python3]: a Python with shiva-bids' dependencies
#   (the repository is put first on PYTHONPATH)  NICE [5]  KEEP [0]
#   TIMEOUT_S [7200]: the longest wait for one round of jobs
set -euo pipefail

REPO=${REPO:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
STATE=${STATE:-/var/tmp/shiva-bids-slurm}
PYTHON=${PYTHON:-python3}
NICE=${NICE:-5}
KEEP=${KEEP:-0}
TIMEOUT_S=${TIMEOUT_S:-7200}
export SLURM_CONF="$STATE/etc/slurm.conf"
DATA="$STATE/data/bids"
OUT="$STATE/data/out"
SUBMIT="$STATE/submit"
MARKERS=(PVS WMH CMB LAC)
declare -a SUMMARY=()

say() { printf '[slurm_e2e %(%H:%M:%S)T] %s\n' -1 "$*"; }
note() { SUMMARY+=("$*"); say "$*"; }
fail() { note "FAIL: $*"; exit 1; }

summary() {
    local rc=$?
    echo "==================== summary ===================="
    printf '%s\n' "${SUMMARY[@]}"
    echo "exit status: $rc"
    [[ "$KEEP" == 1 ]] || stop_cluster
}

stop_cluster() {  # the daemons this script started (now or in a KEEP=1 run), then the state
    local name pid
    for name in slurmd slurmctld munged; do
        pid=$(cat "$STATE/run/$name.pid" 2>/dev/null || true)
        [[ -n "$pid" ]] && kill -TERM "$pid" 2>/dev/null || true
    done
    sleep 2
    find "$STATE" -mindepth 1 -maxdepth 1 ! -name log -exec rm -rf {} +  # logs stay
}

# ---- 1. packages -----------------------------------------------------------------------------
install_packages() {
    local missing=()
    command -v slurmctld >/dev/null || missing+=(slurm-wlm)
    command -v munged >/dev/null || missing+=(munge)
    if ((${#missing[@]})); then
        say "installing ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
    fi
}

# ---- 2. the cluster --------------------------------------------------------------------------
write_config() {
    mkdir -p "$STATE"/{etc,run,log,spool/ctld,spool/d,gpu,munge}
    chmod 700 "$STATE/munge"
    # Stand-ins for two GPUs: character devices (those of /dev/null); slurmd wants device files.
    local i
    for i in 0 1; do [[ -c "$STATE/gpu/nvidia$i" ]] || mknod "$STATE/gpu/nvidia$i" c 1 3; done
    cat >"$SLURM_CONF" <<EOF
ClusterName=shivatest
SlurmctldHost=localhost
SlurmctldPort=16817
SlurmdPort=16818
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$STATE/munge/munge.socket
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
GresTypes=gpu
SlurmdParameters=config_overrides
ReturnToService=2
StateSaveLocation=$STATE/spool/ctld
SlurmdSpoolDir=$STATE/spool/d
SlurmctldPidFile=$STATE/run/slurmctld.pid
SlurmdPidFile=$STATE/run/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc=$STATE/log/jobcomp.txt
MinJobAge=7200
NodeName=localhost CPUs=8 RealMemory=49152 Gres=gpu:2 State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
    echo "Name=gpu File=$STATE/gpu/nvidia[0-1]" >"$STATE/etc/gres.conf"
}

start_cluster() {
    write_config
    [[ -s "$STATE/munge/munge.key" ]] || {
        dd if=/dev/urandom of="$STATE/munge/munge.key" bs=1024 count=1 2>/dev/null
        chmod 400 "$STATE/munge/munge.key"; }
    munged --force --socket="$STATE/munge/munge.socket" --key-file="$STATE/munge/munge.key" \
        --log-file="$STATE/log/munged.log" --pid-file="$STATE/run/munged.pid" \
        --seed-file="$STATE/munge/munged.seed"
    slurmctld -f "$SLURM_CONF"
    slurmd -N localhost -f "$SLURM_CONF"
    local _
    for _ in $(seq 60); do
        [[ "$(sinfo -h -n localhost -o %t 2>/dev/null)" == idle ]] && break
        sleep 1
    done
    [[ "$(sinfo -h -n localhost -o %t)" == idle ]] \
        || fail "the node did not come up: $(sinfo -h -o '%t %E' 2>&1) ($STATE/log)"
    note "cluster: slurmctld + slurmd $(slurmd -V | cut -d' ' -f2) on localhost, node idle" \
         "($(sinfo -h -o '%c CPUs, %m MB, %G'))"
}

# ---- 3. data ---------------------------------------------------------------------------------
shiva() { PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" nice -n "$NICE" "$PYTHON" -m shiva_bids "$@"; }

digest() { (cd "$DATA" && find . -type f -print0 | sort -z | xargs -0 md5sum | md5sum | cut -c1-12); }

make_data() {
    rm -rf "$STATE/data" "$SUBMIT"
    mkdir -p "$STATE/data" "$SUBMIT"
    local t0; t0=$(date +%s)
    shiva synth "$DATA" --participants 3 --sessions 1 --seed 7 --modalities T1w FLAIR T2starw \
        >"$STATE/log/synth.log" 2>&1 || fail "shiva-bids synth failed ($STATE/log/synth.log)"
    GOOD_DIGEST=$(digest)
    T1_BAD="$DATA/sub-02/anat/sub-02_T1w.nii.gz"
    cp "$T1_BAD" "$STATE/data/sub-02_T1w.good.nii.gz"
    head -c 4000 "$STATE/data/sub-02_T1w.good.nii.gz" >"$T1_BAD"
    note "data: 3 phantom participants in $(($(date +%s) - t0)) s; sub-02's T1w truncated"
}

# ---- 4. the README's scripts -----------------------------------------------------------------
readme_block() {  # readme_block PATTERN: the first ```bash block of README.md containing PATTERN
    awk -v pattern="$1" '
        /^```bash$/ { inside = 1; block = ""; next }
        /^```$/ && inside { inside = 0; if (index(block, pattern)) { printf "%s", block; exit } }
        inside { block = block $0 "\n" }' "$REPO/README.md"
}

extract_scripts() {
    readme_block "# participants.sh:" >"$SUBMIT/participants.sh"
    readme_block "# group.sh:" >"$SUBMIT/group.sh"
    readme_block "sbatch --dependency" >"$SUBMIT/submit.sh"
    local file
    for file in participants.sh group.sh submit.sh; do
        [[ -s "$SUBMIT/$file" ]] || fail "README.md has no block for $file"
    done
    note "scripts: participants.sh ($(wc -l <"$SUBMIT/participants.sh") lines), group.sh," \
         "submit block ($(wc -l <"$SUBMIT/submit.sh") lines), copied from README.md unchanged"
}

submit() {  # runs the README's submission block; sets ARRAY and GROUP (job ids)
    local before; before=$(squeue -h -o %i | wc -l)
    (cd "$SUBMIT" && bash -euo pipefail submit.sh) >"$STATE/log/submit-$1.log" 2>&1 \
        || fail "the submission block failed ($STATE/log/submit-$1.log)"
    ARRAY=$(squeue -h -n shiva-bids -o %F | sort -u | tail -1)
    GROUP=$(squeue -h -n shiva-bids-group -o %i | tail -1)
    [[ -n "$ARRAY" && -n "$GROUP" ]] || fail "jobs not found in the queue (had $before)"
    note "round $1: submitted array job $ARRAY (3 tasks) and group job $GROUP (afterany)"
}

wait_jobs() {
    local t0 _; t0=$(date +%s)
    while squeue -h -j "$ARRAY,$GROUP" 2>/dev/null | grep -q .; do
        (($(date +%s) - t0 < TIMEOUT_S)) || fail "jobs still queued after $TIMEOUT_S s"
        sleep 10
    done
    ROUND_S=$(($(date +%s) - t0))
}

job_field() {  # job_field JOBID[_TASK] FIELD: a field of the job's line in the jobcomp file
    local id=$1 field=$2 line
    if [[ "$id" == *_* ]]; then
        line=$(grep "ArrayJobId=${id%_*} ArrayTaskId=${id#*_} " "$STATE/log/jobcomp.txt" | tail -1)
    else
        line=$(grep "^JobId=$id " "$STATE/log/jobcomp.txt" | tail -1)
    fi
    sed -n "s/.* $field=\([^ ]*\).*/\1/p" <<<" $line"
}

seconds() { date -d "$1" +%s; }

report_times() {  # the round's jobs: state and run time each
    local id start end
    for id in "${ARRAY}_1" "${ARRAY}_2" "${ARRAY}_3" "$GROUP"; do
        start=$(job_field "$id" StartTime); end=$(job_field "$id" EndTime)
        note "  job $id: $(job_field "$id" JobState) (exit $(job_field "$id" ExitCode))," \
             "$(($(seconds "$end") - $(seconds "$start"))) s, $start -> $end"
    done
}

# ---- 5, 6. checks ----------------------------------------------------------------------------
expect_state() {  # expect_state JOBID STATE
    local got; got=$(job_field "$1" JobState)
    [[ "$got" == "$2" ]] || fail "job $1 is $got, expected $2 (logs: $SUBMIT/logs)"
}

check_unit() {  # check_unit SUBJECT: the participant's outputs are complete
    local sub=$1 anat="$OUT/sub-$1/anat" marker space kind
    grep -q '"status": "complete"' "$OUT/sub-$sub/sub-${sub}_summary.json" 2>/dev/null \
        || fail "sub-$sub has no complete summary"
    for marker in "${MARKERS[@]}"; do
        space=T1w; [[ $marker == CMB ]] && space=SWI
        for kind in "label-${marker}_probseg.nii.gz" "label-${marker}_mask.nii.gz" \
                    "seg-${marker}_dseg.nii.gz" "seg-${marker}_dseg.tsv" "seg-${marker}_stats.tsv"; do
            [[ -s "$anat/sub-${sub}_space-${space}_$kind" ]] || fail "no sub-${sub}_space-${space}_$kind"
        done
    done
    [[ -s "$OUT/sub-$sub.html" ]] || fail "no report sub-$sub.html"
}

group_rows() { tail -n +2 "$OUT/group/shiva_group.tsv" | cut -f1 | tr '\n' ' ' | sed 's/ $//'; }

check_first_round() {
    expect_state "${ARRAY}_1" COMPLETED
    expect_state "${ARRAY}_2" FAILED
    expect_state "${ARRAY}_3" COMPLETED
    expect_state "$GROUP" COMPLETED
    check_unit 01; check_unit 03
    [[ -s "$OUT/logs/crash-sub-02.txt" && ! -e "$OUT/sub-02/sub-02_summary.json" ]] \
        || fail "sub-02 should have a crash file and no summary"
    local last_end group_start
    last_end=$(for t in 1 2 3; do seconds "$(job_field "${ARRAY}_$t" EndTime)"; done | sort -n | tail -1)
    group_start=$(seconds "$(job_field "$GROUP" StartTime)")
    ((group_start >= last_end)) || fail "the group job started before the array ended"
    [[ "$(group_rows)" == "sub-01 sub-03" ]] || fail "group table rows: $(group_rows)"
    grep -q "sub-02" "$OUT/group_report.html" || fail "the group report does not name sub-02"
    note "round 1: sub-01, sub-03 complete (4 markers each); sub-02 FAILED with a crash file;" \
         "group job after the array, table rows: $(group_rows); report names sub-02"
}

check_second_round() {
    local t sub
    for t in 1 2 3; do expect_state "${ARRAY}_$t" COMPLETED; done
    expect_state "$GROUP" COMPLETED
    for sub in 01 03; do
        [[ "$(stat -c %Y "$OUT/sub-$sub/sub-${sub}_summary.json")" == "${STAMP[$sub]}" ]] \
            || fail "sub-$sub was recomputed"
        grep -q "already complete" "$OUT/logs/sub-$sub.log" || fail "no skip logged for sub-$sub"
    done
    check_unit 02
    [[ "$(group_rows)" == "sub-01 sub-02 sub-03" ]] || fail "group table rows: $(group_rows)"
    [[ "$(digest)" == "$GOOD_DIGEST" ]] || fail "the input dataset changed"
    note "round 2: sub-01, sub-03 skipped (summaries untouched, 'already complete' logged);" \
         "sub-02 complete; table rows: $(group_rows); input dataset unchanged"
}

run_rounds() {
    export DATA OUT
    MODELS=$(PYTHONPATH="$REPO" "$PYTHON" -c \
        'from shiva_bids.demo import DEMO_MODELS_DIR; print(DEMO_MODELS_DIR)')
    export MODELS
    export SHIVA_BIDS_EXEC="nice -n $NICE env PATH=$(dirname "$(command -v "$PYTHON")"):$PATH PYTHONPATH=$REPO"
    note "SHIVA_BIDS_EXEC=$SHIVA_BIDS_EXEC"
    note "models: $MODELS (demo models); load before: $(uptime | sed 's/.*load/load/')"
    submit 1; wait_jobs
    note "round 1 done in $ROUND_S s; load: $(uptime | sed 's/.*load/load/')"
    report_times; check_first_round
    cp "$STATE/data/sub-02_T1w.good.nii.gz" "$T1_BAD"
    declare -gA STAMP=([01]=$(stat -c %Y "$OUT/sub-01/sub-01_summary.json")
                       [03]=$(stat -c %Y "$OUT/sub-03/sub-03_summary.json"))
    submit 2; wait_jobs
    note "round 2 done in $ROUND_S s; load: $(uptime | sed 's/.*load/load/')"
    report_times; check_second_round
}

main() {
    [[ $EUID == 0 ]] || { echo "run as root (installs packages, starts slurmctld/slurmd)" >&2; exit 77; }
    if [[ "${1:-}" == stop ]]; then stop_cluster; return; fi
    trap summary EXIT
    install_packages
    start_cluster
    make_data
    extract_scripts
    run_rounds
    note "PASS"
}

main "$@"
