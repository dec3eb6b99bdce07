# benchmarks/common.sh: sourced by the benchmark scripts. Moves to the source tree, lets Open MPI run as
# root where the scripts are run as root, names the launcher, and checks pcmoe is built.
cd "$(dirname "$0")/.." || exit 2
[ "$(id -u)" -eq 0 ] && export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
mpirun=${MPIRUN:-mpirun}
[ -x ./pcmoe ] || { echo "build first: scripts/build.sh" >&2; exit 2; }
