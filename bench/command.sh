# Sourced by bench/run.sh and bench/cluster.sh: the exact command of a run, for the report.
#   bench_command SCRIPT RECIPE VAR...   prints the VARs given explicitly, then
#   `just RECIPE` when started by just (which runs the recipe line through sh, so a few
#   parents up), else SCRIPT.
bench_command() {
    local script=$1 recipe=$2 given="" via v pid
    shift 2
    for v in "$@"; do
        if [ -n "${!v+x}" ]; then given+="$v=$(printf %q "${!v}") "; fi
    done
    via=$script
    pid=$PPID
    for _ in 1 2 3; do
        [ -r "/proc/$pid/stat" ] || break
        if [ "$(cat "/proc/$pid/comm")" = just ]; then via="just $recipe"; break; fi
        pid=$(awk '{print $4}' "/proc/$pid/stat")
    done
    printf '%s%s' "$given" "$via"
}
