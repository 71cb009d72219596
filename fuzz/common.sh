# Sourced by the fuzz scripts: the checkout's root as working directory, the run's length from
# the script's first argument (default 60 s), the build folder, and how a target is run.
cd "$(dirname "$0")/.."
SECONDS_TO_RUN="${1:-60}"
OUT=.build/fuzz

# run_fuzzer TARGET CORPUS: libFuzzer for SECONDS_TO_RUN on $OUT/CORPUS; crash files go under $OUT.
run_fuzzer() {
    "$OUT/$1" -max_total_time="$SECONDS_TO_RUN" -max_len=20000 -print_final_stats=1 \
        -artifact_prefix="$OUT/" "$OUT/$2"
}
