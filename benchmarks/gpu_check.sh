#!/usr/bin/env bash
# The GPU checks of int8flow in one command, for a lent GPU machine without network (nvidia-h200:
# Python 3.12 with CuPy for CUDA 13, NumPy, ONNX, pyarrow, PyTorch; no Dask, MLflow or Airflow).
#
#   1. install the carried wheels (.whl/, benchmarks/gpu_wheels.txt) that the machine lacks;
#   2. `make test-gpu`: the GPU tests, where any skip fails the run (INT8FLOW_REQUIRE_GPU=1);
#   3. end to end: the calibration of `make demo` (Fashion-MNIST ResNet, 1024 images) on int8flow's
#      Dask cluster with --device gpu (dask-cuda's LocalCUDACluster) and on a CPU LocalCluster, the
#      two calibration tables compared bit for bit (benchmarks/gpu_calibrate.py: `int8flow run`
#      needs MLflow, which the machine lacks), and the CPU one against `int8flow run`'s table made
#      here (a warning only: another NumPy there);
#   4. benchmarks/bench_gpu.py: EfficientNet-Lite0 at batch 256, our CuPy FP32 and INT8 against
#      PyTorch FP32, outputs cross-checked.
# Not yet run on a GPU: expected to take a few minutes on an H200; each step has a time limit, all
# of them together at most GPU_CHECK_BUDGET_SECONDS (470 s, under the 8 minutes the task allows).
#
# Here, once, on a machine with the registry and `make install` done (network for the wheels):
#
#   benchmarks/gpu_check.sh prepare
#
# downloads the wheels into .whl/ (pip download --no-deps --only-binary=:all: --python-version 3.12
# --platform manylinux...; about 5.4 MB), writes the demo's 1024 calibration images to
# .gpudata/fashion-mnist/ (train-images-idx3-ubyte.gz and train-labels-idx1-ubyte.gz, 0.45 MB, from
# Debian's dataset-fashion-mnist at /usr/share/datasets/fashion-mnist, which the GPU machine does not
# have), runs `int8flow run` on the CPU for the reference table in .gpudata/demo-reference/, checks
# that calibrating on the subset gives that table's thresholds, runs `make models` if
# models/efficientnet_lite0.onnx (18.5 MB) is missing, and ends with the dry run. .whl/ and
# .gpudata/ are git-ignored (.git/info/exclude), models/ by .gitignore: carry all three. Then, on
# the GPU machine, from the repository root (the device tool: carry [".whl", ".gpudata", "models"]):
#
#   bash benchmarks/gpu_check.sh
#
# Environment: PYTHON (default python3, the machine's); GPU_CHECK_DRY_RUN=1 runs only the CPU-side
# checks (this script's syntax, wheels, data, model, imports) and exits 0; GPU_CHECK_STEPS (default
# "tests e2e bench") picks steps; GPU_CHECK_WITHOUT_GPU=1 runs the steps without a GPU too (to test
# this script on a CPU machine, where the GPU steps then fail); GPU_CHECK_SITE (default
# build/gpu-check/site) is where the wheels go. The log (gpu_check.log), both calibration tables
# and bench_gpu.json go to $OUT when it is set (the device tool returns them), else to
# GPU_CHECK_WORK (default build/gpu-check/work). Without a usable GPU the script stops after the
# CPU-side checks with "no GPU" and exit status 3; exit status 1: a step failed (the summary at the
# end names it).
# shellcheck disable=SC2317  # the steps' functions run through `bash "$SELF" __step NAME`
set -u -o pipefail
SELF=$(cd "$(dirname "$0")" && pwd)/$(basename "$0")
PYTHON=${PYTHON:-python3}
case $PYTHON in */*) PYTHON=$(cd "$(dirname "$PYTHON")" && pwd)/$(basename "$PYTHON") ;; esac
cd "$(dirname "$SELF")/.." || exit 1

WHEELS=.whl
WHEEL_LIST=benchmarks/gpu_wheels.txt
DATA=.gpudata/fashion-mnist
REFERENCE=.gpudata/demo-reference
MODEL=models/efficientnet_lite0.onnx
FASHION_MNIST=/usr/share/datasets/fashion-mnist
SITE=${GPU_CHECK_SITE:-$PWD/build/gpu-check/site}
WORK=${GPU_CHECK_WORK:-$PWD/build/gpu-check/work}
LOGS=${OUT:-$WORK}
STEPS=${GPU_CHECK_STEPS:-tests e2e bench}
BUDGET_SECONDS=${GPU_CHECK_BUDGET_SECONDS:-470}
export PYTHONUNBUFFERED=1
mkdir -p "$WORK" "$LOGS"
LOG=$LOGS/gpu_check.log

say() { echo "gpu_check: $*"; }
die() {
	say "$1"
	exit "${2:-1}"
}

# PYTHONPATH for everything below: the NAMESPACE tree of the Makefile (int8flow.kernels, .schemas,
# .tasks as source), then the carried wheels' site folder, then the caller's.
case ":${PYTHONPATH:-}:" in
*":$SITE:"*) ;;
*) export PYTHONPATH="$PWD/build/namespace:$SITE${PYTHONPATH:+:$PYTHONPATH}" ;;
esac

# `python -c` and `python -` with -P: the working directory's int8flow/ (only __init__.py) must not
# hide the tree. Scripts run without it: their own folder comes first on sys.path, and not the cwd.
py() { "$PYTHON" -P "$@"; }

namespace() {
	if command -v make >/dev/null; then
		make --no-print-directory build/namespace/int8flow >/dev/null
	else # the Makefile's NAMESPACE_TREE rule
		mkdir -p build/namespace/int8flow &&
			ln -sfn ../../../int8flow/__init__.py build/namespace/int8flow/__init__.py &&
			for folder in kernels schemas tasks; do ln -sfn "../../../$folder" "build/namespace/int8flow/$folder"; done
	fi
}

# The wheels to install: each carried wheel whose distribution this Python lacks, or has at a version
# the carried dask, distributed or dask-cuda refuse. `report` only prints the decisions; `verify`
# checks those three packages' needs against what is importable now.
wheel_plan() {
	py - "$1" "$WHEELS" <<'PYTHON'
import importlib.metadata as metadata
import re
import sys
import zipfile
from pathlib import Path

mode, folder = sys.argv[1], Path(sys.argv[2])
try:
    from packaging.requirements import Requirement
except ImportError:  # then only presence is checked
    Requirement = None


def norm(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def installed(name):
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


carried = {norm(wheel.name.split("-")[0]): wheel for wheel in sorted(folder.glob("*.whl"))}
needs = {}
for top in ("dask", "distributed", "dask-cuda"):
    if top not in carried or Requirement is None:
        continue
    with zipfile.ZipFile(carried[top]) as archive:
        meta = next(name for name in archive.namelist() if name.endswith(".dist-info/METADATA"))
        for line in archive.read(meta).decode().splitlines():
            if line.startswith("Requires-Dist:"):
                requirement = Requirement(line.partition(":")[2].strip())
                if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                    needs.setdefault(norm(requirement.name), []).append((top, requirement.specifier))
if mode == "verify":
    problems = [
        f"{top} needs {name}{specifier}, found {installed(name) or 'none'}"
        for name, wanted in sorted(needs.items())
        for top, specifier in wanted
        if installed(name) is None or not specifier.contains(installed(name), prereleases=True)
    ]
    for problem in problems:
        print(f"  WARNING: {problem}", file=sys.stderr)
    sys.exit(1 if problems else 0)
for name, wheel in sorted(carried.items()):
    have, version = installed(name), wheel.name.split("-")[1]
    refused = [
        f"{top} needs {specifier}"
        for top, specifier in needs.get(name, [])
        if have and not specifier.contains(have, prereleases=True)
    ]
    if have is None or refused:
        found = "missing" if have is None else f"{have} ({', '.join(refused)})"
        print(f"  {name}: {found} -> install {version}", file=sys.stderr)
        if mode == "install":
            print(wheel)
    else:
        print(f"  {name}: {have} present, carried {version} not needed", file=sys.stderr)
PYTHON
}

# ---- CPU-side checks (the dry run) ------------------------------------------------------------
check_static() {
	local failed=0 line name version matches total
	bash -n "$SELF" || failed=1
	if command -v shellcheck >/dev/null; then shellcheck "$SELF" || failed=1; fi
	[ -f "$WHEEL_LIST" ] || die "$WHEEL_LIST is missing"
	while read -r line; do
		version=${line#*==}
		# A wheel's file name spells its distribution in lower case with underscores.
		name=$(echo "${line%%==*}" | tr 'A-Z.-' 'a-z__')
		matches=$(find "$WHEELS" -maxdepth 1 -iname "${name}-*.whl" 2>/dev/null | wc -l)
		if ! find "$WHEELS" -maxdepth 1 -iname "${name}-${version}-*.whl" 2>/dev/null | grep -q .; then
			say "MISSING wheel $line in $WHEELS/ (run: benchmarks/gpu_check.sh prepare)"
			failed=1
		elif [ "$matches" -ne 1 ]; then
			say "$WHEELS/ holds $matches wheels of $name: keep one version (pip refuses two)"
			failed=1
		fi
	done < <(sed -e 's/#.*//' -e 's/[[:space:]]//g' "$WHEEL_LIST" | grep '==')
	total=$(du -cb "$WHEELS"/*.whl 2>/dev/null | tail -1 | cut -f1)
	say "wheels: $(find "$WHEELS" -maxdepth 1 -name '*.whl' | wc -l) in $WHEELS/, $((${total:-0} / 1024)) KiB"
	for file in "$DATA/train-images-idx3-ubyte.gz" "$DATA/train-labels-idx1-ubyte.gz" \
		"$REFERENCE/calibration.json" "$REFERENCE/calibration.cache" "$MODEL"; do
		[ -f "$file" ] || {
			say "MISSING $file (run: benchmarks/gpu_check.sh prepare)"
			failed=1
		}
	done
	namespace || failed=1
	py -c "
import sys
sys.path.insert(0, 'benchmarks')
from int8flow.tasks.data.sources import open_dataset
import bench_gpu  # noqa: F401
data = open_dataset('$DATA#train')
print(f'gpu_check: data: $DATA#train, {len(data)} examples; bench_gpu.py imports')
try:
    import distributed  # noqa: F401
except ImportError:  # a GPU machine before the carried wheels are installed
    print('gpu_check: no Dask yet: gpu_calibrate.py is imported once the carried wheels are installed')
else:
    import gpu_calibrate  # noqa: F401  (every int8flow module of the end-to-end run)
    print('gpu_check: gpu_calibrate.py imports')
" || {
		say "the CPU-side imports failed (PYTHON=$PYTHON; PYTHONPATH=$PYTHONPATH)"
		failed=1
	}
	if [ "${GPU_CHECK_DRY_RUN:-0}" = 1 ]; then
		say "wheels this Python ($PYTHON) would install:"
		wheel_plan report
	fi
	return "$failed"
}

gpu_present() {
	if command -v nvidia-smi >/dev/null; then nvidia-smi -L 2>&1; fi
	py -c "
import sys
from int8flow.kernels.backend import gpu_available
if not gpu_available():
    sys.exit(1)
import cupy
props = cupy.cuda.runtime.getDeviceProperties(0)
print(f'gpu_check: CuPy {cupy.__version__} sees {cupy.cuda.runtime.getDeviceCount()} GPU(s): {props[\"name\"].decode()}, '
      f'compute capability {props[\"major\"]}.{props[\"minor\"]}; CUDA runtime {cupy.cuda.runtime.runtimeGetVersion()}')
"
}

# ---- prepare (here) -----------------------------------------------------------------------------
prepare() {
	local venv=.venv/bin reference_run
	[ -x "$venv/python" ] || die "prepare runs where \`make install\` made .venv/ (it needs pip, MLflow, the data)"
	for ignored in /.whl/ /.gpudata/; do
		grep -qxF "$ignored" .git/info/exclude 2>/dev/null || echo "$ignored" >>.git/info/exclude
	done
	mkdir -p "$WHEELS"
	"$venv/python" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
		--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
		--platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$WHEELS" -r "$WHEEL_LIST" 2>&1 |
		grep -v "is ignored: it is neither a file nor a directory" # this machine's pip configuration
	[ "${PIPESTATUS[0]}" = 0 ] || die "pip download failed"
	# Only the listed versions: a stale second version of a name stops the whole install there.
	for wheel in "$WHEELS"/*.whl; do
		"$venv/python" - "$wheel" "$WHEEL_LIST" <<'PYTHON' || rm -v "$wheel"
import re, sys
from pathlib import Path
def norm(name): return re.sub(r"[-_.]+", "-", name).lower()
name, version = Path(sys.argv[1]).name.split("-")[:2]
pins = [line.split("#")[0].strip().partition("==") for line in open(sys.argv[2])]
wanted = {norm(pinned): pinned_version for pinned, _, pinned_version in pins if pinned_version}
sys.exit(0 if wanted.get(norm(name)) == version else 1)
PYTHON
	done
	namespace || die "the NAMESPACE tree (make build/namespace/int8flow) failed"
	"$venv/python" benchmarks/gpu_calibrate.py subset "$FASHION_MNIST" "$DATA" ||
		die "the Fashion-MNIST subset failed (is dataset-fashion-mnist installed? \`make data\`)"
	[ -f "$MODEL" ] || make models || die "make models failed"
	reference_run=$(mktemp -d)
	(cd "$reference_run" && "$OLDPWD/$venv/int8flow" run "$OLDPWD/examples/models/fashion_mnist_resnet.onnx" \
		--preprocess mnist --calib-data "$FASHION_MNIST#train" --calib-examples 1024 --out "$reference_run/run" \
		--tracking-uri "sqlite:///$reference_run/mlflow.db" >"$reference_run/log" 2>&1) ||
		die "int8flow run failed: $(tail -5 "$reference_run/log")"
	mkdir -p "$REFERENCE"
	cp "$reference_run/run/calibration.json" "$reference_run/run/calibration.cache" "$REFERENCE/"
	"$venv/python" benchmarks/gpu_calibrate.py calibrate --device cpu --out "$reference_run/subset" >/dev/null ||
		die "calibrating on $DATA failed"
	"$venv/python" benchmarks/gpu_calibrate.py compare --tensors "$REFERENCE" "$reference_run/subset" ||
		die "calibrating on $DATA does not give the demo's thresholds"
	rm -rf "$reference_run"
	say "carried: $(du -sh "$WHEELS" .gpudata models | tr '\n\t' '  '); working tree without them:" \
		"$(git ls-files -co --exclude-standard -z | du -ch --files0-from=- | tail -1 | cut -f1)"
	PYTHON=$venv/python GPU_CHECK_DRY_RUN=1 bash "$SELF"
}

# ---- GPU steps ----------------------------------------------------------------------------------
declare -a RESULTS=()
FAILED=0
step() { # step NAME SECONDS COMMAND...: COMMAND (a function here, or a program) under a time limit
	local name=$1 limit=$2 started=$SECONDS status
	shift 2
	local left=$((BUDGET_SECONDS - SECONDS))
	if [ "$left" -le 10 ]; then
		RESULTS+=("SKIP  $name (the ${BUDGET_SECONDS} s budget is spent)")
		FAILED=1
		return
	fi
	[ "$limit" -gt "$left" ] && limit=$left
	say "---- $name (at most $limit s)"
	timeout -k 10 "$limit" bash "$SELF" __step "$@"
	status=$?
	if [ "$status" -eq 0 ]; then
		RESULTS+=("PASS  $name ($((SECONDS - started)) s)")
	else
		[ "$status" -eq 124 ] && say "$name: stopped after $limit s"
		RESULTS+=("FAIL  $name (exit $status, $((SECONDS - started)) s)")
		FAILED=1
	fi
}

install_wheels() {
	local plan
	plan=$(wheel_plan install) || return 1
	if [ -n "$plan" ]; then
		# shellcheck disable=SC2086  # one wheel path a word
		"$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" $plan ||
			return 1
	fi
	wheel_plan verify || say "WARNING: some needs of dask, distributed or dask-cuda are unmet (above)"
	py -c "
import sys
import dask, distributed, dask_cuda
from dask_cuda import LocalCUDACluster  # noqa: F401
sys.path.insert(0, 'benchmarks')
import gpu_calibrate  # noqa: F401
print(f'gpu_check: dask {dask.__version__}, distributed {distributed.__version__}, dask-cuda {dask_cuda.__version__} '
      'and gpu_calibrate.py import')
"
}

run_tests() {
	if command -v make >/dev/null; then
		make --no-print-directory test-gpu PYTHON="$PYTHON" WHEELS="$WHEELS"
	else # the Makefile's test-gpu command, for a machine without make
		say "no make: running the test-gpu command of the Makefile directly"
		# shellcheck disable=SC2046  # the file names, a word each
		INT8FLOW_REQUIRE_GPU=1 PYTHONSAFEPATH=1 "$PYTHON" -m pytest -m gpu -p no:cacheprovider \
			$(sed -n 's/^GPU_TESTS := //p' Makefile)
	fi
}

end_to_end() {
	local calibrate=("$PYTHON" benchmarks/gpu_calibrate.py calibrate) compare=("$PYTHON" benchmarks/gpu_calibrate.py compare)
	local status=0
	rm -rf "$WORK/cpu" "$WORK/gpu" "$WORK/gpu-spawn"
	"${calibrate[@]}" --device cpu --workers 4 --out "$WORK/cpu" || return 1
	cp "$WORK/cpu/calibration.json" "$LOGS/cpu_calibration.json"
	if "${calibrate[@]}" --device gpu --out "$WORK/gpu" --expect-cluster LocalCUDACluster; then
		cp "$WORK/gpu/calibration.json" "$LOGS/gpu_calibration.json"
		"${compare[@]}" "$WORK/cpu" "$WORK/gpu" || status=1
	else
		say "the GPU run on int8flow's cluster (dask_client) failed; once more on a LocalCUDACluster of spawned workers:"
		"${calibrate[@]}" --device gpu --cluster spawn --out "$WORK/gpu-spawn" --expect-cluster LocalCUDACluster &&
			"${compare[@]}" "$WORK/cpu" "$WORK/gpu-spawn"
		status=1
	fi
	say "the CPU table here against \`int8flow run\`'s on the CPU where prepared (thresholds; a warning only):"
	"${compare[@]}" --tensors "$REFERENCE" "$WORK/cpu" || say "WARNING: the CPU thresholds differ from the prepared ones"
	return "$status"
}

case ${1:-run} in
__step) # one step, run by step() under its time limit
	shift
	"$@"
	exit $?
	;;
prepare)
	prepare
	exit $?
	;;
run) ;;
*) die "usage: $SELF [prepare|run]" 2 ;;
esac

: >"$LOG"
exec > >(tee -a "$LOG") 2>&1
# At exit, close the pipe to tee and give it a moment to write the last lines.
trap 'exec >&- 2>&-; sleep 0.3' EXIT
say "$(date -u +%FT%TZ) on $(hostname); $("$PYTHON" --version 2>&1) at $(command -v "$PYTHON")"
check_static || die "the CPU-side checks failed (above); nothing ran on the GPU"
if [ "${GPU_CHECK_DRY_RUN:-0}" = 1 ]; then
	if gpu_present; then say "dry run: a GPU is usable here"; else say "dry run: no GPU here"; fi
	say "dry run: the CPU-side checks passed; the GPU steps did not run"
	exit 0
fi
if ! gpu_present; then
	[ "${GPU_CHECK_WITHOUT_GPU:-0}" = 1 ] ||
		die "no GPU: CuPy ($PYTHON) is not importable or sees no usable CUDA device; the GPU steps need one" 3
	say "no GPU, but GPU_CHECK_WITHOUT_GPU=1: the steps run anyway (to test this script; they fail)"
fi

# Only the end-to-end step needs them: the tests and the benchmark run even if this step fails.
step "install the carried wheels (Dask, dask-cuda)" 90 install_wheels
for name in $STEPS; do
	case $name in
	tests) step "make test-gpu (skips fail)" 200 run_tests ;;
	e2e) step "end to end: demo calibration, LocalCUDACluster vs CPU, bit for bit" 150 end_to_end ;;
	bench) step "bench_gpu.py: EfficientNet-Lite0, batch 256" 200 "$PYTHON" benchmarks/bench_gpu.py --model "$MODEL" \
		--json "$LOGS/bench_gpu.json" ;;
	*) die "unknown step $name in GPU_CHECK_STEPS (tests, e2e, bench)" 2 ;;
	esac
done
say "==== summary ($SECONDS s)"
for result in "${RESULTS[@]}"; do say "$result"; done
exit "$FAILED"
