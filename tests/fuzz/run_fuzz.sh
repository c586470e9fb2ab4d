#!/bin/sh
# run_fuzz.sh TARGET SECONDS [DICT]: a bounded libFuzzer pass as a test.
# Seeds a fresh corpus (tests/fuzz/*_seeds.py where one exists for the
# target), runs for SECONDS and fails on any crash, leak or UB report.
set -eu
target=$1
seconds=$2
dict=${3:-}
here=$(dirname "$0")
corpus=$(mktemp -d)
trap 'rm -rf "$corpus"' EXIT
name=$(basename "$target")
case "$name" in
  fuzz_st) /usr/bin/python3 "$here/make_seeds.py" "$corpus" >/dev/null 2>&1 || true ;;
  fuzz_pickle) /usr/bin/python3 "$here/pickle_seeds.py" "$corpus" >/dev/null 2>&1 || true ;;
  fuzz_request)
    printf '{"class_label": 1, "seed": 7, "steps": 20, "cfg_scale": 2.5, "sampler": "euler", "num_images": 2}' > "$corpus/a"
    printf '{"prompt": "trouser", "n": 2, "size": "28x28", "response_format": "b64_json", "model": "m", "seed": 3}' > "$corpus/b" ;;
esac
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
set -- -max_total_time="$seconds" -max_len=4096 -rss_limit_mb=1536 -artifact_prefix="$corpus/"
[ -n "$dict" ] && set -- "$@" -dict="$dict"
"$target" "$@" "$corpus"
