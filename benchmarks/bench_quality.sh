#!/usr/bin/env bash
# Sample quality of each family on Fashion-MNIST, and what longer training buys.
#
# For each model it trains the core issue's defaults (5 epochs, batch 128) and keeps that
# checkpoint; for the models in LONG it resumes the same run to $EPOCHS epochs (the first 5
# epochs are the same steps). Every checkpoint is scored with `genai eval` (classifier
# features), the longest run of the models in INCEPTION also with Inception features under the
# full 10k-vs-10k protocol (20 CPU minutes per set of 10k images), and the real-data floor
# with the classifier (and Inception when FLOOR_INCEPTION=1). Each result is one JSON line in
# $OUT/results.jsonl with the step and the wall-clock seconds it took. Hours of CPU: run it
# in the background (`nohup benchmarks/bench_quality.sh &`); a GPU does it in minutes.
#
#   MODELS="dcgan cgan vae gan" LONG="dcgan cgan" INCEPTION="dcgan" EPOCHS=20 OUT=runs/quality \
#   GENAI_INCEPTION_WEIGHTS=../shared/weights/inception-2015-12-05.pt benchmarks/bench_quality.sh
set -euo pipefail
MODELS=${MODELS:-"dcgan cgan vae gan"}
LONG=${LONG:-"dcgan cgan"}
INCEPTION=${INCEPTION:-"dcgan"}
FLOOR_INCEPTION=${FLOOR_INCEPTION:-0}
EPOCHS=${EPOCHS:-20}
OUT=${OUT:-runs/quality}
GENAI=${GENAI:-genai}
mkdir -p "$OUT"
RESULTS="$OUT/results.jsonl"

record() {  # record NAME COMMAND...: run it, append {"name", "seconds", "result"} to $RESULTS
  local name=$1; shift
  local start=$SECONDS result
  result=$("$@" --json -q)
  printf '{"name": "%s", "seconds": %d, "result": %s}\n' "$name" $((SECONDS - start)) "$result" >>"$RESULTS"
  echo "$name: $((SECONDS - start)) s" >&2
}

evaluate() {  # evaluate MODEL RUN LABEL LONGEST-LABEL
  if [[ " $INCEPTION " == *" $1 "* && $3 == "$4" ]]; then
    record "eval-inception/$1/$3" "$GENAI" eval --checkpoint "$2" --features inception
  fi
  record "eval-classifier/$1/$3" "$GENAI" eval --checkpoint "$2"
}

for model in $MODELS; do
  run="$OUT/$model"
  rm -rf "$run"
  record "train/$model/5ep" "$GENAI" train --model "$model" --data fashion-mnist --out "$run"
  rm -rf "$run-5ep" && cp -r "$run" "$run-5ep"
  longest=5ep
  if [[ " $LONG " == *" $model "* && $EPOCHS -gt 5 ]]; then
    longest=${EPOCHS}ep
    record "train/$model/$longest" "$GENAI" train --resume "$run" --epochs "$EPOCHS"
    evaluate "$model" "$run" "$longest" "$longest"
  fi
  evaluate "$model" "$run-5ep" 5ep "$longest"
done
record "floor-classifier" "$GENAI" eval --real --data fashion-mnist
if [[ $FLOOR_INCEPTION == 1 ]]; then
  record "floor-inception" "$GENAI" eval --real --data fashion-mnist --features inception
fi
