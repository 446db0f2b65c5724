#!/usr/bin/env bash
# Real build-and-run test of the shiva-bids image (not part of pytest / CI; run it by hand, as root).
#
#   sudo tests/container/build_and_run.sh            # CPU image, phantom data, demo models
#   sudo KEEP=1 tests/container/build_and_run.sh build   # steps: base build run stop
#   sudo KEEP=1 tests/container/build_and_run.sh run     # re-run against the kept image
#   sudo tests/container/build_and_run.sh stop           # stop a kept daemon, remove its state
#
# What it does (reference/BIDS_APPS.md §1.1 CI pattern, §6.1 facts for this machine kind):
#   1. installs docker.io/containerd/runc/debootstrap with apt-get when they are missing;
#   2. starts a private dockerd (own socket, data-root, exec-root; overlay2; no iptables, no bridge)
#      when no daemon answers, and stops it at the end;
#   3. makes a Debian bookworm base with debootstrap + `docker import` when BASE_IMAGE is local/...
#      or cannot be pulled (Docker Hub is unreachable here);
#   4. builds the image with `--network host` (pip needs PyPI); WHEELHOUSE=1 (default) pre-builds the wheels on
#      the host into .whl/ and the build installs from there with --no-index;
#   5. runs the image read-only (`--read-only --tmpfs /tmp`) as a non-root uid with the input mounted
#      read-only: --version, --help, a phantom dataset (`synth`), participant, group; checks that the
#      outputs exist and belong to that uid; prints build time, image size and run times.
#
# Environment knobs (defaults in brackets):
#   IMAGE [local/shiva-bids:test]  BASE_IMAGE [local/debian:bookworm]
#   TF_PACKAGE [tensorflow==2.21.*]: the CPU-only wheel set; the published GPU image uses
#              "tensorflow[and-cuda]==2.21.*" (adds ~3-4 GB of CUDA/cuDNN wheels)
#   PREFETCH_TEMPLATES [0]: 1 needs TemplateFlow's S3 during the build (unreachable here)
#   WHEELHOUSE [1]: 1 builds the wheels on the host with $PYTHON (a Python 3.11 with pip) [python3]
#   STATE [/var/tmp/shiva-bids-docker]  RUN_UID [4242]  RUN_GID [4242]
#   KEEP [0]: 1 keeps the daemon, its data-root and the test data for inspection
#   MODELS_DIR: a host folder of SHIVA models (mounted at /models); default: the bundled demo models
#   PARTICIPANT_ARGS: extra arguments for the participant level (e.g. "--markers PVS CMB", or
#              "--derivatives truth=/bids/derivatives/reference" for the phantom's brain masks)
#   SYNTH_ARGS [--participants 1 --sessions 1]: arguments of `shiva-bids synth` (run in the image)
set -euo pipefail

