#!/usr/bin/env bash
# `make demo`: both model families on their embedded defaults, end to end, in CPU minutes.
# Grammars: prepare the synthetic corpus, evaluate the baselines, train a neural PCFG by exact
# marginal likelihood, parse the test split, and compare F1 and NLL with right-branching and
# with the true grammar. Images: prepare the shapes set, train a discrete VAE by GFlowNet-EM
# (a shortened run), draw a PNG of prior samples and one of reconstructions, and compare its
# test NLL with the generating model's. Everything lands in $DEMO_OUT (default demo-out/);
# nothing is deleted. DEMO_STEPS / DEMO_IMAGE_STEPS set the two training lengths.
set -euo pipefail
OUT=${DEMO_OUT:-demo-out}
STEPS=${DEMO_STEPS:-1500}
IMAGE_STEPS=${DEMO_IMAGE_STEPS:-1200}
mkdir -p "$OUT"

echo "== 1. prepare the synthetic corpus (drawn from a known English-like PCFG)"
gfnem prepare synthetic --out "$OUT/data/synthetic"

echo "== 2. baselines on the test split"
for baseline in right left random oracle; do
  gfnem evaluate --data "$OUT/data/synthetic" --split test --baseline "$baseline" \
    --json "$OUT/baseline-$baseline.json" > /dev/null
done

echo "== 3. train a neural PCFG by exact marginal likelihood ($STEPS steps)"
RUN="$OUT/runs/npcfg"
if [ -f "$RUN/checkpoints/last.pt" ]; then
  gfnem train recipes/synthetic-npcfg.yaml --out "$RUN" --set data.path="$OUT/data/synthetic" \
    --set train.steps="$STEPS" --resume
else
  gfnem train recipes/synthetic-npcfg.yaml --out "$RUN" --set data.path="$OUT/data/synthetic" \
    --set train.steps="$STEPS"
fi

echo "== 4. parse the test split and evaluate"
gfnem parse "$RUN" --input "$OUT/data/synthetic" --split test --out "$OUT/test-parses.txt"
head -n 3 "$OUT/test-parses.txt"
gfnem evaluate "$RUN" --data "$OUT/data/synthetic" --split test --json "$OUT/model.json"

echo "== 5. images: prepare the shapes set (28x28, drawn from a known 4x4-code model)"
gfnem prepare shapes --out "$OUT/data/shapes"

echo "== 6. train a discrete VAE by GFlowNet-EM ($IMAGE_STEPS steps, shortened)"
IRUN="$OUT/runs/shapes-gfnem"
if [ -f "$IRUN/checkpoints/last.pt" ]; then
  gfnem train recipes/shapes-dvae-gfnem.yaml --out "$IRUN" \
    --set data.path="$OUT/data/shapes" --set train.steps="$IMAGE_STEPS" --resume
else
  gfnem train recipes/shapes-dvae-gfnem.yaml --out "$IRUN" \
    --set data.path="$OUT/data/shapes" --set train.steps="$IMAGE_STEPS"
fi

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
model = json.load(open(f"{out}/model.json"))
print(f"sentence F1: model {model['sentence_f1']:.1f}  vs right-branching {right['sentence_f1']:.1f}")
print(f"corpus F1:   model {model['corpus_f1']:.1f}  vs right-branching {right['corpus_f1']:.1f}")
print(f"NLL/token:   model {model['nll_per_token']:.3f}  vs true grammar {model['true_nll_per_token']:.3f}")
image = json.load(open(f"{out}/shapes-nll.json"))
print(f"image NLL:   model {image['nll_nats']:.1f} ± {image['nll_stderr']:.1f} nats/image "
      f"(M={image['samples']}, {image['num_images']} test images)  vs true model "
      f"{image['true_nll']:.1f}")
print(f"PNGs:        {out}/shapes-samples.png (prior samples), {out}/shapes-recon.png "
      "(test images | reconstructions)")
PY
