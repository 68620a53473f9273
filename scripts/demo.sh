#!/usr/bin/env bash
# `make demo`: both model families on their embedded defaults, end to end, in CPU minutes.
# Grammars: prepare the synthetic corpus, evaluate the baselines, train a neural PCFG by exact
# marginal likelihood and the same grammar by GFlowNet-EM, parse the test split, and compare
# F1 and NLL with right-branching and with the true grammar. Images: prepare the shapes set,
# train a discrete VAE by GFlowNet-EM (a shortened run), draw a PNG of prior samples and one of
# reconstructions, and compare its test NLL with the generating model's. Everything lands in
# $DEMO_OUT (default demo-out/); nothing is deleted. DEMO_STEPS / DEMO_GFNEM_STEPS /
# DEMO_IMAGE_STEPS set the three training lengths (default: the recipes' own for the two
# grammars, 1200 for the images).
set -euo pipefail
OUT=${DEMO_OUT:-demo-out}
STEPS=${DEMO_STEPS:-}
GFNEM_STEPS=${DEMO_GFNEM_STEPS:-}
IMAGE_STEPS=${DEMO_IMAGE_STEPS:-1200}
mkdir -p "$OUT"

# train RECIPE RUN STEPS [--set ...]: a fresh run, or the same run resumed (STEPS empty: the
# recipe's own train.steps)
train() {
  local recipe=$1 run=$2 steps=$3
  shift 3
  local args=(--out "$run" "$@")
  if [ -n "$steps" ]; then args+=(--set train.steps="$steps"); fi
  if [ -f "$run/checkpoints/last.pt" ]; then args+=(--resume); fi
  gfnem train "$recipe" "${args[@]}"
}

echo "== 1. prepare the synthetic corpus (drawn from a known English-like PCFG)"
gfnem prepare synthetic --out "$OUT/data/synthetic"

echo "== 2. baselines on the test split"
for baseline in right left random oracle; do
  gfnem evaluate --data "$OUT/data/synthetic" --split test --baseline "$baseline" \
    --json "$OUT/baseline-$baseline.json" > /dev/null
done

echo "== 3. train a neural PCFG by exact marginal likelihood (recipes/synthetic-npcfg.yaml)"
RUN="$OUT/runs/npcfg"
train recipes/synthetic-npcfg.yaml "$RUN" "$STEPS" --set data.path="$OUT/data/synthetic"

echo "== 4. parse the test split and evaluate"
gfnem parse "$RUN" --input "$OUT/data/synthetic" --split test --out "$OUT/test-parses.txt"
head -n 3 "$OUT/test-parses.txt"
gfnem evaluate "$RUN" --data "$OUT/data/synthetic" --split test --json "$OUT/model.json"

echo "== 4b. the same kind of grammar by GFlowNet-EM (recipes/synthetic-npcfg-gfnem.yaml)"
GRUN="$OUT/runs/npcfg-gfnem"
train recipes/synthetic-npcfg-gfnem.yaml "$GRUN" "$GFNEM_STEPS" \
  --set data.path="$OUT/data/synthetic"
gfnem evaluate "$GRUN" --data "$OUT/data/synthetic" --split test --json "$OUT/gfnem.json"

echo "== 5. images: prepare the shapes set (28x28, drawn from a known 4x4-code model)"
gfnem prepare shapes --out "$OUT/data/shapes"

echo "== 6. train a discrete VAE by GFlowNet-EM ($IMAGE_STEPS steps, shortened)"
IRUN="$OUT/runs/shapes-gfnem"
train recipes/shapes-dvae-gfnem.yaml "$IRUN" "$IMAGE_STEPS" --set data.path="$OUT/data/shapes"

echo "== 7. PNGs of prior samples and of test reconstructions, and the test NLL"
gfnem sample "$IRUN" -n 64 --out "$OUT/shapes-samples.png"
gfnem sample "$IRUN" --input "$OUT/data/shapes" --split test -n 8 --out "$OUT/shapes-recon.png"
gfnem evaluate "$IRUN" --data "$OUT/data/shapes" --samples 100 --max-images 300 \
  --json "$OUT/shapes-nll.json"

echo "== 8. summary"
python3 - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
right = json.load(open(f"{out}/baseline-right.json"))
rows = [("N-PCFG, exact marginal", json.load(open(f"{out}/model.json"))),
        ("N-PCFG, GFlowNet-EM", json.load(open(f"{out}/gfnem.json")))]
print(f"{'':26} {'sentence F1':>11} {'corpus F1':>9} {'NLL/token':>9}   (test split)")
for name, fig in rows:
    print(f"{name:26} {fig['sentence_f1']:11.1f} {fig['corpus_f1']:9.1f} "
          f"{fig['nll_per_token']:9.3f}")
print(f"{'right-branching':26} {right['sentence_f1']:11.1f} {right['corpus_f1']:9.1f} "
      f"{'':>9}")
print(f"{'the true grammar':26} {'':>11} {'':>9} {rows[0][1]['true_nll_per_token']:9.3f}")
image = json.load(open(f"{out}/shapes-nll.json"))
print(f"image NLL:   model {image['nll_nats']:.1f} ± {image['nll_stderr']:.1f} nats/image "
      f"(M={image['samples']}, {image['num_images']} test images)  vs true model "
      f"{image['true_nll']:.1f}")
print(f"PNGs:        {out}/shapes-samples.png (prior samples), {out}/shapes-recon.png "
      "(test images | reconstructions)")
PY