REPO=${REPO:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
IMAGE=${IMAGE:-local/shiva-bids:test}
BASE_IMAGE=${BASE_IMAGE:-local/debian:bookworm}
TF_PACKAGE=${TF_PACKAGE:-tensorflow==2.21.*}
PREFETCH_TEMPLATES=${PREFETCH_TEMPLATES:-0}
WHEELHOUSE=${WHEELHOUSE:-1}
STATE=${STATE:-/var/tmp/shiva-bids-docker}
RUN_UID=${RUN_UID:-4242}
RUN_GID=${RUN_GID:-4242}
KEEP=${KEEP:-0}
PARTICIPANT_ARGS=${PARTICIPANT_ARGS:-}
SYNTH_ARGS=${SYNTH_ARGS:---participants 1 --sessions 1}
MODELS_DIR=${MODELS_DIR:-}
PYTHON=${PYTHON:-python3}
DATA="$STATE/data"
STARTED_DAEMON=""
declare -a SUMMARY=()

say() { printf '[build_and_run %(%H:%M:%S)T] %s\n' -1 "$*"; }
note() { SUMMARY+=("$*"); say "$*"; }
fail() { note "FAIL: $*"; exit 1; }
elapsed() { echo $(( $(date +%s) - $1 )); }

summary() {
    local rc=$?
    echo "==================== summary ===================="
    printf '%s\n' "${SUMMARY[@]}"
    echo "exit status: $rc"
    if [[ -n "$STARTED_DAEMON" && "$KEEP" != 1 ]]; then
        stop_daemon
    elif [[ "$KEEP" != 1 ]]; then
        rm -rf "$DATA"
    fi
    if [[ "$WHEELHOUSE" == 1 && "$KEEP" != 1 ]]; then rm -rf "$REPO/.whl"; fi
}

stop_daemon() {  # the daemon this script started (now or in a KEEP=1 run), then its state
    local pid=${STARTED_DAEMON:-$(cat "$STATE/docker.pid" 2>/dev/null || true)}
    [[ -n "$pid" ]] || return 0
    docker image rm -f "$IMAGE" >/dev/null 2>&1 || true
    say "stopping dockerd (pid $pid), removing its data-root; logs stay in $STATE"
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 60); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
    umount "$STATE/exec/netns/default" 2>/dev/null || true
    rm -rf "$STATE/root" "$STATE/exec" "$STATE/rootfs" "$DATA"  # the logs stay
    STARTED_DAEMON=""
}
trap summary EXIT

# ---- 1. packages -----------------------------------------------------------------------------
install_packages() {
    local missing=()
    command -v dockerd >/dev/null || missing+=(docker.io containerd runc)
    command -v debootstrap >/dev/null || missing+=(debootstrap)
    if ((${#missing[@]})); then
        say "installing ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
    fi
}

# ---- 2. daemon -------------------------------------------------------------------------------
start_daemon() {
    if docker info >/dev/null 2>&1; then
        note "daemon: using the running one (${DOCKER_HOST:-default socket})"
        return
    fi
    export DOCKER_HOST="unix://$STATE/docker.sock"
    if docker info >/dev/null 2>&1; then  # left running by an earlier KEEP=1 run
        note "daemon: using the one kept in $STATE"
        return
    fi
    mkdir -p "$STATE"
    local t0; t0=$(date +%s)
    dockerd --host "$DOCKER_HOST" --data-root "$STATE/root" --exec-root "$STATE/exec" \
        --pidfile "$STATE/docker.pid" --storage-driver=overlay2 \
        --iptables=false --ip6tables=false --bridge=none >"$STATE/dockerd.log" 2>&1 &
    STARTED_DAEMON=$!
    for _ in $(seq 60); do
        docker info >/dev/null 2>&1 && break
        kill -0 "$STARTED_DAEMON" 2>/dev/null || fail "dockerd exited: $(tail -3 "$STATE/dockerd.log")"
        sleep 1
    done
    docker info >/dev/null 2>&1 || fail "dockerd did not answer within 60 s ($STATE/dockerd.log)"
    note "daemon: started dockerd pid $STARTED_DAEMON on $DOCKER_HOST in $(elapsed "$t0") s"
}

# ---- 3. base image ---------------------------------------------------------------------------
ensure_base() {
    if docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
        note "base: $BASE_IMAGE already present"; return
    fi
    if [[ "$BASE_IMAGE" != local/* ]] && timeout 60 docker pull "$BASE_IMAGE" >/dev/null 2>&1; then
        note "base: pulled $BASE_IMAGE"; return
    fi
    local t0 rootfs="$STATE/rootfs"; t0=$(date +%s)
    say "base: debootstrap --variant=minbase bookworm (no registry reachable)"
    rm -rf "$rootfs"
    debootstrap --variant=minbase bookworm "$rootfs" >"$STATE/debootstrap.log" 2>&1 \
        || fail "debootstrap failed ($STATE/debootstrap.log)"
    # The host's apt sources (mirror) are what debootstrap used; keep the image's lists empty.
    rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/archives/*.deb
    tar -C "$rootfs" -c . | docker import - "$BASE_IMAGE" >/dev/null
    rm -rf "$rootfs"
    note "base: debootstrap + docker import -> $BASE_IMAGE in $(elapsed "$t0") s"
}

# ---- 4. build --------------------------------------------------------------------------------
build_image() {
    local t0; t0=$(date +%s)
    local wheel_dir=".whl"
    if [[ "$WHEELHOUSE" == 1 ]]; then
        # pip inside the build may fail TLS (an intercepting proxy's CA is only on the host):
        # build every wheel on the host, plus the build backend for `pip install /src`.
        say "wheelhouse: $PYTHON -m pip wheel on the host into $REPO/$wheel_dir"
        "$PYTHON" -m pip wheel --quiet --wheel-dir "$REPO/$wheel_dir" \
            "$TF_PACKAGE" "$REPO" "setuptools>=77" wheel >"$STATE/wheelhouse.log" 2>&1 \
            || fail "pip wheel on the host failed ($STATE/wheelhouse.log)"
        rm -rf "$REPO/build"
        note "wheelhouse: $(find "$REPO/$wheel_dir" -name '*.whl' | wc -l) wheels," \
             "$(du -sh "$REPO/$wheel_dir" | cut -f1), in $(elapsed "$t0") s"
    else
        wheel_dir=".no-wheelhouse"
    fi
    t0=$(date +%s)
    say "build: docker build --network host -t $IMAGE (log: $STATE/build.log)"
    if ! docker build --network host -t "$IMAGE" \
            --build-arg BASE_IMAGE="$BASE_IMAGE" \
            --build-arg TF_PACKAGE="$TF_PACKAGE" \
            --build-arg PREFETCH_TEMPLATES="$PREFETCH_TEMPLATES" \
            --build-arg WHEELHOUSE="$wheel_dir" \
            --build-arg CONTAINER_TAG="$IMAGE" \
            "$REPO" >"$STATE/build.log" 2>&1; then
        grep -v '^\s*$' "$STATE/build.log" | tail -n 15
        fail "docker build failed after $(elapsed "$t0") s (see $STATE/build.log; if pip" \
             "reports CERTIFICATE_VERIFY_FAILED, rerun with WHEELHOUSE=1)"
    fi
    local size; size=$(docker image inspect -f '{{.Size}}' "$IMAGE")
    note "build: $IMAGE (TF_PACKAGE=$TF_PACKAGE, PREFETCH_TEMPLATES=$PREFETCH_TEMPLATES) in $(elapsed "$t0") s"
    note "image size: $((size / 1024 / 1024)) MiB"
}

# ---- 5. run ----------------------------------------------------------------------------------
# Read-only root, /tmp a tmpfs, a uid that exists nowhere in the image, no network.
run_app() {
    docker run --rm --read-only --tmpfs /tmp:rw,exec,size=4g --network none \
        -u "$RUN_UID:$RUN_GID" "$@"
}

timed_run() {  # timed_run LABEL ARGS... : runs the container, records rc and time
    local label=$1; shift
    local t0 rc=0; t0=$(date +%s)
    run_app "$@" >"$STATE/$label.log" 2>&1 || rc=$?
    note "run $label: exit $rc in $(elapsed "$t0") s"
    tail -n 5 "$STATE/$label.log" | sed "s/^/    $label| /"
    return "$rc"
}

check_outputs() {  # check_outputs MARKER...: the files of docs/outputs.md, owned by RUN_UID
    local out=$DATA/out marker kind
    [[ -f "$out/dataset_description.json" ]] || fail "no $out/dataset_description.json"
    for marker in "$@"; do
        for kind in "label-${marker}_probseg.nii.gz" "label-${marker}_mask.nii.gz" \
                    "seg-${marker}_dseg.nii.gz" "seg-${marker}_dseg.tsv" "seg-${marker}_stats.tsv"; do
            [[ -n "$(find "$out" -path "$out/sub-*" -name "*_$kind" | head -1)" ]] \
                || fail "no *_$kind under $out"
        done
    done
    [[ -n "$(find "$out" -maxdepth 1 -name 'sub-*.html' | head -1)" ]] || fail "no participant report"
    local file
    for file in group_report.html group/shiva_group.tsv group/shiva_clusters.tsv; do
        [[ -s "$out/$file" ]] || fail "no $out/$file"
    done
    local n_rows; n_rows=$(($(wc -l <"$out/group/shiva_group.tsv") - 1))
    local foreign; foreign=$(find "$out" "$DATA/work" ! -uid "$RUN_UID" | head -3)
    [[ -z "$foreign" ]] || fail "outputs not owned by uid $RUN_UID: $foreign"
    note "outputs: $(find "$out" -name '*.nii.gz' | wc -l) NIfTI, $(find "$out" -type f | wc -l)" \
         "files (probseg/mask/dseg/dseg.tsv/stats.tsv for ${*:-no marker}, reports," \
         "group table: $n_rows rows), all owned by uid $RUN_UID (outputs and work)"
}

input_digest() { (cd "$DATA/bids" && find . -type f -print0 | sort -z | xargs -0 md5sum | md5sum); }

in_image() {  # in_image PYTHON_CODE: run Python inside the image (read-only, as RUN_UID)
    run_app --entrypoint python "$IMAGE" -c "$1"
}

# A phantom BIDS dataset: `shiva-bids synth` (issue 3) when the image has it, else a minimal
# one-participant dataset (a blurred-ellipsoid T1w + FLAIR) made with nibabel inside the image.
make_dataset() {
    if in_image "import shiva_bids.synthetic.cli" >/dev/null 2>&1; then
        local synth_args=(); read -r -a synth_args <<<"$SYNTH_ARGS"
        timed_run synth -v "$DATA:/data" "$IMAGE" synth /data/bids "${synth_args[@]}" \
            || fail "shiva-bids synth failed (log: $STATE/synth.log)"
        return
    fi
    note "dataset: shiva_bids.synthetic is not in this build; writing a minimal phantom"
    run_app -i -v "$DATA:/data" --entrypoint python "$IMAGE" - <<'PY'
import json, pathlib
import nibabel as nib, numpy as np
root = pathlib.Path("/data/bids")
anat = root / "sub-01" / "anat"
anat.mkdir(parents=True)
(root / "dataset_description.json").write_text(json.dumps(
    {"Name": "phantom", "BIDSVersion": "1.10.0", "DatasetType": "raw"}))
grid = np.mgrid[:96, :112, :96].astype(np.float32)
radius = sum(((g - c) / r) ** 2 for g, c, r in zip(grid, (48, 56, 48), (38, 46, 40)))
for suffix, inside in (("T1w", 400.0), ("FLAIR", 250.0)):
    data = np.where(radius < 1, inside, 10.0).astype(np.float32)
    data += np.random.default_rng(0).normal(0, 5, data.shape).astype(np.float32)
    affine = np.diag([1.2, 1.2, 1.2, 1.0])
    nib.save(nib.Nifti1Image(data, affine), anat / f"sub-01_{suffix}.nii.gz")
PY
}

run_tests() {
    rm -rf "$DATA"; mkdir -p "$DATA/out" "$DATA/work"
    chown -R "$RUN_UID:$RUN_GID" "$DATA"
    run_app "$IMAGE" --version | tee "$STATE/version.txt"
    grep -qx "shiva-bids $(cat "$REPO/version")" "$STATE/version.txt" \
        || fail "--version does not print the version file"
    note "run --version: $(cat "$STATE/version.txt")"
    run_app "$IMAGE" --help >/dev/null || fail "--help failed"
    note "run --help: ok"
    note "run tensorflow in the image: $(in_image "import tensorflow as tf; print('TF', \
tf.__version__, 'GPUs visible:', len(tf.config.list_physical_devices('GPU')))" 2>/dev/null | tail -1)"

    note "templateflow (read-only home): $(in_image "from templateflow import api; \
p = api.ls('MNI152NLin2009cAsym', resolution=1, desc=None, suffix='T1w')[0]; \
print(p.name, p.stat().st_size, 'bytes')" 2>&1 | tail -1)"

    make_dataset
    # Models: MODELS_DIR (a host folder, mounted read-only at /models), else the demo models
    # bundled in the package (shiva_bids/data/demo_models).
    local args=() mounts=()
    read -r -a args <<<"$PARTICIPANT_ARGS"
    if [[ -n "$MODELS_DIR" ]]; then
        mounts=(-v "$MODELS_DIR:/models:ro"); args+=(--models-dir /models)
        note "models: $MODELS_DIR"
    else
        local demo
        demo=$(in_image "import pathlib, shiva_bids as s; p = pathlib.Path(s.__file__).parent \
/ 'data' / 'demo_models'; print(p if any(p.rglob('model_info*.json')) else '')" 2>/dev/null)
        if [[ -n "$demo" ]]; then args+=(--models-dir "$demo"); note "models: demo models $demo"
        else note "models: no demo models in this build (shiva_bids/data/demo_models)"; fi
    fi
    # The root filesystem and the input mount really are read-only for the app's user.
    run_app -v "$DATA/bids:/bids:ro" --entrypoint sh "$IMAGE" -c \
        'touch /opt/probe 2>/dev/null || touch /bids/probe 2>/dev/null || exit 0; exit 1' \
        || fail "the image root or the :ro input is writable"
    note "read-only: --read-only root and /bids:ro refuse writes (uid $RUN_UID)"
    # Input read-only, outputs and work on their own mounts, everything else read-only.
    local before; before=$(input_digest)
    local rc=0
    timed_run participant -v "$DATA/bids:/bids:ro" -v "$DATA/out:/out" -v "$DATA/work:/work" \
        "${mounts[@]}" "$IMAGE" /bids /out participant -w /work --skip-bids-validation -v "${args[@]}" || rc=$?
    ((rc == 0)) || fail "participant level exited $rc (log: $STATE/participant.log)"
    if grep -q "inference device: cpu" "$STATE/participant.log"; then
        note "device: the participant log says CPU"
    fi
    timed_run group -v "$DATA/bids:/bids:ro" -v "$DATA/out:/out" -v "$DATA/work:/work" \
        "$IMAGE" /bids /out group -w /work -v || fail "group level failed (log: $STATE/group.log)"
    [[ "$(input_digest)" == "$before" ]] || fail "the input dataset changed"
    note "input: unchanged (md5 of every file before/after)"
    local markers
    markers=$(sed -n 's/.*--markers \(\([A-Z][A-Z]* *\)*\).*/\1/p' <<<"$PARTICIPANT_ARGS")
    # shellcheck disable=SC2086
    check_outputs ${markers:-PVS WMH CMB LAC}
}

main() {  # main [STEP...]: steps among base build run stop (default: base build run)
    [[ $EUID == 0 ]] || { echo "run as root (starts dockerd, debootstrap)" >&2; exit 77; }
    local steps=("$@") step; (($#)) || steps=(base build run)
    if [[ "${steps[*]}" == stop ]]; then  # only stop what a KEEP=1 run left behind
        export DOCKER_HOST="unix://$STATE/docker.sock"; stop_daemon; return
    fi
    install_packages
    note "disk free before: $(df -h --output=avail "$(dirname "$STATE")" | tail -1 | tr -d ' ')"
    start_daemon
    for step in "${steps[@]}"; do
        case $step in
            base) ensure_base ;;
            build) ensure_base; build_image ;;
            run) run_tests ;;
            stop) stop_daemon ;;
            *) fail "unknown step $step (base, build, run, stop)" ;;
        esac
    done
    note "PASS (${steps[*]})"
}

main "$@"
